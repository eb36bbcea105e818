"""`acmeq alerts list|test|evaluate`: active alerts and history, channel tests, one evaluation."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json, err_console, show, table
from acmeq.constants import ExitCode
from acmeq.errors import AcmeqError, UsageError
from acmeq.observability.alerts.channels import Channel, configured, describe, send_all
from acmeq.observability.alerts.notice import Notice, duration
from acmeq.storage.redis_client import connect_checked

if TYPE_CHECKING:
    from acmeq.observability.alerts.engine import Evaluation

app = typer.Typer(
    help="Queue alerts: what is firing, recent notices, channel tests.", no_args_is_help=True
)


class TestChannel(StrEnum):
    ALL = "all"
    LOG = "log"
    EMAIL = "email"
    WEBHOOK = "webhook"


def _owner() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


def _ago(ts: Any) -> str:
    return f"{duration(time.time() - float(ts))} ago" if ts else "-"


@app.command("list")
def list_alerts(
    history: Annotated[
        int, typer.Option("--history", min=0, help="Show the last N notices (0: none).")
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the active alerts, the last notices and the state of the channels.

    Exits 1 while an alert is active (for scripts and health checks), 0 otherwise.
    """
    cfg = settings()
    from acmeq.observability.alerts import (
        engine as alerts,  # loaded per command: keeps every other command's start-up light
    )

    data = alerts.overview(connect_checked(cfg), cfg, history)
    if as_json:
        emit_json(data)
    else:
        _render(cfg, data)
    if data["active"]:
        # sys.exit, not typer.Exit: in the CLI's non-standalone mode click returns an Exit's code
        sys.exit(int(ExitCode.FAILED))


def _render(cfg: Any, data: dict[str, Any]) -> None:
    if not data["enabled"]:
        console.print(
            "monitoring is disabled (QUEUE_MONITORING_ENABLED=false): nothing is evaluated"
        )
    else:
        console.print(f"evaluator: {data['evaluator'] or '(none: no master is running)'}")
    for name, state in data["channels"].items():
        if state.get("ok") is False:
            console.print(
                f"channel FAILING ({state.get('failures')} attempts, last {_ago(state.get('at'))})"
                f": {state.get('error')}",
                markup=False,
            )
        else:
            console.print(f"channel ok: {describe(Channel(name), cfg)}", markup=False)
    if data["outbox"]:
        console.print(f"outbox: {data['outbox']} notices waiting to be delivered")
    if not data["active"]:
        console.print("no active alerts")
    else:
        active = table(
            "alert",
            "severity",
            "since",
            "last notified",
            "message",
            ids=["alert"],
            fold=["message"],
        )
        for row in data["active"]:
            style = "bold red" if row.get("severity") == "critical" else "yellow"
            active.add_row(
                row["id"],
                row.get("severity", ""),
                _ago(row.get("since")),
                _ago(row.get("last_notified")),
                row.get("message", ""),
                style=style,
            )
        console.print(f"active alerts ({len(data['active'])}):")
        show(active)
    if data["history"]:
        history = table("at", "notice", "alert", "message", ids=["alert"], fold=["message"])
        for n in data["history"]:
            history.add_row(
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(n["at"]))),
                str(n["kind"]).upper(),
                n["alert_id"],
                n["message"],
            )
        console.print(f"last {len(data['history'])} notices (newest first):")
        show(history)


@app.command("test")
def test_channels(
    channel: Annotated[
        TestChannel,
        typer.Option("--channel", help="Which channel to test; all: every configured one."),
    ] = TestChannel.ALL,
) -> None:
    """Send a test notice through the configured channels; exit 1 naming any that failed."""
    cfg = settings()
    available = configured(cfg)
    if channel is TestChannel.ALL:
        chosen = available
    else:
        wanted = Channel(channel.value)
        if wanted not in available:
            hint = {
                Channel.EMAIL: "set QUEUE_ALERT_EMAIL (monitoring.alert_email)",
                Channel.WEBHOOK: "set ACMEQ_ALERT_WEBHOOK_URL (monitoring.webhook_url)",
            }.get(wanted, "")
            raise UsageError(f"the {wanted} channel is not configured: {hint}")
        chosen = [wanted]
    from acmeq.observability.alerts import engine as alerts

    notice = alerts.make_test_notice(_owner())
    results = send_all(cfg, notice, chosen)
    for ch, error in results.items():
        if error is None:
            console.print(f"sent: {describe(ch, cfg)}", markup=False)
    errors = [e for e in results.values() if e]
    if errors:
        raise AcmeqError("\n".join(errors))


@app.command("evaluate")
def evaluate(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be notified; store and send nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Evaluate the alert rules once now and send the notices (for cron and debugging).

    When a running master is the evaluator, this only previews (nothing is stored or sent twice).
    Exits 1 when a notice could not be delivered.
    """
    cfg = settings()
    if not cfg.monitoring_enabled:
        console.print("monitoring is disabled (QUEUE_MONITORING_ENABLED=false): nothing evaluated")
        return
    # The notices are printed below; the log channel's copy on stderr would only repeat them.
    logging.getLogger("acmeq.observability.alerts.engine").addHandler(logging.NullHandler())
    from acmeq.observability.alerts import engine as alerts

    run = alerts.evaluate_once(connect_checked(cfg), cfg, _owner(), dry_run=dry_run)
    errors = run.delivery.errors if run.delivery else []
    if as_json:
        emit_json(
            {
                "committed": run.committed,
                "held_by": run.holder,
                "notices": [n.to_dict() for n in run.notices],
                "delivery_errors": errors,
                "outbox": run.delivery.pending if run.delivery else None,
            }
        )
    else:
        _print_run(run)
    if errors:
        for line in errors:
            err_console.print(f"acmeq: error: {line}", markup=False, highlight=False)
        sys.exit(int(ExitCode.FAILED))


def _print_run(run: Evaluation) -> None:
    if run.holder:
        console.print(
            f"preview: {run.holder} is the evaluator (holds the lock); nothing was stored or sent",
            markup=False,
        )
    elif not run.committed:
        console.print("preview (--dry-run): nothing was stored or sent")
    if not run.notices:
        console.print("no new notices")
    for n in run.notices:
        _print_notice(n)
    if run.delivery and run.delivery.sent:
        console.print(f"delivered: {len(run.delivery.sent)} messages", markup=False)
    if run.delivery and run.delivery.pending:
        console.print(f"outbox: {run.delivery.pending} notices waiting for a channel")


def _print_notice(n: Notice) -> None:
    console.print(n.title, markup=False, highlight=False, soft_wrap=True)
    for line in n.details:
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
