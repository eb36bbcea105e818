"""Report jobs (queue ``reports``): GenerateReportJob of the seed as ``generate_report``."""

from __future__ import annotations

from typing import Any

from acmeq.allowlist import job


@job(queue="reports")
def generate_report(
    report: str = "campaign-performance",
    format: str = "pdf",
    period: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    user_id: int | None = None,
    output: str | None = None,
    email: str | None = None,
    export_id: int | None = None,
) -> dict[str, Any]:
    """Campaign performance, donations summary or matching report (PDF or XLSX, with charts)."""
    from acmeq.exports.report_runner import report_job

    args = dict(locals())
    return report_job(args.pop("export_id"), args)
