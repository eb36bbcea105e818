"""Job progress records in SQL (the ``job_progress`` table) and who may see them.

:class:`ProgressRecord` is one job run's progress as every part of acmeq passes it around: the
tracker inside a job writes it (:func:`save`), publishes it on Redis as JSON (:meth:`as_dict`),
and the CLI reads it back from either place. The table's columns hold the numbers; two live
figures without a column of their own (the smoothed rate and the last few item failures) travel
in the ``meta`` JSON under the reserved key ``"acmeq"``, which :class:`ProgressRecord` splits off,
so ``record.meta`` is exactly what the job passed.

Records also change from outside their job: :func:`create_pending` (an enqueuer shows a job before
it runs), :func:`mark_abandoned` (the master recovered the jobs of a dead worker) and
:func:`mark_cancelled` (a job cancelled before it ran); each publishes the change when given a
Redis connection.

Access: a progress record belongs to a user (``user_id``). A :class:`Viewer` is who is asking: an
admin (or the operator, when no identity is given) sees every record; any other user only their
own. A record the viewer may not see is reported exactly like a missing one
(:class:`ProgressNotFoundError`), so its existence does not leak.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from acmeq import keys
from acmeq.errors import ProgressNotFoundError, UsageError
from acmeq.storage.models import JobProgress, JobStatus, User, UserRole

if TYPE_CHECKING:
    from acmeq.config.settings import Settings

TABLE: sa.Table = SQLModel.metadata.tables[JobProgress.__tablename__]
USERS: sa.Table = SQLModel.metadata.tables[User.__tablename__]

RESERVED_META_KEY = "acmeq"  # live figures without a column: {"rate": ..., "errors": [...]}
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ProgressRecord:
    """One job run's progress. ``total`` 0 means "not known (yet)": no percentage, no ETA.

    ``processed`` counts every item handled, including the ``failed`` ones.
    """

    id: str
    job_name: str
    queue: str
    status: JobStatus
    user_id: int | None = None
    total: int = 0
    processed: int = 0
    failed: int = 0
    message: str | None = None
    meta: Mapping[str, Any] | None = None
    rate: float | None = None  # smoothed items per second (see acmeq.progress.RateEstimator)
    errors: tuple[str, ...] = ()  # the last few item failures, newest last
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    eta_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def percent(self) -> float | None:
        """Processed / total in %, capped at 100; None while the total is unknown."""
        if self.total > 0:
            return min(100.0, self.processed * 100.0 / self.total)
        return 100.0 if self.status is JobStatus.COMPLETED else None

    def eta_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds until the estimated completion (0 when overdue); None when unknown or ended."""
        if self.eta_at is None or self.finished:
            return None
        now = now or datetime.now(UTC)
        return max(0.0, (self.eta_at - now).total_seconds())

    def elapsed_seconds(self, now: datetime | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or now or datetime.now(UTC)
        return max(0.0, (end - self.started_at).total_seconds())

    def visible_to(self, viewer: Viewer) -> bool:
        return viewer.admin or (viewer.user_id is not None and viewer.user_id == self.user_id)

    def newer_than(self, other: ProgressRecord) -> bool:
        """Whether this record should replace ``other`` (pub/sub and polls interleave)."""
        return self.updated_at >= other.updated_at

    # -- JSON (pub/sub payload, --json output) -------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_name": self.job_name,
            "queue": self.queue,
            "user_id": self.user_id,
            "status": self.status.value,
            "total": self.total,
            "processed": self.processed,
            "failed": self.failed,
            "percent": None if self.percent is None else round(self.percent, 2),
            "rate": None if self.rate is None else round(self.rate, 3),
            "message": self.message,
            "meta": dict(self.meta) if self.meta is not None else None,
            "errors": list(self.errors),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
            "eta_at": _iso(self.eta_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgressRecord:
        user_id = data.get("user_id")
        rate = data.get("rate")
        return cls(
            id=str(data["id"]),
            job_name=str(data.get("job_name") or ""),
            queue=str(data.get("queue") or ""),
            status=JobStatus(data["status"]),
            user_id=int(user_id) if user_id is not None else None,
            total=int(data.get("total") or 0),
            processed=int(data.get("processed") or 0),
            failed=int(data.get("failed") or 0),
            message=data.get("message"),
            meta=data.get("meta"),
            rate=float(rate) if rate is not None else None,
            errors=tuple(str(e) for e in data.get("errors") or ()),
            created_at=_parse_time(data.get("created_at")) or datetime.now(UTC),
            started_at=_parse_time(data.get("started_at")),
            updated_at=_parse_time(data.get("updated_at")) or datetime.now(UTC),
            finished_at=_parse_time(data.get("finished_at")),
            eta_at=_parse_time(data.get("eta_at")),
        )

    # -- SQL rows --------------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        meta: dict[str, Any] | None = dict(self.meta) if self.meta is not None else None
        live: dict[str, Any] = {}
        if self.rate is not None:
            live["rate"] = round(self.rate, 3)
        if self.errors:
            live["errors"] = list(self.errors)
        if live:
            meta = {**(meta or {}), RESERVED_META_KEY: live}
        return {
            "id": self.id,
            "job_name": self.job_name[:200],
            "queue": self.queue[:100],
            "user_id": self.user_id,
            "status": self.status,
            "total": self.total,
            "processed": self.processed,
            "failed": self.failed,
            "message": self.message,
            "meta": meta,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "eta_at": self.eta_at,
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ProgressRecord:
        meta = dict(row["meta"]) if row["meta"] is not None else None
        live: Mapping[str, Any] = {}
        if meta is not None and isinstance(meta.get(RESERVED_META_KEY), Mapping):
            live = meta.pop(RESERVED_META_KEY)
            if not meta:
                meta = None
        rate = live.get("rate")
        return cls(
            id=row["id"],
            job_name=row["job_name"],
            queue=row["queue"],
            status=JobStatus(row["status"]),
            user_id=row["user_id"],
            total=row["total"],
            processed=row["processed"],
            failed=row["failed"],
            message=row["message"],
            meta=meta,
            rate=float(rate) if rate is not None else None,
            errors=tuple(str(e) for e in live.get("errors") or ()),
            created_at=row["created_at"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
            eta_at=row["eta_at"],
        )


# ---------------------------------------------------------------------------------------------
# Reads and writes


def save(engine: Engine, record: ProgressRecord) -> None:
    """Insert or update the record (one statement; ``created_at`` of an existing row is kept)."""
    values = record.to_row()
    changing = [k for k in values if k not in ("id", "created_at")]
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert(TABLE) if dialect == "sqlite" else postgresql.insert(TABLE)
            stmt = insert.values(**values).on_conflict_do_update(
                index_elements=[TABLE.c.id], set_={k: insert.excluded[k] for k in changing}
            )
            conn.execute(stmt)
            return
        # Other databases: one writer per job id, so update-then-insert is race-free enough.
        update = TABLE.update().where(TABLE.c.id == record.id).values(**values)
        if conn.execute(update).rowcount == 0:
            conn.execute(TABLE.insert().values(**values))


def get(engine: Engine, job_id: str) -> ProgressRecord | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(TABLE).where(TABLE.c.id == job_id)).mappings().first()
    return ProgressRecord.from_row(row) if row is not None else None


def get_visible(engine: Engine, job_id: str, viewer: Viewer) -> ProgressRecord:
    """The record, or :class:`ProgressNotFoundError` if it is missing *or* not the viewer's."""
    record = get(engine, job_id)
    if record is None or not record.visible_to(viewer):
        raise ProgressNotFoundError(job_id)
    return record


def query(
    engine: Engine,
    *,
    viewer: Viewer | None = None,
    user_id: int | None = None,
    statuses: Iterable[JobStatus] = (),
    ids: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[ProgressRecord]:
    """Records newest first, filtered by owner, statuses and ids; limited to the viewer's."""
    stmt = sa.select(TABLE)
    if viewer is not None and not viewer.admin:
        stmt = stmt.where(TABLE.c.user_id == viewer.user_id)
    if user_id is not None:
        stmt = stmt.where(TABLE.c.user_id == user_id)
    wanted = list(statuses)
    if wanted:
        stmt = stmt.where(TABLE.c.status.in_(wanted))
    if ids is not None:
        stmt = stmt.where(TABLE.c.id.in_(list(ids)))
    stmt = stmt.order_by(TABLE.c.updated_at.desc(), TABLE.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    with engine.connect() as conn:
        return [ProgressRecord.from_row(r) for r in conn.execute(stmt).mappings()]


def finish_if_active(
    engine: Engine,
    job_ids: Sequence[str],
    status: JobStatus,
    message: str,
    *,
    only: Sequence[JobStatus] = ACTIVE,
) -> list[ProgressRecord]:
    """Move the records of ``job_ids`` still in one of ``only`` to ``status``; return them.

    The condition is part of the UPDATE, so a tracker's own final write that lands first wins.
    """
    if not job_ids:
        return []
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": status, "message": message, "updated_at": now}
    if status.finished:
        values |= {"finished_at": now, "eta_at": None}
    else:
        values |= {"eta_at": None}
    update = (
        TABLE.update()
        .where(TABLE.c.id.in_(list(job_ids)), TABLE.c.status.in_(list(only)))
        .values(**values)
    )
    with engine.begin() as conn:
        if engine.dialect.update_returning:  # SQLite >= 3.35, PostgreSQL
            rows = conn.execute(update.returning(*TABLE.c)).mappings().all()
        else:
            conn.execute(update)
            rows = (
                conn.execute(
                    sa.select(TABLE).where(TABLE.c.id.in_(list(job_ids)), TABLE.c.updated_at == now)
                )
                .mappings()
                .all()
            )
    return [ProgressRecord.from_row(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# Records changed from outside the job (recovery, cancel of a queued job)


def engine_of(target: Settings | Engine | None) -> Engine:
    """The engine of ``target``: an engine, settings, or None for this process's settings."""
    from acmeq.config.settings import process_settings
    from acmeq.storage.sql import engine_for

    if isinstance(target, Engine):
        return target
    return engine_for(target if target is not None else process_settings())


def mark_abandoned(
    target: Settings | Engine | None,
    job_ids: Iterable[str],
    reason: str,
    *,
    retrying: Iterable[str] = (),
    connection: redis.Redis | None = None,
) -> list[ProgressRecord]:
    """End the progress of jobs whose process died: failed, or pending when RQ retries them.

    Only records still pending or running change (a tracker's own final write wins). ``target``
    is the settings or engine (None: this process's settings). Returns the changed records, also
    published on ``connection`` when given.
    """
    ids = list(job_ids)
    again = set(retrying)
    engine = engine_of(target)
    changed = finish_if_active(
        engine, [i for i in ids if i not in again], JobStatus.FAILED, f"abandoned: {reason}"
    )
    changed += finish_if_active(
        engine,
        [i for i in ids if i in again],
        JobStatus.PENDING,
        f"attempt abandoned ({reason}); retry scheduled",
        only=(JobStatus.RUNNING,),
    )
    if connection is not None:
        for record in changed:
            publish(connection, record)
    return changed


def mark_cancelled(
    target: Settings | Engine | None,
    job_id: str,
    message: str,
    *,
    connection: redis.Redis | None = None,
) -> ProgressRecord | None:
    """Cancel the progress record of a job that will not run (or no longer runs)."""
    changed = finish_if_active(engine_of(target), [job_id], JobStatus.CANCELLED, message)
    if connection is not None:
        for record in changed:
            publish(connection, record)
    return changed[0] if changed else None


def create_pending(
    target: Settings | Engine | None,
    job_id: str,
    job_name: str,
    queue: str,
    *,
    user_id: int | None = None,
    total: int = 0,
    meta: Mapping[str, Any] | None = None,
    connection: redis.Redis | None = None,
) -> ProgressRecord:
    """Create the ``pending`` record of a job just enqueued, so its owner sees it before it runs.

    Only for jobs that track their progress: an untracked job would stay pending forever. The
    tracker keeps the owner and metadata stored here.
    """
    if meta is not None:
        check_meta(meta)
    record = ProgressRecord(
        id=job_id,
        job_name=job_name,
        queue=queue,
        status=JobStatus.PENDING,
        user_id=user_id,
        total=total,
        meta=dict(meta) if meta is not None else None,
    )
    save(engine_of(target), record)
    if connection is not None:
        publish(connection, record)
    return record


# ---------------------------------------------------------------------------------------------
# Identity and access


@dataclass(frozen=True)
class Viewer:
    """Who is asking. Without an identity the CLI acts as the operator, who sees everything.

    This is an operator identity for the command line, not authentication: whoever can run
    ``acmeq`` against the database and Redis can read every table anyway.
    """

    user_id: int | None
    admin: bool
    label: str

    @classmethod
    def operator(cls) -> Viewer:
        return cls(None, True, "operator")

    def filter(self, records: Iterable[ProgressRecord]) -> list[ProgressRecord]:
        return [r for r in records if r.visible_to(self)]


def find_user(engine: Engine, ident: str, option: str = "--as") -> tuple[int, UserRole, str]:
    """A user by id or email: (id, role, email); :class:`UsageError` naming ``ident`` if none."""
    text = ident.strip()
    if text.isdigit():
        cond = USERS.c.id == int(text)
    elif "@" in text:
        cond = sa.func.lower(USERS.c.email) == text.lower()
    else:
        raise UsageError(f"{option}: expected a user id or email, got {ident!r}")
    with engine.connect() as conn:
        row = conn.execute(sa.select(USERS.c.id, USERS.c.role, USERS.c.email).where(cond)).first()
    if row is None:
        raise UsageError(f"{option}: unknown user {ident!r} (no such id or email in users)")
    return int(row.id), UserRole(row.role), str(row.email)


def resolve_viewer(engine: Engine, ident: str | None) -> Viewer:
    """The viewer for ``--as USER`` / ``ACMEQ_USER``; no identity: the operator (sees all)."""
    if ident is None or not ident.strip():
        return Viewer.operator()
    user_id, role, email = find_user(engine, ident)
    return Viewer(user_id, role is UserRole.ADMIN, email)


def check_meta(meta: Mapping[str, Any]) -> None:
    """Refuse metadata that is not JSON-safe or uses the reserved key (UsageError)."""
    if RESERVED_META_KEY in meta:
        raise UsageError(f"meta key {RESERVED_META_KEY!r} is reserved for acmeq")
    try:
        json.dumps(dict(meta))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"progress meta must be JSON-safe: {exc}") from None


def with_status(record: ProgressRecord, status: JobStatus, message: str) -> ProgressRecord:
    """A copy of ``record`` moved to ``status`` now (for records that exist only in memory)."""
    now = datetime.now(UTC)
    return replace(
        record,
        status=status,
        message=message,
        updated_at=now,
        finished_at=now if status.finished else None,
        eta_at=None,
    )


def publish(connection: redis.Redis, record: ProgressRecord) -> None:
    """Publish ``record`` as JSON on its job's channel and the global one."""
    payload = json.dumps(record.as_dict())
    with connection.pipeline(transaction=False) as pipe:
        pipe.publish(keys.progress_channel(record.id), payload)
        pipe.publish(keys.PROGRESS_CHANNEL, payload)
        pipe.execute()
