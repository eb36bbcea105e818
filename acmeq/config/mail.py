"""Settings of mail (``[mail]``): the one transport jobs and alerts send through.

Kept beside :mod:`acmeq.config.settings` and wired into the loader with a few lines: the
defaults tree, the environment variables and :func:`build_mail`, which validates every key with
the loader's own readers (so problems are reported like every other key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acmeq.config.reader import Reader as Loader

SMTPS_PORT = 465
DEFAULT_TIMEOUT_S = 10.0

MAIL_ENV_KEYS: dict[str, str] = {
    "ACMEQ_MAIL_TRANSPORT": "mail.transport",
    "ACMEQ_MAIL_FROM": "mail.from_address",
    "ACMEQ_MAIL_REPLY_TO": "mail.reply_to",
    "ACMEQ_MAIL_OUTBOX": "mail.outbox_dir",
    "ACMEQ_MAIL_SMTP_HOST": "mail.smtp_host",
    "ACMEQ_MAIL_SMTP_PORT": "mail.smtp_port",
    "ACMEQ_MAIL_SMTP_SECURITY": "mail.smtp_security",
    "ACMEQ_MAIL_SMTP_USER": "mail.smtp_user",
    "ACMEQ_MAIL_SMTP_PASSWORD": "mail.smtp_password",
    "ACMEQ_MAIL_TIMEOUT": "mail.timeout",
}
MAIL_SECRET_KEYS = {"mail.smtp_password"}


class TransportKind(StrEnum):
    AUTO = "auto"  # smtp when a mail server is configured anywhere, else outbox
    SMTP = "smtp"
    OUTBOX = "outbox"


class Security(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS (SMTPS, port 465)


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to reach the mail server (shared by mail jobs and alert notices)."""

    host: str = "localhost"
    port: int = 25
    security: Security = Security.NONE
    user: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MailSettings:
    transport: TransportKind = TransportKind.OUTBOX  # resolved: never AUTO
    from_address: str = "ACME Giving <noreply@acme.example>"
    reply_to: str | None = None
    outbox_dir: Path | None = None  # None: <state dir>/outbox
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    default_locale: str = "en"
    bulk_batch_size: int = 200
    # Directories attachments may come from (besides the state directory, which holds the
    # export files): a job's arguments must not be able to mail any file the worker can read.
    attachment_dirs: tuple[Path, ...] = ()

    def outbox_path(self, state_dir: Path) -> Path:
        return self.outbox_dir or (state_dir / "outbox")


def mail_defaults() -> dict[str, Any]:
    """The ``[mail]`` tree of defaults ("" and 0 mean: take the monitoring value or the rule)."""
    return {
        "transport": "auto",
        "from_address": "ACME Giving <noreply@acme.example>",
        "reply_to": "",
        "outbox_dir": "",
        "smtp_host": "",
        "smtp_port": 0,
        "smtp_security": "",
        "smtp_user": "",
        "smtp_password": "",
        "timeout": DEFAULT_TIMEOUT_S,
        "default_locale": "en",
        "bulk_batch_size": 200,
        "attachment_dirs": [],
    }


def build_mail(loader: Loader) -> MailSettings:
    """Validate ``[mail]``; unset SMTP keys fall back to the ``[monitoring]`` ones (one server)."""
    k = "mail."
    values = loader.values
    host = loader._str(k + "smtp_host").strip()
    mon_host_set = loader.sources.get("monitoring.smtp_host", "default") != "default"
    mon_host = str(values.get("monitoring.smtp_host") or "localhost")
    port = loader._int(k + "smtp_port", 0, 65535) or loader._int("monitoring.smtp_port", 1, 65535)
    security_raw = loader._str(k + "smtp_security").strip()
    if security_raw:
        security = loader._choice(k + "smtp_security", Security)
    elif port == SMTPS_PORT:
        security = Security.TLS
    elif values.get("monitoring.smtp_starttls") is True or str(
        values.get("monitoring.smtp_starttls")
    ).lower() in ("1", "true", "yes", "on"):
        security = Security.STARTTLS
    else:
        security = Security.NONE
    smtp = SmtpConfig(
        host=host or mon_host,
        port=port,
        security=security,
        user=(loader._str(k + "smtp_user") or str(values.get("monitoring.smtp_user") or ""))
        or None,
        password=(
            loader._str(k + "smtp_password") or str(values.get("monitoring.smtp_password") or "")
        )
        or None,
        timeout=loader._float(k + "timeout"),
    )
    kind = loader._choice(k + "transport", TransportKind)
    if kind is TransportKind.AUTO:
        kind = TransportKind.SMTP if (host or mon_host_set) else TransportKind.OUTBOX
        origin = loader.sources.get(k + "smtp_host" if host else "monitoring.smtp_host")
        source = loader.sources.get(k + "transport", "default")
        loader._effective(
            k + "transport",
            str(kind),
            f"{source} (auto: {origin})" if kind is TransportKind.SMTP else f"{source} (auto)",
        )
    from_address = loader._str(k + "from_address").strip()
    if "@" not in from_address:
        loader._bad(k + "from_address", "must be an email address")
    reply_to = loader._str(k + "reply_to").strip()
    if reply_to and "@" not in reply_to:
        loader._bad(k + "reply_to", "must be an email address")
    outbox = loader._str(k + "outbox_dir").strip()
    locale = loader._str(k + "default_locale").strip() or "en"
    return MailSettings(
        transport=kind,
        from_address=from_address,
        reply_to=reply_to or None,
        outbox_dir=Path(outbox).expanduser() if outbox else None,
        smtp=smtp,
        default_locale=locale,
        bulk_batch_size=loader._int(k + "bulk_batch_size", 1),
        attachment_dirs=tuple(
            Path(d).expanduser()
            for d in loader._list(k + "attachment_dirs", lambda v: isinstance(v, str), "paths")
        ),
    )
