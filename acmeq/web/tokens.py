"""Viewer tokens of the progress stream: signed, expiring, minted by the platform for a user.

Format: ``v1.<payload>.<signature>``, both parts base64url without padding; the payload is JSON
``{"sub": <user id>, "exp": <epoch seconds>}`` and the signature HMAC-SHA256 of ``v1.<payload>``
keyed with ``[progress] secret`` (``ACMEQ_PROGRESS_SECRET``). The token names the user only:
the role (admin or not) is read from the users table when the stream opens
(:func:`acmeq.tracking.store.resolve_viewer`), so demoting an admin takes effect at once.

Mint one from Python with :func:`mint` (or :func:`mint_for_user`, which resolves an id or
email) or with ``acmeq progress token USER [--ttl]``; the platform hands it to the browser, which
passes it as ``?token=`` (EventSource and WebSocket cannot set headers) or as
``Authorization: Bearer``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from acmeq.errors import TokenError as TokenError
from acmeq.errors import UsageError

VERSION = "v1"


@dataclass(frozen=True)
class Claims:
    user_id: int
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed: str) -> str:
    return _b64(hmac.new(secret.encode(), signed.encode("ascii"), hashlib.sha256).digest())


def mint(secret: str, user_id: int, ttl: float, *, now: float | None = None) -> str:
    """A token for ``user_id`` valid ``ttl`` seconds (UsageError without a secret or ttl)."""
    if not secret:
        raise UsageError(
            "no progress token secret: set [progress] secret in acmeq.toml or ACMEQ_PROGRESS_SECRET"
        )
    if ttl <= 0:
        raise UsageError(f"--ttl: must be positive, got {ttl!r}")
    issued = time.time() if now is None else now
    payload = json.dumps({"sub": user_id, "exp": round(issued + ttl)}, separators=(",", ":"))
    signed = f"{VERSION}.{_b64(payload.encode())}"
    return f"{signed}.{_sign(secret, signed)}"


def verify(secret: str, token: str | None, *, now: float | None = None) -> Claims:
    """The claims of a valid token; :class:`TokenError` naming what is wrong otherwise."""
    if not secret:
        raise TokenError("progress stream has no token secret configured")
    if not token:
        raise TokenError("missing token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenError("malformed token")
    signed = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(secret, signed), parts[2]):
        raise TokenError("bad signature")
    try:
        data = json.loads(_unb64(parts[1]))
        claims = Claims(int(data["sub"]), float(data["exp"]))
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed token") from None
    if claims.expires_at <= (time.time() if now is None else now):
        raise TokenError("token expired")
    return claims


def mint_for_user(engine: Engine, secret: str, user: str, ttl: float) -> tuple[str, int, str]:
    """(token, user id, email) for a user given by id or email (UsageError if unknown)."""
    from acmeq.tracking.store import find_user

    user_id, _role, email = find_user(engine, user, option="USER")
    return mint(secret, user_id, ttl), user_id, email
