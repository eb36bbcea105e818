"""Building :class:`acmeq.config.settings.Settings`: layering, source tracking and validation.

The defaults (:mod:`acmeq.config.defaults`), the TOML file and the environment are flattened into
one
tree of dotted keys with the source of each; the typed objects are then built from it while every
problem is collected as one line naming the source, the key and the bad value.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from acmeq.config import defaults
from acmeq.config import exports as exports_config
from acmeq.config import mail as mail_config
from acmeq.config import maintenance as maintenance_config
from acmeq.config import payments as payments_config
from acmeq.config import progress_stream as progress_stream_config
from acmeq.config import schedules as schedules_config
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
    mask_url,
)
from acmeq.constants import (
    CONNECT_TIMEOUT_S,
    DEFAULT_REDIS_DB,
    DEFAULT_REDIS_PORT,
    SOCKET_TIMEOUT_S,
)
from acmeq.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Loading: a flat tree of dotted keys with a source per key, then typed validation.


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _default_tree() -> dict[str, Any]:
    return {
        "redis": {
            "url": "",
            "host": "",
            "port": 0,
            "db": DEFAULT_REDIS_DB,
            "password": "",
            "sentinels": [],
            "sentinel_master": "",
            "cluster": False,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
        },
        "database": {"url": ""},
        "state": {"dir": ""},
        "jobs": {"modules": []},
        "monitoring": {
            "enabled": True,
            "alert_email": "",
            "smtp_host": "localhost",
            "smtp_port": 25,
            "smtp_user": "",
            "smtp_password": "",
            "smtp_starttls": False,
            "mail_from": "acmeq@localhost",
            "webhook_url": "",
            "cooldown": 900,
            "deadman": 300,
            "critical_queues": ["payments"],
        },
        "workers": {"high": 0, "medium": 0, "low": 0},
        "metrics": {"minute_retention": 24 * 3600, "hour_retention": 30 * 24 * 3600},
        "queues": copy.deepcopy(defaults.QUEUES),
        "profiles": copy.deepcopy(defaults.PROFILES),
        **copy.deepcopy(maintenance_config.DEFAULTS),
        **copy.deepcopy(exports_config.DEFAULTS),
        **copy.deepcopy(payments_config.DEFAULTS),
        **copy.deepcopy(progress_stream_config.DEFAULTS),
        "mail": mail_config.mail_defaults(),
        "scheduler": schedules_config.scheduler_defaults(),
        "schedules": schedules_config.schedule_defaults(),
    }


class Loader:
    def __init__(self, env: Mapping[str, str], config_path: str | Path | None) -> None:
        self.env = env
        explicit = config_path or env.get("ACMEQ_CONFIG")
        self.path: Path | None = Path(explicit) if explicit else None
        if self.path is None and Path("acmeq.toml").is_file():
            self.path = Path("acmeq.toml")
        self.problems: list[str] = []
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    # -- layering ----------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """The keyword arguments of :class:`acmeq.config.settings.Settings` (all validated)."""
        self.values = _flatten(_default_tree())
        self.sources = dict.fromkeys(self.values, "default")
        if self.path is not None:
            self._merge_toml(self.path)
        self._merge_env()
        if self.problems:
            raise ConfigError(self.problems)
        settings = self._build()
        if self.problems:
            raise ConfigError(self.problems)
        return settings

    def _merge_toml(self, path: Path) -> None:
        label = str(path)
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.problems.append(f"{label}: configuration file not found")
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(f"{label}: cannot read: {exc}")
            return
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(f"{label}: invalid TOML: {exc}")
            return
        for key, value in _flatten(tree).items():
            if not self._known_key(key):
                self.problems.append(f"{label}: {key}: unknown key")
                continue
            self.values[key] = value
            self.sources[key] = label

    def _known_key(self, key: str) -> bool:
        parts = key.split(".")
        if key in self.values:
            return True
        if schedules_config.known_schedule_key(key):
            return True
        if parts[0] == "queues" and len(parts) == 3:
            return parts[2] in defaults.NEW_QUEUE
        if parts[0] == "profiles" and len(parts) == 3:
            return parts[2] in ("max_processes", "memory_budget")
        if parts[0] == "profiles" and len(parts) == 5 and parts[2] == "supervisors":
            return parts[4] in defaults.SUPERVISOR or parts[4] == "queues"
        return False

    def _merge_env(self) -> None:
        for name, key in ENV_KEYS.items():
            raw = self.env.get(name)
            if raw is None or raw == "":
                continue
            value: Any = raw
            if name in LIST_ENV:
                value = [item.strip() for item in raw.split(",") if item.strip()]
            self.values[key] = value
            self.sources[key] = f"env {name}"

    # -- typed reads that record problems -------------------------------------------------------
    def _bad(self, key: str, message: str) -> None:
        value = self.values.get(key)
        # Never echo a secret back: error lines end up in cron mail and CI logs.
        if key in SECRET_KEYS and value:
            value = "***"
        elif isinstance(value, str) and "://" in value:
            value = mask_url(value)
        line = f"{self.sources.get(key, 'default')}: {key}: {message}, got {value!r}"
        if line not in self.problems:  # a tier variable is read once per supervisor
            self.problems.append(line)

    def _default(self, key: str, value: Any) -> None:
        """Fill a key nobody set, recording it as a default (so `config show` names a source)."""
        if key not in self.values:
            self.values[key] = value
            self.sources[key] = "default"

    def _effective(self, key: str, value: Any, source: str) -> None:
        """Record a value derived from another key (shown by `config show` as in force)."""
        self.values[key] = value
        self.sources[key] = source

    def _int(self, key: str, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.values.get(key)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            if maximum is not None:
                what = f"an integer from {minimum} to {maximum}"
            self._bad(key, f"must be {what}")
            return minimum
        return value

    def _float(self, key: str, minimum: float = 0.0) -> float:
        value = self.values.get(key)
        try:
            number = float(value) if not isinstance(value, bool) else -1.0  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = -1.0
        if number <= minimum:
            self._bad(key, f"must be a number > {minimum:g}")
            return minimum + 1.0
        return number

    def _bool(self, key: str) -> bool:
        value = self.values.get(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        self._bad(key, "must be true or false")
        return False

    def _str(self, key: str) -> str:
        value = self.values.get(key)
        if not isinstance(value, str):
            self._bad(key, "must be a string")
            return ""
        return value

    def _list(self, key: str, item: Callable[[Any], bool], what: str) -> list[Any]:
        value = self.values.get(key)
        if not isinstance(value, list) or not all(item(v) for v in value):
            self._bad(key, f"must be a list of {what}")
            return []
        return value

    def _choice(self, key: str, enum: type[Enum]) -> Any:
        value = self.values.get(key)
        try:
            return enum(value)
        except ValueError:
            self._bad(key, "must be one of " + ", ".join(str(m.value) for m in enum))
            return next(iter(enum))

    # -- building -------------------------------------------------------------------------------
    def _build(self) -> dict[str, Any]:
        redis = self._build_redis()
        database_url = self._str("database.url") or None
        if database_url and "://" not in database_url:
            self._bad("database.url", "must be a URL like postgresql://user@host/db")
        state = self._str("state.dir")
        state_dir = Path(state).expanduser() if state else default_state_dir(self.env)
        queues = {name: self._build_queue(name) for name in self._names("queues")}
        profiles = {name: self._build_profile(name, queues) for name in self._names("profiles")}
        modules = self._list(
            "jobs.modules", lambda v: isinstance(v, str) and bool(v), "module names"
        )
        return dict(
            redis=redis,
            database_url=database_url,
            state_dir=state_dir,
            queues=queues,
            profiles=profiles,
            job_modules=tuple(modules),
            monitoring_enabled=self._bool("monitoring.enabled"),
            alert_email=self._email("monitoring.alert_email") or None,
            metrics_minute_retention=self._int("metrics.minute_retention", 60),
            metrics_hour_retention=self._int("metrics.hour_retention", 3600),
            alerts=self._build_alerts(queues),
            cleanup=maintenance_config.build_cleanup(self),
            backup=maintenance_config.build_backup(self),
            exports=exports_config.build_exports(self),
            payments=payments_config.build(self),
            progress_stream=progress_stream_config.build(self),
            mail=mail_config.build_mail(self),
            scheduler=schedules_config.build_scheduler(self),
            schedules=schedules_config.build_schedules(self),
            config_path=self.path,
            values=dict(self.values),
            sources=dict(self.sources),
        )

    def _names(self, section: str) -> list[str]:
        prefix = section + "."
        return sorted({k.split(".")[1] for k in self.values if k.startswith(prefix)})

    def _build_redis(self) -> RedisSettings:
        url = self._str("redis.url") or None
        host = self._str("redis.host")
        port_given = self.values.get("redis.port") not in (0, None)
        port = self._int("redis.port", 1, 65535) if port_given else DEFAULT_REDIS_PORT
        db = self._int("redis.db", 0, 15)
        sentinels: list[tuple[str, int]] = []
        for entry in self._list("redis.sentinels", lambda v: isinstance(v, str), "host:port"):
            host_part, _, port_part = entry.rpartition(":")
            if not host_part or not port_part.isdigit():
                self._bad("redis.sentinels", "each sentinel must be host:port")
                break
            sentinels.append((host_part, int(port_part)))
        master = self._str("redis.sentinel_master") or None
        if url:
            self._check_redis_url(url)
        if url and sentinels:
            self.problems.append(
                f"{self.sources['redis.url']} and {self.sources['redis.sentinels']}: "
                "REDIS_URL and REDIS_SENTINELS are both set; configure one or the other"
            )
        if sentinels and not master:
            self._bad("redis.sentinel_master", "is required when sentinels are configured")
        if self._bool("redis.cluster"):
            self._bad(
                "redis.cluster",
                "Redis Cluster is not supported (RQ needs multi-key "
                "operations on one node); use a single primary or Sentinel",
            )
        if not host:
            self._effective("redis.host", "127.0.0.1", "default")
        if not port_given:
            self._effective("redis.port", DEFAULT_REDIS_PORT, "default")
        return RedisSettings(
            url=url,
            host=host or "127.0.0.1",
            port=port,
            db=db,
            password=self._str("redis.password") or None,
            sentinels=tuple(sentinels),
            sentinel_master=master,
            connect_timeout=self._float("redis.connect_timeout"),
            socket_timeout=self._float("redis.socket_timeout"),
            embedded=not (url or host or port_given or sentinels),
        )

    def _check_redis_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            self._bad("redis.url", "must start with redis://, rediss:// or unix://")
            return
        if "," in parts.netloc:
            self._bad(
                "redis.url",
                "several hosts look like a Redis Cluster, which is not "
                "supported; use a single primary or Sentinel",
            )
            return
        try:
            parts.port  # noqa: B018 - raises ValueError on a non-numeric port
        except ValueError:
            self._bad("redis.url", "has an invalid port")
            return
        if parts.scheme != "unix" and not parts.hostname:
            self._bad("redis.url", "has no host")

    def _build_queue(self, name: str) -> QueueSpec:
        for key, value in defaults.NEW_QUEUE.items():
            self._default(f"queues.{name}.{key}", value)
        k = f"queues.{name}."
        backoff = self._list(
            k + "backoff",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "non-negative integers (seconds)",
        )
        return QueueSpec(
            name=name,
            priority=self._int(k + "priority", 1, 10),
            timeout=self._int(k + "timeout", 1),
            tries=self._int(k + "tries", 1),
            memory_mb=self._int(k + "memory", 1),
            backoff=tuple(backoff),
            result_ttl=self._int(k + "result_ttl", 1),
            failure_ttl=self._int(k + "failure_ttl", 1),
            wait_threshold=self._int(k + "wait_threshold", 1),
            backlog_threshold=self._int(k + "backlog_threshold", 0),
            unserved=self._bool(k + "unserved"),
        )

    def _email(self, key: str, several: bool = True) -> str:
        """One address (or, with ``several``, a comma-separated list); empty means none."""
        value = self._str(key).strip()
        parts = value.split(",")
        if value and (not all("@" in a for a in parts) or (len(parts) > 1 and not several)):
            more = " (several: comma-separated)" if several else ""
            self._bad(key, f"must be an email address{more}")
        return value

    def _build_alerts(self, queues: Mapping[str, QueueSpec]) -> AlertSettings:
        k = "monitoring."
        webhook = self._str(k + "webhook_url").strip()
        if webhook and urlsplit(webhook).scheme not in ("http", "https"):
            self._bad(k + "webhook_url", "must be an http:// or https:// URL")
        critical = self._list(k + "critical_queues", lambda v: isinstance(v, str), "queue names")
        for queue in critical:
            if queue not in queues:
                self._bad(
                    k + "critical_queues",
                    f"names unknown queue {queue!r} (known: {', '.join(queues)})",
                )
        host = self._str(k + "smtp_host").strip()
        if not host and self.values.get(k + "alert_email"):
            self._bad(k + "smtp_host", "must name the mail server when alert_email is set")
        return AlertSettings(
            smtp_host=host,
            smtp_port=self._int(k + "smtp_port", 1, 65535),
            smtp_user=self._str(k + "smtp_user") or None,
            smtp_password=self._str(k + "smtp_password") or None,
            smtp_starttls=self._bool(k + "smtp_starttls"),
            mail_from=self._email(k + "mail_from", several=False) or "acmeq@localhost",
            webhook_url=webhook or None,
            cooldown=self._int(k + "cooldown", 0),
            deadman=self._int(k + "deadman", 0),
            critical_queues=tuple(critical),
        )

    def _build_profile(self, name: str, queues: Mapping[str, QueueSpec]) -> ProfileSpec:
        k = f"profiles.{name}."
        self._default(k + "max_processes", 0)
        self._default(k + "memory_budget", 0)
        sup_names = sorted(
            {key.split(".")[3] for key in self.values if key.startswith(k + "supervisors.")}
        )
        # Keep the defined order of the built-in supervisors (it is the display order).
        builtin = list(defaults.PROFILES.get(name, {}).get("supervisors", {}))
        sup_names.sort(key=lambda s: (builtin.index(s) if s in builtin else len(builtin), s))
        supervisors = tuple(self._build_supervisor(name, s, queues) for s in sup_names)
        if not supervisors:
            self.problems.append(
                f"{self.sources.get(k + 'max_processes', 'default')}: "
                f"profiles.{name}: defines no supervisors"
            )
        return ProfileSpec(
            name=name,
            supervisors=supervisors,
            max_processes=self._int(k + "max_processes", 0),
            memory_budget_mb=self._int(k + "memory_budget", 0),
        )

    def _build_supervisor(
        self, profile: str, name: str, queues: Mapping[str, QueueSpec]
    ) -> SupervisorSpec:
        k = f"profiles.{profile}.supervisors.{name}."
        for key, value in defaults.SUPERVISOR.items():
            self._default(k + key, value)
        self._default(k + "queues", [])
        names = self._list(k + "queues", lambda v: isinstance(v, str), "queue names")
        for queue in names:
            if queue not in queues:
                self._bad(
                    k + "queues", f"names unknown queue {queue!r} (known: {', '.join(queues)})"
                )
        if not names:
            self._bad(k + "queues", "must name at least one queue")
        tier = self._str(k + "tier")
        if tier and tier not in TIERS:
            self._bad(k + "tier", "must be one of high, medium, low")
        min_p = self._int(k + "min_processes", 0)
        max_p = self._int(k + "max_processes", 1)
        balance = self._choice(k + "balance", Balance)
        workers = self._tier_workers(tier)
        if workers:
            # QUEUE_<TIER>_WORKERS sets the supervisor's process count: the maximum of an
            # autoscaled pool, the fixed size of any other (docs/configuration.md). Every queue
            # keeps at least one process, so the count cannot be below the number of queues.
            per_queue = workers // max(len(names), 1)
            if per_queue < 1:
                self._bad(
                    f"workers.{tier}",
                    f"must be at least {len(names)} (one process per queue of supervisor {name!r})",
                )
                per_queue = 1
            max_p = max(workers, per_queue * len(names))
            min_p = per_queue if balance is not Balance.AUTO else max(min(min_p, per_queue), 1)
            source = self.sources.get(f"workers.{tier}", "default")
            self._effective(k + "max_processes", max_p, source)
            self._effective(k + "min_processes", min_p, source)
        if names and min_p * len(names) > max_p:
            self._bad(
                k + "max_processes",
                f"must be at least min_processes x queues = {min_p * len(names)}",
            )
        mode = self._choice(k + "mode", ExecutionMode)
        concurrency = self._int(k + "concurrency", 1)
        if concurrency > 1 and mode is not ExecutionMode.THREADS:
            self._bad(k + "concurrency", 'above 1 needs mode = "threads"')
        return SupervisorSpec(
            name=name,
            queues=tuple(names),
            balance=balance,
            strategy=self._choice(k + "strategy", Strategy),
            min_processes=min_p,
            max_processes=max_p,
            max_shift=self._int(k + "max_shift", 1),
            cooldown=self._float(k + "cooldown"),
            memory_mb=self._int(k + "memory", 0),
            timeout=self._int(k + "timeout", 0),
            tries=self._int(k + "tries", 0),
            nice=self._int(k + "nice", -20, 19),
            mode=mode,
            concurrency=concurrency,
            max_jobs=self._int(k + "max_jobs", 0),
            max_time=self._int(k + "max_time", 0),
            tier=tier,
        )

    def _tier_workers(self, tier: str) -> int:
        if not tier:
            return 0
        return self._int(f"workers.{tier}", 0)
