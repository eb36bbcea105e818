"""acmeq: background jobs for the ACME donation platform, on RQ and Redis.

The public API a platform team uses::

    import acmeq

    @acmeq.job(queue="notifications")
    def send_welcome(user_id: int) -> None: ...

    acmeq.enqueue("send_welcome", 42)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from acmeq.registry import job

try:
    __version__ = version("acmeq")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"


def enqueue(job_name: str, *args: object, **kwargs: object) -> object:
    """Enqueue a registered job (see :func:`acmeq.queues.enqueue`)."""
    from acmeq.queues import enqueue as _enqueue

    return _enqueue(job_name, *args, **kwargs)


__all__ = ["__version__", "enqueue", "job"]
