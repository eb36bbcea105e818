"""The one exception tree of acmeq.

Every error a user can cause or meet derives from :class:`AcmeqError` and carries the exit code
the CLI maps it to, so the CLI needs no per-command error handling::

    AcmeqError                      exit 1  an operation failed
    ├── ConfigError                 exit 2  invalid acmeq.toml / env value (one line per problem)
    ├── UsageError                  exit 2  bad argument given to a command or API
    │   ├── UnknownQueueError               queue name not in the catalog
    │   ├── UnknownJobError                 job name not in the registry (lists the valid names)
    │   ├── UnknownProfileError             worker profile not defined
    │   └── JobArgumentError                job arguments that are not JSON-safe
    ├── UnreachableError            exit 3  a backing service cannot be reached
    │   ├── RedisUnreachableError
    │   └── DatabaseUnreachableError
    ├── EmbeddedRedisError          exit 1  the bundled redis-server could not be started
    └── UnregisteredJobError        exit 1  a job hash names a function that is not declared

Messages are written to be printed as they are: one line naming the bad value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from acmeq.constants import ExitCode


class AcmeqError(Exception):
    """Base of every error acmeq raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(AcmeqError):
    """The configuration is invalid; ``problems`` holds one line per bad key."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(AcmeqError):
    """A command or API call was given a bad argument."""

    exit_code = ExitCode.USAGE


class UnknownQueueError(UsageError):
    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        super().__init__(f"unknown queue {name!r}; valid queues: {', '.join(valid)}")


class UnknownJobError(UsageError):
    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        names = ", ".join(sorted(valid)) or "(none registered)"
        super().__init__(f"unknown job {name!r}; registered jobs: {names}")


class UnknownProfileError(UsageError):
    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        super().__init__(f"unknown profile {name!r}; defined profiles: {', '.join(sorted(valid))}")


class JobArgumentError(UsageError):
    """Job arguments must survive a JSON round trip (DESIGN.md: JSON serializer only)."""


class UnreachableError(AcmeqError):
    exit_code = ExitCode.UNREACHABLE


class RedisUnreachableError(UnreachableError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"cannot reach Redis at {where}: {reason}")


class DatabaseUnreachableError(UnreachableError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"cannot reach database at {where}: {reason}")


class EmbeddedRedisError(AcmeqError):
    """The embedded redis-server could not be found or started."""


class UnregisteredJobError(AcmeqError):
    """A job hash names a function that is not declared: it is never imported or run."""
