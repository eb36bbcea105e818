"""PayPal: transmission signatures, checked locally or by PayPal's verify API.

PayPal signs ``transmission_id|transmission_time|webhook_id|crc32(raw body)`` (the CRC as an
unsigned decimal) with RSA-SHA256 (``PAYPAL-AUTH-ALGO: SHA256withRSA``); the certificate is at
``PAYPAL-CERT-URL``. The webhook id comes from acmeq's configuration, never from the request, so
an event signed for another merchant's webhook does not verify. Before anything is fetched the
certificate URL must be ``https`` on the configured host (``paypal.com``) or under it; fetched
certificates are cached per URL for the life of the process. A local certificate file can stand
in for the fetched one (tests, air-gapped setups); the URL is still checked.

The alternative (``paypal_verify = "api"``) posts the headers and the event to PayPal's
``/v1/notifications/verify-webhook-signature`` and accepts ``verification_status: SUCCESS``.
"""

from __future__ import annotations

import base64
import binascii
import threading
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from acmeq.config.payments import PaypalVerify, WebhookSettings
from acmeq.web.verify import (
    UnavailableError,
    VerificationError,
    VerifiedEvent,
    parse_json,
    required_str,
)

ALGORITHM = "SHA256withRSA"
HEADERS = (
    "paypal-transmission-id",
    "paypal-transmission-time",
    "paypal-transmission-sig",
    "paypal-cert-url",
    "paypal-auth-algo",
)
CERT_FETCH_TIMEOUT_S = 5.0
_CACHE_LIMIT = 32

Postback = Callable[[dict[str, Any]], bool]


def message(transmission_id: str, transmission_time: str, webhook_id: str, body: bytes) -> bytes:
    """The signed string of a transmission."""
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()


class CertificateStore:
    """PayPal's signing certificates by URL, fetched once (or one local file for all URLs)."""

    def __init__(self, local_file: Path | None = None) -> None:
        self.local_file = local_file
        self._cache: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> x509.Certificate:
        with self._lock:
            cert = self._cache.get(url)
        if cert is not None:
            return cert
        if self.local_file is not None:
            pem = self.local_file.read_bytes()
        else:
            with urllib.request.urlopen(url, timeout=CERT_FETCH_TIMEOUT_S) as reply:
                pem = reply.read(64 * 1024)
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise VerificationError("certificate is not a PEM certificate") from None
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[url] = cert
        return cert


def check_cert_url(url: str, allowed_host: str) -> None:
    """Refuse a certificate URL that is not https on ``allowed_host`` or one of its subdomains."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme != "https" or not (host == allowed_host or host.endswith("." + allowed_host)):
        raise VerificationError(f"certificate URL host {host or url!r} is not under {allowed_host}")


def verify(
    body: bytes,
    headers: Mapping[str, str],
    settings: WebhookSettings,
    certs: CertificateStore,
    postback: Postback | None = None,
) -> VerifiedEvent:
    """Check a PayPal delivery; return the event or raise :class:`VerificationError`."""
    if not settings.paypal_webhook_id:
        raise UnavailableError("no PayPal webhook id configured (PAYPAL_WEBHOOK_ID)")
    values = {name: headers.get(name, "") for name in HEADERS}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise VerificationError(f"missing header {missing[0].upper()}")
    if values["paypal-auth-algo"] != ALGORITHM:
        raise VerificationError(f"unsupported PAYPAL-AUTH-ALGO {values['paypal-auth-algo'][:40]!r}")
    check_cert_url(values["paypal-cert-url"], settings.paypal_cert_host)
    data = parse_json(body)
    if settings.paypal_verify is PaypalVerify.API:
        if postback is None:
            raise UnavailableError("PayPal API verification needs PAYPAL_CLIENT_ID/SECRET")
        _verify_by_api(values, settings.paypal_webhook_id, data, postback)
    else:
        _verify_locally(values, settings.paypal_webhook_id, body, certs)
    return VerifiedEvent(
        "paypal", required_str(data, "id"), required_str(data, "event_type", 128), data
    )


def _verify_locally(
    values: dict[str, str], webhook_id: str, body: bytes, certs: CertificateStore
) -> None:
    try:
        signature = base64.b64decode(values["paypal-transmission-sig"], validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("PAYPAL-TRANSMISSION-SIG is not base64") from None
    try:
        cert = certs.get(values["paypal-cert-url"])
    except OSError as exc:
        # Not the sender's fault for sure, but a signature we cannot check is not accepted: 400
        # would tell PayPal to stop, so this is a 503 and PayPal retries.
        raise UnavailableError(f"cannot fetch PayPal certificate: {exc}") from None
    now = datetime.now(UTC)
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise VerificationError("certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError("certificate key is not RSA")
    signed = message(
        values["paypal-transmission-id"], values["paypal-transmission-time"], webhook_id, body
    )
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise VerificationError("signature does not match") from None


def _verify_by_api(
    values: dict[str, str], webhook_id: str, event: dict[str, Any], postback: Postback
) -> None:
    request = {
        "auth_algo": values["paypal-auth-algo"],
        "cert_url": values["paypal-cert-url"],
        "transmission_id": values["paypal-transmission-id"],
        "transmission_sig": values["paypal-transmission-sig"],
        "transmission_time": values["paypal-transmission-time"],
        "webhook_id": webhook_id,
        "webhook_event": event,
    }
    if not postback(request):
        raise VerificationError("PayPal did not confirm the signature")
