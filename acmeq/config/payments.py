"""Settings of the webhook receiver (``[webhooks]``) and the payment gateways (``[payments]``).

Kept beside :mod:`acmeq.config.settings` so the payments feature owns its keys; the loader only
merges :data:`DEFAULTS` into its tree, :data:`ENV_KEYS` into its environment map and calls
:func:`build` with itself. Secrets (webhook signing secrets, API keys) are lists where a provider
allows rotation: every listed secret is tried, so a new secret can be added before the provider
switches and the old one removed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

DEFAULTS: dict[str, dict[str, Any]] = {
    "webhooks": {
        "host": "127.0.0.1",
        "port": 8000,
        "workers": 1,
        "max_body_bytes": 256 * 1024,
        "stripe_secrets": [],
        "stripe_tolerance": 300,
        "mollie_secrets": [],
        "paypal_webhook_id": "",
        "paypal_verify": "certificate",
        "paypal_cert_file": "",
        "paypal_cert_host": "paypal.com",
    },
    "payments": {
        "stripe_api_base": "https://api.stripe.com",
        "stripe_api_key": "",
        "mollie_api_base": "https://api.mollie.com",
        "mollie_api_key": "",
        "paypal_api_base": "https://api-m.paypal.com",
        "paypal_client_id": "",
        "paypal_client_secret": "",
        "gateway_timeout": 10.0,
        "gateway_tries": 4,
    },
}

ENV_KEYS: dict[str, str] = {
    "STRIPE_WEBHOOK_SECRET": "webhooks.stripe_secrets",
    "MOLLIE_WEBHOOK_SECRET": "webhooks.mollie_secrets",
    "PAYPAL_WEBHOOK_ID": "webhooks.paypal_webhook_id",
    "ACMEQ_PAYPAL_VERIFY": "webhooks.paypal_verify",
    "ACMEQ_PAYPAL_CERT_FILE": "webhooks.paypal_cert_file",
    "ACMEQ_WEBHOOK_MAX_BODY": "webhooks.max_body_bytes",
    "STRIPE_API_BASE": "payments.stripe_api_base",
    "STRIPE_SECRET_KEY": "payments.stripe_api_key",
    "MOLLIE_API_BASE": "payments.mollie_api_base",
    "MOLLIE_API_KEY": "payments.mollie_api_key",
    "PAYPAL_API_BASE": "payments.paypal_api_base",
    "PAYPAL_CLIENT_ID": "payments.paypal_client_id",
    "PAYPAL_CLIENT_SECRET": "payments.paypal_client_secret",
}
# Comma-separated in the environment (several secrets during a rotation).
LIST_ENV = {"STRIPE_WEBHOOK_SECRET", "MOLLIE_WEBHOOK_SECRET"}
SECRET_KEYS = {
    "webhooks.stripe_secrets",
    "webhooks.mollie_secrets",
    "payments.stripe_api_key",
    "payments.mollie_api_key",
    "payments.paypal_client_secret",
}


class PaypalVerify(StrEnum):
    CERTIFICATE = "certificate"  # verify the RSA signature locally with PayPal's certificate
    API = "api"  # ask PayPal: POST /v1/notifications/verify-webhook-signature


@dataclass(frozen=True)
class WebhookSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_body_bytes: int = 256 * 1024
    stripe_secrets: tuple[str, ...] = ()
    stripe_tolerance: int = 300
    mollie_secrets: tuple[str, ...] = ()
    paypal_webhook_id: str = ""
    paypal_verify: PaypalVerify = PaypalVerify.CERTIFICATE
    paypal_cert_file: Path | None = None  # a local certificate instead of fetching (tests)
    paypal_cert_host: str = "paypal.com"  # the cert URL's host must be this or under it


@dataclass(frozen=True)
class GatewaySettings:
    stripe_api_base: str = "https://api.stripe.com"
    stripe_api_key: str = ""
    mollie_api_base: str = "https://api.mollie.com"
    mollie_api_key: str = ""
    paypal_api_base: str = "https://api-m.paypal.com"
    paypal_client_id: str = ""
    paypal_client_secret: str = ""
    timeout: float = 10.0
    tries: int = 4  # attempts of one gateway call on transient errors (tenacity)


@dataclass(frozen=True)
class PaymentSettings:
    webhooks: WebhookSettings = WebhookSettings()
    gateways: GatewaySettings = GatewaySettings()


class _Reader(Protocol):
    """The typed readers of :class:`acmeq.config.loader.Loader` that :func:`build` uses."""

    def _int(self, key: str, minimum: int = 0, maximum: int | None = None) -> int: ...
    def _float(self, key: str, minimum: float = 0.0) -> float: ...
    def _str(self, key: str) -> str: ...
    def _list(self, key: str, item: Any, what: str) -> list[Any]: ...
    def _choice(self, key: str, enum: Any) -> Any: ...
    def _bad(self, key: str, message: str) -> None: ...


def _secrets(reader: _Reader, key: str) -> tuple[str, ...]:
    return tuple(reader._list(key, lambda v: isinstance(v, str) and bool(v), "secrets (strings)"))


def _url(reader: _Reader, key: str) -> str:
    value = reader._str(key).rstrip("/")
    if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
        reader._bad(key, "must be an http:// or https:// URL")
    return value


def build(reader: _Reader) -> PaymentSettings:
    """The typed payment settings; problems are recorded on ``reader`` (one line per key)."""
    w, p = "webhooks.", "payments."
    cert = reader._str(w + "paypal_cert_file").strip()
    cert_host = reader._str(w + "paypal_cert_host").strip().lower().lstrip(".")
    if not cert_host:
        reader._bad(w + "paypal_cert_host", "must name a host, e.g. paypal.com")
    webhooks = WebhookSettings(
        host=reader._str(w + "host") or "127.0.0.1",
        port=reader._int(w + "port", 1, 65535),
        workers=reader._int(w + "workers", 1, 64),
        max_body_bytes=reader._int(w + "max_body_bytes", 1024),
        stripe_secrets=_secrets(reader, w + "stripe_secrets"),
        stripe_tolerance=reader._int(w + "stripe_tolerance", 1),
        mollie_secrets=_secrets(reader, w + "mollie_secrets"),
        paypal_webhook_id=reader._str(w + "paypal_webhook_id").strip(),
        paypal_verify=reader._choice(w + "paypal_verify", PaypalVerify),
        paypal_cert_file=Path(cert).expanduser() if cert else None,
        paypal_cert_host=cert_host or "paypal.com",
    )
    gateways = GatewaySettings(
        stripe_api_base=_url(reader, p + "stripe_api_base"),
        stripe_api_key=reader._str(p + "stripe_api_key"),
        mollie_api_base=_url(reader, p + "mollie_api_base"),
        mollie_api_key=reader._str(p + "mollie_api_key"),
        paypal_api_base=_url(reader, p + "paypal_api_base"),
        paypal_client_id=reader._str(p + "paypal_client_id"),
        paypal_client_secret=reader._str(p + "paypal_client_secret"),
        timeout=reader._float(p + "gateway_timeout"),
        tries=reader._int(p + "gateway_tries", 1, 20),
    )
    return PaymentSettings(webhooks=webhooks, gateways=gateways)
