"""`acmeq redis status|stop`: which Redis acmeq uses, and control of the embedded one."""

from __future__ import annotations

from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json
from acmeq.errors import UsageError
from acmeq.storage.redis_client import (
    EmbeddedRedis,
    connect,
    connect_checked,
    describe,
    server_info,
)

app = typer.Typer(help="Which Redis acmeq uses; stop the embedded one.", no_args_is_help=True)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Say which Redis is in use (embedded or configured) and how it is doing."""
    cfg = settings()
    client = connect_checked(cfg)
    info = server_info(client)
    data = {"redis": describe(cfg), "embedded": cfg.redis.embedded, "db": cfg.redis.db, **info}
    if cfg.redis.embedded:
        data["embedded_dir"] = str(EmbeddedRedis(cfg.state_dir).dir)
    if as_json:
        emit_json(data)
        return
    kind = "embedded redis-server" if cfg.redis.embedded else "configured Redis"
    console.print(f"[bold]{kind}[/] at {data['redis']}")
    console.print(
        f"  version {info['version']}, memory {info['used_memory_human']}, "
        f"clients {info['connected_clients']}, up {info['uptime_in_seconds']} s"
    )
    if not info["aof_enabled"]:
        console.print(
            "  [yellow]warning:[/] AOF persistence is off: queued jobs are lost if Redis restarts"
        )
    version = tuple(int(p) for p in str(info["version"]).split(".")[:2] if p.isdigit())
    if version < (6, 2):
        console.print(
            f"  [yellow]warning:[/] Redis {info['version']} has no BLMOVE: a worker "
            "that crashes right after taking a job can lose it (use Redis >= 6.2)"
        )
    if info["maxmemory_policy"] != "noeviction":
        console.print(
            f"  [yellow]warning:[/] maxmemory-policy is {info['maxmemory_policy']}; "
            "Redis may evict jobs (use noeviction)"
        )


@app.command()
def stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while masters are using it.")
    ] = False,
) -> None:
    """Stop the embedded redis-server (its data is kept in the state directory).

    Refused while a master is running on it (its workers would lose their Redis mid-job):
    stop them first with `acmeq worker terminate --wait`, or pass --force.
    """
    cfg = settings()
    if not cfg.redis.embedded:
        console.print(f"acmeq uses a configured Redis ({describe(cfg)}); nothing to stop")
        return
    server = EmbeddedRedis(cfg.state_dir)
    if not force and server.status().running:
        from acmeq.master.control import list_masters

        running = [
            m.name for m in list_masters(connect(cfg, start_embedded=False)) if m.status != "gone"
        ]
        if running:
            raise UsageError(
                f"refusing to stop the embedded Redis: master {', '.join(running)} "
                f"{'is' if len(running) == 1 else 'are'} running on it; stop "
                f"{'it' if len(running) == 1 else 'them'} first (acmeq worker terminate --wait) "
                "or pass --force"
            )
    if server.stop():
        console.print(f"stopped the embedded redis-server ({server.dir})")
    else:
        console.print("the embedded redis-server was not running")
