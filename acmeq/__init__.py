"""acmeq: background jobs for the ACME donation platform, on RQ and Redis.

The public API a platform team uses::

    import acmeq

    @acmeq.job(queue="notifications")
    def send_welcome(user_id: int) -> None: ...

    acmeq.enqueue("send_welcome", 42)
"""

from __future__ import annotations

from acmeq.allowlist import callback, job

# Kept in step with pyproject.toml by tests/test_cli.py (importlib.metadata costs ~25 ms of
# start-up on every command).
__version__ = "0.1.0"


def enqueue(job_name: str, *args: object, **kwargs: object) -> object:
    """Enqueue a registered job (see :func:`acmeq.queues.enqueue`)."""
    from acmeq.queues import enqueue as _enqueue

    return _enqueue(job_name, *args, **kwargs)


__all__ = ["__version__", "callback", "enqueue", "job"]
