"""One typed settings object: defaults < acmeq.toml < environment variables.

``Settings.load()`` merges the three layers into a tree of dotted keys, remembers where every value
came from (for ``acmeq config show``) and validates the whole tree at once, so ``acmeq config
validate`` can print one line per problem, each naming the key, its source and the bad value::

    acmeq.toml: queues.payments.timeout: must be a positive integer, got 'abc'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acmeq.config.exports import ExportSettings
from acmeq.config.loader import Loader
from acmeq.config.mail import MailSettings
from acmeq.config.maintenance import BackupSettings, CleanupSettings
from acmeq.config.payments import PaymentSettings
from acmeq.config.progress_stream import ProgressStreamSettings
from acmeq.config.schedules import SchedulerSettings, ScheduleSpec
from acmeq.config.specs import (
    ENV_KEYS,
    LIST_ENV,
    SECRET_KEYS,
    TIERS,
    AlertSettings,
    Balance,
    ExecutionMode,
    ProfileSpec,
    QueueSpec,
    RedisSettings,
    Strategy,
    SupervisorSpec,
    default_state_dir,
    expand_backoff,
    mask_url,
)
from acmeq.errors import UnknownProfileError

__all__ = [
    "ENV_KEYS",
    "LIST_ENV",
    "SECRET_KEYS",
    "TIERS",
    "AlertSettings",
    "Balance",
    "ExecutionMode",
    "ProfileSpec",
    "QueueSpec",
    "RedisSettings",
    "Settings",
    "Strategy",
    "SupervisorSpec",
    "default_state_dir",
    "expand_backoff",
    "mask_url",
    "process_settings",
]


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings
    database_url: str | None
    state_dir: Path
    queues: Mapping[str, QueueSpec]
    profiles: Mapping[str, ProfileSpec]
    job_modules: tuple[str, ...]
    monitoring_enabled: bool
    alert_email: str | None
    metrics_minute_retention: int = 24 * 3600  # seconds minute buckets are kept
    metrics_hour_retention: int = 30 * 24 * 3600  # seconds hour buckets are kept
    alerts: AlertSettings = field(default_factory=AlertSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)  # [cleanup]
    backup: BackupSettings = field(default_factory=BackupSettings)  # [backup]
    exports: ExportSettings = field(default_factory=ExportSettings)  # [exports]
    payments: PaymentSettings = field(default_factory=PaymentSettings)  # [webhooks], [payments]
    mail: MailSettings = field(default_factory=MailSettings)  # [mail]
    progress_stream: ProgressStreamSettings = field(default_factory=ProgressStreamSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)  # [scheduler]
    schedules: Mapping[str, ScheduleSpec] = field(default_factory=dict)  # [schedules.NAME]
    config_path: Path | None = None
    # dotted key -> value and where it came from ("default", a TOML path, "env NAME")
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls, config_path: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Build the settings from defaults, the TOML file and the environment; validate all."""
        fields = Loader(env if env is not None else os.environ, config_path).load()
        return cls(**fields)

    @classmethod
    def from_env(cls) -> Settings:
        return cls.load()

    def profile(self, name: str) -> ProfileSpec:
        try:
            return self.profiles[name]
        except KeyError:
            raise UnknownProfileError(name, self.profiles) from None

    @property
    def sqlite_path(self) -> Path:
        return self.state_dir / "acmeq.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"


_process_settings: Settings | None = None


def process_settings() -> Settings:
    """The settings of this process, read once from the environment (jobs and workers use it)."""
    global _process_settings
    if _process_settings is None:
        _process_settings = Settings.from_env()
    return _process_settings
