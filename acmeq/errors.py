"""The one exception tree of acmeq.

Every error a user can cause or meet derives from :class:`AcmeqError` and carries the exit code
the CLI maps it to, so the CLI needs no per-command error handling::

    AcmeqError                      exit 1  an operation failed
    ├── ConfigError                 exit 2  invalid acmeq.toml / env value (one line per problem)
    ├── UsageError                  exit 2  bad argument given to a command or API
    │   ├── UnknownQueueError               queue name not in the catalog
    │   ├── UnknownJobError                 job name not in the registry (lists the valid names)
    │   ├── UnknownProfileError             worker profile not defined
    │   ├── JobArgumentError                job arguments that are not JSON-safe
    │   ├── AmbiguousJobIdError             a job id prefix that matches several jobs
    │   └── PiiRefusedError                 personal data asked for without the role for it
    ├── UnreachableError            exit 3  a backing service cannot be reached
    │   ├── RedisUnreachableError
    │   ├── NotRedisError                   the address answers, but not in Redis's protocol
    │   └── DatabaseUnreachableError
    ├── EmbeddedRedisError          exit 1  the bundled redis-server could not be started
    ├── UnregisteredJobError        exit 1  a job hash names a function that is not declared
    ├── ExportError                 exit 1  an export or report could not be written
    ├── JobNotFoundError            exit 1  no job (or no failed job) with this id
    ├── ProgressNotFoundError       exit 1  no progress record the viewer may see with this id
    ├── AlertChannelError           exit 1  an alert notice could not be delivered (mail, webhook)
    ├── MailError                   exit 1  a mail could not be sent (SMTP, outbox)
    │   └── UncertainDeliveryError          the connection broke during DATA: sent or not, unknown
    ├── UnknownScheduleError        exit 2  no schedule with this name (lists the configured ones)
    ├── RefundError                 exit 2  a refund that cannot be made (amount, state)
    │   └── DonationNotFound                no donation with this id
    ├── BackupError                 exit 1  a backup could not be made, verified or restored
    │   ├── BackupToolMissingError          pg_dump / pg_restore not on PATH
    │   └── RedisBackupUnavailableError     Redis is remote (or hides its files): back it up there
    └── GatewayError                exit 1  a payment provider's API failed
        ├── TransientGatewayError           5xx, 429, timeout, connection: retried with backoff
        └── PermanentGatewayError           any other 4xx: never retried

    JobInterrupt                            control flow inside a running job, never shown
    ├── JobCancelled                        raised in the job by its tracker on cancellation
    ├── ShutdownInterrupt                   raised in the job by a fast stop of its worker
    ├── StopJobRequested                    raised in the job by RQ's stop-job command
    └── MemoryLimitExceeded                 the failure recorded for a job that blew the limit

    Exception: handled where raised (an HTTP status or a job outcome, never `acmeq: error`)
    ├── VerificationError                   a webhook request is not a genuine provider event: 400
    ├── UnavailableError                    the event cannot be checked now (no secret, PayPal): 503
    ├── StoreUnavailable                    the receiver cannot hand an event over (SQL, Redis): 503
    ├── RefundInFlight                      a refund of the donation is still pending: retried
    ├── PermanentEventError                 a provider event can never be processed: marked failed
    ├── TokenError                          a progress-stream token is missing, bad or expired: 401
    └── Denied                              a progress-stream request is refused (its status code)

Messages are written to be printed as they are: one line naming the bad value. The
``JobInterrupt`` classes are not errors of the user's making: the worker and the progress
tracker raise them inside a job to stop it, and record them as the job's outcome.
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


class AmbiguousJobIdError(UsageError):
    """A job id prefix that matches more than one job (see :mod:`acmeq.ops.jobids`)."""

    def __init__(self, prefix: str, matches: Sequence[str], shown: int = 5) -> None:
        self.prefix = prefix
        self.matches = list(matches)
        names = ", ".join(self.matches[:shown]) + (", ..." if len(self.matches) > shown else "")
        count = f"{shown}+" if len(self.matches) > shown else str(len(self.matches))
        super().__init__(
            f"job id prefix {prefix!r} is ambiguous: it matches {count} jobs ({names}); "
            "give more characters"
        )


class PiiRefusedError(UsageError):
    """``--include-pii`` by someone whose role does not permit it (or without an identity)."""


class UnreachableError(AcmeqError):
    exit_code = ExitCode.UNREACHABLE


class RedisUnreachableError(UnreachableError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"cannot reach Redis at {where}: {reason}")


class NotRedisError(UnreachableError):
    """Something listens at the Redis address but does not speak Redis (HTTP, SMTP, ...)."""

    def __init__(self, where: str, answer: str) -> None:
        self.where = where
        super().__init__(f"not a Redis server at {where}: it answered {answer}")


class DatabaseUnreachableError(UnreachableError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"cannot reach database at {where}: {reason}")


class EmbeddedRedisError(AcmeqError):
    """The embedded redis-server could not be found or started."""


class UnregisteredJobError(AcmeqError):
    """A job hash names a function that is not declared: it is never imported or run."""


class ExportError(AcmeqError):
    """An export or report failed (unwritable directory, too many rows for a PDF ...)."""


class JobNotFoundError(AcmeqError):
    """No job (or no failed job) with this id: exit 1, one line naming the id."""


class ProgressNotFoundError(AcmeqError):
    """No progress record with this id, or one the viewer may not see (same message)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job progress {job_id!r} not found")


class AlertChannelError(AcmeqError):
    """A notice could not be delivered; the message is one printable line."""


# -- control flow inside a running job (not part of the AcmeqError tree) -------------------------


class JobInterrupt(Exception):
    """Stops a running job from inside; the worker records it as the job's outcome."""


class JobCancelled(JobInterrupt):
    """Raised by ``advance()`` (or in the job's thread after the grace period) on cancellation."""


class ShutdownInterrupt(JobInterrupt):
    """Raised inside a running job by a fast stop (second SIGTERM, or SIGINT)."""


class MemoryLimitExceeded(JobInterrupt):
    """Recorded as the failure of a job that drove the worker far past its memory limit."""


class StopJobRequested(JobInterrupt):
    """Raised inside a running job by RQ's stop-job command (the job ends STOPPED)."""


class RefundError(UsageError):
    """A refund that cannot be made: unknown donation, nothing left to refund, bad amount."""


class GatewayError(AcmeqError):
    """A payment provider's API call failed; ``status`` is the HTTP status (0: no reply)."""

    def __init__(self, provider: str, message: str, status: int = 0) -> None:
        self.provider = provider
        self.status = status
        super().__init__(f"{provider}: {message}")


class TransientGatewayError(GatewayError):
    """Worth retrying: the provider was unreachable, overloaded (429) or failed (5xx)."""


class PermanentGatewayError(GatewayError):
    """Not worth retrying: the provider refused the request (4xx other than 429)."""


class BackupError(AcmeqError):
    """A backup could not be made, verified or restored (the message says which step failed)."""


class BackupToolMissingError(BackupError):
    """pg_dump or pg_restore is not on PATH."""


class RedisBackupUnavailableError(BackupError):
    """The Redis server's files are not reachable from this host; the message says what to do."""


class MailError(AcmeqError):
    """A mail could not be sent; ``reason`` is the server's answer or the connection problem.

    ``where`` names the transport (``smtp mail.internal:587``); the message is one line.
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class UncertainDeliveryError(MailError):
    """The connection broke after the message was handed over: it may or may not be delivered."""


class UnknownScheduleError(UsageError):
    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        names = ", ".join(sorted(valid)) or "(none configured)"
        super().__init__(f"unknown schedule {name!r}; configured schedules: {names}")


class DonationNotFound(RefundError):
    """No donation with this id (a UsageError: exit 2 on the command line)."""

    def __init__(self, donation_id: int) -> None:
        super().__init__(f"no donation with id {donation_id}")
        self.donation_id = donation_id


# -- handled where they are raised (the webhook receiver, the payment jobs) ----------------------


class VerificationError(Exception):
    """The request is not a genuine, well-formed provider event: answer 400 with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnavailableError(Exception):
    """The event cannot be checked now (no secret configured, PayPal unreachable): answer 503."""


class StoreUnavailable(Exception):
    """The database or Redis failed: the event is not (known to be) safely handed over."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what} unavailable: {type(exc).__name__}")
        self.what = what


class RefundInFlight(Exception):
    """A refund requested here is still pending for this donation: settle it first (retry)."""


class PermanentEventError(Exception):
    """The event can never be processed as it is: it is marked failed, not retried."""


class TokenError(Exception):
    """A token that is missing, malformed, badly signed or expired (answered with 401)."""


class Denied(Exception):
    """A progress-stream request refused with an HTTP ``status`` and a ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
