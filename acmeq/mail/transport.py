"""The mail transports: SMTP (jobs and alert notices share this one code path) and an outbox.

``smtp``: host, port, ``none``/``starttls``/``tls`` (implicit TLS), optional login, a timeout for
every socket operation. A process keeps one connection per server and reuses it between sends
(a bulk batch does not pay a TCP and TLS handshake per message); a connection the server closed
meanwhile is noticed before anything is sent and replaced once.

The conversation is driven phase by phase (MAIL, RCPT, DATA) instead of through
``smtplib.SMTP.sendmail`` so that a failure says whether the message could have been delivered:

- an error reply, a refused connection or login, or a broken connection *before* DATA: nothing
  was delivered (:class:`acmeq.errors.MailError`); the caller may retry;
- a broken connection *during* DATA: the server may have taken the message
  (:class:`acmeq.errors.UncertainDeliveryError`); the idempotent senders do not resend it.

``outbox``: every message becomes one ``.eml`` file (written atomically) in a directory, the
embedded default when no mail server is configured; the envelope recipients (Bcc included) are
kept in an ``X-Acmeq-Envelope-To`` header so nothing is lost.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Sequence
from email.message import Message
from pathlib import Path
from typing import Protocol

from acmeq.config.mail import SmtpConfig, TransportKind
from acmeq.config.settings import Settings
from acmeq.errors import MailError, UncertainDeliveryError

# A reused connection idle longer than this is checked with NOOP before use (servers drop idle
# clients after a few minutes; the check costs one round trip).
IDLE_CHECK_S = 20.0


class Transport(Protocol):
    description: str

    def send(self, msg: Message, from_addr: str, to_addrs: Sequence[str]) -> dict[str, str]:
        """Send ``msg`` to ``to_addrs``; return the refused recipients (address -> reason)."""
        ...


def smtp_reason(exc: BaseException) -> str:
    """One line for an SMTP or socket failure: ``550 5.1.1 no such user``, ``timed out``."""
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error or "")
        return f"{exc.smtp_code} {text}".strip()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient refused: " + ", ".join(sorted(exc.recipients))
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class SmtpTransport:
    """Sends over one (reused) SMTP connection; thread-safe (one send at a time)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.description = f"smtp {config.where}"
        self._smtp: smtplib.SMTP | None = None
        self._used = 0.0
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------------
    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        smtp: smtplib.SMTP
        try:
            if cfg.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            try:
                smtp.ehlo()
                if cfg.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if cfg.user:
                    smtp.login(cfg.user, cfg.password or "")
            except BaseException:
                with contextlib.suppress(Exception):
                    smtp.close()
                raise
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(self.description, smtp_reason(exc)) from None
        return smtp

    def _connection(self) -> smtplib.SMTP:
        smtp = self._smtp
        if smtp is not None and time.monotonic() - self._used > IDLE_CHECK_S:
            try:
                code, _ = smtp.noop()
                if code != 250:
                    raise smtplib.SMTPServerDisconnected("noop refused")
            except (OSError, smtplib.SMTPException):
                self._drop()
                smtp = None
        if smtp is None:
            smtp = self._smtp = self._connect()
        return smtp

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.close()

    def close(self) -> None:
        with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is not None:
                with contextlib.suppress(Exception):
                    smtp.quit()
                with contextlib.suppress(Exception):
                    smtp.close()

    # -- sending -------------------------------------------------------------------------------
    def send(self, msg: Message, from_addr: str, to_addrs: Sequence[str]) -> dict[str, str]:
        if not to_addrs:
            raise MailError(self.description, "no recipient")
        payload = _payload(msg)
        with self._lock:
            for attempt in (1, 2):
                smtp = self._connection()
                try:
                    refused = self._deliver(smtp, from_addr, to_addrs, payload)
                except _Reconnect:
                    self._drop()
                    if attempt == 2:
                        raise MailError(self.description, "server closed the connection") from None
                    continue
                self._used = time.monotonic()
                return refused
        raise AssertionError("unreachable")  # pragma: no cover

    def _deliver(
        self, smtp: smtplib.SMTP, from_addr: str, to_addrs: Sequence[str], payload: bytes
    ) -> dict[str, str]:
        where = self.description
        try:
            code, resp = smtp.mail(from_addr)
            if code != 250:
                _rset(smtp)
                raise MailError(where, f"sender refused: {code} {_text(resp)}")
            refused: dict[str, str] = {}
            for rcpt in to_addrs:
                code, resp = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = f"{code} {_text(resp)}"
            if len(refused) == len(to_addrs):
                _rset(smtp)
                first = next(iter(refused.values()))
                raise MailError(where, f"every recipient refused ({first})")
        except smtplib.SMTPServerDisconnected:
            raise _Reconnect() from None  # nothing handed over yet: reconnect and try again
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            raise MailError(where, smtp_reason(exc)) from None
        try:
            smtp.data(payload)
        except smtplib.SMTPResponseException as exc:
            # The server answered DATA with an error: it did not take the message.
            _rset(smtp)
            raise MailError(where, smtp_reason(exc)) from None
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            reason = f"connection lost during DATA: {smtp_reason(exc)}"
            raise UncertainDeliveryError(where, reason) from None
        return refused


class _Reconnect(Exception):
    pass


def _rset(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):
        smtp.rset()


def _text(resp: bytes | str) -> str:
    return resp.decode(errors="replace") if isinstance(resp, bytes) else str(resp)


def _payload(msg: Message) -> bytes:
    """The message as sent: CRLF line ends, Bcc removed (recipients are in the envelope)."""
    sent = copy.copy(msg)  # as smtplib.send_message does: deleting rebinds the header list
    del sent["Bcc"]
    del sent["Resent-Bcc"]
    return sent.as_bytes(policy=sent.policy.clone(linesep="\r\n"))


class OutboxTransport:
    """Writes each message as ``<dir>/<utc stamp>-<n>-<message id>.eml``; never fails silently."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"outbox {directory}"
        self.last_path: Path | None = None

    def send(self, msg: Message, from_addr: str, to_addrs: Sequence[str]) -> dict[str, str]:
        if not to_addrs:
            raise MailError(self.description, "no recipient")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            ident = re.sub(r"[^A-Za-z0-9._-]", "", str(msg.get("Message-ID", ""))[:60]) or "mail"
            name = f"{stamp}-{os.getpid()}-{next(_OUTBOX_SEQ)}-{ident}.eml"
            path = self.directory / name
            tmp = self.directory / f".{name}.tmp"
            del msg["X-Acmeq-Envelope-To"]
            msg["X-Acmeq-Envelope-To"] = ", ".join(to_addrs)
            msg["X-Acmeq-Envelope-From"] = from_addr
            tmp.write_bytes(msg.as_bytes())
            tmp.replace(path)
        except OSError as exc:
            raise MailError(self.description, smtp_reason(exc)) from None
        self.last_path = path
        return {}


_OUTBOX_SEQ = itertools.count(1)
_CACHE: dict[tuple[int, SmtpConfig], SmtpTransport] = {}
_CACHE_LOCK = threading.Lock()


def shared_smtp(config: SmtpConfig) -> SmtpTransport:
    """This process's reused transport for ``config`` (a forked child gets its own)."""
    key = (os.getpid(), config)
    with _CACHE_LOCK:
        transport = _CACHE.get(key)
        if transport is None:
            for stale in [k for k in _CACHE if k[0] != key[0]]:
                del _CACHE[stale]  # the parent's socket: never touch it from a child
            transport = _CACHE[key] = SmtpTransport(config)
        return transport


def transport_for(settings: Settings) -> SmtpTransport | OutboxTransport:
    """The transport mail jobs use: ``[mail] transport`` (auto: smtp when a server is set)."""
    mail = settings.mail
    if mail.transport is TransportKind.SMTP:
        return shared_smtp(mail.smtp)
    return OutboxTransport(mail.outbox_path(settings.state_dir))


def send_once(
    config: SmtpConfig, msg: Message, from_addr: str, to: Sequence[str]
) -> dict[str, str]:
    """Send one message over a fresh connection and close it (alert notices, `mail test`)."""
    transport = SmtpTransport(config)
    try:
        return transport.send(msg, from_addr, to)
    finally:
        transport.close()
