"""E-mail when an export or report ends: the file attached, or its path when it is too large.

Mail goes through the mail feature (:func:`acmeq.mail.enqueue_email`, job ``send_email``); when
that is not installed or not registered the notice is skipped with a warning: an export never
fails because its notice could not be sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("acmeq.exports")


def send(to: str, subject: str, text: str, attachments: list[str] | None = None) -> str | None:
    """Enqueue one e-mail; return its job id, or None when mail is not available."""
    try:
        from acmeq.mail import enqueue_email
    except ImportError:
        return _by_name(to, subject, text, attachments)
    try:
        return enqueue_email(to, subject, text=text, attachments=attachments or None)
    except Exception as exc:  # a notice must never fail the export
        log.warning("export notice to %s not sent: %s", to, exc)
        return None


def _by_name(to: str, subject: str, text: str, attachments: list[str] | None) -> str | None:
    import acmeq

    try:
        job = acmeq.enqueue("send_email", to, subject, text=text, attachments=attachments)
    except Exception as exc:
        log.warning("export notice to %s not sent (no mail job: %s)", to, exc)
        return None
    return str(getattr(job, "id", job))


def notify_done(
    to: str, what: str, path: Path, rows: int, size: int, sha256: str, attach_limit: int
) -> str | None:
    """Tell the requester the export is ready: attached up to ``attach_limit`` bytes."""
    human = f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} kB"
    lines = [
        f"Your export of {what} is ready: {rows:,} rows, {human}.",
        "",
        f"File: {path}",
        f"SHA-256: {sha256}",
    ]
    attachments: list[str] | None = None
    if size <= attach_limit:
        attachments = [str(path)]
        summary = path.with_name(path.stem + ".summary.csv")
        if path.suffix == ".csv" and summary.exists():
            attachments.append(str(summary))
        lines.insert(2, "The file is attached.")
    else:
        lines.insert(2, f"It is larger than {attach_limit // 1024 // 1024} MB, so it is not "
                        "attached; fetch it from the path below.")  # fmt: skip
    return send(to, f"acmeq: export of {what} ready", "\n".join(lines), attachments)


def notify_failed(to: str, what: str, error: str) -> str | None:
    text = f"Your export of {what} failed:\n\n{error}\n\nNo file was written."
    return send(to, f"acmeq: export of {what} failed", text)
