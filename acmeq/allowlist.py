"""The job allowlist: only functions declared with :func:`job` can be enqueued or executed.

RQ would import and call any ``module.function`` path it finds in a job hash; with Redis
reachable by several services that is remote code execution. acmeq keeps a registry of declared
jobs (its own in ``acmeq/jobs/`` plus the modules named in ``[jobs] modules`` /
``ACMEQ_JOB_MODULES``) and :class:`acmeq.queues.AcmeqJob` refuses every other path at execution.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from acmeq.errors import (
    ConfigError,
    JobArgumentError,
    UnknownJobError,
    UnregisteredJobError,
    UsageError,
)

P = ParamSpec("P")
R = TypeVar("R")

# Filled by the decorator as modules are imported; a plain dict because declaration happens at
# import time, before any Settings exist.
_DECLARED: dict[str, JobDef] = {}


@dataclass(frozen=True)
class JobDef:
    """A declared job: its public name, its queue and the import path RQ stores."""

    name: str
    queue: str
    func: Callable[..., Any]
    path: str
    description: str


def job(queue: str, name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Declare a function as an acmeq job on ``queue``.

    ``name`` defaults to the function's name; it is what ``acmeq enqueue NAME`` takes. The
    function must take JSON-safe arguments (amounts as strings or integer cents, times as ISO
    strings) because jobs travel through RQ's JSON serializer.
    """

    def declare(func: Callable[P, R]) -> Callable[P, R]:
        job_name = name or func.__name__
        path = f"{func.__module__}.{func.__qualname__}"
        existing = _DECLARED.get(job_name)
        if existing is not None and existing.path != path:
            raise UsageError(f"job name {job_name!r} is declared twice: {existing.path} and {path}")
        doc = (func.__doc__ or "").strip().splitlines()
        _DECLARED[job_name] = JobDef(job_name, queue, func, path, doc[0] if doc else "")
        return func

    return declare


# Callback functions (RQ's on_success / on_failure / on_stopped) declared with :func:`callback`,
# by import path. A declared job's own function is accepted as a callback too.
_CALLBACKS: dict[str, Callable[..., Any]] = {}


def callback(func: Callable[P, R]) -> Callable[P, R]:
    """Declare a function as an allowed RQ callback (``on_success``, ``on_failure``,
    ``on_stopped``): a callback name read from a job hash is imported only when declared."""
    _CALLBACKS[f"{func.__module__}.{func.__qualname__}"] = func
    return func


@functools.cache
def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):  # a builtin or C function: nothing to check against
        return None


def check_call(jobdef: JobDef, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse at enqueue time what a worker could only fail: a job declared in ``__main__``
    (no worker can import the script that enqueued it) or arguments the function does not take.
    """
    if jobdef.path.startswith("__main__."):
        raise UsageError(
            f"job {jobdef.name!r} is defined in __main__ (the script being run), which no worker "
            "can import: move it into a module and name that module in jobs.modules "
            "(acmeq.toml) or ACMEQ_JOB_MODULES"
        )
    signature = _signature(jobdef.func)
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise JobArgumentError(
            f"job {jobdef.name!r} does not accept these arguments ({exc}); "
            f"it takes {jobdef.name}{_plain(signature)}"
        ) from None


def _plain(signature: inspect.Signature) -> inspect.Signature:
    """The signature without annotations: ``(a, b=1, **kwargs)``."""
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )


class JobRegistry:
    """The declared jobs of acmeq and of the configured modules, checked against the catalog."""

    def __init__(self, jobs: Mapping[str, JobDef]) -> None:
        self._by_name = dict(jobs)
        self._by_path = {j.path: j for j in jobs.values()}

    def __iter__(self) -> Iterator[JobDef]:
        return iter(sorted(self._by_name.values(), key=lambda j: (j.queue, j.name)))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> JobDef:
        try:
            return self._by_name[name]
        except KeyError:
            # Accept the full import path too: it is what `rq info` and tracebacks show.
            if name in self._by_path:
                return self._by_path[name]
            raise UnknownJobError(name, self._by_name) from None

    def callback(self, path: str | None) -> Callable[..., Any]:
        """The callback declared under ``path`` (or a registered job's function); anything else
        read from Redis is refused before import."""
        func = _CALLBACKS.get(path or "")
        if func is not None:
            return func
        if path in self._by_path:
            return self._by_path[path].func
        raise UnregisteredJobError(
            f"callback {path!r} is not declared with @acmeq.callback; refusing to import it"
        )

    def by_path(self, path: str | None) -> JobDef:
        try:
            return self._by_path[path or ""]
        except KeyError:
            raise UnregisteredJobError(
                f"job function {path!r} is not a registered acmeq job; refusing to execute it"
            ) from None


def import_job_modules(modules: tuple[str, ...]) -> None:
    """Import acmeq's own job modules and the configured ones (declaring their jobs)."""
    import acmeq.jobs

    for info in pkgutil.iter_modules(acmeq.jobs.__path__, "acmeq.jobs."):
        importlib.import_module(info.name)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import-time failure is a configuration problem
            raise ConfigError(
                [f"jobs.modules: cannot import job module {module!r}: {type(exc).__name__}: {exc}"]
            ) from None


def load_registry(modules: tuple[str, ...], queues: Mapping[str, object]) -> JobRegistry:
    """Import the job modules and return the registry; every job's queue must exist."""
    import_job_modules(modules)
    problems = [
        f"job {j.name!r} ({j.path}) is declared on unknown queue {j.queue!r}"
        for j in _DECLARED.values()
        if j.queue not in queues
    ]
    if problems:
        raise ConfigError(problems)
    return JobRegistry(_DECLARED)
