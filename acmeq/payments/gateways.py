"""Clients of the providers' APIs: refund a payment, fetch a payment (stdlib HTTP, JSON).

Base URLs come from ``[payments]`` so tests and staging point them at a fake or sandbox server.
A call that fails transiently (no reply, timeout, 429, 5xx) raises
:class:`~acmeq.errors.TransientGatewayError` and is retried by :func:`with_retries` with
exponential backoff (tenacity); any other 4xx raises :class:`~acmeq.errors.PermanentGatewayError`
and is never retried. Refunds carry an idempotency key (Stripe ``Idempotency-Key``, PayPal
``PayPal-Request-Id``) so a retried call cannot refund twice at the provider.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from acmeq.config.payments import GatewaySettings
from acmeq.errors import PermanentGatewayError, TransientGatewayError
from acmeq.payments.amounts import to_decimal_str

T = TypeVar("T")


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    status: str


class Gateway(Protocol):
    name: str

    def refund(
        self, transaction_id: str, amount_minor: int, currency: str, key: str, reason: str
    ) -> RefundResult: ...

    def fetch_payment(self, transaction_id: str) -> dict[str, Any]: ...


def with_retries(call: Callable[[], T], tries: int, base: float = 0.5, cap: float = 8.0) -> T:
    """Run ``call``, retrying transient gateway errors with exponential backoff."""
    retrying = Retrying(
        stop=stop_after_attempt(tries),
        wait=wait_exponential(multiplier=base, max=cap),
        retry=retry_if_exception_type(TransientGatewayError),
        reraise=True,
    )
    return retrying(call)


class _Http:
    def __init__(self, name: str, base: str, timeout: float) -> None:
        self.name = name
        self.base = base.rstrip("/")
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        data: bytes | None = None
        all_headers = {"Accept": "application/json", **headers}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(
            self.base + path, data=data, headers=all_headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = _detail(exc.read(4096))
            message = f"{method} {path} -> HTTP {status}{detail}"
            if status == 429 or status >= 500:
                raise TransientGatewayError(self.name, message, status) from None
            raise PermanentGatewayError(self.name, message, status) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientGatewayError(self.name, f"{method} {path}: {reason}") from None
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            raise TransientGatewayError(self.name, f"{method} {path}: reply is not JSON") from None
        return parsed if isinstance(parsed, dict) else {"data": parsed}


def _detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    message = error or (data.get("detail") or data.get("message") if isinstance(data, dict) else "")
    return f": {str(message)[:200]}" if message else ""


class StripeGateway:
    name = "stripe"

    def __init__(self, settings: GatewaySettings) -> None:
        self.http = _Http(self.name, settings.stripe_api_base, settings.timeout)
        self.headers = {"Authorization": f"Bearer {settings.stripe_api_key}"}

    def refund(
        self, transaction_id: str, amount_minor: int, currency: str, key: str, reason: str
    ) -> RefundResult:
        form = {"payment_intent": transaction_id, "amount": str(amount_minor)}
        if reason:
            form["metadata[reason]"] = reason[:500]
        reply = self.http.request(
            "POST", "/v1/refunds", headers={**self.headers, "Idempotency-Key": key}, form=form
        )
        return RefundResult(str(reply.get("id", "")), str(reply.get("status", "")))

    def fetch_payment(self, transaction_id: str) -> dict[str, Any]:
        path = "/v1/payment_intents/" + urllib.parse.quote(transaction_id, safe="")
        return self.http.request("GET", path, headers=self.headers)


class MollieGateway:
    name = "mollie"

    def __init__(self, settings: GatewaySettings) -> None:
        self.http = _Http(self.name, settings.mollie_api_base, settings.timeout)
        self.headers = {"Authorization": f"Bearer {settings.mollie_api_key}"}

    def refund(
        self, transaction_id: str, amount_minor: int, currency: str, key: str, reason: str
    ) -> RefundResult:
        body = {
            "amount": {
                "currency": currency.upper(),
                "value": to_decimal_str(amount_minor, currency),
            },
            "description": reason[:140] or "refund",
            "metadata": {"idempotency_key": key},
        }
        path = f"/v2/payments/{urllib.parse.quote(transaction_id, safe='')}/refunds"
        reply = self.http.request(
            "POST", path, headers={**self.headers, "Idempotency-Key": key}, json_body=body
        )
        return RefundResult(str(reply.get("id", "")), str(reply.get("status", "")))

    def fetch_payment(self, transaction_id: str) -> dict[str, Any]:
        path = "/v2/payments/" + urllib.parse.quote(transaction_id, safe="")
        return self.http.request("GET", path, headers=self.headers)


class PaypalGateway:
    name = "paypal"

    def __init__(self, settings: GatewaySettings) -> None:
        self.http = _Http(self.name, settings.paypal_api_base, settings.timeout)
        self.client_id = settings.paypal_client_id
        self.secret = settings.paypal_client_secret
        self._token: str | None = None

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
            reply = self.http.request(
                "POST",
                "/v1/oauth2/token",
                headers={"Authorization": f"Basic {basic}"},
                form={"grant_type": "client_credentials"},
            )
            self._token = str(reply.get("access_token", ""))
        return {"Authorization": f"Bearer {self._token}"}

    def refund(
        self, transaction_id: str, amount_minor: int, currency: str, key: str, reason: str
    ) -> RefundResult:
        body: dict[str, Any] = {
            "amount": {
                "value": to_decimal_str(amount_minor, currency),
                "currency_code": currency.upper(),
            }
        }
        if reason:
            body["note_to_payer"] = reason[:255]
        path = f"/v2/payments/captures/{urllib.parse.quote(transaction_id, safe='')}/refund"
        headers = {**self._auth(), "PayPal-Request-Id": key}
        reply = self.http.request("POST", path, headers=headers, json_body=body)
        return RefundResult(str(reply.get("id", "")), str(reply.get("status", "")))

    def fetch_payment(self, transaction_id: str) -> dict[str, Any]:
        path = "/v2/payments/captures/" + urllib.parse.quote(transaction_id, safe="")
        return self.http.request("GET", path, headers=self._auth())

    def verify_webhook_signature(self, request: dict[str, Any]) -> bool:
        """PayPal's postback check of a webhook transmission (``paypal_verify = "api"``)."""
        reply = self.http.request(
            "POST",
            "/v1/notifications/verify-webhook-signature",
            headers=self._auth(),
            json_body=request,
        )
        return reply.get("verification_status") == "SUCCESS"


def gateway_for(provider: str, settings: GatewaySettings) -> Gateway:
    """The client of ``provider`` ('stripe', 'mollie', 'paypal')."""
    if provider == "stripe":
        return StripeGateway(settings)
    if provider == "mollie":
        return MollieGateway(settings)
    if provider == "paypal":
        return PaypalGateway(settings)
    raise PermanentGatewayError(provider, "unknown payment provider")
