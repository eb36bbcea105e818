"""rq-dashboard (an optional extra, ``acmeq[dashboard]``) against acmeq's Redis.

:func:`make_app` builds rq-dashboard's Flask app with acmeq's JSON serializer and Redis, and two
guards of its own in front of every request: HTTP basic auth (when credentials are given; required
by :func:`check_binding` when bound to a non-loopback address) and, unless ``writable``, a refusal
(403) of every endpoint that changes Redis (delete, requeue, empty, compact); rq-dashboard's own
``RQ_DASHBOARD_DISABLE_DELETE`` leaves requeue and compact open.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from acmeq.config.settings import Settings
from acmeq.errors import UsageError

WRITE_ENDPOINTS = frozenset(
    {
        "rq_dashboard.delete_job_view",
        "rq_dashboard.requeue_job_view",
        "rq_dashboard.requeue_all",
        "rq_dashboard.empty_queue",
        "rq_dashboard.compact_queue",
    }
)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class DashboardOptions:
    host: str = "127.0.0.1"
    port: int = 9181
    username: str = ""
    password: str = ""
    writable: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(opts: DashboardOptions) -> None:
    """Beyond loopback the dashboard is reachable by others: require basic auth then."""
    if bool(opts.username) != bool(opts.password):
        raise UsageError("give both --username and a password (ACMEQ_DASHBOARD_PASSWORD)")
    if not is_loopback(opts.host) and not opts.password:
        raise UsageError(
            f"--host {opts.host} is not a loopback address: set --username and "
            "ACMEQ_DASHBOARD_PASSWORD (HTTP basic auth is required off loopback)"
        )


def redis_url(settings: Settings) -> str:
    """acmeq's Redis as a URL rq-dashboard's connector understands."""
    from acmeq.storage.redis_client import EmbeddedRedis

    rs = settings.redis
    if rs.url:
        return rs.url
    auth = f":{quote(rs.password, safe='')}@" if rs.password else ""
    if rs.sentinels:
        hosts = ",".join(f"{h}:{p}" for h, p in rs.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{rs.sentinel_master}/{rs.db}"
    if rs.embedded:
        return f"unix://{EmbeddedRedis(settings.state_dir).socket_path}?db={rs.db}"
    return f"redis://{auth}{rs.host or '127.0.0.1'}:{rs.port}/{rs.db}"


def make_app(settings: Settings, opts: DashboardOptions) -> Any:
    """The Flask app (raises UsageError when the extra is not installed)."""
    try:
        from flask import Flask, Response, abort, request
        from rq.serializers import JSONSerializer
        from rq_dashboard import web  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise UsageError(
            f"rq-dashboard is not installed ({exc}); pip install 'acmeq[dashboard]'"
        ) from None

    web.config.serializer = JSONSerializer  # acmeq's jobs are JSON, not pickles
    app = Flask("acmeq.dashboard")
    app.config["RQ_DASHBOARD_REDIS_URL"] = (redis_url(settings),)
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = not opts.writable
    app.config["RQ_DASHBOARD_POLL_INTERVAL"] = 2500

    @app.before_request
    def _guard() -> Any:
        if opts.password:
            auth = request.authorization
            ok = (
                auth is not None
                and hmac.compare_digest(auth.username or "", opts.username)
                and hmac.compare_digest(auth.password or "", opts.password)
            )
            if not ok:
                return Response(
                    "authentication required\n",
                    401,
                    {"WWW-Authenticate": 'Basic realm="acmeq dashboard"'},
                )
        if not opts.writable and (
            request.endpoint in WRITE_ENDPOINTS or request.method not in READ_METHODS
        ):
            abort(403, "read-only dashboard (start it with --writable to change jobs)")
        return None

    app.register_blueprint(web.blueprint, url_prefix="")
    with app.app_context():
        web.setup_rq_connection(app)
    return app


def serve(settings: Settings, opts: DashboardOptions) -> None:
    """Serve until interrupted (werkzeug's threaded server; put a TLS proxy in front off-host)."""
    from werkzeug.serving import make_server

    from acmeq.storage.redis_client import connect_checked

    check_binding(opts)
    connect_checked(settings)  # exit 3 when unreachable; starts the embedded server if that is it
    app = make_app(settings, opts)
    server = make_server(opts.host, opts.port, app, threaded=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
