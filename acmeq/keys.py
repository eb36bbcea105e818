"""Every Redis key and channel acmeq reads or writes, in one place.

RQ's own keys keep RQ's ``rq:`` prefix (so `rq info` and rq-dashboard read acmeq's queues
unchanged); the keys acmeq adds beside them start with ``acmeq:``. Nothing else in ``acmeq/``
spells a key: it calls one of the functions below (or, for the few fixed names, uses the
constant). Lua scripts receive the prefixes they need as arguments or build the same names from
:data:`RQ` / :data:`PREFIX`; ``tests/test_architecture.py`` checks that docs/architecture.md lists
every entry of :data:`KEY_MAP`.

This module imports nothing from acmeq, so any layer may use it.
"""

from __future__ import annotations

from typing import NamedTuple

RQ = "rq:"  # RQ's prefix
PREFIX = "acmeq:"  # every key acmeq adds

# -- RQ's keys (rq.Queue, rq.Job, rq.registry, rq.Worker, rq.executions) --------------------------

QUEUES = "rq:queues"  # set of the queue keys in use
WORKERS = "rq:workers"  # set of every registered worker's key
SUSPENDED = "rq:suspended"  # `rq suspend`: every worker stops taking jobs
QUEUE_PREFIX = "rq:queue:"
JOB_PREFIX = "rq:job:"
WORKER_PREFIX = "rq:worker:"
RQ_SCHEDULER_JOBS = "rq:scheduler:scheduled_jobs"  # rq-scheduler's schedule

# The registries of a queue, by the name RQ gives their key: rq:<registry>:<queue>.
STARTED = "wip"
REGISTRIES = ("scheduled", STARTED, "deferred", "failed", "finished", "canceled")


def queue(name: str) -> str:
    """List of ready job ids."""
    return f"rq:queue:{name}"


def intermediate(name: str) -> str:
    """List: a job a single-queue worker took (BLMOVE) but has not registered as started yet."""
    return f"rq:queue:{name}:intermediate"


def job(job_id: str) -> str:
    """Hash of one job."""
    return f"rq:job:{job_id}"


def dependents(job_id: str) -> str:
    return f"rq:job:{job_id}:dependents"


def dependencies(job_id: str) -> str:
    return f"rq:job:{job_id}:dependencies"


def results(job_id: str) -> str:
    """Stream of a job's results (RQ's ``Result.get_key``)."""
    return f"rq:results:{job_id}"


def registry(kind: str, name: str) -> str:
    """One of a queue's registries (sorted sets): ``kind`` is one of :data:`REGISTRIES`."""
    return f"rq:{kind}:{name}"


def scheduled(name: str) -> str:
    return registry("scheduled", name)


def started(name: str) -> str:
    return registry(STARTED, name)


def deferred(name: str) -> str:
    return registry("deferred", name)


def failed(name: str) -> str:
    return registry("failed", name)


def finished(name: str) -> str:
    return registry("finished", name)


def canceled(name: str) -> str:
    return registry("canceled", name)


def workers_of(name: str) -> str:
    """Set of the keys of the workers registered for one queue."""
    return f"rq:workers:{name}"


def worker(name: str) -> str:
    """Hash of one RQ worker (state, birth, death, counts; acmeq adds its RSS)."""
    return f"rq:worker:{name}"


def worker_executions(name: str) -> str:
    """Set of the executions a worker is running (``<job id>:<execution id>``)."""
    return f"rq:worker:{name}:executions"


def execution(composite: str) -> str:
    """Hash of one execution; ``composite`` is ``<job id>:<execution id>``."""
    return f"rq:execution:{composite}"


def scheduler_lock(name: str) -> str:
    """String with a TTL: RQ's scheduler that enqueues a queue's due jobs holds it."""
    return f"rq:scheduler-lock:{name}"


def executions(job_id: str) -> str:
    """Sorted set of a job's executions."""
    return f"rq:executions:{job_id}"


# -- acmeq's keys ---------------------------------------------------------------------------------

MASTERS = "acmeq:masters"  # hash: master name -> JSON snapshot, refreshed every tick
METRICS_CUMULATIVE = "acmeq:metrics:cumulative"  # folded minute buckets (Prometheus)
METRICS_MINUTE_PREFIX = "acmeq:metrics:m:"
METRICS_HOUR_PREFIX = "acmeq:metrics:h:"
ALERTS_ACTIVE = "acmeq:alerts:active"  # hash: alert id -> JSON
ALERTS_HISTORY = "acmeq:alerts:history"  # list of notices, newest first
ALERTS_PROGRESS = "acmeq:alerts:progress"  # hash: queue -> the dead-man clock
ALERTS_CURSOR = "acmeq:alerts:cursor"  # hash: queue -> failures already notified
ALERTS_OUTBOX = "acmeq:alerts:outbox"  # hash: sequence -> notice not yet delivered
ALERTS_OUTBOX_SEQ = "acmeq:alerts:outbox:seq"
ALERTS_CHANNELS = "acmeq:alerts:channels"  # hash: channel -> delivery health
ALERTS_LOCK = "acmeq:alerts:lock"  # the one evaluator's lock
PROGRESS_CHANNEL = "acmeq:progress"  # pub/sub: every progress record
CANCEL_CHANNEL = "acmeq:cancel"  # pub/sub: ids of jobs whose cancellation was requested
SCHEDULER_LEADER = "acmeq:scheduler:leader"  # the one master that runs the schedules
SCHEDULE_PREFIX = "acmeq:schedule:"


def stats(name: str) -> str:
    """Hash of a queue's cumulative counters: processed, failed, runtime (seconds)."""
    return f"acmeq:stats:{name}"


def metrics_minute(bucket: int | str) -> str:
    """Hash of the metric fields of one minute (``bucket``: epoch seconds of its start)."""
    return f"{METRICS_MINUTE_PREFIX}{bucket}"


def metrics_hour(bucket: int | str) -> str:
    return f"{METRICS_HOUR_PREFIX}{bucket}"


def paused_queue(name: str) -> str:
    """String: the queue is paused cluster-wide (value: when)."""
    return f"acmeq:paused:queue:{name}"


def paused_supervisor(master: str, supervisor: str) -> str:
    return f"acmeq:paused:supervisor:{master}:{supervisor}"


def master(name: str) -> str:
    """String with a TTL: a master's heartbeat (value: host:pid)."""
    return f"acmeq:master:{name}"


def master_commands(name: str) -> str:
    """List of JSON commands for one master."""
    return f"acmeq:master:{name}:commands"


def intermediate_seen(name: str) -> str:
    """Hash: first-seen times of ids in a queue's intermediate list (stuck-job recovery)."""
    return f"acmeq:intermediate-seen:{name}"


def progress_channel(job_id: str) -> str:
    """Pub/sub channel of one job's progress."""
    return f"{PROGRESS_CHANNEL}:{job_id}"


def cancel(job_id: str) -> str:
    """String: a cancel request for one job (JSON)."""
    return f"acmeq:cancel:{job_id}"


def schedule(name: str) -> str:
    """Hash: the state of one periodic schedule (last tick, next tick)."""
    return f"{SCHEDULE_PREFIX}{name}"


def schedule_tick(name: str, tick: str) -> str:
    """String: one tick of a schedule was handled (its id is the tick's time)."""
    return f"{SCHEDULE_PREFIX}{name}:tick:{tick}"


def schedule_history(name: str) -> str:
    """List: the last runs of a schedule."""
    return f"{SCHEDULE_PREFIX}{name}:history"


def mail_fanout(run: str) -> str:
    """String: how many batches of a bulk mail run were enqueued (a retry resumes there)."""
    return f"acmeq:mail:fanout:{run}"


# -- the map the docs are checked against ---------------------------------------------------------


class KeyInfo(NamedTuple):
    pattern: str  # as docs/architecture.md shows it
    kind: str  # Redis type, or "channel"
    holds: str


KEY_MAP: tuple[KeyInfo, ...] = (
    KeyInfo(QUEUES, "set", "queue keys in use (SADD on every enqueue)"),
    KeyInfo(queue("<queue>"), "list", "ready job ids"),
    KeyInfo(intermediate("<queue>"), "list", "a job taken by BLMOVE, not yet registered"),
    KeyInfo(job("<id>"), "hash", "the job: JSON data, status, origin, timeout, retries, TTLs"),
    KeyInfo(dependents("<id>"), "set", "jobs waiting for this one"),
    KeyInfo(dependencies("<id>"), "set", "jobs this one waits for"),
    KeyInfo(results("<id>"), "stream", "the job's results (return value or traceback)"),
    KeyInfo(scheduled("<queue>"), "sorted set", "jobs waiting for a time, by timestamp"),
    KeyInfo(started("<queue>"), "sorted set", "started registry (executions being run)"),
    KeyInfo(deferred("<queue>"), "sorted set", "jobs waiting for their dependencies"),
    KeyInfo(failed("<queue>"), "sorted set", "failed registry, scored by expiry"),
    KeyInfo(finished("<queue>"), "sorted set", "finished registry, scored by expiry"),
    KeyInfo(canceled("<queue>"), "sorted set", "canceled registry"),
    KeyInfo(WORKERS, "set", "every registered RQ worker's key"),
    KeyInfo(workers_of("<queue>"), "set", "the workers registered for one queue"),
    KeyInfo(worker("<name>"), "hash", "an RQ worker: state, birth, death, counts, acmeq RSS"),
    KeyInfo(worker_executions("<name>"), "set", "executions the worker is running"),
    KeyInfo(execution("<id>:<execution>"), "hash", "one execution of a job"),
    KeyInfo(executions("<id>"), "sorted set", "a job's executions"),
    KeyInfo(SUSPENDED, "string", "`rq suspend`: no worker takes a job"),
    KeyInfo(scheduler_lock("<queue>"), "string, TTL", "RQ's scheduler lock of one queue"),
    KeyInfo(RQ_SCHEDULER_JOBS, "sorted set", "rq-scheduler's schedule (when it is used)"),
    KeyInfo(stats("<queue>"), "hash", "cumulative processed / failed / runtime per queue"),
    KeyInfo(metrics_minute("<epoch minute>"), "hash", "metric bucket of one minute (expires)"),
    KeyInfo(metrics_hour("<epoch hour>"), "hash", "metric bucket of one hour (expires)"),
    KeyInfo(METRICS_CUMULATIVE, "hash", "minute buckets folded for Prometheus (never expires)"),
    KeyInfo(paused_queue("<queue>"), "string", "the queue is paused cluster-wide"),
    KeyInfo(paused_supervisor("<master>", "<supervisor>"), "string", "one supervisor is paused"),
    KeyInfo(MASTERS, "hash", "master name -> JSON snapshot (supervisors, pools, decisions)"),
    KeyInfo(master("<name>"), "string, TTL", "a master's heartbeat"),
    KeyInfo(master_commands("<name>"), "list", "commands for one master (terminate, restart)"),
    KeyInfo(intermediate_seen("<queue>"), "hash", "first-seen times of intermediate ids"),
    KeyInfo(ALERTS_ACTIVE, "hash", "alert id -> JSON (rule, queue, message, since, ...)"),
    KeyInfo(ALERTS_HISTORY, "list", "notices, newest first (capped)"),
    KeyInfo(ALERTS_PROGRESS, "hash", "queue -> the dead-man clock {count, since}"),
    KeyInfo(ALERTS_CURSOR, "hash", "queue -> failures already notified {t, seen}"),
    KeyInfo(ALERTS_OUTBOX, "hash", "notices not yet delivered to every channel"),
    KeyInfo(ALERTS_OUTBOX_SEQ, "string", "sequence of the outbox entries"),
    KeyInfo(ALERTS_CHANNELS, "hash", "channel -> delivery health and backoff"),
    KeyInfo(ALERTS_LOCK, "string, TTL", "the one evaluator's lock"),
    KeyInfo(PROGRESS_CHANNEL, "channel", "every progress record (JSON)"),
    KeyInfo(progress_channel("<id>"), "channel", "one job's progress records"),
    KeyInfo(CANCEL_CHANNEL, "channel", "ids of jobs whose cancellation was requested"),
    KeyInfo(cancel("<id>"), "string, TTL", "a cancel request (JSON: requested_at, stop_at, by)"),
    KeyInfo(SCHEDULER_LEADER, "string, TTL", "the master that runs the periodic schedules"),
    KeyInfo(schedule("<name>"), "hash", "a periodic schedule's state"),
    KeyInfo(schedule_tick("<name>", "<tick>"), "string, TTL", "a schedule's tick was handled"),
    KeyInfo(schedule_history("<name>"), "list", "a schedule's last runs"),
    KeyInfo(mail_fanout("<run>"), "string, TTL", "batches of a bulk mail run enqueued so far"),
)


def markdown_table() -> str:
    """The key table of docs/architecture.md."""
    rows = ["| key | type | holds |", "| --- | --- | --- |"]
    rows += [f"| `{k.pattern}` | {k.kind} | {k.holds} |" for k in KEY_MAP]
    return "\n".join(rows)
