"""The alert rules: what is measured on the queues and what it means (no storage, no sending).

:func:`measure` reads every queue of the catalog through the queue probe
(:mod:`acmeq.observability.probe`: ready count, oldest job's age, cumulative processed/failed
counters, pauses) together with the alert state, then for critical queues the new entries of RQ's
failed registry, and advances the dead-man clock and the failure cursor it is given.
:func:`decide` compares the outcome with the active alerts and returns the notices; it is pure, so
every rule is unit-tested without Redis. :mod:`acmeq.observability.alerts.engine` stores and sends
what these functions return. :func:`standing` is what `acmeq status` shows: the active alerts
re-checked against the live probe, so it never shows a condition that no longer holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from acmeq import keys
from acmeq.config.settings import QueueSpec, Settings
from acmeq.observability import probe
from acmeq.observability.alerts.notice import Notice, NoticeKind, Severity, duration, iso
from acmeq.ops.failure_log import exception_line
from acmeq.storage.redis_client import text

DEADMAN_MARGIN_S = 60  # RQ's heartbeat margin beyond a job's timeout
FAILED_OVERLAP_S = 60.0  # failures may reach the registry out of order by this much
FAILED_BATCH_MAX = 1000  # failures read per queue and evaluation (the rest come next time)
DETAILS_MAX = 20  # failed jobs listed in one notice
# A state alert resolves once its condition has been clear this long (three evaluations), so a
# value hovering around its threshold does not send a FIRING/RESOLVED pair every few seconds.
RESOLVE_HOLD_S = 15.0
# An alert that cannot be re-checked from the probe (failures, unknown rules) is shown as stale
# when no evaluator holds the lock and it was not refreshed for this long.
STALE_AFTER_S = 60.0


class Rule(StrEnum):
    WAIT = "wait"
    BACKLOG = "backlog"
    DEADMAN = "deadman"
    FAILED = "failed"
    TEST = "test"


STATE_RULES = (Rule.WAIT, Rule.BACKLOG, Rule.DEADMAN)


def alert_id(rule: Rule, queue: str) -> str:
    return f"{rule}:{queue}"


# -- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedJob:
    job_id: str
    name: str
    failed_at: float
    error: str

    def line(self) -> str:
        return f"{self.job_id} {self.name}: {self.error or '(no exception recorded)'}"


@dataclass
class QueueState:
    """What one evaluation measured of one queue."""

    spec: QueueSpec
    ready: int
    oldest_age: float | None  # seconds the head job has waited; None: empty or unknown
    done: int  # processed + failed, ever (acmeq:stats:<queue>)
    paused: bool
    stalled_for: float  # seconds with ready jobs and no progress (the dead-man clock)
    new_failures: list[FailedJob] = field(default_factory=list)


@dataclass(frozen=True)
class Condition:
    rule: Rule
    queue: str
    value: float
    threshold: float
    message: str

    @property
    def id(self) -> str:
        return alert_id(self.rule, self.queue)


def load_json_hash(raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """A Redis hash of JSON values, decoded; unreadable entries are skipped."""
    out = {}
    for key, value in raw.items():
        try:
            decoded = json.loads(value)
        except ValueError:
            continue  # a hand-edited or foreign entry is ignored, not fatal
        if isinstance(decoded, dict):
            out[text(key)] = decoded
    return out


def queue_state(
    spec: QueueSpec, load: probe.QueueSnapshot, clock: Mapping[str, Any] | None, now: float
) -> tuple[QueueState, dict[str, Any]]:
    """One queue's state from the probe, and its dead-man clock advanced to ``now``.

    The clock restarts whenever a job finished, the queue was empty or paused.
    """
    done = load.done_total
    if clock is None or clock.get("count") != done or not load.ready or load.paused:
        clock = {"count": done, "since": now}
    stalled = now - _num(clock, "since", now)
    state = QueueState(spec, load.ready, load.oldest_age_s, done, load.paused, stalled)
    return state, dict(clock)


def measure(
    connection: redis.Redis, settings: Settings, now: float
) -> tuple[dict[str, QueueState], dict[str, dict[str, Any]], dict[str, Any]]:
    """Measure every queue of the catalog; return the queues, the active alerts and the next
    dead-man/cursor state to store (two or three pipelined round trips)."""
    names = list(settings.queues)
    critical = [q for q in settings.alerts.critical_queues if q in settings.queues]
    pipe = connection.pipeline(transaction=False)
    pipe.hgetall(keys.ALERTS_ACTIVE)
    pipe.hgetall(keys.ALERTS_PROGRESS)
    pipe.hgetall(keys.ALERTS_CURSOR)
    probe.queue_reads(pipe, names)
    replies = pipe.execute()
    active, clocks, cursors = (load_json_hash(r) for r in replies[:3])
    loads = probe.parse(replies[3], names, now=now).queues
    states: dict[str, QueueState] = {}
    next_progress: dict[str, Any] = {}
    for name in names:
        states[name], next_progress[name] = queue_state(
            settings.queues[name], loads[name], clocks.get(name), now
        )

    lowers: dict[str, float] = {}
    candidates: dict[str, list[tuple[bytes, float]]] = {}
    if critical:
        pipe = connection.pipeline(transaction=False)
        for name in critical:
            cur = cursors.get(name)
            lowers[name] = (float(cur["t"]) if cur else now) - FAILED_OVERLAP_S
            low = lowers[name] + settings.queues[name].failure_ttl
            pipe.zrangebyscore(
                keys.failed(name), low, "+inf", start=0, num=FAILED_BATCH_MAX, withscores=True
            )
        candidates = dict(zip(critical, pipe.execute(), strict=True))
    next_cursors = _new_failures(connection, settings, now, states, cursors, lowers, candidates)
    return states, active, {"progress": next_progress, "cursors": next_cursors}


def _new_failures(
    connection: redis.Redis,
    settings: Settings,
    now: float,
    states: dict[str, QueueState],
    cursors: dict[str, dict[str, Any]],
    lowers: dict[str, float],
    candidates: dict[str, list[tuple[bytes, float]]],
) -> dict[str, Any]:
    """Find the permanent failures not notified yet, from RQ's failed registries.

    The registry is scored by expiry (failed at + failure_ttl), so the candidates are read by
    score and placed in time by the job's ``ended_at``. The cursor is the newest failure seen;
    failures up to FAILED_OVERLAP_S older than it are read again (a worker may add a failure a
    moment after a faster one) and told apart by the ``seen`` keys.
    """
    flat = [(q, text(job_id), score) for q, rows in candidates.items() for job_id, score in rows]
    if not flat:
        return {q: cursors[q] for q in candidates if q in cursors} | {
            q: {"t": now, "seen": {}} for q in candidates if q not in cursors
        }
    pipe = connection.pipeline(transaction=False)
    for _, job_id, _ in flat:
        pipe.hmget(keys.job(job_id), ["ended_at", "failure_ttl", "description"])
        pipe.xrevrange(keys.results(job_id), count=1)
    replies = pipe.execute()
    found: dict[str, list[tuple[str, FailedJob]]] = {q: [] for q in candidates}
    for i, (q, job_id, score) in enumerate(flat):
        ended, ttl, desc = replies[2 * i]
        failed_at = probe.timestamp(ended)
        if failed_at is None and score != float("inf"):
            failed_at = score - int(ttl or settings.queues[q].failure_ttl)
        if failed_at is None or failed_at <= lowers[q]:
            continue
        error = ""
        for _, fields in replies[2 * i + 1]:
            exc = fields.get(b"exc_string")
            if exc:
                error = _decode_exc(exc)
        name = text(desc) if desc else "?"
        found[q].append((f"{job_id}@{failed_at:.6f}", FailedJob(job_id, name, failed_at, error)))
    next_cursors: dict[str, Any] = {}
    for q, rows in found.items():
        cur = cursors.get(q)
        seen: dict[str, float] = dict(cur["seen"]) if cur else {}
        fresh = [job for key, job in rows if key not in seen]
        if cur is not None:  # the very first evaluation only sets the cursor
            states[q].new_failures = sorted(fresh, key=lambda j: j.failed_at)
        seen.update({key: job.failed_at for key, job in rows})
        t = max([float(cur["t"]) if cur else now, *(job.failed_at for _, job in rows)])
        next_cursors[q] = {
            "t": t,
            "seen": {k: v for k, v in seen.items() if v > t - FAILED_OVERLAP_S},
        }
    return next_cursors


def _decode_exc(raw: bytes) -> str:
    import zlib
    from base64 import b64decode

    try:
        return exception_line(zlib.decompress(b64decode(raw)).decode(errors="replace"))[:300]
    except (ValueError, zlib.error):
        return ""


# -- rules ----------------------------------------------------------------------------------------


def conditions(settings: Settings, states: Mapping[str, QueueState]) -> dict[str, Condition]:
    """The state conditions that hold now (failures are handled as events, separately)."""
    found: list[Condition] = []
    for st in states.values():
        q = st.spec
        paused = "; the queue is paused" if st.paused else ""
        if st.oldest_age is not None and st.oldest_age > q.wait_threshold:
            found.append(
                Condition(
                    Rule.WAIT,
                    q.name,
                    round(st.oldest_age),
                    q.wait_threshold,
                    f"oldest job waited {st.oldest_age:.0f} s "
                    f"(threshold {q.wait_threshold} s){paused}",
                )
            )
        if q.backlog_threshold and st.ready > q.backlog_threshold:
            found.append(
                Condition(
                    Rule.BACKLOG,
                    q.name,
                    st.ready,
                    q.backlog_threshold,
                    f"{_jobs(st.ready)} ready (threshold {q.backlog_threshold}){paused}",
                )
            )
        window = deadman_window(settings, q)
        if window and st.ready and st.stalled_for >= window:
            found.append(
                Condition(
                    Rule.DEADMAN,
                    q.name,
                    round(st.stalled_for),
                    window,
                    f"{_jobs(st.ready)} ready and none processed for {duration(st.stalled_for)} "
                    f"(threshold {window} s)",
                )
            )
    return {c.id: c for c in found}


def _num(rec: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    try:
        return float(rec.get(key, default))
    except (TypeError, ValueError):
        return default


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def deadman_window(settings: Settings, queue: QueueSpec) -> int:
    """Seconds without progress that make a dead-man alert; 0 when the rule is off.

    Never shorter than the queue's job timeout + 60 s: two export workers busy with 15-minute
    jobs process nothing for 15 minutes, and that is not a dead queue.
    """
    if not settings.alerts.deadman:
        return 0
    return max(settings.alerts.deadman, queue.timeout + DEADMAN_MARGIN_S)


def _severity(settings: Settings, queue: str) -> Severity:
    return Severity.CRITICAL if queue in settings.alerts.critical_queues else Severity.WARNING


def _resolved_message(rule: str, st: QueueState | None, settings: Settings) -> str:
    if st is None:
        return "the queue is no longer in the catalog"
    q = st.spec
    if rule == Rule.WAIT:
        if st.oldest_age is None:
            return "the queue is empty"
        return f"oldest job waits {st.oldest_age:.0f} s now (threshold {q.wait_threshold} s)"
    if rule == Rule.BACKLOG:
        if not q.backlog_threshold:
            return "the backlog rule is off for this queue"
        return f"{_jobs(st.ready)} ready now (threshold {q.backlog_threshold})"
    if rule == Rule.DEADMAN:
        if not settings.alerts.deadman:
            return "the dead-man rule is off"
        if not st.ready:
            return "the queue is empty"
        if st.paused:
            return f"the queue is paused ({_jobs(st.ready)} ready)"
        return "jobs are being processed again"
    return "cleared"


@dataclass
class _Outcome:
    """What one evaluation decides: notices to send, active entries to write and to delete."""

    settings: Settings
    now: float
    evaluator: str
    notices: list[Notice] = field(default_factory=list)
    writes: dict[str, dict[str, Any]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)

    def notice(
        self, kind: NoticeKind, aid: str, rec: Mapping[str, Any], details: Iterable[str] = ()
    ) -> None:
        # Stored records are read leniently: one hand-edited entry must not stop every evaluation.
        severity = rec.get("severity")
        now = self.now
        self.notices.append(
            Notice(
                kind=kind,
                alert_id=aid,
                rule=str(rec.get("rule", "")),
                queue=str(rec.get("queue", "")),
                severity=Severity(severity) if severity in set(Severity) else Severity.WARNING,
                message=str(rec.get("message", "")),
                value=_num(rec, "value"),
                threshold=_num(rec, "threshold"),
                since=_num(rec, "since", now),
                at=now,
                evaluator=self.evaluator,
                details=tuple(details),
            )
        )


def decide(
    settings: Settings,
    states: Mapping[str, QueueState],
    active: Mapping[str, dict[str, Any]],
    now: float,
    evaluator: str = "",
) -> tuple[list[Notice], dict[str, dict[str, Any]], list[str]]:
    """Compare the conditions with the active alerts: the notices to send, the active entries
    to write and the ones to delete. Pure: no Redis."""
    out = _Outcome(settings, now, evaluator)
    _decide_states(out, states, active)
    _decide_failures(out, states, active)
    return out.notices, out.writes, out.deletes


def _decide_states(
    out: _Outcome, states: Mapping[str, QueueState], active: Mapping[str, dict[str, Any]]
) -> None:
    """State rules: FIRING when a condition starts, REMINDER every cooldown, RESOLVED once it
    has been clear for RESOLVE_HOLD_S."""
    settings, now, cooldown = out.settings, out.now, out.settings.alerts.cooldown
    for aid, cond in conditions(settings, states).items():
        rec = dict(active.get(aid) or {})
        fresh = not rec
        rec.update(
            rule=str(cond.rule),
            queue=cond.queue,
            message=cond.message,
            severity=str(_severity(settings, cond.queue)),
            value=cond.value,
            threshold=cond.threshold,
            updated_at=now,
        )
        rec.pop("clear_since", None)  # back within the hold: the same alert goes on
        if fresh:
            rec.update(since=now, last_notified=now, notices=1)
            out.notice(NoticeKind.FIRING, aid, rec)
        elif cooldown and now - _num(rec, "last_notified") >= cooldown:
            rec.update(last_notified=now, notices=int(_num(rec, "notices", 1)) + 1)
            out.notice(NoticeKind.REMINDER, aid, rec)
        out.writes[aid] = rec
    for aid, rec in active.items():
        if rec.get("rule") in STATE_RULES and aid not in out.writes:
            st = states.get(rec.get("queue", ""))
            clear_since = _num(rec, "clear_since", now)
            if st is not None and now - clear_since < RESOLVE_HOLD_S:
                out.writes[aid] = dict(rec, clear_since=clear_since, updated_at=now)
                continue
            cleared = dict(rec, message=_resolved_message(str(rec["rule"]), st, settings))
            cleared["message"] += f"; was firing for {duration(now - _num(rec, 'since', now))}"
            out.notice(NoticeKind.RESOLVED, aid, cleared)
            out.deletes.append(aid)


def _decide_failures(
    out: _Outcome, states: Mapping[str, QueueState], active: Mapping[str, dict[str, Any]]
) -> None:
    """Failures on critical queues: every batch is news; quiet for a cooldown resolves."""
    now = out.now
    for st in states.values():
        if not st.new_failures:
            continue
        q, n, aid = st.spec.name, len(st.new_failures), alert_id(Rule.FAILED, st.spec.name)
        rec = dict(active.get(aid) or {"since": now, "total": 0})
        total = int(_num(rec, "total")) + n
        lines = [job.line() for job in st.new_failures[:DETAILS_MAX]]
        if n > DETAILS_MAX:
            lines.append(f"... and {n - DETAILS_MAX} more (see `acmeq failed list`)")
        ids = ", ".join(job.job_id for job in st.new_failures[:3]) + (", ..." if n > 3 else "")
        rec.update(
            rule=str(Rule.FAILED),
            queue=q,
            message=f"{n} {q} job{'s' if n > 1 else ''} failed permanently: {ids}"
            + (f" ({total} since {iso(_num(rec, 'since', now))})" if total > n else ""),
            severity=str(Severity.CRITICAL),
            value=n,
            threshold=0,
            total=total,
            last_event=now,
            last_notified=now,
            updated_at=now,
            notices=int(_num(rec, "notices")) + 1,
        )
        out.notice(NoticeKind.FIRING, aid, rec, lines)
        out.writes[aid] = rec
    for aid, rec in active.items():
        if rec.get("rule") != Rule.FAILED or aid in out.writes:
            continue
        if _failures_hold(out.settings, rec, now):
            continue
        quiet = now - _num(rec, "last_event", _num(rec, "since", now))
        total = int(_num(rec, "total", _num(rec, "value")))
        cleared = dict(
            rec,
            message=f"no new permanent failures for {duration(quiet)} "
            f"({total} since {iso(_num(rec, 'since', now))}; see `acmeq failed list`)",
        )
        out.notice(NoticeKind.RESOLVED, aid, cleared)
        out.deletes.append(aid)


def _failures_hold(settings: Settings, rec: Mapping[str, Any], now: float) -> bool:
    """A failure alert lasts while its queue is critical and a cooldown has not passed quietly."""
    quiet = now - _num(rec, "last_event", _num(rec, "since", now))
    return rec.get("queue") in settings.alerts.critical_queues and quiet < settings.alerts.cooldown


# -- what `acmeq status` shows --------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """An active alert as it stands now."""

    id: str
    record: dict[str, Any]  # the stored record; for state rules with the live message and value
    stale_s: float | None  # not re-checkable and not refreshed for this long; None: current


def standing(
    settings: Settings,
    loads: Mapping[str, probe.QueueSnapshot],
    active: Mapping[str, dict[str, Any]],
    clocks: Mapping[str, dict[str, Any]],
    now: float,
    evaluator_running: bool,
) -> list[Standing]:
    """The active alerts that still hold, re-checked against the live probe (read-only).

    A state alert (wait, backlog, dead-man) is shown only while its condition holds now, with
    today's value in its message, whether or not an evaluator has run since: a queue cleared
    after a backlog alert shows no backlog alert. A failure alert is shown while its quiet
    period lasts. Records that cannot be re-checked (failures, unknown rules) are marked stale
    with their age when no evaluator is running and they were not refreshed for STALE_AFTER_S.
    """
    states = {
        name: queue_state(settings.queues[name], load, clocks.get(name), now)[0]
        for name, load in loads.items()
        if name in settings.queues
    }
    holding = conditions(settings, states)
    out = []
    for aid, rec in active.items():
        rule = rec.get("rule")
        if rule in STATE_RULES:
            cond = holding.get(aid)
            if cond is None:
                continue  # no longer holds: the evaluator resolves it at its next pass
            out.append(Standing(aid, dict(rec, message=cond.message, value=cond.value), None))
            continue
        if rule == Rule.FAILED and not _failures_hold(settings, rec, now):
            continue
        age = now - _num(rec, "updated_at", _num(rec, "since", now))
        stale = not evaluator_running and age > STALE_AFTER_S
        out.append(Standing(aid, dict(rec), age if stale else None))
    return out
