"""The typed parts of the settings: queues, supervisors, profiles, Redis, alerts, and the
environment variables that set them.

:class:`acmeq.config.settings.Settings` holds these; :mod:`acmeq.config.loader` builds them. Both
import this module (and not each other's), so the parser and the settings object have no import
circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from acmeq.config import mail as _mail
from acmeq.config import payments as _payments
from acmeq.config import progress_stream as _progress_stream
from acmeq.config import schedules as _schedules
from acmeq.constants import (
    CONNECT_TIMEOUT_S,
    DEFAULT_REDIS_DB,
    DEFAULT_REDIS_PORT,
    SOCKET_TIMEOUT_S,
)

# Environment variables, the dotted key each one sets, and how its text is read. The seed's
# names (REDIS_HOST ... QUEUE_ALERT_EMAIL) are kept as they are; see docs/configuration.md.
ENV_KEYS: dict[str, str] = {
    "REDIS_URL": "redis.url",
    "REDIS_HOST": "redis.host",
    "REDIS_PORT": "redis.port",
    "REDIS_QUEUE_DB": "redis.db",
    "REDIS_PASSWORD": "redis.password",
    "REDIS_SENTINELS": "redis.sentinels",
    "REDIS_SENTINEL_MASTER": "redis.sentinel_master",
    "DATABASE_URL": "database.url",
    "ACMEQ_STATE_DIR": "state.dir",
    "ACMEQ_JOB_MODULES": "jobs.modules",
    "QUEUE_MONITORING_ENABLED": "monitoring.enabled",
    "QUEUE_ALERT_EMAIL": "monitoring.alert_email",
    "ACMEQ_SMTP_HOST": "monitoring.smtp_host",
    "ACMEQ_SMTP_PORT": "monitoring.smtp_port",
    "ACMEQ_SMTP_USER": "monitoring.smtp_user",
    "ACMEQ_SMTP_PASSWORD": "monitoring.smtp_password",
    "ACMEQ_ALERT_WEBHOOK_URL": "monitoring.webhook_url",
    "QUEUE_HIGH_WORKERS": "workers.high",
    "QUEUE_MEDIUM_WORKERS": "workers.medium",
    "QUEUE_LOW_WORKERS": "workers.low",
    **_payments.ENV_KEYS,
    **_mail.MAIL_ENV_KEYS,
    **_progress_stream.ENV_KEYS,
    **_schedules.SCHEDULER_ENV_KEYS,
}
LIST_ENV = {"REDIS_SENTINELS", "ACMEQ_JOB_MODULES", *_payments.LIST_ENV}
# A Slack-style webhook URL is itself the credential (anyone holding it can post), so it is
# masked whole like a password.
SECRET_KEYS = {
    "redis.password",
    "monitoring.smtp_password",
    "monitoring.webhook_url",
    *_payments.SECRET_KEYS,
    *_mail.MAIL_SECRET_KEYS,
    *_progress_stream.SECRET_KEYS,
}
TIERS = ("high", "medium", "low")


class Balance(StrEnum):
    AUTO = "auto"
    SIMPLE = "simple"
    OFF = "off"


class Strategy(StrEnum):
    TIME = "time"
    SIZE = "size"
    WAIT = "wait"


class ExecutionMode(StrEnum):
    FORK = "fork"
    INLINE = "inline"
    THREADS = "threads"


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_REDIS_PORT
    db: int = DEFAULT_REDIS_DB
    password: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    connect_timeout: float = CONNECT_TIMEOUT_S
    socket_timeout: float = SOCKET_TIMEOUT_S
    # True when neither REDIS_URL, REDIS_HOST/PORT nor sentinels were configured anywhere:
    # acmeq then runs its own embedded redis-server (DESIGN.md "Embedded defaults").
    embedded: bool = True


@dataclass(frozen=True)
class QueueSpec:
    """One queue of the catalog (seed: priority, timeout, tries, memory, backoff)."""

    name: str
    priority: int
    timeout: int
    tries: int
    memory_mb: int
    backoff: tuple[int, ...]
    result_ttl: int
    failure_ttl: int
    wait_threshold: int
    backlog_threshold: int = 0  # ready jobs above which monitoring alerts; 0: no backlog alert
    unserved: bool = False  # no profile is meant to serve it (see `acmeq config validate`)

    @property
    def retry_intervals(self) -> tuple[int, ...]:
        """Exactly ``tries - 1`` delays: see :func:`expand_backoff`."""
        return expand_backoff(self.backoff, self.tries)


@dataclass(frozen=True)
class SupervisorSpec:
    """One supervisor of a profile: a set of queues, each served by its own pool."""

    name: str
    queues: tuple[str, ...]
    balance: Balance
    strategy: Strategy
    min_processes: int  # per queue, as in Horizon
    max_processes: int  # for the whole supervisor
    max_shift: int
    cooldown: float
    memory_mb: int  # a cap on each queue's own limit; 0: no cap
    timeout: int  # overrides each queue's own timeout; 0: no override
    tries: int  # overrides each queue's own tries; 0: no override
    nice: int
    mode: ExecutionMode
    concurrency: int
    max_jobs: int  # 0: never recycle by count
    max_time: int  # 0: never recycle by age (seconds)
    tier: str

    def memory_for(self, queue: QueueSpec) -> int:
        """The memory limit (MB) of this supervisor's workers on ``queue``."""
        return min(queue.memory_mb, self.memory_mb) if self.memory_mb else queue.memory_mb

    def timeout_for(self, queue: QueueSpec) -> int:
        return self.timeout or queue.timeout

    def tries_for(self, queue: QueueSpec) -> int:
        return self.tries or queue.tries


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    supervisors: tuple[SupervisorSpec, ...]
    max_processes: int  # host budget of processes; 0 = sum of the supervisors' maxima
    memory_budget_mb: int  # host budget of memory; 0 = 80 % of RAM at start


@dataclass(frozen=True)
class AlertSettings:
    """Alert rules and channels of ``[monitoring]`` (docs/monitoring.md#alerts)."""

    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    mail_from: str = "acmeq@localhost"
    webhook_url: str | None = None  # Slack-compatible incoming webhook; None: no webhook
    cooldown: int = 900  # seconds between reminders of a still-active alert; 0: no reminders
    deadman: int = 300  # seconds without progress on a non-empty queue; 0: no dead-man alert
    critical_queues: tuple[str, ...] = ("payments",)  # every permanent failure notifies


def expand_backoff(backoff: tuple[int, ...] | list[int], tries: int) -> tuple[int, ...]:
    """Return exactly ``tries - 1`` retry delays.

    RQ's ``Retry`` reuses the *first* interval once ``max`` outruns the list, which would turn
    the seed's exponential backoff into a flat one. So the list is cut to ``tries - 1`` delays
    when it is longer (payments: 5 tries -> 30, 60, 120, 300) and, when shorter, continued by
    doubling the last delay, capped at one hour (the seed calls its backoff exponential). No list
    means no delay.
    """
    retries = max(tries - 1, 0)
    delays = list(backoff[:retries])
    while len(delays) < retries:
        delays.append(min(delays[-1] * 2, 3600) if delays else 0)
    return tuple(delays)


def default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "acmeq"


def mask_url(url: str) -> str:
    """Hide the password of a URL (``redis://:***@host:6379/7``) for messages and `config show`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
