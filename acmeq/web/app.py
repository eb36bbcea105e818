"""The webhook receiver (starlette): ``POST /webhooks/{stripe,mollie,paypal}``, ``/healthz``,
``/metrics``.

Run by ``acmeq webhook serve`` (uvicorn, ``create_app`` as factory, one app per worker process).
Each webhook request: size limit (413), signature (400 with a short reason), durable record and
enqueue (:mod:`acmeq.web.intake`; 503 if the database or Redis fails), then 200.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from acmeq.config.settings import Settings
from acmeq.storage import sql
from acmeq.storage.redis_client import connect
from acmeq.web import mollie, paypal, stripe
from acmeq.web.intake import BatchWriter, Intake, StoreUnavailable
from acmeq.web.metrics import ReceiverMetrics
from acmeq.web.verify import UnavailableError, VerificationError, VerifiedEvent

log = logging.getLogger("acmeq.web")

PROVIDERS = ("stripe", "mollie", "paypal")


class _TooLarge(Exception):
    pass


def receiver_engine(settings: Settings) -> Engine:
    """The receiver's engine: like :func:`acmeq.storage.sql.make_engine`, minus PostgreSQL's
    pre-ping (a round trip per request; a dead pooled connection is retried once instead)."""
    url = settings.effective_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return sql.engine_for(settings)
    return sa.create_engine(
        parsed.set(drivername="postgresql+psycopg"),
        pool_size=20,
        max_overflow=20,
        connect_args={"connect_timeout": sql.PG_CONNECT_TIMEOUT_S},
    )


class Receiver:
    """The state of one receiver process: settings, engine, Redis, verifiers, counters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hooks = settings.payments.webhooks
        self.engine = receiver_engine(settings)
        self.redis = connect(settings)
        self.intake = Intake(settings, self.engine, self.redis)
        self.writer = BatchWriter(self.intake)
        self.metrics = ReceiverMetrics()
        self._registry: Any = None  # acmeq's collectors + ours, built on the first scrape
        self.certs = paypal.CertificateStore(self.hooks.paypal_cert_file)

    def verify(self, provider: str, body: bytes, headers: Any) -> VerifiedEvent:
        if provider == "stripe":
            return stripe.verify(
                body,
                headers.get(stripe.HEADER),
                self.hooks.stripe_secrets,
                self.hooks.stripe_tolerance,
            )
        if provider == "mollie":
            return mollie.verify(body, headers.get(mollie.HEADER), self.hooks.mollie_secrets)
        return paypal.verify(body, headers, self.hooks, self.certs, self._paypal_postback())

    def _paypal_postback(self) -> paypal.Postback | None:
        gw = self.settings.payments.gateways
        if not (gw.paypal_client_id and gw.paypal_client_secret):
            return None
        from acmeq.errors import GatewayError
        from acmeq.payments.gateways import PaypalGateway

        def postback(request: dict[str, Any]) -> bool:
            try:
                return PaypalGateway(gw).verify_webhook_signature(request)
            except GatewayError as exc:
                raise UnavailableError(f"PayPal verification API: {exc}") from None

        return postback

    async def receive(self, request: Request) -> Response:
        provider = request.url.path.rsplit("/", 1)[-1]
        started = time.perf_counter()
        response, outcome = await self._handle(provider, request)
        self.metrics.observe(provider, outcome, time.perf_counter() - started)
        return response

    async def _handle(self, provider: str, request: Request) -> tuple[Response, str]:
        limit = self.hooks.max_body_bytes
        try:
            body = await _read_body(request, limit)
        except _TooLarge:
            log.warning(
                "refused %s webhook from %s: body over %d bytes", provider, _peer(request), limit
            )
            return _error(413, f"body larger than {limit} bytes"), "too_large"
        except ClientDisconnect:
            return _error(400, "client disconnected"), "rejected"
        try:
            if provider == "paypal":  # may fetch a certificate or call PayPal: off the loop
                event = await run_in_threadpool(self.verify, provider, body, request.headers)
            else:
                event = self.verify(provider, body, request.headers)
        except VerificationError as exc:
            self.metrics.verification_failures.labels(provider).inc()
            log.warning("refused %s webhook from %s: %s", provider, _peer(request), exc.reason)
            return _error(400, exc.reason), "rejected"
        except UnavailableError as exc:
            log.error("cannot verify %s webhook: %s", provider, exc)
            return _error(503, str(exc)), "unavailable"
        try:
            accepted = await self.writer.accept(event)
        except StoreUnavailable as exc:
            log.error("%s webhook %s not recorded/enqueued: %s", provider, event.event_id, exc)
            return _error(503, f"{exc.what} unavailable, retry later"), "unavailable"
        body_out = {"status": accepted.outcome.value, "event": accepted.row_id}
        return JSONResponse(body_out), accepted.outcome.value

    async def healthz(self, request: Request) -> Response:
        checks = await run_in_threadpool(self._checks)
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(checks, status_code=200 if healthy else 503)

    def _checks(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            self.redis.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
        except sa.exc.SQLAlchemyError as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        return checks

    async def metrics_page(self, request: Request) -> Response:
        accept = request.headers.get("accept", "")
        try:
            page, content_type = await run_in_threadpool(self._exposition, accept)
        except Exception as exc:  # Redis down: still show the receiver's own counters
            log.error("acmeq queue metrics unavailable: %s: %s", type(exc).__name__, exc)
            page, content_type = self.metrics.exposition(accept)
        return Response(page, media_type=content_type)

    def _exposition(self, accept: str) -> tuple[bytes, str]:
        """acmeq's exposition (queues, workers, jobs: the builder of `acmeq metrics serve`)
        with the receiver's counters registered beside its collectors."""
        from acmeq.observability import prometheus

        if self._registry is None:
            registry = prometheus.registry(self.settings, self.redis)
            registry.register(self.metrics.registry)
            self._registry = registry
        return prometheus.exposition(self._registry, accept)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def _error(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status)


def create_app(settings: Settings | None = None) -> Starlette:
    """The receiver app (uvicorn factory: ``acmeq.web.app:create_app``)."""
    receiver = Receiver(settings or Settings.from_env())
    handler: Callable[[Request], Awaitable[Response]] = receiver.receive
    routes = [Route(f"/webhooks/{p}", handler, methods=["POST"]) for p in PROVIDERS]
    routes += [
        Route("/healthz", receiver.healthz, methods=["GET"]),
        Route("/metrics", receiver.metrics_page, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        receiver.writer.close()  # requests still in its queue are answered first

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.receiver = receiver
    return app
