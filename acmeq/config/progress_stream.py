"""Settings of the progress stream (``[progress]``): the token secret and per-client limits.

Kept beside :mod:`acmeq.config.settings` and wired into the loader with a few lines, like
:mod:`acmeq.config.payments`. ``secret`` signs the tokens the platform mints for its users
(:mod:`acmeq.web.tokens`); without one, every stream request is refused (401).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

DEFAULTS: dict[str, dict[str, Any]] = {
    "progress": {
        "secret": "",
        "token_ttl": 3600,
        "client_buffer": 512,
    },
}
ENV_KEYS: dict[str, str] = {
    "ACMEQ_PROGRESS_SECRET": "progress.secret",
    "ACMEQ_PROGRESS_TOKEN_TTL": "progress.token_ttl",
    "ACMEQ_PROGRESS_CLIENT_BUFFER": "progress.client_buffer",
}
SECRET_KEYS = {"progress.secret"}
MIN_SECRET_LEN = 16


@dataclass(frozen=True)
class ProgressStreamSettings:
    secret: str = ""  # HMAC-SHA256 key of the viewer tokens; empty: every request gets 401
    token_ttl: int = 3600  # default lifetime of a minted token, seconds
    client_buffer: int = 512  # updates queued for one client before it is dropped as slow


class _Reader(Protocol):
    def _int(self, key: str, minimum: int = 0, maximum: int | None = None) -> int: ...
    def _str(self, key: str) -> str: ...
    def _bad(self, key: str, message: str) -> None: ...


def build(reader: _Reader) -> ProgressStreamSettings:
    """The typed settings; problems are recorded on ``reader`` (one line per key)."""
    secret = reader._str("progress.secret")
    if secret and len(secret) < MIN_SECRET_LEN:
        reader._bad("progress.secret", f"must be at least {MIN_SECRET_LEN} characters")
    return ProgressStreamSettings(
        secret=secret,
        token_ttl=reader._int("progress.token_ttl", 1),
        client_buffer=reader._int("progress.client_buffer", 1),
    )
