"""Running an export: prepare its record, stream it to a temporary file, publish it atomically.

:func:`prepare_export` checks the request (filters, privacy, PDF size) and creates the
``export_files`` row, so a bad request fails at once in the CLI with exit 2 and the final path is
known before any work is queued. :func:`run_export` is the job's body:

1. rows are read page by page (:mod:`acmeq.exports.queries`) and handed to a streaming writer
   (:mod:`acmeq.exports.writers`, :mod:`acmeq.exports.pdf`) that writes
   ``.<name>.<random>.part`` in the destination directory, with progress tracked per page;
2. on success the file is flushed to disk, renamed over the final name in one ``os.replace``
   (atomic within a directory: a reader sees no file or the whole file, never a partial one),
   and its size and SHA-256 are recorded with an expiry for ``acmeq cleanup``;
3. on any failure -- an exception, a cancellation -- the partial file is deleted and the record
   marked failed with the error; a worker killed outside Python (SIGKILL, OOM) leaves only the
   ``.part`` file, which no reader mistakes for an export and cleanup removes (``*.part``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.errors import ExportError, UsageError
from acmeq.exports import privacy
from acmeq.exports.queries import (
    CAMPAIGNS,
    DONATIONS,
    campaign_conditions,
    count,
    donation_conditions,
    open_dataset,
    snapshot,
)
from acmeq.exports.spec import ExportRequest
from acmeq.exports.writers import CsvWriter, TableWriter, XlsxWriter
from acmeq.storage.models import (
    CampaignStatus,
    DonationStatus,
    ExportFile,
    ExportFormat,
    ExportKind,
    ExportStatus,
)

log = logging.getLogger("acmeq.exports")
EXPORTS: sa.Table = ExportFile.__table__  # type: ignore[attr-defined]
OnPage = Callable[[int, int], None]  # (rows done, total)


@dataclass(frozen=True)
class PreparedExport:
    id: int
    path: Path
    rows: int  # PDF: rows matching when it was prepared; -1: not counted


@dataclass(frozen=True)
class ExportResult:
    id: int
    path: Path
    rows: int
    size: int
    sha256: str
    mail_job: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "export_id": self.id,
            "path": str(self.path),
            "rows": self.rows,
            "size_bytes": self.size,
            "sha256": self.sha256,
            "mail_job": self.mail_job,
        }


def exports_dir(cfg: Settings) -> Path:
    return cfg.exports.directory(cfg.state_dir)


# ---------------------------------------------------------------------------------------------
# Preparing


def check_request(engine: Engine, request: ExportRequest) -> None:
    """Refuse statuses, campaigns and options that do not fit the export (UsageError)."""
    enum: Any = CampaignStatus if request.kind is ExportKind.CAMPAIGNS else DonationStatus
    valid = [s.value for s in enum]
    for status in request.filters.statuses:
        if status not in valid:
            raise UsageError(
                f"--status: unknown {request.kind.value[:-1]} status {status!r}; "
                f"valid: {', '.join(valid)}"
            )
    f = request.filters
    if f.date_from and f.date_to and f.date_from > f.date_to:
        raise UsageError(f"--from {f.date_from} is after --to {f.date_to}")
    if f.campaign_ids:
        with engine.connect() as conn:
            known = set(
                conn.execute(
                    sa.select(CAMPAIGNS.c.id).where(CAMPAIGNS.c.id.in_(f.campaign_ids))
                ).scalars()
            )
        missing = [i for i in f.campaign_ids if i not in known]
        if missing:
            raise UsageError(f"--campaign: unknown campaign {missing[0]}")
    if request.dialect != "standard" and request.format is not ExportFormat.CSV:
        raise UsageError("--dialect only applies to --format csv")


def matching_rows(engine: Engine, request: ExportRequest) -> int:
    with engine.connect() as conn:
        if request.kind is ExportKind.CAMPAIGNS:
            return count(conn, CAMPAIGNS, campaign_conditions(request.filters))
        return count(conn, DONATIONS, donation_conditions(request.filters))


def prepare_export(cfg: Settings, engine: Engine, request: ExportRequest) -> PreparedExport:
    """Validate ``request`` and create its ``export_files`` row (status pending)."""
    check_request(engine, request)
    if request.include_pii:
        who = privacy.requester_by_id(engine, request.user_id)
        privacy.check_pii(engine, who, request.filters.campaign_ids)
    # Counted only where it decides something: a count is one more scan of the table.
    rows = matching_rows(engine, request) if request.format is ExportFormat.PDF else -1
    limit = cfg.exports.pdf_max_rows
    if request.format is ExportFormat.PDF and rows > limit:
        raise UsageError(
            f"--format pdf: {rows:,} rows is more than [exports] pdf_max_rows ({limit:,}); "
            "export csv or xlsx, or narrow the filters"
        )
    now = datetime.now(UTC)
    with engine.begin() as conn:
        export_id = int(
            conn.execute(
                sa.insert(EXPORTS).returning(EXPORTS.c.id),
                {
                    "kind": request.kind,
                    "format": request.format,
                    "status": ExportStatus.PENDING,
                    "user_id": request.user_id,
                    "include_pii": request.include_pii,
                    "created_at": now,
                    # Also for records that never complete (a killed worker): cleanup finds them.
                    "expires_at": now + timedelta(days=cfg.exports.expiry_days),
                },
            ).scalar_one()
        )
        path = _final_path(cfg, request, export_id, now)
        conn.execute(
            EXPORTS.update()
            .where(EXPORTS.c.id == export_id)
            .values(path=str(path), spec=request.with_output(str(path)).as_json())
        )
    return PreparedExport(export_id, path, rows)


def _final_path(cfg: Settings, request: ExportRequest, export_id: int, now: datetime) -> Path:
    if request.output:
        path = Path(request.output).expanduser().absolute()
    else:
        stamp = now.strftime("%Y%m%d-%H%M%S")
        name = f"{request.kind.value}-{stamp}-{export_id}.{request.format.value}"
        path = exports_dir(cfg) / name
    ensure_writable(path.parent)
    return path


def ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create export directory {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise ExportError(f"export directory {directory} is not writable")


# ---------------------------------------------------------------------------------------------
# Running


def load(engine: Engine, export_id: int) -> sa.Row[Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(EXPORTS).where(EXPORTS.c.id == export_id)).first()
    if row is None:
        raise UsageError(f"unknown export {export_id}")
    return row


def _update(engine: Engine, export_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(EXPORTS.update().where(EXPORTS.c.id == export_id).values(**values))


def temp_path(final: Path) -> Path:
    """The partial file beside ``final``: hidden, unique per attempt, never mistaken for it."""
    return final.with_name(f".{final.name}.{uuid4().hex[:8]}.part")


def summary_path(final: Path) -> Path:
    return final.with_name(final.stem + ".summary.csv")


def run_export(
    cfg: Settings,
    engine: Engine,
    export_id: int,
    *,
    job_id: str | None = None,
    on_page: OnPage | None = None,
    in_job: bool = True,
) -> ExportResult:
    """Write export ``export_id`` (prepared by :func:`prepare_export`); see the module doc."""
    from acmeq.progress import track

    record = load(engine, export_id)
    request = ExportRequest.from_json(record.spec or {})
    what = f"{request.kind.value} ({request.format.value})"
    who = privacy.requester_by_id(engine, request.user_id)
    final = Path(record.path)
    options: dict[str, Any] = {} if in_job else {"settings": cfg, "engine": engine}
    if not in_job:
        options.update(job_id=job_id, job_name=f"export_{request.kind.value}", queue="exports")
    try:
        if request.include_pii:  # again: the role may have changed since it was queued
            privacy.check_pii(engine, who, request.filters.campaign_ids)
        _update(engine, export_id, status=ExportStatus.RUNNING, job_id=job_id, error=None)
        with track(
            user_id=request.user_id,
            meta={"export_id": export_id, "format": request.format.value},
            message=f"exporting {what}",
            **options,
        ) as progress:
            rows = _stream(cfg, engine, request, final, progress, on_page)
            # Recorded before the tracker's final write: whoever sees the job completed finds
            # the record completed too.
            size, digest = _record_done(cfg, engine, export_id, final, rows)
    except BaseException as exc:
        _fail(engine, export_id, request, what, exc)
        raise
    if request.include_pii:
        privacy.audit_pii_export(engine, who, export_id, rows)
    mail = None
    if request.email:
        limit = cfg.exports.attach_limit_bytes
        mail = _notify_done(request.email, what, final, rows, size, digest, limit)
    return ExportResult(export_id, final, rows, size, digest, mail)


def _record_done(
    cfg: Settings, engine: Engine, export_id: int, final: Path, rows: int
) -> tuple[int, str]:
    size = final.stat().st_size
    digest = sha256_of(final)
    done = datetime.now(UTC)
    _update(
        engine,
        export_id,
        status=ExportStatus.COMPLETED,
        row_count=rows,
        size_bytes=size,
        sha256=digest,
        completed_at=done,
        expires_at=done + timedelta(days=cfg.exports.expiry_days),
    )
    return size, digest


def _stream(
    cfg: Settings,
    engine: Engine,
    request: ExportRequest,
    final: Path,
    progress: Any,
    on_page: OnPage | None,
) -> int:
    tmp = temp_path(final)
    tmp_summary = temp_path(summary_path(final)) if request.format is ExportFormat.CSV else None
    rows = 0
    try:
        with engine.connect() as raw, snapshot(raw).begin() as tx:
            data = open_dataset(tx.connection, request, cfg.exports.chunk_size)
            progress.set_total(data.total)
            writer = _writer(request, tmp, tmp_summary, data.title, data.sheet, data.columns)
            try:
                for page in data.pages:
                    writer.write_rows(page)
                    rows += len(page)
                    progress.advance(len(page))
                    if on_page is not None:
                        on_page(rows, data.total)
                progress.message(f"finishing {request.format.value} ({rows:,} rows)")
                progress.checkpoint()
                writer.finish(data.summary)
                progress.message(f"{rows:,} rows written")
            except BaseException:
                writer.abort()
                raise
        _sync(tmp)
        if tmp_summary is not None:
            _sync(tmp_summary)
            os.replace(tmp_summary, summary_path(final))
        os.replace(tmp, final)  # the one step that makes the export visible
        _sync_dir(final.parent)
    finally:
        for leftover in (tmp, tmp_summary):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
    return rows


def _writer(
    request: ExportRequest,
    tmp: Path,
    tmp_summary: Path | None,
    title: str,
    sheet: str,
    columns: Any,
) -> TableWriter:
    if request.format is ExportFormat.CSV:
        return CsvWriter(tmp, columns, request.dialect, tmp_summary)
    if request.format is ExportFormat.XLSX:
        return XlsxWriter(tmp, sheet, columns)
    from acmeq.exports.pdf import PdfWriter

    return PdfWriter(tmp, f"{title} export", describe(request), columns)


def describe(request: ExportRequest) -> str:
    """One line naming the filters, for PDF headers and mail."""
    f = request.filters
    parts = [f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"]
    if f.campaign_ids:
        parts.append("campaigns " + ", ".join(map(str, f.campaign_ids)))
    if f.statuses:
        parts.append("status " + ", ".join(f.statuses))
    if f.date_from or f.date_to:
        parts.append(f"from {f.date_from or '…'} to {f.date_to or '…'}")
    if f.currency:
        parts.append(f"currency {f.currency}")
    parts.append("with personal data" if request.include_pii else "without personal data")
    return " · ".join(parts)


def _fail(
    engine: Engine, export_id: int, request: ExportRequest, what: str, exc: BaseException
) -> None:
    _fail_record(engine, export_id, request.email, what, exc)


def _fail_record(
    engine: Engine, export_id: int, email: str | None, what: str, exc: BaseException
) -> None:
    """Mark the record failed with the error; tell the requester unless RQ will retry."""
    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        _update(engine, export_id, status=ExportStatus.FAILED, error=error[:2000])
    except sa.exc.SQLAlchemyError as db_exc:  # keep the original exception
        log.warning("cannot mark export %s failed: %s", export_id, db_exc)
    if email and not _will_retry():
        from acmeq.exports.notify import notify_failed

        notify_failed(email, what, error)


def _notify_done(
    to: str, what: str, path: Path, rows: int, size: int, digest: str, limit: int
) -> str | None:
    from acmeq.exports.notify import notify_done

    return notify_done(to, what, path, rows, size, digest, limit)


def _will_retry() -> bool:
    from rq import get_current_job

    job = get_current_job()
    return bool(job is not None and (getattr(job, "retries_left", 0) or 0) > 0)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Entry point of the jobs


def request_from_args(kind: str, args: dict[str, Any]) -> ExportRequest:
    """An :class:`ExportRequest` from a job's JSON-safe keyword arguments."""
    from acmeq.exports.spec import ExportFilters, check_currency, parse_day

    def ids(value: Any) -> tuple[int, ...]:
        if value is None:
            return ()
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(int(i) for i in items)

    def texts(value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        return tuple(str(s) for s in (value if isinstance(value, list | tuple) else [value]))

    filters = ExportFilters(
        campaign_ids=ids(args.get("campaign")),
        statuses=texts(args.get("status")),
        date_from=parse_day(args["date_from"], "date_from") if args.get("date_from") else None,
        date_to=parse_day(args["date_to"], "date_to") if args.get("date_to") else None,
        currency=check_currency(args.get("currency")),
    )
    return ExportRequest.from_json(
        {
            "kind": kind,
            "format": args.get("format") or "csv",
            "filters": filters.as_json(),
            "include_pii": bool(args.get("include_pii")),
            "user_id": args.get("user_id"),
            "output": args.get("output"),
            "email": args.get("email"),
            "dialect": args.get("dialect") or "standard",
        }
    )


def export_job(kind: str, export_id: int | None, args: dict[str, Any]) -> dict[str, Any]:
    """Body of ``export_campaigns`` / ``export_donations``: run a prepared export, or prepare
    one from the arguments first (a job enqueued by name or by a schedule)."""
    from rq import get_current_job

    from acmeq.config.settings import process_settings
    from acmeq.storage.sql import engine_for

    cfg = process_settings()
    engine = engine_for(cfg)
    if export_id is None:
        export_id = prepare_export(cfg, engine, request_from_args(kind, args)).id
    job = get_current_job()
    result = run_export(cfg, engine, export_id, job_id=job.id if job is not None else None)
    return result.as_json()


def enqueue_prepared(
    cfg: Settings,
    engine: Engine,
    connection: Any,
    export_id: int,
    job_name: str,
    user_id: int | None,
) -> str:
    """Enqueue the job of a prepared export (or report) by name; its pending progress record
    is created at once so a watch shows it before a worker takes it."""
    from acmeq.queues import Enqueuer, JobCall
    from acmeq.tracking.store import create_pending

    enqueuer = Enqueuer(cfg, connection)
    queue = enqueuer.registry.get(job_name).queue
    job_id = str(uuid4())
    # The pending record first: written after the enqueue it could overwrite the record of a
    # job a fast worker has already run.
    create_pending(
        engine,
        job_id,
        job_name,
        queue,
        user_id=user_id,
        meta={"export_id": export_id},
        connection=connection,
    )
    _update(engine, export_id, job_id=job_id)
    meta = {"user_id": user_id} if user_id is not None else None
    call = JobCall(job_name, (), {"export_id": export_id}, job_id=job_id, meta=meta)
    enqueuer.enqueue_call(call)
    return job_id


def workers_serving(connection: Any, queue: str) -> int:
    """How many RQ workers listen on ``queue`` (0: a queued export would wait)."""
    from rq import Queue, Worker

    return int(Worker.count(connection=connection, queue=Queue(queue, connection=connection)))
