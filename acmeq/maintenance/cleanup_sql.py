"""Batched deletion of expired SQL rows: short transactions, keyset pagination, guards.

Every table is walked in ``(time column, primary key)`` order from the oldest row, ``batch_size``
rows per transaction: the transaction selects the batch, asks the category's guard which rows
must stay (a job still queued or running, an in-flight donation ...), deletes the rest by
primary key and commits. No statement ever touches more than one batch, so PostgreSQL holds row
locks on at most ``batch_size`` rows at a time and SQLite's write lock is held for one short
batch; other writers interleave between batches.

A dry run walks the same batches with the same guards and deletes nothing, so it reports
exactly what a real run would have deleted at that moment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from acmeq.maintenance.report import CategoryResult

# Given the transaction and the batch's rows: the primary keys that must be kept.
Guard = Callable[[Connection, Sequence[Any]], set[Any]]
# Called inside the transaction with the rows about to be deleted (issue #17's hash chain will
# record a checkpoint here before audit rows go).
BeforeDelete = Callable[[Connection, Sequence[Any]], None]


def table(name: str) -> sa.Table:
    return SQLModel.metadata.tables[name]


def row_bytes(tbl: sa.Table, dialect: str) -> sa.ColumnElement[Any]:
    """An estimate of a row's stored size: PostgreSQL's ``pg_column_size(row)``, elsewhere the
    sum of the lengths of its values."""
    if dialect == "postgresql":
        return sa.func.pg_column_size(sa.literal_column(f'"{tbl.name}".*'))
    total: sa.ColumnElement[Any] = sa.literal(0)
    for column in tbl.c:
        total = total + sa.func.coalesce(sa.func.length(sa.cast(column, sa.LargeBinary)), 0)
    return total


@dataclass
class Sweep:
    """One table's expired rows: ``time_col`` < cutoff, oldest first."""

    tbl: sa.Table
    time_col: str
    cutoff: datetime
    columns: tuple[str, ...] = ()  # extra columns the guard or the hook needs
    where: sa.ColumnElement[bool] | None = None
    guard: Guard | None = None
    before_delete: BeforeDelete | None = None
    # Called after the transaction committed, with the deleted rows (files to unlink ...).
    after_delete: Callable[[Sequence[Any]], None] | None = None
    # Size of each row's data when it is not the row itself (an export's file).
    size_of: Callable[[Any], int] | None = None


def run_sweep(
    engine: Engine, sweep: Sweep, result: CategoryResult, *, batch_size: int, dry_run: bool
) -> None:
    """Walk ``sweep`` in batches, deleting (unless ``dry_run``) what its guard does not keep."""
    tbl = sweep.tbl
    (pk,) = tbl.primary_key.columns
    when = tbl.c[sweep.time_col]
    size = row_bytes(tbl, engine.dialect.name).label("_bytes")
    extra = [tbl.c[name] for name in sweep.columns if name not in (pk.name, when.name)]
    base = sa.select(pk, when, *extra, size).where(when < sweep.cutoff)
    if sweep.where is not None:
        base = base.where(sweep.where)
    base = base.order_by(when, pk).limit(batch_size)
    last: tuple[Any, Any] | None = None
    while True:
        query = base
        if last is not None:
            # ">=" first: a plain range the index serves (with the OR alone SQLite scanned
            # from the oldest row on every batch); the OR then skips the rows already seen.
            query = query.where(when >= last[0], sa.or_(when > last[0], pk > last[1]))
        with result.transaction(), engine.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return
            last = (rows[-1][1], rows[-1][0])
            keep = sweep.guard(conn, rows) if sweep.guard else set()
            doomed = [r for r in rows if r[0] not in keep]
            result.kept += len(rows) - len(doomed)
            measure = sweep.size_of or _row_size
            found_bytes = sum(measure(r) for r in doomed)
            result.add_found(len(doomed), found_bytes)
            if not dry_run and doomed:
                if sweep.before_delete is not None:
                    sweep.before_delete(conn, doomed)
                ids = [r[0] for r in doomed]
                deleted = conn.execute(sa.delete(tbl).where(pk.in_(ids))).rowcount
                result.add_deleted(int(deleted), found_bytes if deleted == len(ids) else 0)
        if not dry_run and doomed and sweep.after_delete is not None:
            sweep.after_delete(doomed)
        if len(rows) < batch_size:
            return


def _row_size(row: Any) -> int:
    return int(row._bytes or 0)


# -- guards ------------------------------------------------------------------------------------


def in_flight_entities(conn: Connection, rows: Sequence[Any]) -> set[Any]:
    """Audit rows about a donation still pending or a webhook event not processed yet."""
    donations = {r.entity_id for r in rows if r.entity_type in ("donation", "donations")}
    events = {r.entity_id for r in rows if r.entity_type in ("webhook_event", "webhook_events")}
    busy: set[str] = set()
    if donations:
        tbl = table("donations")
        ids = [int(i) for i in donations if i.isdigit()]
        found = conn.execute(
            sa.select(tbl.c.id).where(tbl.c.id.in_(ids), tbl.c.status == "pending")
        ).scalars()
        busy |= {str(i) for i in found}
    if events:
        tbl = table("webhook_events")
        ids = [int(i) for i in events if i.isdigit()]
        found = conn.execute(
            sa.select(tbl.c.id).where(tbl.c.id.in_(ids), tbl.c.status == "received")
        ).scalars()
        busy |= {str(i) for i in found}
    if not busy:
        return set()
    return {
        r[0]
        for r in rows
        if r.entity_id in busy
        and r.entity_type in ("donation", "donations", "webhook_event", "webhook_events")
    }


def prune_audit_log(
    engine: Engine,
    cutoff: datetime,
    result: CategoryResult,
    *,
    batch_size: int,
    dry_run: bool,
    before_delete: BeforeDelete | None = None,
) -> None:
    """Delete audit entries older than ``cutoff``, in batches, oldest first.

    The audit trail of a donation still pending or a webhook event not yet processed stays
    whatever its age. ``before_delete`` runs inside each batch's transaction with the rows about
    to go: issue #17's hash chain wraps this function to record its checkpoint there.
    """
    sweep = Sweep(
        table("audit_log"),
        "at",
        cutoff,
        columns=("entity_type", "entity_id"),
        guard=in_flight_entities,
        before_delete=before_delete,
    )
    run_sweep(engine, sweep, result, batch_size=batch_size, dry_run=dry_run)
