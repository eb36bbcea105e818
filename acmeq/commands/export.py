"""`acmeq export campaigns|donations`: a file of campaigns or donations (CSV, XLSX, PDF).

By default the export runs on the ``exports`` queue while the command shows its live progress
(the watch of ``acmeq enqueue --watch``) and prints the file's path at the end; ``--detach``
prints the job id at once; ``--sync`` runs it in this process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from acmeq.commands.common import console, emit_json, err_console, settings
from acmeq.commands.progress import AsUser, database, watch_jobs
from acmeq.errors import AcmeqError, ExportError

if TYPE_CHECKING:
    from acmeq.config.settings import Settings
    from acmeq.exports.runner import ExportResult

app = typer.Typer(
    help="Export campaigns or donations as CSV, XLSX or PDF (streamed, with progress).",
    no_args_is_help=True,
)

Format = Annotated[str, typer.Option("--format", "-f", help="csv, xlsx or pdf.")]
CampaignOpt = Annotated[
    list[int] | None,
    typer.Option("--campaign", help="Only this campaign id (repeatable).", show_default=False),
]
StatusOpt = Annotated[
    list[str] | None,
    typer.Option("--status", help="Only this status (repeatable).", show_default=False),
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from", help="Created on or after this day (YYYY-MM-DD, UTC).", show_default=False
    ),
]
ToOpt = Annotated[
    str | None,
    typer.Option("--to", help="Created on or before this day (inclusive).", show_default=False),
]
CurrencyOpt = Annotated[
    str | None, typer.Option("--currency", help="Only this currency (EUR).", show_default=False)
]
PiiOpt = Annotated[
    bool,
    typer.Option(
        "--include-pii",
        help="Include names, e-mails and addresses: needs --as an admin, or the organizer of "
        "the --campaign exported. Anonymous donors stay anonymous.",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write here (default: the exports directory).", show_default=False
    ),
]
EmailOpt = Annotated[
    str | None,
    typer.Option("--email", help="E-mail the file (or its path) to this address when done.",
                 show_default=False),
]  # fmt: skip
DialectOpt = Annotated[
    str,
    typer.Option(
        "--dialect",
        help="CSV dialect: standard (UTF-8, comma) or excel (BOM, semicolon, decimal comma).",
    ),
]
DetachOpt = Annotated[bool, typer.Option("--detach", help="Print the job id and return at once.")]
SyncOpt = Annotated[bool, typer.Option("--sync", help="Run in this process, not on a worker.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command("campaigns")
def campaigns(
    format: Format = "csv",
    campaign: CampaignOpt = None,
    status: StatusOpt = None,
    date_from: FromOpt = None,
    date_to: ToOpt = None,
    currency: CurrencyOpt = None,
    include_pii: PiiOpt = False,
    output: OutputOpt = None,
    email: EmailOpt = None,
    dialect: DialectOpt = "standard",
    detach: DetachOpt = False,
    sync: SyncOpt = False,
    as_user: AsUser = None,
    as_json: JsonOpt = False,
) -> None:
    """Export campaigns: goal, raised, matched, progress; totals per currency and status."""
    _export("campaigns", dict(locals()))


@app.command("donations")
def donations(
    format: Format = "csv",
    campaign: CampaignOpt = None,
    status: StatusOpt = None,
    date_from: FromOpt = None,
    date_to: ToOpt = None,
    currency: CurrencyOpt = None,
    include_pii: PiiOpt = False,
    output: OutputOpt = None,
    email: EmailOpt = None,
    dialect: DialectOpt = "standard",
    detach: DetachOpt = False,
    sync: SyncOpt = False,
    as_user: AsUser = None,
    as_json: JsonOpt = False,
) -> None:
    """Export donations with tax receipt data; totals per currency and per campaign."""
    _export("donations", dict(locals()))


def _export(kind: str, opts: dict[str, Any]) -> None:
    from acmeq.errors import UsageError
    from acmeq.exports import privacy
    from acmeq.exports.runner import prepare_export, request_from_args

    if opts["detach"] and opts["sync"]:
        raise UsageError("--detach and --sync exclude each other")
    cfg = settings()
    engine = database(cfg)
    who = privacy.requester(engine, opts["as_user"])
    args = {k: v for k, v in opts.items() if k not in ("detach", "sync", "as_user", "as_json")}
    args["output"] = str(opts["output"].absolute()) if opts["output"] else None
    args["user_id"] = who.user_id
    request = request_from_args(kind, args)
    prepared = prepare_export(cfg, engine, request)
    job_name = f"export_{kind}"
    if opts["sync"]:
        _run_sync(cfg, engine, prepared.id, opts["as_json"])
        return
    _submit(cfg, engine, prepared.id, job_name, who.user_id, opts)


def _run_sync(cfg: Settings, engine: Any, export_id: int, as_json: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from acmeq.exports.runner import run_export

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=as_json or not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(f"export {export_id}", total=None)

        def on_page(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        try:
            result = run_export(cfg, engine, export_id, on_page=on_page, in_job=False)
        except AcmeqError:
            raise
        except Exception as exc:
            raise ExportError(f"export {export_id} failed: {type(exc).__name__}: {exc}") from None
    _print_result(result, as_json)


def _print_result(result: ExportResult, as_json: bool) -> None:
    if as_json:
        emit_json({**result.as_json(), "status": "completed"})
        return
    console.print(
        f"exported {result.rows:,} rows ({result.size:,} bytes) to [bold]{result.path}[/]",
        soft_wrap=True,
        highlight=False,
    )
    if result.mail_job:
        console.print(f"e-mail queued as job {result.mail_job}", highlight=False)


def _submit(
    cfg: Settings, engine: Any, export_id: int, job_name: str, user_id: int | None, opts: Any
) -> None:
    from acmeq.exports.runner import enqueue_prepared, load, workers_serving
    from acmeq.storage.redis_client import connect_checked

    connection = connect_checked(cfg)
    job_id = enqueue_prepared(cfg, engine, connection, export_id, job_name, user_id)
    path = load(engine, export_id).path
    if opts["detach"]:
        if opts["as_json"]:
            emit_json({"job_id": job_id, "export_id": export_id, "path": path})
        else:
            console.print(
                f"enqueued [bold]{job_name}[/] as {job_id} (export {export_id}); the file will "
                f"be {path}",
                soft_wrap=True,
                highlight=False,
            )
        return
    if not workers_serving(connection, "exports"):
        err_console.print(
            "no worker serves queue exports yet: the export waits for one "
            "(`acmeq worker start`), or run it here with --sync",
            style="yellow",
        )
    if not opts["as_json"]:
        console.print(f"enqueued {job_name} as {job_id} (export {export_id})", highlight=False)
    code = watch_jobs(cfg, [job_id], as_user=opts["as_user"], as_json=opts["as_json"])
    sys.exit(_report_end(engine, export_id, code, opts["as_json"]))


def _report_end(engine: Any, export_id: int, code: int, as_json: bool) -> int:
    from acmeq.exports.runner import load

    record = load(engine, export_id)
    status = str(record.status.value if hasattr(record.status, "value") else record.status)
    if as_json:
        data = {
            "export_id": export_id,
            "status": status,
            "path": record.path,
            "rows": record.row_count,
            "size_bytes": record.size_bytes,
            "sha256": record.sha256,
            "error": record.error,
        }
        sys.stdout.write(json.dumps(data) + "\n")
    elif status == "completed":
        console.print(
            f"exported {record.row_count:,} rows ({record.size_bytes:,} bytes) to "
            f"[bold]{record.path}[/]",
            soft_wrap=True,
            highlight=False,
        )
    else:
        why = record.error or "its job ended without finishing it (see `acmeq progress show`)"
        err_console.print(f"export {export_id} failed: {why}", highlight=False, soft_wrap=True)
    return 0 if status == "completed" and code == 0 else 1
