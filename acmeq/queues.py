"""The queue catalog and the enqueue API.

Jobs stay plain RQ data (``rq:queue:<name>``, ``rq:job:<id>``, RQ's registries) so ``rq info``
and rq-dashboard read them; acmeq only changes *how* they get there:

- every job carries its queue's timeout, ``Retry`` (with the backoff expanded to ``tries - 1``
  delays), result and failure TTLs, and is serialized as JSON (never pickle);
- :meth:`Enqueuer.enqueue` sends a job in one transactional round trip where ``Queue.enqueue``
  takes two, and :meth:`Enqueuer.enqueue_many` pipelines hundreds of jobs per round trip;
- only declared jobs (see :mod:`acmeq.allowlist`) can be enqueued, and :class:`AcmeqJob` refuses
  to execute anything else.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import uuid4

import redis
from redis.typing import EncodableT
from rq import Queue, Retry
from rq.job import JOB_ID_PATTERN, Job
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from acmeq import keys
from acmeq.allowlist import JobDef, JobRegistry, check_call, load_registry
from acmeq.config.settings import QueueSpec, Settings, process_settings
from acmeq.errors import JobArgumentError, UnknownQueueError, UsageError

# Jobs per pipeline in enqueue_many: large enough to amortise the round trip, small enough that
# one MULTI/EXEC does not hold Redis for long or build a huge reply in memory.
BULK_CHUNK = 500


def catalog(settings: Settings) -> list[QueueSpec]:
    """The queues, most important first (priority desc, then name)."""
    return sorted(settings.queues.values(), key=lambda q: (-q.priority, q.name))


def queue_spec(settings: Settings, name: str) -> QueueSpec:
    try:
        return settings.queues[name]
    except KeyError:
        raise UnknownQueueError(name, [q.name for q in catalog(settings)]) from None


@functools.cache
def _settings_registry(modules: tuple[str, ...], queue_names: frozenset[str]) -> JobRegistry:
    return load_registry(modules, dict.fromkeys(queue_names))


def registry_for(settings: Settings) -> JobRegistry:
    """The job registry for these settings (imported once per process)."""
    return _settings_registry(settings.job_modules, frozenset(settings.queues))


class AcmeqJob(Job):
    """An RQ job that is always JSON-serialized and only runs registered functions.

    rq-scheduler creates and fetches jobs through its ``job_class`` without passing a serializer,
    so ``create`` and ``fetch`` force JSON here; workers resolve ``func`` through the registry
    instead of importing whatever path the hash names.
    """

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> AcmeqJob:
        kwargs["serializer"] = JSONSerializer
        return cast(AcmeqJob, super().create(*args, **kwargs))

    @classmethod
    def fetch(cls, id: str, connection: Any = None, serializer: Any = None) -> AcmeqJob:
        return cast(AcmeqJob, super().fetch(id, connection=connection, serializer=JSONSerializer))

    @property
    def func(self) -> Any:
        if self.func_name is None:
            return None
        return _process_registry().by_path(self.func_name).func

    # RQ imports callback names read from the job hash (in the worker, and in registry cleanup
    # through ``execute_failure_callback``); acmeq resolves them through the allowlist instead.
    @property
    def success_callback(self) -> Any:
        name = self._success_callback_name
        return _process_registry().callback(name) if name else None

    @property
    def failure_callback(self) -> Any:
        name = self._failure_callback_name
        return _process_registry().callback(name) if name else None

    @property
    def stopped_callback(self) -> Any:
        name = self._stopped_callback_name
        return _process_registry().callback(name) if name else None


def _process_registry() -> JobRegistry:
    # A worker resolves every job through this; settings are read once per process.
    return registry_for(process_settings())


@dataclass(frozen=True)
class JobCall:
    """One job to enqueue: its registered name, arguments and options."""

    name: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    meta: Mapping[str, Any] | None = None
    at: datetime | None = None  # run at this time (UTC) instead of now
    delay: timedelta | None = None  # or after this delay


class Enqueuer:
    """Places registered jobs on their queues; one per process is enough (it caches queues)."""

    def __init__(
        self, settings: Settings, connection: redis.Redis, registry: JobRegistry | None = None
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.registry = registry or registry_for(settings)
        self._queues: dict[str, Queue] = {}
        self._templates: dict[str, dict[EncodableT, EncodableT]] = {}

    def queue(self, name: str) -> Queue:
        """The RQ ``Queue`` object for a catalog queue (JSON serializer, acmeq job class)."""
        queue = self._queues.get(name)
        if queue is None:
            spec = queue_spec(self.settings, name)
            queue = Queue(
                spec.name,
                connection=self.connection,
                serializer=JSONSerializer,
                job_class=AcmeqJob,
                default_timeout=spec.timeout,
            )
            self._queues[name] = queue
        return queue

    def job_options(self, jobdef: JobDef) -> dict[str, Any]:
        spec = queue_spec(self.settings, jobdef.queue)
        intervals = spec.retry_intervals
        return {
            "timeout": spec.timeout,
            "result_ttl": spec.result_ttl,
            "failure_ttl": spec.failure_ttl,
            "retry": Retry(max=len(intervals), interval=list(intervals)) if intervals else None,
        }

    def enqueue(self, name: str, *args: Any, **kwargs: Any) -> Job:
        """Enqueue job ``name`` with these arguments on its queue; return the RQ job."""
        return self.enqueue_call(JobCall(name, args, kwargs))

    def enqueue_call(self, call: JobCall) -> Job:
        jobdef = self.registry.get(call.name)
        _check(jobdef, call)
        queue = self.queue(jobdef.queue)
        job = self._create(queue, jobdef, call)
        pipe = self.connection.pipeline()
        self._place(queue, job, call, pipe)
        pipe.execute()
        return job

    def enqueue_many(self, calls: Iterable[JobCall]) -> list[str]:
        """Enqueue many jobs, pipelined ``BULK_CHUNK`` at a time per queue; return their ids.

        Each chunk is one MULTI/EXEC, so a chunk is enqueued whole or not at all. The job hashes
        are written exactly as ``Job.save`` writes them (a test compares the two), but built from
        a per-job-function template: one HSET per job and one RPUSH per chunk instead of RQ's
        three commands and a full ``Job`` object per job.
        """
        by_queue: dict[str, list[tuple[JobDef, JobCall]]] = {}
        for call in calls:
            jobdef = self.registry.get(call.name)
            _check(jobdef, call)
            by_queue.setdefault(jobdef.queue, []).append((jobdef, call))
        ids: list[str] = []
        for queue_name, entries in by_queue.items():
            queue = self.queue(queue_name)
            for start in range(0, len(entries), BULK_CHUNK):
                pipe = self.connection.pipeline()
                pipe.sadd(queue.redis_queues_keys, queue.key)
                ready: list[str] = []
                for jobdef, call in entries[start : start + BULK_CHUNK]:
                    if _when(call) is not None:
                        job = self._create(queue, jobdef, call)
                        self._place(queue, job, call, pipe)
                        ids.append(job.id)
                        continue
                    job_id = call.job_id or str(uuid4())
                    pipe.hset(queue.job_class.key_for(job_id), mapping=self._hash(jobdef, call))
                    ready.append(job_id)
                if ready:
                    pipe.rpush(queue.key, *ready)
                    ids.extend(ready)
                pipe.execute()
        return ids

    def _place(self, queue: Queue, job: Job, call: JobCall, pipe: Any) -> None:
        try:
            when = _when(call)
            if when is not None:
                queue.schedule_job(job, when, pipeline=pipe)
            else:
                queue.enqueue_job(job, pipeline=pipe)
        except (TypeError, ValueError) as exc:
            raise JobArgumentError(_bad_args(call, exc)) from None

    def _hash(self, jobdef: JobDef, call: JobCall) -> dict[EncodableT, EncodableT]:
        """The RQ job hash of a ready job, from the cached template of its job function."""
        template = self._templates.get(jobdef.name)
        if template is None:
            queue = self.queue(jobdef.queue)
            probe = self._create(queue, jobdef, JobCall(jobdef.name))
            queue._prepare_for_queue(probe)
            template = probe.to_dict()
            for key in ("created_at", "enqueued_at", "data", "meta"):
                template.pop(key, None)
            self._templates[jobdef.name] = template
        try:
            payload = json.dumps([jobdef.path, None, list(call.args), dict(call.kwargs)])
        except (TypeError, ValueError) as exc:
            raise JobArgumentError(_bad_args(call, exc)) from None
        stamp = utcformat(now())
        mapping: dict[EncodableT, EncodableT] = dict(template)
        mapping["created_at"] = stamp
        mapping["enqueued_at"] = stamp
        mapping["data"] = zlib.compress(payload.encode())
        if call.meta:
            mapping["meta"] = json.dumps(dict(call.meta)).encode()
        return mapping

    def _create(self, queue: Queue, jobdef: JobDef, call: JobCall) -> Job:
        options = self.job_options(jobdef)
        job: Job = queue.create_job(
            jobdef.path,
            args=list(call.args),
            kwargs=dict(call.kwargs),
            job_id=call.job_id,
            meta=dict(call.meta) if call.meta else None,
            description=jobdef.name,
            **options,
        )
        return job


def _check(jobdef: JobDef, call: JobCall) -> None:
    """Refuse, before anything is written, a call no worker could run (see ``check_call``)."""
    if call.job_id is not None and not JOB_ID_PATTERN.fullmatch(call.job_id):
        raise UsageError(
            f"invalid job id {call.job_id!r}: use letters, digits, '_' and '-' only "
            "(at least one character)"
        )
    check_call(jobdef, call.args, call.kwargs)


def _when(call: JobCall) -> datetime | None:
    if call.at is not None:
        return call.at if call.at.tzinfo else call.at.replace(tzinfo=UTC)
    if call.delay is not None:
        return datetime.now(UTC) + call.delay
    return None


def _bad_args(call: JobCall, exc: Exception) -> str:
    return (
        f"arguments of job {call.name!r} are not JSON-safe ({exc}); pass amounts as strings "
        "or integer cents and times as ISO strings"
    )


# Module-level convenience API: `acmeq.enqueue("process_donation", donation_id=5)`.
_default: Enqueuer | None = None


def default_enqueuer() -> Enqueuer:
    global _default
    if _default is None:
        from acmeq.storage.redis_client import connect

        settings = Settings.from_env()
        _default = Enqueuer(settings, connect(settings))
    return _default


def enqueue(job_name: str, *args: Any, **kwargs: Any) -> Job:
    """Enqueue registered job ``job_name`` with the queue's timeout, retries and TTLs."""
    return default_enqueuer().enqueue(job_name, *args, **kwargs)


def enqueue_many(calls: Iterable[JobCall]) -> list[str]:
    """Enqueue many jobs in pipelined chunks (see :meth:`Enqueuer.enqueue_many`)."""
    return default_enqueuer().enqueue_many(calls)


def queue_counts(settings: Settings, connection: redis.Redis) -> list[dict[str, Any]]:
    """The catalog with each queue's job counts and paused flag, in one pipelined round trip."""
    specs = catalog(settings)
    pipe = connection.pipeline(transaction=False)
    for spec in specs:
        # RQ's key layout: the queue list and one sorted set per registry.
        pipe.llen(keys.queue(spec.name))
        for key in (keys.scheduled, keys.started, keys.failed):
            pipe.zcard(key(spec.name))
        pipe.exists(keys.paused_queue(spec.name))
    counts = pipe.execute()
    rows = []
    for i, spec in enumerate(specs):
        ready, scheduled, started, failed, paused = counts[5 * i : 5 * i + 5]
        rows.append(
            {
                "name": spec.name,
                "priority": spec.priority,
                "timeout": spec.timeout,
                "tries": spec.tries,
                "memory_mb": spec.memory_mb,
                "retry_intervals": list(spec.retry_intervals),
                "ready": ready,
                "scheduled": scheduled,
                "started": started,
                "failed": failed,
                "paused": bool(paused),
            }
        )
    return rows
