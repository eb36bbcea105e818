"""The fan-out hub: ONE Redis pub/sub subscription per server process, shared by every client.

The hub subscribes to ``acmeq:progress`` (every record of every job), parses each message once
into a :class:`Update` and offers it to the :class:`Subscriber` objects interested in its job
(or in all jobs). A subscriber keeps only the newest unsent update per job -- progress is a
state, so an update superseded before it could be sent is skipped, never reordered -- and counts
the updates offered since its sender last took a batch: past ``limit`` (``[progress]
client_buffer``) the client is too slow and is dropped, so it never slows the others.

When Redis goes away the hub reconnects with capped exponential backoff; after every
(re)subscription each subscriber is told to resend a fresh snapshot from the database, which
covers anything published while the hub was deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from acmeq import keys

log = logging.getLogger("acmeq.web.progress")

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class Update:
    """One published progress record: its JSON text as published, plus what routing needs."""

    job_id: str
    user_id: int | None
    status: str
    updated_at: datetime
    raw: str

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def parse(cls, raw: str) -> Update:
        data = json.loads(raw)
        user = data.get("user_id")
        return cls(
            str(data["id"]),
            int(user) if user is not None else None,
            str(data["status"]),
            datetime.fromisoformat(data["updated_at"]),
            raw,
        )


class Subscriber:
    """One client's interest (some job ids, or every job its viewer may see) and its buffer."""

    def __init__(
        self,
        job_ids: frozenset[str] | None,
        *,
        user_id: int | None,
        admin: bool,
        limit: int,
    ) -> None:
        self.job_ids = job_ids  # None: every job the viewer may see
        self.user_id = user_id
        self.admin = admin
        self.limit = limit
        self.pending: dict[str, Update] = {}
        self.backlog = 0
        self.resync = False  # set when the hub (re)subscribed: resend snapshots
        self.dropped = False
        self.wake = asyncio.Event()
        self.on_drop: Callable[[], None] | None = None

    def may_see(self, update: Update) -> bool:
        return self.admin or (self.user_id is not None and update.user_id == self.user_id)

    def offer(self, update: Update) -> None:
        if self.dropped:
            return
        self.backlog += 1
        if self.backlog > self.limit:
            self.drop()
            return
        self.pending[update.job_id] = update
        self.wake.set()

    def take(self) -> list[Update]:
        """The pending updates, oldest first; the backlog starts again from zero."""
        batch = sorted(self.pending.values(), key=lambda u: u.updated_at)
        self.pending = {}
        self.backlog = 0
        self.wake.clear()
        return batch

    def request_resync(self) -> None:
        self.resync = True
        self.wake.set()

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.pending = {}
        self.wake.set()
        if self.on_drop is not None:
            self.on_drop()


def client_factory(sync: redis.Redis) -> Callable[[], aioredis.Redis]:
    """asyncio clients to the server ``sync`` (acmeq's configured client) talks to."""
    kw = sync.connection_pool.connection_kwargs
    common = {
        "db": kw.get("db", 0),
        "username": kw.get("username"),
        "password": kw.get("password"),
        "socket_connect_timeout": 2.0,
        # No silent reconnects inside redis-py: the hub must see every loss of the connection,
        # as its clients need a fresh snapshot for what was published meanwhile.
        "retry": Retry(NoBackoff(), 0),
    }
    if kw.get("path"):
        return lambda: aioredis.Redis(unix_socket_path=kw["path"], **common)
    host, port = kw.get("host", "127.0.0.1"), kw.get("port", 6379)
    return lambda: aioredis.Redis(host=host, port=port, **common)


class Hub:
    """Routes the process's single subscription to its subscribers; reconnects on its own."""

    def __init__(
        self, connect: Callable[[], aioredis.Redis], channel: str = keys.PROGRESS_CHANNEL
    ) -> None:
        self.connect = connect  # a new asyncio client (the hub makes one per (re)connection)
        self.channel = channel
        self.by_job: dict[str, set[Subscriber]] = {}
        self.everything: set[Subscriber] = set()
        self.connected = asyncio.Event()
        self.subscriptions = 0  # how many times the hub (re)subscribed
        self.received = 0
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    # -- subscribers ----------------------------------------------------------------------------
    def add(self, sub: Subscriber) -> None:
        if sub.job_ids is None:
            self.everything.add(sub)
        else:
            for job_id in sub.job_ids:
                self.by_job.setdefault(job_id, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        self.everything.discard(sub)
        for job_id in sub.job_ids or ():
            subs = self.by_job.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.by_job[job_id]

    @property
    def clients(self) -> int:
        return len(self.everything) + len({s for subs in self.by_job.values() for s in subs})

    def dispatch(self, raw: str) -> None:
        try:
            update = Update.parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed progress message: %s", exc)
            return
        self.received += 1
        for sub in tuple(self.by_job.get(update.job_id, ())):
            sub.offer(update)
        for sub in tuple(self.everything):
            if sub.may_see(update):
                sub.offer(update)

    # -- the subscription -----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="progress-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = BACKOFF_START_S
        while True:
            client = self.connect()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscriptions += 1
                self.connected.set()
                delay = BACKOFF_START_S
                if self.subscriptions > 1:
                    log.warning("progress hub: Redis subscription restored")
                for sub in self._all_subscribers():
                    sub.request_resync()
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("progress hub: Redis lost (%s); reconnecting", exc)
                self.connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=5.0)
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            self.dispatch(data.decode() if isinstance(data, bytes) else str(data))

    def _all_subscribers(self) -> set[Subscriber]:
        subs = set(self.everything)
        for group in self.by_job.values():
            subs |= group
        return subs
