"""Where alert notices go: the log, mail over SMTP, and a Slack-compatible JSON webhook.

Each sender takes one :class:`Notice` and either delivers it or raises :class:`AlertChannelError`
with one line naming the channel, the destination and the reason (``email to ops@acme.example via
localhost:25: Connection refused``), which `acmeq alerts test` prints as it is. The log channel
cannot fail. Retrying a failed delivery is the caller's business
(:mod:`acmeq.observability.alerts.engine` keeps an
outbox in Redis).
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from acmeq import __version__
from acmeq.config.settings import Settings
from acmeq.errors import AlertChannelError
from acmeq.observability.alerts.notice import LABELS, Notice, NoticeKind, duration, iso

log = logging.getLogger("acmeq.observability.alerts.engine")

SMTP_TIMEOUT_S = 10.0
WEBHOOK_TIMEOUT_S = 5.0
SMTPS_PORT = 465  # implicit TLS; any other port speaks plain SMTP (optionally STARTTLS)
SUBJECT_MAX = 200


class Channel(StrEnum):
    LOG = "log"
    EMAIL = "email"
    WEBHOOK = "webhook"


# Slack attachment colours.
_COLORS = {
    NoticeKind.FIRING: "danger",
    NoticeKind.REMINDER: "warning",
    NoticeKind.RESOLVED: "good",
    NoticeKind.TEST: "#439FE0",
}


def recipients(settings: Settings) -> list[str]:
    return [a.strip() for a in (settings.alert_email or "").split(",") if a.strip()]


def configured(settings: Settings) -> list[Channel]:
    """The channels a notice goes to: the log always, mail and webhook when configured."""
    channels = [Channel.LOG]
    if recipients(settings):
        channels.append(Channel.EMAIL)
    if settings.alerts.webhook_url:
        channels.append(Channel.WEBHOOK)
    return channels


def send(channel: Channel, settings: Settings, notice: Notice) -> None:
    """Deliver ``notice`` on one channel; raise :class:`AlertChannelError` when it cannot."""
    if channel is Channel.LOG:
        log_notice(notice)
    elif channel is Channel.EMAIL:
        send_email(settings, notice)
    else:
        send_webhook(settings, notice)


def describe(channel: Channel, settings: Settings) -> str:
    """Where a channel delivers, for messages (webhook URL masked: it is a credential)."""
    cfg = settings.alerts
    if channel is Channel.EMAIL:
        return f"email to {', '.join(recipients(settings))} via {settings.mail.smtp.where}"
    if channel is Channel.WEBHOOK:
        return f"webhook {mask_webhook(cfg.webhook_url or '')}"
    return "log (logger acmeq.observability.alerts.engine)"


def mask_webhook(url: str) -> str:
    """``https://hooks.slack.com/***``: the path of an incoming webhook is its secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


# -- log ------------------------------------------------------------------------------------------


def log_notice(notice: Notice) -> None:
    level = logging.INFO if notice.kind is NoticeKind.RESOLVED else logging.WARNING
    log.log(level, "alert %s", notice.title)
    for line in notice.details:
        log.log(level, "alert %s:   %s", notice.alert_id, line)


# -- email ----------------------------------------------------------------------------------------


def subject(notice: Notice) -> str:
    text = f"[acmeq] {notice.title}"
    return text if len(text) <= SUBJECT_MAX else text[: SUBJECT_MAX - 1] + "…"


def body(notice: Notice) -> str:
    """The plain-text mail body: what, how much, since when, and where to look."""
    lines = [f"{LABELS[notice.kind]} {notice.alert_id} ({notice.severity})", "", notice.message]
    if notice.details:
        lines += ["", *(f"  {d}" for d in notice.details)]
    lines += ["", f"rule:       {notice.rule}", f"queue:      {notice.queue}"]
    if notice.rule == "failed":  # an event: a count, no threshold
        lines.append(f"failed:     {notice.value:g} jobs in this notice")
    elif notice.rule != "test":
        lines += [f"value:      {notice.value:g}", f"threshold:  {notice.threshold:g}"]
    lines += [
        f"since:      {iso(notice.since)} ({duration(notice.at - notice.since)} ago)",
        f"evaluated:  {iso(notice.at)}" + (f" by {notice.evaluator}" if notice.evaluator else ""),
        "",
    ]
    if notice.kind is NoticeKind.REMINDER:
        lines.append("This alert is still active; you are reminded once per cooldown.")
    elif notice.kind is NoticeKind.RESOLVED:
        lines.append("The condition has cleared; no further notice will follow.")
    elif notice.kind is NoticeKind.TEST:
        lines.append("A test notice from `acmeq alerts test`; nothing is wrong.")
    lines += [
        "Run `acmeq status` or `acmeq alerts list` on any host for the current state.",
        "",
        "-- ",
        f"acmeq {__version__} alerting",
    ]
    return "\n".join(lines) + "\n"


def build_email(settings: Settings, notice: Notice) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject(notice)
    msg["From"] = settings.alerts.mail_from
    msg["To"] = ", ".join(recipients(settings))
    msg["Date"] = formatdate(notice.at, localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=settings.alerts.mail_from.rpartition("@")[2] or None)
    msg["X-Acmeq-Alert"] = f"{notice.kind} {notice.alert_id}"
    msg.set_content(body(notice))
    return msg


def send_email(settings: Settings, notice: Notice) -> None:
    # One SMTP code path for alerts and mail jobs (acmeq.mail.transport), to the [mail] server:
    # its smtp_* keys take the [monitoring] ones (ACMEQ_SMTP_*) when left unset.
    from acmeq.errors import MailError
    from acmeq.mail.transport import send_once

    to = recipients(settings)
    where = describe(Channel.EMAIL, settings)
    if not to:
        raise AlertChannelError(f"{where}: no recipient (set QUEUE_ALERT_EMAIL)")
    msg = build_email(settings, notice)
    try:
        refused = send_once(settings.mail.smtp, msg, settings.alerts.mail_from, to)
    except MailError as exc:
        raise AlertChannelError(f"{where}: {exc.reason}") from None
    if refused:
        # Some recipients took it: the notice is delivered; say who did not.
        log.error("%s: refused by the server for %s", where, ", ".join(sorted(refused)))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error or "")
        return f"{exc.smtp_code} {text}".strip()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient refused: " + ", ".join(sorted(exc.recipients))
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- webhook --------------------------------------------------------------------------------------


def webhook_payload(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` + one attachment), plus the notice itself.

    Slack, Mattermost, Rocket.Chat and Teams' Slack-compatible connectors show ``text`` and the
    attachment and ignore the ``acmeq`` object, which carries the notice for other receivers.
    """
    fields = [
        {"title": "queue", "value": notice.queue, "short": True},
        {"title": "severity", "value": str(notice.severity), "short": True},
        {"title": "value", "value": f"{notice.value:g}", "short": True},
        {"title": "threshold", "value": f"{notice.threshold:g}", "short": True},
        {"title": "since", "value": iso(notice.since), "short": True},
    ]
    if notice.rule in ("failed", "test"):  # no threshold to show
        fields = [f for f in fields if f["title"] != "threshold"]
    text = notice.message
    if notice.details:
        text += "\n" + "\n".join(f"• {d}" for d in notice.details)
    return {
        "text": f"[acmeq] {notice.title}",
        "attachments": [
            {
                "fallback": f"[acmeq] {notice.title}",
                "color": _COLORS[notice.kind],
                "title": f"{LABELS[notice.kind]} {notice.alert_id}",
                "text": text,
                "fields": fields,
                "footer": "acmeq alerts · run `acmeq status` for the current state",
                "ts": int(notice.at),
            }
        ],
        "acmeq": notice.to_dict(),
    }


def send_webhook(settings: Settings, notice: Notice) -> None:
    url = settings.alerts.webhook_url
    where = describe(Channel.WEBHOOK, settings)
    if not url:
        raise AlertChannelError(f"{where}: no URL (set ACMEQ_ALERT_WEBHOOK_URL)")
    request = urllib.request.Request(
        url,
        data=json.dumps(webhook_payload(notice)).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"acmeq/{__version__}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise AlertChannelError(f"{where}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = _reason(reason) if isinstance(reason, BaseException) else str(reason)
        raise AlertChannelError(f"{where}: {text}") from None
    except (OSError, ValueError) as exc:
        raise AlertChannelError(f"{where}: {_reason(exc)}") from None


def send_all(
    settings: Settings, notice: Notice, channels: Sequence[Channel]
) -> dict[Channel, str | None]:
    """Send on each channel; a failure does not stop the others. Maps channel -> error or None."""
    results: dict[Channel, str | None] = {}
    for channel in channels:
        try:
            send(channel, settings, notice)
            results[channel] = None
        except AlertChannelError as exc:
            results[channel] = str(exc)
    return results
