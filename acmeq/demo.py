"""`acmeq demo`: the whole product on one machine with nothing but Python.

The demo runs in its own state directory (``<state dir>/demo``) on an embedded redis-server and a
SQLite file, whatever REDIS_URL or DATABASE_URL say, so trying it can never touch a real queue or
database. Each capability adds a step here; the output goes through :class:`DemoOutput` so this
module stays free of terminal code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from rq.job import Job
from rq.serializers import JSONSerializer

from acmeq.config.settings import RedisSettings, Settings
from acmeq.queues import Enqueuer, JobCall, queue_counts
from acmeq.storage.redis_client import EmbeddedRedis, connect_checked, describe, server_info

PINGS = 2_000


class DemoOutput(Protocol):
    def step(self, title: str) -> None: ...
    def line(self, text: str) -> None: ...
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


def demo_settings(settings: Settings, state_dir: Path | None = None) -> Settings:
    """The user's settings, moved onto a private embedded Redis and SQLite file."""
    directory = state_dir or settings.state_dir / "demo"
    return dataclasses.replace(
        settings,
        state_dir=directory,
        redis=RedisSettings(db=settings.redis.db, embedded=True),
        database_url=None,
    )


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for the demo's worker processes: the same private Redis and database.

    Both are named explicitly because environment variables win over an acmeq.toml, which
    could otherwise point the workers at a real Redis or database.
    """
    env = dict(os.environ)
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"):
        env.pop(name, None)
    socket_path = EmbeddedRedis(settings.state_dir).socket_path
    env["REDIS_URL"] = f"unix://{socket_path}?db={settings.redis.db}"
    env["DATABASE_URL"] = settings.effective_database_url
    env["ACMEQ_STATE_DIR"] = str(settings.state_dir)
    if settings.job_modules:
        env["ACMEQ_JOB_MODULES"] = ",".join(settings.job_modules)
    return env


def run_demo(
    settings: Settings,
    out: DemoOutput,
    *,
    campaigns: int = 25,
    donations: int = 20_000,
    keep_redis: bool = False,
) -> int:
    """Run every demo step; return the number of jobs that did not finish."""
    from acmeq.exports.demo import export_demo
    from acmeq.mail.demo import mail_demo
    from acmeq.maintenance.demo import cleanup_dry_run
    from acmeq.payments.demo import payment_demo

    cfg = demo_settings(settings)
    engine = _database_step(cfg, out, campaigns, donations)
    out.step("2. Redis: the embedded server")
    server = EmbeddedRedis(cfg.state_dir)
    started_here = not server.status().running
    client = connect_checked(cfg)
    info = server_info(client)
    out.line(
        f"redis-server {info['version']} at {describe(cfg)}, AOF "
        f"{'on' if info['aof_enabled'] else 'off'}"
    )
    ids = _enqueue_step(cfg, out, client)
    _workers_step(cfg, out, client)
    unfinished = _results_step(cfg, out, client, engine, ids)
    # The feature steps run their jobs on workers of their own and say what they showed.
    unfinished += export_demo(cfg, out, "6. Exports", child_env(cfg))
    unfinished += mail_demo(cfg, out, "7. Mail and schedules", child_env(cfg), _cli)
    unfinished += payment_demo(cfg, out, "8. Payments: a signed webhook", child_env(cfg), _cli)
    # Last, so that it sees everything the demo made (issue #14: the demo ends with it).
    cleanup_dry_run(cfg, out, "9. Maintenance")

    out.step("10. Stop")
    client.close()
    if started_here and not keep_redis:
        server.stop()
        out.line("stopped the embedded redis-server; demo data stays in " + str(cfg.state_dir))
    else:
        out.line(
            "left the embedded redis-server running (it was already running or "
            "--keep-redis was given)"
        )
    return unfinished


def _database_step(cfg: Settings, out: DemoOutput, campaigns: int, donations: int) -> Any:
    from acmeq.storage import seed
    from acmeq.storage import sql as db

    out.step("1. Database: migrations and demo data")
    engine = db.engine_for(cfg)
    db.upgrade(engine)
    out.line(f"database {cfg.effective_database_url} is at revision {db.current_revision(engine)}")
    existing = _count_campaigns(engine)
    if existing:
        out.line(f"demo data already there ({existing} campaigns); not seeding again")
    else:
        result = seed.seed_demo(engine, campaigns=campaigns, donations=donations)
        out.line(
            f"seeded {result.companies} companies, {result.users} users, {result.campaigns} "
            f"campaigns and {result.donations:,} donations in {result.seconds:.1f} s"
        )
    return engine


def _enqueue_step(cfg: Settings, out: DemoOutput, client: Any) -> list[str]:
    out.step("3. Enqueue: every job acmeq has so far")
    enqueuer = Enqueuer(cfg, client)
    ids = enqueuer.enqueue_many(JobCall("ping", (f"demo-{i}",)) for i in range(PINGS))
    ids.append(enqueuer.enqueue("recalculate_campaign_totals").id)
    out.line(
        f"enqueued {len(ids):,} jobs: {PINGS:,} x ping (one pipelined enqueue_many), "
        "1 x recalculate_campaign_totals"
    )
    _queue_table(out, cfg, client, "queues after enqueue")
    return ids


def _workers_step(cfg: Settings, out: DemoOutput, client: Any) -> None:
    out.step("4. Workers: a supervised, autoscaled pool (profile development, burst)")
    out.line(
        "the master starts with no workers (min 0 per queue) and gives processes to the "
        "queues with work, up to 3 in all"
    )
    code, samples = _run_master(cfg, client)
    for t, count, backlog in samples:
        out.line(f"{t:5.1f}s  {count} {'█' * count:<3} workers   backlog {backlog:>5,}")
    out.line(
        f"the master drained the queues and, in burst mode, stopped its workers and "
        f"exited with code {code}"
    )


def _results_step(cfg: Settings, out: DemoOutput, client: Any, engine: Any, ids: list[str]) -> int:
    out.step("5. Results")
    unfinished = _results_table(out, client, ids)
    _campaign_table(out, engine)
    _queue_table(out, cfg, client, "queues after the run")
    out.line("progress of the tracked job (acmeq progress list):")
    out.line(_cli(cfg, "progress", "list"))
    out.line("what ops see (acmeq status):")
    out.line(_cli(cfg, "status"))
    return unfinished


def _run_master(cfg: Settings, client: Any) -> tuple[int, list[tuple[float, int, int]]]:
    """Start a burst master of profile development in the background (the Python API of
    `acmeq worker start --detach`); sample its pool once a second until it stops."""
    import psutil

    from acmeq.supervisor import MasterOptions, start_detached

    opts = MasterOptions(
        profile="development", name="demo", hostname="demo", burst=True, log_level="WARNING"
    )
    master = start_detached(
        cfg, opts, log_file=cfg.state_dir / "master.log", environ=child_env(cfg)
    )
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    code: int | None = None
    while code is None and time.monotonic() - started < 300:
        with contextlib.suppress(psutil.Error):
            backlog = sum(r["ready"] + r["started"] for r in queue_counts(cfg, client))
            workers = len(psutil.Process(master.pid).children())
            samples.append((time.monotonic() - started, workers, backlog))
        code = master.wait(timeout=1.0)
    if code is None:
        code = master.wait(timeout=60)
    return (code if code is not None else -1), samples


def _cli(cfg: Settings, *args: str) -> str:
    """Run an acmeq command against the demo's Redis and database; return what it printed."""
    env = dict(child_env(cfg))
    env.pop("COLUMNS", None)
    if sys.stdout.isatty():  # lay tables out for this terminal (less the demo's indent)
        env["COLUMNS"] = str(max(shutil.get_terminal_size().columns - 2, 40))
    done = subprocess.run(
        [sys.executable, "-m", "acmeq", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return (done.stdout + done.stderr).rstrip()


def _queue_table(out: DemoOutput, cfg: Settings, client: Any, title: str) -> None:
    rows = [
        [r["name"], r["priority"], r["ready"], r["started"], r["failed"]]
        for r in queue_counts(cfg, client)
    ]
    out.table(title, ["queue", "priority", "ready", "running", "failed"], rows)


def _results_table(out: DemoOutput, client: Any, ids: list[str]) -> int:
    rows = []
    unfinished = 0
    for job in Job.fetch_many(ids, connection=client, serializer=JSONSerializer):
        if job is None:
            unfinished += 1
            continue
        status = job.get_status(refresh=False)
        if status is None or status.value != "finished":
            unfinished += 1
        runtime = ""
        if job.started_at and job.ended_at:
            runtime = f"{(job.ended_at - job.started_at).total_seconds() * 1000:.1f} ms"
        result = job.return_value()
        summary = result.get("echo") or result if isinstance(result, dict) else result
        rows.append(
            [
                job.id[:8],
                job.description,
                job.origin,
                status.value if status else "?",
                runtime,
                str(summary)[:60],
            ]
        )
    shown = rows[:3] + rows[-2:] if len(rows) > 5 else rows
    out.table(
        f"jobs ({len(rows)} in all, {unfinished} unfinished)",
        ["id", "job", "queue", "status", "runtime", "result"],
        shown,
    )
    return unfinished


def _count_campaigns(engine: Any) -> int:
    import sqlalchemy as sa

    from acmeq.storage.models import Campaign

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(Campaign)).scalar_one())


def _campaign_table(out: DemoOutput, engine: Any) -> None:
    from acmeq.jobs.maintenance import top_campaigns

    rows = [
        [
            c["title"],
            c["currency"],
            f"{c['raised_minor'] / 100:,.2f}",
            f"{c['matched_minor'] / 100:,.2f}",
            c["donation_count"],
        ]
        for c in top_campaigns(engine, 5)
    ]
    out.table(
        "top campaigns after recalculate_campaign_totals",
        ["campaign", "cur", "raised", "matched", "donations"],
        rows,
    )
