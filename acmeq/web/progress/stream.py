"""One client's stream: snapshot first, then live updates, then the final record and the end.

Shared by the SSE and WebSocket endpoints, which only differ in how a text message is sent and
how a disconnect is noticed. Every message is a progress record's JSON exactly as
``acmeq progress show --json`` prints it (:meth:`ProgressRecord.as_dict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from enum import StrEnum

from starlette.concurrency import run_in_threadpool

from acmeq.tracking.store import ProgressRecord, Viewer
from acmeq.web.progress.hub import Hub, Subscriber, Update

SendText = Callable[[str], Awaitable[None]]
Snapshot = Callable[[], list[ProgressRecord]]


class Outcome(StrEnum):
    FINISHED = "finished"  # every job of the stream ended: the final messages were sent
    DISCONNECTED = "disconnected"  # the client went away
    DROPPED = "dropped"  # the client was too slow; the stream was cut


def as_update(record: ProgressRecord) -> Update:
    data = record.as_dict()
    return Update(
        record.id, record.user_id, record.status.value, record.updated_at, json.dumps(data)
    )


class Stream:
    """Sends the updates of ``job_ids`` (None: every job ``viewer`` may see) to one client."""

    def __init__(
        self,
        hub: Hub,
        viewer: Viewer,
        job_ids: Iterable[str] | None,
        snapshot: Snapshot,
        *,
        limit: int,
        keepalive: Callable[[], Awaitable[None]] | None = None,
        keepalive_s: float = 15.0,
    ) -> None:
        self.hub = hub
        self.job_ids = frozenset(job_ids) if job_ids is not None else None
        self.snapshot = snapshot
        self.sub = Subscriber(self.job_ids, user_id=viewer.user_id, admin=viewer.admin, limit=limit)
        self.sent: dict[str, datetime] = {}
        self.ended: set[str] = set()
        self.keepalive = keepalive
        self.keepalive_s = keepalive_s

    async def run(self, send: SendText, disconnected: Awaitable[object]) -> Outcome:
        """Stream until every job ended, the client left or was dropped as too slow."""
        self.hub.add(self.sub)  # before the snapshot: nothing published after it is missed
        pump = asyncio.ensure_future(self._pump(send))

        def cut() -> None:
            pump.cancel()

        self.sub.on_drop = cut
        gone = asyncio.ensure_future(disconnected)
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.remove(self.sub)
            for task in (pump, gone):
                task.cancel()
            for task in (pump, gone):
                with contextlib.suppress(BaseException):
                    await task
        if self.sub.dropped:
            self.hub.dropped += 1
            return Outcome.DROPPED
        if pump.done() and not pump.cancelled() and pump.exception() is None:
            return Outcome.FINISHED
        return Outcome.DISCONNECTED

    def _complete(self) -> bool:
        return self.job_ids is not None and self.ended >= self.job_ids

    async def _send_all(self, send: SendText, updates: Iterable[Update]) -> None:
        for update in updates:
            last = self.sent.get(update.job_id)
            if last is not None and update.updated_at < last:
                continue  # older than what the client has (pub/sub and snapshot interleave)
            if update.job_id in self.ended:
                continue
            await send(update.raw)
            self.sent[update.job_id] = update.updated_at
            if update.final and self.job_ids is not None:
                self.ended.add(update.job_id)

    async def _resend_snapshot(self, send: SendText) -> None:
        records = await run_in_threadpool(self.snapshot)
        self.sent.clear()  # a fresh snapshot is sent whole, even if nothing changed
        await self._send_all(send, sorted(map(as_update, records), key=lambda u: u.updated_at))

    async def _pump(self, send: SendText) -> None:
        self.sub.resync = False
        await self._resend_snapshot(send)
        while not self._complete():
            if self.keepalive is None:
                await self.sub.wake.wait()
            else:
                try:
                    await asyncio.wait_for(self.sub.wake.wait(), self.keepalive_s)
                except TimeoutError:
                    await self.keepalive()
                    continue
            if self.sub.resync:
                self.sub.resync = False
                self.sub.take()
                await self._resend_snapshot(send)
                continue
            await self._send_all(send, self.sub.take())
