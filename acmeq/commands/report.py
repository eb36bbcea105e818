"""`acmeq report campaign-performance|donations-summary|matching`: a PDF or XLSX report.

Totals per currency, per-campaign progress against goal, matching by company and trends by week
over a period, with bar charts (top campaigns by raised amount). Runs on the ``reports`` queue
with live progress by default; ``--detach`` returns the job id, ``--sync`` runs it here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from acmeq.commands.common import console, emit_json, err_console, settings
from acmeq.commands.progress import AsUser, database, watch_jobs
from acmeq.errors import AcmeqError, ExportError

app = typer.Typer(
    help="Reports (PDF or XLSX with charts): campaign performance, donations, matching.",
    no_args_is_help=True,
)

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="pdf or xlsx.")]
PeriodOpt = Annotated[
    str | None,
    typer.Option(
        "--period",
        help="2026-Q3, 2026-07 or 2026 (default: the last 90 days).",
        show_default=False,
    ),
]
FromOpt = Annotated[
    str | None, typer.Option("--from", help="First day (YYYY-MM-DD, UTC).", show_default=False)
]
ToOpt = Annotated[
    str | None, typer.Option("--to", help="Last day (inclusive).", show_default=False)
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write here (default: the exports directory).", show_default=False
    ),
]
EmailOpt = Annotated[
    str | None,
    typer.Option("--email", help="E-mail the report to this address when done.",
                 show_default=False),
]  # fmt: skip
DetachOpt = Annotated[bool, typer.Option("--detach", help="Print the job id and return at once.")]
SyncOpt = Annotated[bool, typer.Option("--sync", help="Run in this process, not on a worker.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _command(name: str, doc: str) -> None:
    def command(
        format: FormatOpt = "pdf",
        period: PeriodOpt = None,
        date_from: FromOpt = None,
        date_to: ToOpt = None,
        output: OutputOpt = None,
        email: EmailOpt = None,
        detach: DetachOpt = False,
        sync: SyncOpt = False,
        as_user: AsUser = None,
        as_json: JsonOpt = False,
    ) -> None:
        _report(name, dict(locals()))

    command.__doc__ = doc
    app.command(name)(command)


_command(
    "campaign-performance",
    "Totals, every campaign's progress against its goal, weekly trend, top campaigns chart.",
)
_command(
    "donations-summary",
    "Totals per currency, status and gateway, weekly trend, top campaigns chart.",
)
_command("matching", "Corporate matching by company, weekly trend, top campaigns chart.")


def _report(name: str, opts: dict[str, Any]) -> None:
    from acmeq.errors import UsageError
    from acmeq.exports import privacy
    from acmeq.exports.report_runner import prepare_report
    from acmeq.exports.reports import parse_period

    if opts["detach"] and opts["sync"]:
        raise UsageError("--detach and --sync exclude each other")
    period = parse_period(opts["period"], opts["date_from"], opts["date_to"])
    cfg = settings()
    engine = database(cfg)
    who = privacy.requester(engine, opts["as_user"])
    output = str(opts["output"].absolute()) if opts["output"] else None
    prepared = prepare_report(
        cfg, engine, name, opts["format"], period,
        user_id=who.user_id, output=output, email=opts["email"],
    )  # fmt: skip
    if opts["sync"]:
        from acmeq.exports.report_runner import run_report

        try:
            result = run_report(cfg, engine, prepared.id, in_job=False)
        except AcmeqError:
            raise
        except Exception as exc:
            raise ExportError(f"report {prepared.id} failed: {type(exc).__name__}: {exc}") from None
        if opts["as_json"]:
            emit_json({**result.as_json(), "status": "completed"})
        else:
            console.print(
                f"wrote report to [bold]{result.path}[/]", soft_wrap=True, highlight=False
            )
        return
    _submit(cfg, engine, prepared.id, who.user_id, opts)


def _submit(cfg: Any, engine: Any, export_id: int, user_id: int | None, opts: Any) -> None:
    from acmeq.exports.runner import enqueue_prepared, load, workers_serving
    from acmeq.storage.redis_client import connect_checked

    connection = connect_checked(cfg)
    job_id = enqueue_prepared(cfg, engine, connection, export_id, "generate_report", user_id)
    path = load(engine, export_id).path
    if opts["detach"]:
        if opts["as_json"]:
            emit_json({"job_id": job_id, "export_id": export_id, "path": path})
        else:
            console.print(
                f"enqueued generate_report as {job_id}; the report will be {path}",
                soft_wrap=True,
                highlight=False,
            )
        return
    if not workers_serving(connection, "reports"):
        err_console.print(
            "no worker serves queue reports yet: the report waits for one "
            "(`acmeq worker start`), or run it here with --sync",
            style="yellow",
        )
    code = watch_jobs(cfg, [job_id], as_user=opts["as_user"], as_json=opts["as_json"])
    record = load(engine, export_id)
    status = str(getattr(record.status, "value", record.status))
    if opts["as_json"]:
        sys.stdout.write(
            json.dumps({"export_id": export_id, "status": status, "path": record.path}) + "\n"
        )
    elif status == "completed":
        console.print(f"wrote report to [bold]{record.path}[/]", soft_wrap=True, highlight=False)
    else:
        why = record.error or "its job ended without finishing it (see `acmeq progress show`)"
        err_console.print(f"report {export_id} failed: {why}", highlight=False, soft_wrap=True)
    sys.exit(0 if status == "completed" and code == 0 else 1)
