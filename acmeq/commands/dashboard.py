"""`acmeq dashboard`: rq-dashboard against acmeq's Redis (optional extra ``acmeq[dashboard]``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import line


def dashboard(
    host: Annotated[
        str, typer.Option(help="Address to listen on (beyond loopback: basic auth required).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 9181,
    username: Annotated[
        str, typer.Option(help="HTTP basic auth user (password: $ACMEQ_DASHBOARD_PASSWORD).")
    ] = "",
    writable: Annotated[
        bool,
        typer.Option("--writable", help="Allow requeue, delete and empty (default: read-only)."),
    ] = False,
) -> None:
    """Serve rq-dashboard (queues, workers, failed jobs) for acmeq's Redis."""
    from acmeq.ops.dashboard import DashboardOptions, check_binding, serve

    opts = DashboardOptions(
        host=host,
        port=port,
        username=username,
        password=os.environ.get("ACMEQ_DASHBOARD_PASSWORD", ""),
        writable=writable,
    )
    check_binding(opts)
    mode = "read-write" if writable else "read-only"
    auth = ", basic auth" if opts.password else ""
    line(f"rq-dashboard on http://{host}:{port}/ ({mode}{auth}); Ctrl-C to stop")
    serve(settings(), opts)
