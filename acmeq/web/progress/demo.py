"""The demo's progress-stream lines: the example page's URL for the export the demo ran.

Called by the payments step of ``acmeq demo`` while its server (``acmeq webhook serve
--with-progress``) is up: mints a token for the export's owner (or an admin when the export has
no owner), reads the snapshot through the server and prints the page's URL.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import sqlalchemy as sa

from acmeq.config.settings import Settings
from acmeq.storage.models import UserRole
from acmeq.tracking.store import TABLE, USERS
from acmeq.web import tokens

DEMO_SECRET = "acmeq-demo-progress-secret"  # the demo's own server only
PAGE_TTL_S = 3600


def progress_page(cfg: Settings, out: Any, url: str) -> None:
    """Print the example page's URL for the newest export job (nothing if there is none)."""
    from acmeq.storage.sql import engine_for

    engine = engine_for(cfg)
    with engine.connect() as conn:
        job = conn.execute(
            sa.select(TABLE.c.id, TABLE.c.user_id)
            .where(TABLE.c.job_name.like("export%"))
            .order_by(TABLE.c.created_at.desc())
            .limit(1)
        ).first()
        viewer = job.user_id if job is not None else None
        if job is not None and viewer is None:
            viewer = conn.execute(
                sa.select(USERS.c.id).where(USERS.c.role == UserRole.ADMIN).limit(1)
            ).scalar()
    if job is None or viewer is None:
        out.line("progress stream: no export job with a viewer to show")
        return
    token = tokens.mint(DEMO_SECRET, int(viewer), PAGE_TTL_S)
    query = urllib.parse.urlencode({"job": job.id, "token": token})
    try:
        request = urllib.request.Request(
            f"{url}/progress/{job.id}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            snap = json.loads(reply.read())
        state = f"{snap['status']}, {snap['processed']}/{snap['total']}"
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        state = f"snapshot unavailable: {exc}"
    out.line(f"GET /progress/{job.id} (the export's progress record): {state}")
    out.line(
        f"progress page of that export (while the server runs): {url}/progress-example?{query}"
    )
