"""`acmeq doctor`: is this installation fit for production?

Each check returns a :class:`Check` (``ok``, ``warn``, ``fail`` or ``skip`` with a one-line
detail). The Redis requirements are the seed's: version 5.0 or newer, ``maxmemory`` unset or at
least 2 GB, round-trip latency under 10 ms averaged over 100 PINGs, persistence on (AOF or RDB),
and ``maxmemory-policy noeviction`` (any other policy may silently drop jobs).

Clock skew: every master publishes ``last_seen`` (its own ``time.time()``) in its snapshot in the
same round trip that sets its heartbeat key with a TTL of :data:`MASTER_TTL_S`. The heartbeat's
remaining PTTL says when, by Redis' clock, that write happened; the difference is the master's
clock offset against Redis, and the spread of the offsets is the skew between masters.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.errors import AcmeqError

Status = Literal["ok", "warn", "fail", "skip"]

MIN_REDIS_VERSION = (5, 0)
MIN_MAXMEMORY = 2 * 1024**3  # 2 GB
MAX_LATENCY_MS = 10.0
PINGS = 100
MAX_SKEW_S = 1.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    redis_unreachable: bool = False

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "redis_unreachable": self.redis_unreachable,
            "checks": [asdict(c) for c in self.checks],
        }


def run(settings: Settings, connect: Callable[[], redis.Redis]) -> Report:
    """Every check, Redis first; when Redis cannot be reached its checks are one failure."""
    checks: list[Check] = []
    unreachable = False
    try:
        connection = connect()
        info = connection.info()
    except (redis.RedisError, AcmeqError, OSError) as exc:
        unreachable = True
        checks.append(Check("redis reachable", "fail", f"cannot reach Redis: {exc}"))
    else:
        checks += redis_checks(connection, info)
        checks.append(scheduler_leader(connection, settings))
        checks += master_checks(connection)
    checks.append(database(settings))
    checks.append(webhook_secrets(settings))
    return Report(tuple(checks), unreachable)


# -- Redis ------------------------------------------------------------------------------------


def redis_checks(connection: redis.Redis, info: dict[str, Any]) -> list[Check]:
    return [
        redis_version(str(info.get("redis_version", ""))),
        maxmemory(int(info.get("maxmemory", 0) or 0)),
        latency(connection),
        persistence(connection, info),
        eviction(str(info.get("maxmemory_policy", ""))),
    ]


def redis_version(version: str) -> Check:
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return Check("redis version", "fail", f"unreadable version {version!r}")
    need = ".".join(map(str, MIN_REDIS_VERSION))
    if parts < MIN_REDIS_VERSION:
        return Check("redis version", "fail", f"{version}; acmeq needs {need} or newer")
    return Check("redis version", "ok", f"{version} (>= {need})")


def maxmemory(limit: int) -> Check:
    if limit == 0:
        return Check("redis maxmemory", "ok", "not set (no limit)")
    gb = limit / 1024**3
    if limit < MIN_MAXMEMORY:
        return Check("redis maxmemory", "fail", f"{gb:.2f} GB; set at least 2 GB or none")
    return Check("redis maxmemory", "ok", f"{gb:.1f} GB (>= 2 GB)")


def latency(connection: redis.Redis, pings: int = PINGS) -> Check:
    samples = []
    for _ in range(pings):
        start = time.perf_counter()
        connection.ping()
        samples.append((time.perf_counter() - start) * 1000)
    avg = statistics.fmean(samples)
    worst = max(samples)
    detail = f"avg {avg:.2f} ms, max {worst:.2f} ms over {pings} pings"
    if avg >= MAX_LATENCY_MS:
        return Check("redis latency", "fail", f"{detail}; must be under {MAX_LATENCY_MS:g} ms")
    return Check("redis latency", "ok", detail)


def persistence(connection: redis.Redis, info: dict[str, Any]) -> Check:
    aof = str(info.get("aof_enabled", "0")) == "1"
    try:
        raw = connection.config_get("save").get("save", "")
        save = raw.decode() if isinstance(raw, bytes) else str(raw)
    except redis.ResponseError:  # CONFIG disabled (managed Redis): RDB state unknown
        save = None
    if aof:
        fsync = _config(connection, "appendfsync")
        return Check("redis persistence", "ok", f"AOF on (appendfsync {fsync or '?'})")
    if save:
        return Check("redis persistence", "ok", f"RDB snapshots (save {save}); AOF is safer")
    if save is None:
        return Check("redis persistence", "warn", "AOF off; CONFIG GET refused, RDB unknown")
    return Check(
        "redis persistence",
        "fail",
        "off (no AOF, no RDB): a Redis restart loses every job; set appendonly yes",
    )


def eviction(policy: str) -> Check:
    if policy == "noeviction":
        return Check("redis eviction policy", "ok", "noeviction")
    return Check(
        "redis eviction policy",
        "fail",
        f"{policy or 'unknown'}: Redis may evict jobs; set maxmemory-policy noeviction",
    )


def _config(connection: redis.Redis, name: str) -> str | None:
    try:
        raw = connection.config_get(name).get(name)
    except redis.ResponseError:
        return None
    return raw.decode() if isinstance(raw, bytes) else (None if raw is None else str(raw))


# -- masters and scheduler --------------------------------------------------------------------


def scheduler_leader(connection: redis.Redis, settings: Settings) -> Check:
    raw = connection.get(keys.SCHEDULER_LEADER)
    if raw:
        holder = raw.decode() if isinstance(raw, bytes) else str(raw)
        return Check("scheduler leader", "ok", f"held by {holder}")
    if not settings.scheduler.enabled:
        return Check("scheduler leader", "skip", "scheduler disabled ([scheduler] enabled)")
    enabled = [s for s in settings.schedules.values() if s.enabled]
    if not enabled:
        return Check("scheduler leader", "skip", "no schedules configured")
    return Check(
        "scheduler leader",
        "fail",
        f"none, {len(enabled)} schedules enabled: no master runs them",
    )


def master_checks(connection: redis.Redis) -> list[Check]:
    from acmeq.master.control import MASTER_TTL_S, list_masters, parse_snapshots

    masters = list_masters(connection)
    alive = [m for m in masters if m.status != "gone"]
    gone = [m.name for m in masters if m.status == "gone"]
    if not alive:
        first = Check("masters alive", "fail", "no master running (acmeq worker start)")
    elif gone:
        names = ", ".join(gone)
        first = Check("masters alive", "warn", f"{len(alive)} alive; gone: {names}")
    else:
        hosts = ", ".join(f"{m.name}@{m.hostname}" for m in alive)
        first = Check("masters alive", "ok", f"{len(alive)} alive ({hosts})")
    snaps = parse_snapshots(connection.hgetall(keys.MASTERS))
    offsets = clock_offsets(connection, [m.name for m in alive], snaps, MASTER_TTL_S)
    return [first, clock_skew(offsets)]


def clock_offsets(
    connection: redis.Redis, names: list[str], snaps: dict[str, dict[str, Any]], ttl_s: int
) -> dict[str, float]:
    """Each master's clock minus Redis' clock, in seconds (see the module docstring)."""
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.pttl(keys.master(name))
    pipe.time()
    *pttls, (secs, micros) = pipe.execute()
    redis_now = float(secs) + float(micros) / 1e6
    out = {}
    for name, pttl in zip(names, pttls, strict=True):
        seen = snaps.get(name, {}).get("last_seen")
        if seen is None or pttl is None or int(pttl) < 0:
            continue
        written_at = redis_now - (ttl_s * 1000 - int(pttl)) / 1000
        out[name] = float(seen) - written_at
    return out


def clock_skew(offsets: dict[str, float]) -> Check:
    if not offsets:
        return Check("clock skew", "skip", "no running master to compare")
    spread = max(offsets.values()) - min(offsets.values())
    worst = max(offsets, key=lambda n: abs(offsets[n]))
    detail = (
        f"{spread:.3f} s between {len(offsets)} masters; "
        f"largest offset vs Redis {offsets[worst]:+.3f} s ({worst})"
    )
    if len(offsets) == 1:
        detail = f"one master; offset vs Redis {offsets[worst]:+.3f} s ({worst})"
    if spread > MAX_SKEW_S or abs(offsets[worst]) > MAX_SKEW_S:
        return Check("clock skew", "fail", f"{detail}; keep clocks within {MAX_SKEW_S:g} s (NTP)")
    return Check("clock skew", "ok", detail)


# -- database and configuration ---------------------------------------------------------------


def database(settings: Settings) -> Check:
    import sqlalchemy as sa

    from acmeq.storage import sql

    try:
        state = sql.schema_state(settings)
    except (AcmeqError, sa.exc.SQLAlchemyError, OSError) as exc:
        return Check("database", "fail", f"unreachable: {exc}")
    if state.current is None:
        return Check("database", "fail", f"{state.url} not migrated; run acmeq db upgrade")
    if not state.up_to_date:
        return Check(
            "database",
            "fail",
            f"{state.url} at {state.current}, migrations pending up to {state.head}; "
            "run acmeq db upgrade",
        )
    return Check("database", "ok", f"{state.url} at {state.current} (head)")


def webhook_secrets(settings: Settings) -> Check:
    hooks = settings.payments.webhooks
    providers = []
    if hooks.stripe_secrets:
        providers.append(f"stripe ({len(hooks.stripe_secrets)})")
    if hooks.mollie_secrets:
        providers.append(f"mollie ({len(hooks.mollie_secrets)})")
    if hooks.paypal_webhook_id:
        providers.append("paypal")
    if not providers:
        return Check(
            "webhook secrets",
            "fail",
            "none configured: the receiver rejects every webhook "
            "(STRIPE_WEBHOOK_SECRET, MOLLIE_WEBHOOK_SECRET, PAYPAL_WEBHOOK_ID)",
        )
    return Check("webhook secrets", "ok", ", ".join(providers))


def to_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2)
