"""The progress stream's endpoints and apps (see :mod:`acmeq.web.progress`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from acmeq.config.settings import Settings
from acmeq.errors import Denied as Denied
from acmeq.errors import ProgressNotFoundError, UsageError
from acmeq.storage import sql
from acmeq.storage.redis_client import connect
from acmeq.tracking import store
from acmeq.tracking.store import ProgressRecord, Viewer
from acmeq.web import tokens
from acmeq.web.progress.hub import Hub, client_factory
from acmeq.web.progress.stream import Outcome, Stream

log = logging.getLogger("acmeq.web.progress")

MAX_JOBS_PER_SOCKET = 100


class ProgressService:
    """The state of one server process: settings, engine and the hub (one subscription)."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.config = settings.progress_stream
        self.engine = engine if engine is not None else sql.engine_for(settings)
        self.hub = Hub(client_factory(connect(settings)))

    # -- access ---------------------------------------------------------------------------------
    def _token(self, conn: HTTPConnection) -> str | None:
        auth = conn.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return conn.query_params.get("token")

    def _viewer(self, token: str | None) -> Viewer:
        try:
            claims = tokens.verify(self.config.secret, token)
            return store.resolve_viewer(self.engine, str(claims.user_id))
        except tokens.TokenError as exc:
            raise Denied(401, str(exc)) from None
        except UsageError:  # the user was deleted since the token was minted
            raise Denied(401, "unknown user") from None

    def _records(self, viewer: Viewer, job_ids: Sequence[str] | None) -> list[ProgressRecord]:
        if job_ids is None:
            return store.query(self.engine, viewer=viewer, statuses=store.ACTIVE)
        try:
            return [store.get_visible(self.engine, job_id, viewer) for job_id in job_ids]
        except ProgressNotFoundError as exc:
            raise Denied(404, str(exc)) from None

    def open(self, token: str | None, job_ids: Sequence[str] | None) -> Viewer:
        """The viewer, after checking the token and that every job is theirs (Denied if not)."""
        viewer = self._viewer(token)
        self._records(viewer, job_ids)
        return viewer

    def stream(self, viewer: Viewer, job_ids: Sequence[str] | None, **kw: Any) -> Stream:
        ids = list(job_ids) if job_ids is not None else None
        return Stream(
            self.hub,
            viewer,
            ids,
            lambda: self._records(viewer, ids),
            limit=self.config.client_buffer,
            **kw,
        )

    # -- endpoints ------------------------------------------------------------------------------
    async def snapshot(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            viewer = await run_in_threadpool(self._viewer, self._token(request))
            (record,) = await run_in_threadpool(self._records, viewer, [job_id])
        except Denied as exc:
            return _denied(exc)
        return JSONResponse(record.as_dict())

    async def events(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        job_id = request.path_params["job_id"]
        try:
            viewer = await run_in_threadpool(self.open, self._token(request), [job_id])
        except Denied as exc:
            await _denied(exc)(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def send_text(text: str) -> None:
            body = f"data: {text}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})

        async def keepalive() -> None:
            await send(
                {"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True}
            )

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        stream = self.stream(viewer, [job_id], keepalive=keepalive)
        outcome = await stream.run(send_text, disconnected())
        if outcome is Outcome.DROPPED:
            log.warning("progress stream: dropped a slow SSE client of %s", job_id)
            return  # the server closes the connection (response left incomplete)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def websocket(self, ws: WebSocket) -> None:
        wanted = [j for value in ws.query_params.getlist("job") for j in value.split(",") if j]
        job_ids = list(dict.fromkeys(wanted)) or None
        try:
            if job_ids is not None and len(job_ids) > MAX_JOBS_PER_SOCKET:
                raise Denied(400, f"at most {MAX_JOBS_PER_SOCKET} job ids per socket")
            viewer = await run_in_threadpool(self.open, self._token(ws), job_ids)
        except Denied as exc:
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                await ws.send_denial_response(_denied(exc))
            else:
                await ws.close(code=4000 + exc.status, reason=exc.reason)
            return
        await ws.accept()

        async def disconnected() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await ws.receive_text()  # client messages are ignored

        outcome = await self.stream(viewer, job_ids).run(ws.send_text, disconnected())
        if outcome is Outcome.DISCONNECTED:
            return
        code, reason = (1000, "finished") if outcome is Outcome.FINISHED else (1008, "too slow")
        if outcome is Outcome.DROPPED:
            log.warning("progress stream: dropped a slow WebSocket client")
        with contextlib.suppress(Exception):
            await ws.close(code=code, reason=reason)


class _Asgi:
    """A plain ASGI endpoint (Starlette calls a bound method as request -> response)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _denied(exc: Denied) -> Response:
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=headers)


EXAMPLE_PAGE = Path(__file__).resolve().parents[3] / "docs" / "progress-example.html"


async def example_page(request: Request) -> Response:
    """docs/progress-example.html (from a source checkout; 404 when not installed)."""
    if not EXAMPLE_PAGE.is_file():
        return JSONResponse({"error": "example page not installed"}, status_code=404)
    return FileResponse(EXAMPLE_PAGE, media_type="text/html")


def routes(service: ProgressService) -> list[BaseRoute]:
    return [
        Route("/progress-example", example_page, methods=["GET"]),
        Route("/progress/{job_id}/events", _Asgi(service.events), methods=["GET"]),
        WebSocketRoute("/progress/ws", service.websocket),
        Route("/progress/{job_id}", service.snapshot, methods=["GET"]),
    ]


def _app(service: ProgressService, extra: list[BaseRoute], inner: Starlette | None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.hub.start()
        try:
            if inner is not None:  # a mounted app's lifespan is not run by Starlette itself
                async with inner.router.lifespan_context(inner):
                    yield
            else:
                yield
        finally:
            await service.hub.stop()

    app = Starlette(routes=routes(service) + extra, lifespan=lifespan)
    app.state.progress = service
    return app


def create_progress_app(settings: Settings | None = None) -> Starlette:
    """Only the progress routes and ``/healthz`` (uvicorn factory, ``acmeq progress serve``)."""
    service = ProgressService(settings or Settings.from_env())

    async def healthz(request: Request) -> Response:
        up = service.hub.connected.is_set()
        body = {"redis": "ok" if up else "reconnecting", "clients": service.hub.clients}
        return JSONResponse(body, status_code=200 if up else 503)

    return _app(service, [Route("/healthz", healthz, methods=["GET"])], None)


def create_combined_app(settings: Settings | None = None) -> Starlette:
    """The webhook receiver with the progress routes beside it (``--with-progress``)."""
    from acmeq.web.app import create_app

    cfg = settings or Settings.from_env()
    receiver = create_app(cfg)
    service = ProgressService(cfg, receiver.state.receiver.engine)
    app = _app(service, [Mount("/", app=receiver)], receiver)
    app.state.receiver = receiver.state.receiver
    return app
