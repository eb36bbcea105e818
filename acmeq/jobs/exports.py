"""Export jobs (queue ``exports``): campaigns and donations as CSV, XLSX or PDF.

``acmeq export ...`` prepares the export record and enqueues the job with its ``export_id``; a
job enqueued by name (``acmeq enqueue export_donations --arg format=xlsx``) or by a schedule
gives the filters as arguments instead and the job prepares the record itself.
"""

from __future__ import annotations

from typing import Any

from acmeq.allowlist import job


@job(queue="exports")
def export_campaigns(
    format: str = "csv",
    campaign: list[int] | int | None = None,
    status: list[str] | str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    currency: str | None = None,
    include_pii: bool = False,
    user_id: int | None = None,
    output: str | None = None,
    email: str | None = None,
    dialect: str = "standard",
    export_id: int | None = None,
) -> dict[str, Any]:
    """Export campaigns (goal, raised, matched, progress) with a summary, streamed to a file."""
    from acmeq.exports.runner import export_job

    args = dict(locals())
    return export_job("campaigns", args.pop("export_id"), args)


@job(queue="exports")
def export_donations(
    format: str = "csv",
    campaign: list[int] | int | None = None,
    status: list[str] | str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    currency: str | None = None,
    include_pii: bool = False,
    user_id: int | None = None,
    output: str | None = None,
    email: str | None = None,
    dialect: str = "standard",
    export_id: int | None = None,
) -> dict[str, Any]:
    """Export donations with tax receipt data and currency summaries, streamed to a file."""
    from acmeq.exports.runner import export_job

    args = dict(locals())
    return export_job("donations", args.pop("export_id"), args)
