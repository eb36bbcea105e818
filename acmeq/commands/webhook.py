"""`acmeq webhook`: the payment webhook receiver and the events it recorded."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from acmeq.commands.common import settings, state
from acmeq.commands.render import emit_json, line, show, table

app = typer.Typer(
    help="Payment webhooks: run the receiver, list, replay and reconcile events.",
    no_args_is_help=True,
)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [webhooks.host].")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [webhooks.port].", min=1, max=65535)
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Server processes [webhooks.workers].", min=1, max=64)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    with_progress: Annotated[
        bool,
        typer.Option(
            "--with-progress", help="Also serve the progress stream (/progress/...; issue #16)."
        ),
    ] = False,
) -> None:
    """Serve POST /webhooks/{stripe,mollie,paypal}, GET /healthz and GET /metrics (uvicorn)."""
    import uvicorn

    from acmeq.storage import sql
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    hooks = cfg.payments.webhooks
    # Fail fast (exit 2/3) instead of answering every provider with 503.
    engine = sql.engine_for(cfg)
    sql.check_reachable(engine)
    sql.require_schema(engine)
    connect_checked(cfg).close()
    if state.config_path is not None:
        os.environ["ACMEQ_CONFIG"] = str(state.config_path)  # the server processes read it
    bind_host, bind_port = host or hooks.host, port or hooks.port
    processes = workers or hooks.workers
    line(f"acmeq webhook receiver on http://{bind_host}:{bind_port} ({processes} process(es))")
    factory = "acmeq.web.app:create_app"
    if with_progress:
        factory = "acmeq.web.progress:create_combined_app"
    uvicorn.run(
        factory,
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=processes,
        log_level=log_level,
        access_log=False,
    )


@app.command()
def events(
    provider: Annotated[str | None, typer.Option(help="stripe, mollie or paypal.")] = None,
    status: Annotated[
        str | None, typer.Option(help="received, processed, failed or ignored.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only events received within, e.g. 1h.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).", min=1)] = 50,
    json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List received webhook events, newest first."""
    from acmeq.storage import sql
    from acmeq.timeparse import parse_duration
    from acmeq.web.admin import list_events

    window = parse_duration(since, "--since") if since else None
    rows = list_events(sql.engine_for(settings()), provider, status, window, limit)
    if json:
        emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        line("no webhook events")
        return
    out = table(
        "ID",
        "PROVIDER",
        "EVENT",
        "TYPE",
        "STATUS",
        "RECEIVED",
        "ERROR",
        ids=("ID", "EVENT"),
        right=("ID",),
        fold=("ERROR",),
    )
    for r in rows:
        out.add_row(
            str(r.id),
            r.provider,
            r.event_id,
            r.event_type,
            r.status,
            r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.error or "",
        )
    show(out)


@app.command()
def replay(
    event_id: Annotated[
        str, typer.Argument(help="Row id (acmeq webhook events) or the provider's event id.")
    ],
) -> None:
    """Process a recorded event again (set it back to received and enqueue its job)."""
    from acmeq.storage import sql
    from acmeq.web.admin import replay as do_replay

    cfg = settings()
    result = do_replay(cfg, sql.engine_for(cfg), event_id)
    line(
        f"event {result['id']} ({result['provider']} {result['event_id']}, was "
        f"{result['previous_status']}) enqueued again as job {result['job_id']}"
    )


@app.command()
def reconcile(
    older_than: Annotated[
        str, typer.Option(help="Only events received longer ago than this.")
    ] = "60s",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list them.")] = False,
) -> None:
    """Enqueue recorded events that never got a job (e.g. Redis failed after the insert)."""
    from acmeq.storage import sql
    from acmeq.timeparse import parse_duration
    from acmeq.web.admin import reconcile as do_reconcile

    cfg = settings()
    done = do_reconcile(
        cfg, sql.engine_for(cfg), parse_duration(older_than, "--older-than"), dry_run
    )
    verb = "would enqueue" if dry_run else "enqueued"
    for item in done:
        line(
            f"{verb} event {item['id']} ({item['provider']} {item['event_id']}) as {item['job_id']}"
        )
    line(f"{len(done)} event(s) {verb}")
