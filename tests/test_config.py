"""Configuration: defaults < acmeq.toml < environment, validated with one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from acmeq.config.settings import Balance, ExecutionMode, Settings, expand_backoff, mask_url
from acmeq.errors import ConfigError, UnknownProfileError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "acmeq.toml"
    path.write_text(text)
    return path


def test_defaults_reproduce_the_seed_queues() -> None:
    s = Settings.load(env={})
    expected = {  # name: priority, timeout, tries, memory
        "payments": (10, 180, 5, 256),
        "notifications": (8, 120, 3, 128),
        "exports": (6, 900, 2, 1024),
        "reports": (6, 600, 3, 512),
        "maintenance": (1, 1800, 1, 256),
        "bulk": (2, 3600, 1, 1024),
    }
    for name, (priority, timeout, tries, memory) in expected.items():
        q = s.queues[name]
        assert (q.priority, q.timeout, q.tries, q.memory_mb) == (priority, timeout, tries, memory)
    assert s.queues["payments"].backoff == (30, 60, 120, 300, 600)
    assert s.queues["notifications"].backoff == (15, 30, 60)
    assert s.queues["exports"].backoff == (60, 180)
    assert s.redis.db == 7
    assert s.redis.embedded is True
    assert s.monitoring_enabled is True


def test_backoff_is_expanded_to_exactly_tries_minus_one_delays() -> None:
    s = Settings.load(env={})
    assert s.queues["payments"].retry_intervals == (30, 60, 120, 300)
    assert s.queues["notifications"].retry_intervals == (15, 30)
    assert s.queues["exports"].retry_intervals == (60,)
    assert s.queues["reports"].retry_intervals == (60, 300)
    assert s.queues["maintenance"].retry_intervals == ()
    # a short list is continued by doubling the last delay, capped at an hour
    assert expand_backoff((10,), 5) == (10, 20, 40, 80)
    assert expand_backoff((3000,), 3) == (3000, 3600)
    assert expand_backoff((), 3) == (0, 0)


def test_production_and_development_profiles_match_the_seed() -> None:
    s = Settings.load(env={})
    prod = {sup.name: sup for sup in s.profile("production").supervisors}
    high = prod["high-priority"]
    assert high.queues == ("payments", "notifications")
    assert (high.min_processes * len(high.queues), high.max_processes) == (2, 8)
    assert high.balance is Balance.AUTO
    assert (prod["exports"].max_processes, prod["exports"].memory_mb) == (2, 1024)
    assert (prod["reports"].max_processes, prod["reports"].memory_mb) == (2, 512)
    assert prod["bulk"].max_processes == 1
    assert prod["maintenance"].max_processes == 1
    dev = s.profile("development").supervisors
    assert len(dev) == 1
    assert set(dev[0].queues) == set(s.queues)
    assert dev[0].max_processes == 3
    assert dev[0].memory_mb < 1024


def test_toml_overrides_defaults_and_env_overrides_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[redis]
host = "redis.internal"
port = 6380

[queues.payments]
timeout = 240
backoff = [10, 20]

[queues.webhooks]
priority = 9
tries = 4

[profiles.small.supervisors.all]
queues = ["payments", "webhooks"]
balance = "simple"
max_processes = 4
mode = "threads"
concurrency = 8
""",
    )
    s = Settings.load(path, env={"REDIS_PORT": "6390"})
    assert s.redis.host == "redis.internal"
    assert s.redis.port == 6390
    assert s.redis.embedded is False
    assert s.sources["redis.port"] == "env REDIS_PORT"
    assert s.sources["redis.host"] == str(path)
    assert s.sources["queues.exports.timeout"] == "default"
    assert s.queues["payments"].timeout == 240
    assert s.queues["payments"].retry_intervals == (10, 20, 40, 80)
    assert s.queues["webhooks"].priority == 9
    assert s.queues["webhooks"].retry_intervals == (0, 0, 0)
    small = s.profile("small").supervisors[0]
    assert small.mode is ExecutionMode.THREADS
    assert small.concurrency == 8


def test_acmeq_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.bulk]\ntries = 2\n")
    s = Settings.load(env={"ACMEQ_CONFIG": str(path)})
    assert s.queues["bulk"].tries == 2


def test_every_problem_is_one_line_naming_source_key_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[queues.payments]
timeout = "abc"
tries = 0

[profiles.x.supervisors.y]
queues = ["nope"]
mode = "forked"
""",
    )
    with pytest.raises(ConfigError) as err:
        Settings.load(path, env={"REDIS_PORT": "http", "QUEUE_MONITORING_ENABLED": "maybe"})
    problems = err.value.problems
    assert f"{path}: queues.payments.timeout: must be a positive integer, got 'abc'" in problems
    assert f"{path}: queues.payments.tries: must be a positive integer, got 0" in problems
    assert "env REDIS_PORT: redis.port: must be an integer from 1 to 65535, got 'http'" in problems
    assert any("monitoring.enabled: must be true or false, got 'maybe'" in p for p in problems)
    assert any("names unknown queue 'nope'" in p for p in problems)
    assert any("mode: must be one of fork, inline, threads, got 'forked'" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_invalid_toml_and_unknown_keys_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        Settings.load(write(tmp_path, "[redis\nurl = 1"), env={})
    with pytest.raises(ConfigError, match=r"redis\.hots: unknown key"):
        Settings.load(write(tmp_path, "[redis]\nhots = 'x'\n"), env={})
    with pytest.raises(ConfigError, match="configuration file not found"):
        Settings.load(tmp_path / "missing.toml", env={})


def test_url_and_sentinels_together_are_refused() -> None:
    env = {
        "REDIS_URL": "redis://a:6379/0",
        "REDIS_SENTINELS": "s1:26379,s2:26379",
        "REDIS_SENTINEL_MASTER": "mymaster",
    }
    with pytest.raises(ConfigError, match="REDIS_URL and REDIS_SENTINELS are both set"):
        Settings.load(env=env)


def test_cluster_and_malformed_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Redis Cluster is not supported"):
        Settings.load(write(tmp_path, "[redis]\ncluster = true\n"), env={})
    with pytest.raises(ConfigError, match="must start with redis://"):
        Settings.load(env={"REDIS_URL": "http://localhost:6379"})
    with pytest.raises(ConfigError, match="invalid port"):
        Settings.load(env={"REDIS_URL": "redis://localhost:port/0"})
    with pytest.raises(ConfigError, match="Redis Cluster"):
        Settings.load(env={"REDIS_URL": "redis://a:1,b:2/0"})


def test_sentinels_are_parsed() -> None:
    s = Settings.load(
        env={"REDIS_SENTINELS": "s1:26379, s2:26380", "REDIS_SENTINEL_MASTER": "queue"}
    )
    assert s.redis.sentinels == (("s1", 26379), ("s2", 26380))
    assert s.redis.sentinel_master == "queue"
    with pytest.raises(ConfigError, match="sentinel_master: is required"):
        Settings.load(env={"REDIS_SENTINELS": "s1:26379"})


def test_seed_worker_variables_map_onto_profile_tiers() -> None:
    s = Settings.load(
        env={"QUEUE_HIGH_WORKERS": "3", "QUEUE_MEDIUM_WORKERS": "4", "QUEUE_LOW_WORKERS": "2"}
    )
    prod = {sup.name: sup for sup in s.profile("production").supervisors}
    assert prod["high-priority"].max_processes == 3
    assert prod["high-priority"].min_processes == 1
    assert prod["exports"].max_processes == prod["exports"].min_processes == 4
    assert prod["reports"].max_processes == 4
    assert prod["bulk"].max_processes == prod["maintenance"].max_processes == 2
    assert s.profile("development").supervisors[0].max_processes == 3  # untiered


def test_unknown_profile_lists_the_defined_ones() -> None:
    with pytest.raises(UnknownProfileError, match="defined profiles: development, production"):
        Settings.load(env={}).profile("staging")


def test_mask_url_hides_passwords() -> None:
    assert mask_url("redis://:s3cret@host:6379/7") == "redis://:***@host:6379/7"
    assert mask_url("postgresql://app:pw@db/x") == "postgresql://app:***@db/x"
    assert mask_url("redis://host:6379/7") == "redis://host:6379/7"


def test_problems_never_echo_secrets() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env={"REDIS_URL": "redis://:s3cret@host:abc/0"})
    assert "s3cret" not in str(err.value)
    assert "redis://:***@host:abc/0" in str(err.value)


def test_a_tier_variable_below_the_queue_count_is_refused_once() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env={"QUEUE_HIGH_WORKERS": "1"})
    assert err.value.problems == [
        "env QUEUE_HIGH_WORKERS: workers.high: must be at least 2 (one process per queue of "
        "supervisor 'high-priority'), got '1'"
    ]
    with pytest.raises(ConfigError) as err:
        Settings.load(env={"QUEUE_LOW_WORKERS": "x"})
    assert len(err.value.problems) == 1  # bulk and maintenance share the tier


def test_config_show_reports_values_in_force() -> None:
    s = Settings.load(env={"QUEUE_HIGH_WORKERS": "4"})
    key = "profiles.production.supervisors.high-priority.max_processes"
    assert (s.values[key], s.sources[key]) == (4, "env QUEUE_HIGH_WORKERS")
    assert (s.values["redis.port"], s.sources["redis.port"]) == (6379, "default")
    assert all(s.sources.get(k) for k in s.values)


def test_supervisor_memory_caps_and_overrides() -> None:
    s = Settings.load(env={})
    dev = s.profile("development").supervisors[0]
    assert dev.memory_for(s.queues["notifications"]) == 128  # its own, below the cap
    assert dev.memory_for(s.queues["exports"]) == 256  # capped (development: reduced)
    high = s.profile("production").supervisors[0]
    assert high.memory_for(s.queues["payments"]) == 256
    assert high.timeout_for(s.queues["payments"]) == 180
