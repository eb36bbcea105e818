"""The `acmeq` command: Typer apps per command group, joined here.

``main()`` runs the app in non-standalone mode so that every error, ours or click's, ends as one
line on stderr with a named exit code (``acmeq.constants.ExitCode``) instead of a traceback or a
usage box.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from acmeq import __version__
from acmeq.commands import alerts as alerts_cmd
from acmeq.commands import backup as backup_cmd
from acmeq.commands import cleanup as cleanup_cmd
from acmeq.commands import config as config_cmd
from acmeq.commands import dashboard as dashboard_cmd
from acmeq.commands import db as db_cmd
from acmeq.commands import demo as demo_cmd
from acmeq.commands import deploy as deploy_cmd
from acmeq.commands import doctor as doctor_cmd
from acmeq.commands import donation as donation_cmd
from acmeq.commands import enqueue as enqueue_cmd
from acmeq.commands import export as export_cmd
from acmeq.commands import failed as failed_cmd
from acmeq.commands import job as job_cmd
from acmeq.commands import mail as mail_cmd
from acmeq.commands import metrics as metrics_cmd
from acmeq.commands import progress as progress_cmd
from acmeq.commands import queue as queue_cmd
from acmeq.commands import redis_server as redis_cmd
from acmeq.commands import report as report_cmd
from acmeq.commands import schedule as schedule_cmd
from acmeq.commands import status as status_cmd
from acmeq.commands import webhook as webhook_cmd
from acmeq.commands import worker as worker_cmd
from acmeq.commands.common import err_console, state
from acmeq.constants import ExitCode
from acmeq.errors import AcmeqError

app = typer.Typer(
    name="acmeq",
    help="Background jobs for the ACME donation platform: queues, workers, exports, webhooks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(worker_cmd.app, name="worker")
app.add_typer(config_cmd.app, name="config")
app.add_typer(redis_cmd.app, name="redis")
app.add_typer(db_cmd.app, name="db")
app.add_typer(queue_cmd.app, name="queue")
app.add_typer(job_cmd.app, name="job")
app.add_typer(failed_cmd.app, name="failed")
app.add_typer(progress_cmd.app, name="progress")
app.add_typer(demo_cmd.app, name="demo")
app.add_typer(alerts_cmd.app, name="alerts")
app.command(name="enqueue", help="Enqueue a registered job on its queue.")(enqueue_cmd.enqueue)
app.command(name="status", help="Redis, queues, masters and alerts on one screen.")(
    status_cmd.status
)
app.add_typer(metrics_cmd.app, name="metrics")
app.add_typer(backup_cmd.app, name="backup")
app.add_typer(webhook_cmd.app, name="webhook")
app.add_typer(donation_cmd.app, name="donation")
app.add_typer(export_cmd.app, name="export")
app.add_typer(report_cmd.app, name="report")
app.add_typer(mail_cmd.app, name="mail")
app.add_typer(schedule_cmd.app, name="schedule")
app.add_typer(deploy_cmd.app, name="deploy")
app.command(name="dashboard", help="Serve rq-dashboard for acmeq's Redis (read-only).")(
    dashboard_cmd.dashboard
)
app.command(name="doctor", help="Check Redis, database, masters and secrets for production.")(
    doctor_cmd.doctor
)
app.command(name="cleanup", help="Delete data past its retention (--dry-run: show it).")(
    cleanup_cmd.cleanup
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"acmeq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", envvar="ACMEQ_CONFIG", help="acmeq.toml to read.", show_default=False
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Options shared by every command."""
    state.config_path = config
    state._settings = None


def _fail(message: str, code: int) -> None:
    # One line per problem, prefixed so it is recognisable in cron mail and logs.
    for line in message.splitlines() or [message]:
        err_console.print(f"acmeq: error: {line}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def _click_family(exc: BaseException) -> set[str]:
    # Typer >= 0.29 vendors click as `typer._click`, older releases use click itself; matching
    # the exception classes by name handles both without importing a private module.
    return {cls.__name__ for cls in type(exc).__mro__}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        # In non-standalone mode click returns an Exit's code instead of raising it.
        code = app(args=argv, prog_name="acmeq", standalone_mode=False)
        if isinstance(code, int) and code != 0:
            sys.exit(code)
    except AcmeqError as exc:
        _fail(exc.message, int(exc.exit_code))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        family = _click_family(exc)
        if "NoArgsIsHelpError" in family:
            # `acmeq` or `acmeq db` alone: show the help once and exit 2. The error was built
            # from ctx.get_help(), which Typer's rich help already printed (returning "").
            text = exc.format_message()  # type: ignore[attr-defined]
            if text.strip():
                sys.stdout.write(text + "\n")
            sys.exit(int(ExitCode.USAGE))
        if "Exit" in family:
            sys.exit(int(getattr(exc, "exit_code", 0)))
        if "Abort" in family:
            _fail("aborted", int(ExitCode.FAILED))
        if "ClickException" in family:
            code = int(getattr(exc, "exit_code", ExitCode.USAGE))
            _fail(exc.format_message(), code)  # type: ignore[attr-defined]
        _unexpected(exc)


def _unexpected(exc: Exception) -> None:
    """The last resort for an exception no command translated: one line, not a traceback.

    A lost connection is reported as unreachable (exit 3); anything else as an internal error
    (exit 1) that names the exception. ACMEQ_DEBUG=1 shows the traceback instead.
    """
    if os.environ.get("ACMEQ_DEBUG"):
        raise exc
    kind = type(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    if first.startswith("(") and ") " in first:  # SQLAlchemy: "(psycopg.OperationalError) ..."
        first = first.split(") ", 1)[1]
    names = {cls.__name__ for cls in kind.__mro__}
    if kind.__module__.startswith("redis") and names & {"ConnectionError", "TimeoutError"}:
        _fail(f"cannot reach Redis: {first}", int(ExitCode.UNREACHABLE))
    if kind.__module__.startswith("sqlalchemy") and "OperationalError" in names:
        _fail(f"cannot reach the database: {first}", int(ExitCode.UNREACHABLE))
    _fail(
        f"internal error: {kind.__name__}: {first} (ACMEQ_DEBUG=1 shows the traceback)",
        int(ExitCode.FAILED),
    )
