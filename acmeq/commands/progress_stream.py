"""`acmeq progress token|serve`: viewer tokens and the progress stream server (issue #16).

Registered on the ``acmeq progress`` group by :mod:`acmeq.commands.progress`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from acmeq.commands.common import settings, state
from acmeq.commands.render import emit_json, line


def token(
    user: Annotated[str, typer.Argument(help="User id or email (users table).")],
    ttl: Annotated[
        str | None,
        typer.Option(help="Lifetime, e.g. 900, 15m, 1h [progress.token_ttl].", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Mint a signed, expiring token for USER to read their jobs' progress stream."""
    import time

    from acmeq.storage import sql
    from acmeq.timeparse import parse_duration
    from acmeq.web.tokens import mint_for_user

    cfg = settings()
    seconds = parse_duration(ttl, "--ttl").total_seconds() if ttl else cfg.progress_stream.token_ttl
    engine = sql.engine_for(cfg)
    sql.require_schema(engine)
    text, user_id, email = mint_for_user(engine, cfg.progress_stream.secret, user, seconds)
    if as_json:
        expires = round(time.time() + seconds)
        emit_json({"token": text, "user_id": user_id, "email": email, "expires_at": expires})
        return
    line(text)


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [webhooks.host].")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port [webhooks.port].", min=1, max=65535)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve only the progress stream: /progress/{id}, /progress/{id}/events, WS /progress/ws."""
    import uvicorn

    from acmeq.errors import UsageError
    from acmeq.storage import sql
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    if not cfg.progress_stream.secret:
        raise UsageError(
            "no progress token secret: set [progress] secret in acmeq.toml or ACMEQ_PROGRESS_SECRET"
        )
    engine = sql.engine_for(cfg)
    sql.check_reachable(engine)
    sql.require_schema(engine)
    connect_checked(cfg).close()
    if state.config_path is not None:
        os.environ["ACMEQ_CONFIG"] = str(state.config_path)
    hooks = cfg.payments.webhooks
    bind_host, bind_port = host or hooks.host, port or hooks.port
    line(f"acmeq progress stream on http://{bind_host}:{bind_port}")
    uvicorn.run(
        "acmeq.web.progress:create_progress_app",
        factory=True,
        host=bind_host,
        port=bind_port,
        log_level=log_level,
        access_log=False,
    )
