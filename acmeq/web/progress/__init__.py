"""The progress stream: job progress for the platform's front end over HTTP, SSE and WebSocket.

Routes (:func:`routes`):

- ``GET /progress/{job_id}`` -- the record as JSON (``acmeq progress show --json``);
- ``GET /progress/{job_id}/events`` -- Server-Sent Events: the snapshot, every change, the final
  record (completed, failed or cancelled), then the stream ends;
- ``WS /progress/ws?job=ID[&job=ID...]`` -- the same for one or more jobs, or without ``job``
  for every job the viewer may see (a snapshot of their active jobs, then every change; this
  stream never ends by itself).

Access: a token from :mod:`acmeq.web.tokens` as ``?token=`` or ``Authorization: Bearer``. None,
a bad signature or an expired one: 401 and nothing streamed. A job that is missing or another
user's: 404 (admins see every job).

Apps: :func:`create_progress_app` serves only these routes (``acmeq progress serve``);
:func:`create_combined_app` serves them beside the webhook receiver (``acmeq webhook serve
--with-progress``). Both are uvicorn factories; each server process has one :class:`Hub`, hence
one Redis subscription, whatever its number of clients.
"""

from __future__ import annotations

from acmeq.web.progress.app import (
    ProgressService,
    create_combined_app,
    create_progress_app,
    routes,
)
from acmeq.web.progress.hub import Hub, Subscriber, Update

__all__ = [
    "Hub",
    "ProgressService",
    "Subscriber",
    "Update",
    "create_combined_app",
    "create_progress_app",
    "routes",
]
