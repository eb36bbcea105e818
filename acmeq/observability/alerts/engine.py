"""Alerts on the queues: measured in Redis, deduplicated in Redis, sent through the channels.

Rules, per queue of the catalog (docs/monitoring.md#alerts)::

    wait:Q      the oldest ready job has waited longer than queues.Q.wait_threshold
    backlog:Q   more than queues.Q.backlog_threshold jobs are ready
    deadman:Q   jobs are ready and none was processed (or failed) for monitoring.deadman seconds
                (at least the queue's job timeout + 60 s: a long job is not a dead worker)
    failed:Q    jobs of a critical queue (monitoring.critical_queues) failed permanently

The first three are *states*: a notice when one starts (FIRING), a reminder every
``monitoring.cooldown`` seconds while it lasts, one RESOLVED notice once it has been clear for
RESOLVE_HOLD_S (15 s, so a value hovering at its threshold does not flap). ``failed`` is
an *event* rule: every evaluation that finds new permanent failures notifies (one notice per
batch); the alert stays active until ``cooldown`` seconds pass without a new failure, then
resolves.

State lives in Redis, so whichever master evaluates continues where the last one stopped:

    acmeq:alerts:active     HASH alert id -> JSON {rule, queue, message, since, severity,
                            last_notified, value, threshold, ...} (read by `acmeq status`)
    acmeq:alerts:history    LIST of notices as JSON, newest first, capped at HISTORY_MAX
    acmeq:alerts:progress   HASH queue -> {count, since}: the dead-man clock
    acmeq:alerts:cursor     HASH queue -> {t, seen}: failures already notified
    acmeq:alerts:outbox     HASH sequence -> {notice, pending channels}: mail/webhook not yet sent
    acmeq:alerts:channels   HASH channel -> {ok, error, failures, retry_at}
    acmeq:alerts:lock       the evaluator's lock (SET NX PX, refreshed by its holder)

One master evaluates cluster-wide: every master calls :func:`maybe_evaluate` every few seconds
and only the holder of the lock evaluates. A notice is committed to the history and the outbox in
the same transaction as the state change, then delivered; a delivery that fails stays in the
outbox and is retried (with a per-channel backoff) until it is sent or a day old, so a RESOLVED
notice is never lost silently.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.errors import AlertChannelError
from acmeq.observability.alerts.channels import Channel, configured, log_notice, send
from acmeq.observability.alerts.notice import Notice, NoticeKind, Severity, duration
from acmeq.observability.alerts.rules import Rule, decide, load_json_hash, measure
from acmeq.storage.redis_client import text

log = logging.getLogger("acmeq.observability.alerts.engine")

HISTORY_MAX = 500
LOCK_TTL_S = 15.0  # a dead evaluator is replaced this long after its last evaluation
OUTBOX_MAX = 1000
OUTBOX_MAX_AGE_S = 24 * 3600
CHANNEL_BACKOFF_S = (10, 30, 60, 120, 300, 600)


def _json_values(data: Mapping[str, Any]) -> dict[Any, Any]:
    return {key: json.dumps(value) for key, value in data.items()}


# -- evaluating -----------------------------------------------------------------------------------


def evaluate(
    connection: redis.Redis,
    settings: Settings,
    now: float | None = None,
    *,
    evaluator: str = "",
    commit: bool = True,
) -> list[Notice]:
    """Measure, compare with the active alerts and (with ``commit``) store the outcome.

    Committing writes the active alerts, the dead-man and failure cursors, the history and the
    outbox in one transaction. Without ``commit`` it is a preview that changes nothing. The caller
    must hold the evaluator lock (see :func:`maybe_evaluate`) or accept duplicate notices.
    """
    now = time.time() if now is None else now
    states, active, cursor_state = measure(connection, settings, now)
    notices, writes, deletes = decide(settings, states, active, now, evaluator)
    if not commit:
        return notices
    channels = [c for c in configured(settings) if c is not Channel.LOG]
    seq = connection.incrby(keys.ALERTS_OUTBOX_SEQ, len(notices)) if notices and channels else 0
    pipe = connection.pipeline(transaction=True)
    if writes:
        pipe.hset(keys.ALERTS_ACTIVE, mapping=_json_values(writes))
    if deletes:
        pipe.hdel(keys.ALERTS_ACTIVE, *deletes)
    if cursor_state["progress"]:
        pipe.hset(keys.ALERTS_PROGRESS, mapping=_json_values(cursor_state["progress"]))
    if cursor_state["cursors"]:
        pipe.hset(keys.ALERTS_CURSOR, mapping=_json_values(cursor_state["cursors"]))
    if notices:
        pipe.lpush(keys.ALERTS_HISTORY, *(json.dumps(n.to_dict()) for n in notices))
        pipe.ltrim(keys.ALERTS_HISTORY, 0, HISTORY_MAX - 1)
    if notices and channels:
        first = int(seq) - len(notices) + 1
        entries = {
            f"{first + i:015d}": {
                "notice": n.to_dict(),
                "pending": [str(c) for c in channels],
                "queued_at": now,
            }
            for i, n in enumerate(notices)
        }
        pipe.hset(keys.ALERTS_OUTBOX, mapping=_json_values(entries))
    pipe.execute()
    for n in notices:
        log_notice(n)
    return notices


# -- delivering -----------------------------------------------------------------------------------


@dataclass
class Delivery:
    """What one pass over the outbox did."""

    sent: list[tuple[str, str]] = field(default_factory=list)  # (notice title, channel)
    errors: list[str] = field(default_factory=list)
    pending: int = 0  # entries still waiting for a channel


def deliver_outbox(
    connection: redis.Redis, settings: Settings, now: float | None = None
) -> Delivery:
    """Send what the outbox holds, oldest first, channel by channel.

    A channel that fails is not tried again in this pass (so notices keep their order) and
    backs off (10 s, 30 s, ... 10 min) before the next attempt; the entry stays until every
    channel took it, or it is a day old (then it is dropped with an error in the log).
    """
    now = time.time() if now is None else now
    report = Delivery()
    raw = connection.hgetall(keys.ALERTS_OUTBOX)
    if not raw:
        return report
    health = load_json_hash(connection.hgetall(keys.ALERTS_CHANNELS))
    wanted = {str(c) for c in configured(settings)}
    blocked = {ch for ch, st in health.items() if float(st.get("retry_at", 0)) > now}
    updates: dict[str, Any] = {}
    done: list[str] = []
    for key in sorted(raw):
        field_name = text(key)
        try:
            entry = json.loads(raw[key])
            notice = Notice.from_dict(entry["notice"])
        except (ValueError, KeyError, TypeError):
            log.error("dropping an unreadable alert outbox entry %s", field_name)
            done.append(field_name)
            continue
        if now - float(entry.get("queued_at", now)) > OUTBOX_MAX_AGE_S:
            log.error(
                "giving up on %s via %s after %s: %s",
                notice.title,
                ", ".join(entry["pending"]),
                duration(OUTBOX_MAX_AGE_S),
                entry.get("last_error", ""),
            )
            done.append(field_name)
            continue
        pending = [name for name in entry["pending"] if name in wanted]  # still configured
        for name in list(pending):
            if name in blocked:
                continue
            error = _send_one(settings, Channel(name), notice, health, now)
            if error is not None:
                blocked.add(name)
                entry["last_error"] = error
                report.errors.append(error)
                continue
            pending.remove(name)
            report.sent.append((notice.title, name))
        if pending:
            entry["pending"] = pending
            updates[field_name] = entry
            report.pending += 1
        else:
            done.append(field_name)
    pipe = connection.pipeline(transaction=True)
    if updates:
        pipe.hset(keys.ALERTS_OUTBOX, mapping=_json_values(updates))
    if done:
        pipe.hdel(keys.ALERTS_OUTBOX, *done)
    if health:
        pipe.hset(keys.ALERTS_CHANNELS, mapping=_json_values(health))
    pipe.execute()
    _trim_outbox(connection)
    return report


def _send_one(
    settings: Settings, channel: Channel, notice: Notice, health: dict[str, Any], now: float
) -> str | None:
    """Send on one channel and record its health (backing off after a failure); the error."""
    name = str(channel)
    try:
        send(channel, settings, notice)
    except AlertChannelError as exc:
        failures = int(health.get(name, {}).get("failures", 0)) + 1
        wait = CHANNEL_BACKOFF_S[min(failures, len(CHANNEL_BACKOFF_S)) - 1]
        health[name] = {
            "ok": False,
            "at": now,
            "error": str(exc),
            "failures": failures,
            "retry_at": now + wait,
        }
        log.error("alert not delivered (retry in %d s): %s", wait, exc)
        return str(exc)
    health[name] = {"ok": True, "at": now, "error": "", "failures": 0, "retry_at": 0}
    return None


def _trim_outbox(connection: redis.Redis) -> None:
    """Keep the outbox bounded when a channel is down for long (oldest entries go first)."""
    if connection.hlen(keys.ALERTS_OUTBOX) <= OUTBOX_MAX:
        return
    fields = sorted(text(k) for k in connection.hkeys(keys.ALERTS_OUTBOX))
    excess = fields[: len(fields) - OUTBOX_MAX]
    connection.hdel(keys.ALERTS_OUTBOX, *excess)
    log.error("alert outbox full: dropped the %d oldest undelivered notices", len(excess))


_delivery_guard = threading.Lock()
_delivery_thread: threading.Thread | None = None


def _deliver_quietly(connection: redis.Redis, settings: Settings) -> None:
    try:
        deliver_outbox(connection, settings)
    except Exception:  # a thread must not die noisily over a Redis hiccup
        log.exception("alert delivery failed")


def _deliver_in_background(connection: redis.Redis, settings: Settings) -> None:
    """Send from a thread so a slow mail server never stalls the master's loop."""
    global _delivery_thread
    with _delivery_guard:
        if _delivery_thread is not None and _delivery_thread.is_alive():
            return
        _delivery_thread = threading.Thread(
            target=_deliver_quietly, args=(connection, settings), name="acmeq-alerts", daemon=True
        )
        _delivery_thread.start()


# -- the one evaluator ----------------------------------------------------------------------------

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def hold_lock(connection: redis.Redis, owner: str, ttl: float = LOCK_TTL_S) -> bool:
    """Take or refresh the evaluator lock; False when another owner holds it."""
    script = connection.register_script(_ACQUIRE)
    return bool(script(keys=[keys.ALERTS_LOCK], args=[owner, int(ttl * 1000)]))


def release_lock(connection: redis.Redis, owner: str) -> None:
    connection.register_script(_RELEASE)(keys=[keys.ALERTS_LOCK], args=[owner])


def lock_holder(connection: redis.Redis) -> str | None:
    holder = connection.get(keys.ALERTS_LOCK)
    return text(holder) if holder else None


def maybe_evaluate(
    connection: redis.Redis, settings: Settings, owner: str, *, background: bool = True
) -> None:
    """Evaluate when this owner holds (or can take) the evaluator lock; for the master loop.

    Never raises: a Redis outage or a bug in a rule is logged and the master goes on. With
    ``background`` the outbox is delivered from a thread.
    """
    if not settings.monitoring_enabled:
        return
    try:
        if not hold_lock(connection, owner):
            return
        evaluate(connection, settings, evaluator=owner)
        if not background:
            deliver_outbox(connection, settings)
        elif connection.hlen(keys.ALERTS_OUTBOX):
            _deliver_in_background(connection, settings)
    except redis.RedisError as exc:
        log.error("alert evaluation failed: %s", exc)
    except Exception:
        log.exception("alert evaluation failed")


@dataclass
class Evaluation:
    """The outcome of `acmeq alerts evaluate`."""

    notices: list[Notice]
    committed: bool  # False: a preview, nothing stored or sent
    holder: str | None  # the evaluator that holds the lock when it was not us
    delivery: Delivery | None


def evaluate_once(
    connection: redis.Redis, settings: Settings, owner: str, *, dry_run: bool = False
) -> Evaluation:
    """One evaluation now, for cron and debugging; raises on Redis errors.

    It takes the evaluator lock for the duration; when a master holds it, the evaluation is a
    preview (what that master would see), so a manual run never duplicates a notice.
    """
    holder = None
    if not dry_run and not hold_lock(connection, owner):
        holder = lock_holder(connection)
    commit = not dry_run and holder is None
    try:
        notices = evaluate(connection, settings, evaluator=owner, commit=commit)
        delivery = deliver_outbox(connection, settings) if commit else None
    finally:
        if commit:
            release_lock(connection, owner)
    return Evaluation(notices, commit, holder, delivery)


# -- reading, for the CLI and `acmeq status` ------------------------------------------------------


def active_alerts(connection: redis.Redis) -> list[dict[str, Any]]:
    """The active alerts, critical first, then oldest first; each with its ``id``."""
    rows = [
        dict(rec, id=aid)
        for aid, rec in load_json_hash(connection.hgetall(keys.ALERTS_ACTIVE)).items()
    ]
    rows.sort(key=lambda r: (r.get("severity") != Severity.CRITICAL, float(r.get("since", 0))))
    return rows


def history(connection: redis.Redis, count: int = 20) -> list[dict[str, Any]]:
    """The last ``count`` notices, newest first."""
    if count <= 0:
        return []
    out = []
    for raw in connection.lrange(keys.ALERTS_HISTORY, 0, count - 1):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def overview(connection: redis.Redis, settings: Settings, history_count: int) -> dict[str, Any]:
    """Everything `acmeq alerts list` shows, as one JSON-ready document."""
    pipe = connection.pipeline(transaction=False)
    pipe.get(keys.ALERTS_LOCK)
    pipe.hlen(keys.ALERTS_OUTBOX)
    pipe.hgetall(keys.ALERTS_CHANNELS)
    holder, outbox, channels = pipe.execute()
    return {
        "enabled": settings.monitoring_enabled,
        "evaluator": text(holder) if holder else None,
        "channels": {
            str(c): dict(load_json_hash(channels).get(str(c), {}), configured=True)
            for c in configured(settings)
        },
        "outbox": int(outbox),
        "active": active_alerts(connection),
        "history": history(connection, history_count),
    }


def make_test_notice(owner: str, now: float | None = None) -> Notice:
    """The notice `acmeq alerts test` sends."""
    now = time.time() if now is None else now
    return Notice(
        kind=NoticeKind.TEST,
        alert_id="test:acmeq",
        rule=str(Rule.TEST),
        queue="-",
        severity=Severity.WARNING,
        message=f"test notice from {owner}: alert delivery works",
        value=0,
        threshold=0,
        since=now,
        at=now,
        evaluator=owner,
    )
