"""`acmeq mail test|failed|retry`: check the transport, list and resend failed e-mails."""

from __future__ import annotations

from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import emit_json, line, show, table

app = typer.Typer(
    help="Mail: send a test message, list failed e-mails, resend them.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command("test")
def test(
    to: Annotated[str, typer.Argument(help="Recipient address.", show_default=False)],
    locale: Annotated[
        str | None, typer.Option("--locale", help="Template locale: en, nl, fr, de.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send one test message now through the configured transport (SMTP or the outbox)."""
    from acmeq.mail.admin import send_test

    result = send_test(settings(), to, locale)
    if as_json:
        emit_json(result)
    elif result["path"]:
        line(f"written to the outbox ({result['via']}): {result['path']}")
    else:
        line(f"sent: test message to {to} via {result['via']}")


@app.command("failed")
def failed(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Failed at or after: a duration ago (30m, 2d) or ISO 8601."),
    ] = None,
    include_retried: Annotated[
        bool, typer.Option("--all", help="Also those already resent.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List e-mails that failed on their last try or whose delivery is uncertain."""
    from acmeq.mail.admin import failed as failed_rows
    from acmeq.ops.failed import parse_instant

    after = parse_instant(since, "--since") if since else None
    rows = failed_rows(settings(), after, include_retried)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        line("no failed e-mails" + (f" since {since}" if since else ""))
        return
    out = table(
        "id",
        "last attempt",
        "status",
        "to",
        "subject",
        "tries",
        "error",
        right=["id", "tries"],
        fold=["error"],
    )
    for r in rows:
        out.add_row(
            str(r["id"]),
            r["last_attempt_at"].strftime("%Y-%m-%d %H:%M:%S"),
            r["status"],
            r["to_address"],
            r["subject"],
            str(r["attempts"]),
            r["error"],
        )
    show(out)


@app.command("retry")
def retry(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Failed e-mail ids (see `acmeq mail failed`).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Resend every one not yet resent.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue failed e-mails again (recipients who got them meanwhile are skipped)."""
    from acmeq.errors import UsageError
    from acmeq.mail.admin import retry as retry_rows
    from acmeq.storage.redis_client import connect_checked

    if bool(ids) == all_:
        raise UsageError("give failed e-mail ids or --all (not both)")
    cfg = settings()
    done = retry_rows(cfg, connect_checked(cfg), None if all_ else list(ids or []))
    if as_json:
        emit_json(done)
        return
    if not done:
        line("nothing to resend")
    for item in done:
        if item["job_id"]:
            line(f"resent {item['id']} {item['note']}: job {item['job_id']}")
        else:
            line(f"skipped {item['id']}: {item['note']}")
