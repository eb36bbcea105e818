"""The master's scheduler: RQ's, run in the master's loop, with a prompt takeover.

Delayed retries and ``enqueue_at``/``enqueue_in`` jobs sit in RQ's ScheduledJobRegistry until a
scheduler moves them onto their queue. Only the holder of RQ's per-queue scheduler lock
(``rq:scheduler-lock:<queue>``, TTL 61 s) does, so that two masters never enqueue a job twice.

RQ frees a dead holder's lock only when it expires: a master killed with SIGKILL stalled delayed
jobs for a minute. Every acmeq master names its scheduler ``acmeq-<master name>``, so another
master can tell whose lock it is; when that master's heartbeat key (15 s TTL) is gone, the lock
is taken over at once (compare-and-delete, then RQ's own acquisition). Locks of schedulers that
are not acmeq masters (a plain ``rq worker --with-scheduler``) are left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from acmeq import keys
from acmeq.storage.redis_client import text

log = logging.getLogger("acmeq.master")

NAME_PREFIX = "acmeq-"
REFRESH_S = 5.0  # held locks are refreshed (and a lost one noticed) this often; TTL 61 s
RETRY_S = 1.0  # locks not held are tried (and dead holders looked for) this often
# A holder's heartbeat must stay missing this long before its lock is taken: after a Redis
# outage every heartbeat key may have expired, and a live master republishes within 2 s.
GONE_FOR_S = 4.0

# Delete the lock only if it still names the dead holder (another master may have taken it).
_RELEASE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def scheduler_name(master: str) -> str:
    return NAME_PREFIX + master


class Scheduler:
    """Enqueues due scheduled jobs of the given queues under RQ's per-queue locks.

    Constructing it touches nothing; the first :meth:`tick` creates RQ's scheduler."""

    def __init__(self, queues: Iterable[str], connection: redis.Redis, master: str) -> None:
        self.queues = sorted(set(queues))
        self.connection = connection
        self.name = scheduler_name(master)
        self._rq: RQScheduler | None = None
        self._refreshed = 0.0
        self._tried = 0.0
        self._missing_since: dict[str, float] = {}  # holder -> when its heartbeat was missed

    def _scheduler(self) -> RQScheduler:
        if self._rq is None:
            self._rq = RQScheduler(
                self.queues,
                connection=self.connection,
                serializer=JSONSerializer,
                name=self.name,
                # RQ sets its logger's level itself (INFO by default): follow --log-level.
                logging_level=logging.getLogger().getEffectiveLevel(),
            )
            self._rq._connection = self.connection  # type: ignore[assignment]
        return self._rq

    @property
    def held(self) -> set[str]:
        return set(self._rq.acquired_locks) if self._rq is not None else set()

    def tick(self) -> None:
        """Refresh or take locks when due, then enqueue the due jobs of the held queues."""
        rq = self._scheduler()
        now = time.monotonic()
        missing = set(self.queues) - self.held
        if now - self._refreshed > REFRESH_S or (missing and now - self._tried > RETRY_S):
            self._tried = now
            if missing:
                self.take_over_dead(missing)
            before = self.held
            rq.acquire_locks()  # type: ignore[no-untyped-call]
            self._refreshed = now
            gained = self.held - before
            if gained and before:
                log.info("scheduler lock taken for %s", ", ".join(sorted(gained)))
        if rq.acquired_locks:
            rq.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def take_over_dead(self, queues: Iterable[str]) -> list[str]:
        """Free the locks of ``queues`` whose holder is an acmeq master that is gone."""
        names = sorted(queues)
        locks = [RQScheduler.get_locking_key(q) for q in names]
        holders = [text(h) if h else "" for h in self.connection.mget(locks)]
        freed = []
        now = time.monotonic()
        for queue, key, holder in zip(names, locks, holders, strict=True):
            if not holder.startswith(NAME_PREFIX) or holder == self.name:
                continue
            master = holder[len(NAME_PREFIX) :]
            if self.connection.exists(keys.master(master)):
                self._missing_since.pop(holder, None)
                continue  # its master is alive: it schedules this queue
            if now - self._missing_since.setdefault(holder, now) < GONE_FOR_S:
                continue
            if self.connection.eval(_RELEASE_IF, 1, key, holder):
                log.warning(
                    "master %s is gone: taking over its scheduler lock of %s", master, queue
                )
                freed.append(queue)
        return freed

    def stop(self) -> None:
        """Release the locks this scheduler holds (a clean stop hands scheduling over at once)."""
        if self._rq is not None and self._rq.acquired_locks:
            self._rq.release_locks()  # type: ignore[no-untyped-call]
