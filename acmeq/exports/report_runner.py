"""Running a report like an export: a record, a temporary file, an atomic rename, progress, mail.

Reports hold aggregates only (no names, no e-mails), so they need no privacy check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.exports.reports import Period, ReportName, build_report, parse_period
from acmeq.exports.runner import (
    EXPORTS,
    ExportResult,
    PreparedExport,
    _fail_record,
    _record_done,
    _sync,
    _sync_dir,
    _update,
    ensure_writable,
    exports_dir,
    load,
    temp_path,
)
from acmeq.exports.spec import choice
from acmeq.storage.models import ExportFormat, ExportKind, ExportStatus

REPORT_FORMATS = (ExportFormat.PDF, ExportFormat.XLSX)


def prepare_report(
    cfg: Settings,
    engine: Engine,
    name: str,
    format: str,
    period: Period,
    *,
    user_id: int | None = None,
    output: str | None = None,
    email: str | None = None,
) -> PreparedExport:
    """Validate and create the report's ``export_files`` row (kind ``report``)."""
    report = choice(ReportName, name, "report")
    fmt = choice(ExportFormat, format, "--format")
    if fmt not in REPORT_FORMATS:
        raise UsageError(f"--format: reports are pdf or xlsx, got {format!r}")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        export_id = int(
            conn.execute(
                sa.insert(EXPORTS).returning(EXPORTS.c.id),
                {"kind": ExportKind.REPORT, "format": fmt, "status": ExportStatus.PENDING,
                 "user_id": user_id, "created_at": now,
                 "expires_at": now + timedelta(days=cfg.exports.expiry_days)},
            ).scalar_one()
        )  # fmt: skip
        if output:
            path = Path(output).expanduser().absolute()
        else:
            stamp = now.strftime("%Y%m%d-%H%M%S")
            path = exports_dir(cfg) / f"report-{report.value}-{stamp}-{export_id}.{fmt.value}"
        ensure_writable(path.parent)
        spec = {
            "report": report.value,
            "format": fmt.value,
            "period": period.as_json(),
            "user_id": user_id,
            "output": str(path),
            "email": email,
        }
        conn.execute(
            EXPORTS.update().where(EXPORTS.c.id == export_id).values(path=str(path), spec=spec)
        )
    return PreparedExport(export_id, path, 0)


def run_report(
    cfg: Settings,
    engine: Engine,
    export_id: int,
    *,
    job_id: str | None = None,
    in_job: bool = True,
) -> ExportResult:
    """Build and render report ``export_id``; publish it atomically; mail it if asked."""
    from acmeq.exports.report_render import render_pdf, render_xlsx
    from acmeq.progress import track

    record = load(engine, export_id)
    spec: dict[str, Any] = dict(record.spec or {})
    name = ReportName(spec["report"])
    fmt = ExportFormat(spec["format"])
    period = Period.from_json(spec["period"])
    final = Path(record.path)
    what = f"report {name.value} ({fmt.value}, {period.label})"
    options: dict[str, Any] = {}
    if not in_job:
        options = {"settings": cfg, "engine": engine, "job_id": job_id,
                   "job_name": "generate_report", "queue": "reports"}  # fmt: skip
    tmp = temp_path(final)
    try:
        _update(engine, export_id, status=ExportStatus.RUNNING, job_id=job_id, error=None)
        with track(
            total=2, user_id=spec.get("user_id"), meta={"export_id": export_id},
            message=f"building {what}", **options,
        ) as progress:  # fmt: skip
            with engine.connect() as conn:
                report = build_report(conn, name, period)
            progress.advance()
            progress.message(f"drawing {fmt.value}")
            (render_pdf if fmt is ExportFormat.PDF else render_xlsx)(report, tmp)
            _sync(tmp)
            tmp.replace(final)
            _sync_dir(final.parent)
            progress.advance()
            progress.message("report written")
            rows = sum(len(s.rows) for s in report.sections)
            # Recorded before the tracker's final write (see run_export).
            size, digest = _record_done(cfg, engine, export_id, final, rows)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _fail_record(engine, export_id, spec.get("email"), what, exc)
        raise
    mail = None
    if spec.get("email"):
        from acmeq.exports.notify import notify_done

        limit = cfg.exports.attach_limit_bytes
        mail = notify_done(spec["email"], what, final, rows, size, digest, limit)
    return ExportResult(export_id, final, rows, size, digest, mail)


def report_job(export_id: int | None, args: dict[str, Any]) -> dict[str, Any]:
    """Body of ``generate_report``."""
    from rq import get_current_job

    from acmeq.config.settings import process_settings
    from acmeq.storage.sql import engine_for

    cfg = process_settings()
    engine = engine_for(cfg)
    if export_id is None:

        def text(key: str) -> str | None:  # `--arg period=2026` arrives as a number
            value = args.get(key)
            return None if value is None else str(value)

        period = parse_period(text("period"), text("date_from"), text("date_to"))
        export_id = prepare_report(
            cfg, engine, args.get("report") or "", args.get("format") or "pdf", period,
            user_id=args.get("user_id"), output=args.get("output"), email=args.get("email"),
        ).id  # fmt: skip
    job = get_current_job()
    return run_report(cfg, engine, export_id, job_id=job.id if job else None).as_json()
