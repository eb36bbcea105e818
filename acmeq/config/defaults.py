"""Built-in defaults: the seed's six queues and its two worker profiles, as plain data.

Kept as TOML-shaped dictionaries so that ``acmeq.toml`` overrides merge onto them key by key and
``acmeq config show`` can report "default" as the source of every value nobody changed.
"""

from __future__ import annotations

from typing import Any

from acmeq.constants import DEFAULT_FAILURE_TTL_S, DEFAULT_RESULT_TTL_S

# The seed (reference/seed-queue-infrastructure.md) gives priority, timeout, tries and memory for
# all six queues and backoff lists for three. reports/maintenance/bulk get documented backoffs:
# reports retries like exports (60 s, then 5 min); maintenance and bulk run once (tries 1), their
# lists only matter when an operator raises `tries`.
# Alert thresholds are acmeq's own (the seed only asks for "configurable thresholds with alerts").
# `wait_threshold` is how long a job may wait (its queue's latency promise); `backlog_threshold`
# is a ready count that is abnormal for the queue's traffic: payments webhooks arrive one by one
# and clear in well under a second, so 1000 waiting means an outage or a storm; notifications
# legitimately burst by thousands (a campaign mailing), so 5000; exports and reports run for
# minutes each on two processes, so 100 is hours of work; maintenance jobs are few and
# scheduled, so 50 means they pile up; bulk imports are huge by design, so only 50000 (a
# runaway producer) alerts.
QUEUES: dict[str, dict[str, Any]] = {
    "payments": {
        "priority": 10,
        "timeout": 180,
        "tries": 5,
        "memory": 256,
        "backoff": [30, 60, 120, 300, 600],
        "wait_threshold": 30,
        "backlog_threshold": 1000,
    },
    "notifications": {
        "priority": 8,
        "timeout": 120,
        "tries": 3,
        "memory": 128,
        "backoff": [15, 30, 60],
        "wait_threshold": 60,
        "backlog_threshold": 5000,
    },
    "exports": {
        "priority": 6,
        "timeout": 900,
        "tries": 2,
        "memory": 1024,
        "backoff": [60, 180],
        "wait_threshold": 300,
        "backlog_threshold": 100,
    },
    "reports": {
        "priority": 6,
        "timeout": 600,
        "tries": 3,
        "memory": 512,
        "backoff": [60, 300],
        "wait_threshold": 300,
        "backlog_threshold": 100,
    },
    "maintenance": {
        "priority": 1,
        "timeout": 1800,
        "tries": 1,
        "memory": 256,
        "backoff": [300],
        "wait_threshold": 3600,
        "backlog_threshold": 50,
    },
    "bulk": {
        "priority": 2,
        "timeout": 3600,
        "tries": 1,
        "memory": 1024,
        "backoff": [600],
        "wait_threshold": 1800,
        "backlog_threshold": 50000,
    },
}
for _q in QUEUES.values():
    _q.setdefault("result_ttl", DEFAULT_RESULT_TTL_S)
    _q.setdefault("failure_ttl", DEFAULT_FAILURE_TTL_S)

# A queue added in acmeq.toml without some keys gets these.
NEW_QUEUE: dict[str, Any] = {
    "priority": 5,
    "timeout": 180,
    "tries": 1,
    "memory": 256,
    "backoff": [],
    "wait_threshold": 300,
    "backlog_threshold": 1000,
    "result_ttl": DEFAULT_RESULT_TTL_S,
    "failure_ttl": DEFAULT_FAILURE_TTL_S,
    # true: no profile is meant to serve this queue (`config validate` then does not report it)
    "unserved": False,
}

# Fields of a supervisor that are not given fall back to these.
SUPERVISOR: dict[str, Any] = {
    "balance": "auto",
    "strategy": "time",
    "min_processes": 1,
    "max_processes": 1,
    "max_shift": 1,
    "cooldown": 3.0,
    "memory": 0,
    "timeout": 0,
    "tries": 0,
    "nice": 0,
    "mode": "inline",
    "concurrency": 1,
    "max_jobs": 0,
    "max_time": 0,
    "tier": "",
}

# The seed's Horizon configuration. `min_processes` is per queue and `max_processes` is the
# supervisor's total, as in Horizon, so "2-8 processes for payments/notifications" is min 1 per
# queue (2 in all) and max 8. `tier` ties a supervisor to QUEUE_HIGH/MEDIUM/LOW_WORKERS.
PROFILES: dict[str, dict[str, Any]] = {
    "production": {
        "max_processes": 0,  # 0: no host cap beyond the supervisors' own maxima
        "memory_budget": 0,  # 0: 80 % of this host's RAM, measured at start
        "supervisors": {
            "high-priority": {
                "queues": ["payments", "notifications"],
                "balance": "auto",
                "strategy": "time",
                "min_processes": 1,
                "max_processes": 8,
                "max_shift": 1,
                "cooldown": 3.0,
                "mode": "inline",
                "tier": "high",
            },
            "exports": {
                "queues": ["exports"],
                "balance": "off",
                "min_processes": 2,
                "max_processes": 2,
                "memory": 1024,
                "mode": "fork",
                "tier": "medium",
            },
            "reports": {
                "queues": ["reports"],
                "balance": "off",
                "min_processes": 2,
                "max_processes": 2,
                "memory": 512,
                "mode": "fork",
                "tier": "medium",
            },
            "bulk": {
                "queues": ["bulk"],
                "balance": "off",
                "min_processes": 1,
                "max_processes": 1,
                "memory": 1024,
                "mode": "inline",
                "tier": "low",
            },
            "maintenance": {
                "queues": ["maintenance"],
                "balance": "off",
                "min_processes": 1,
                "max_processes": 1,
                "memory": 256,
                "mode": "inline",
                "tier": "low",
            },
        },
    },
    "development": {
        "max_processes": 3,
        "memory_budget": 0,
        "supervisors": {
            "default": {
                "queues": [
                    "payments",
                    "notifications",
                    "exports",
                    "reports",
                    "maintenance",
                    "bulk",
                ],
                "balance": "auto",
                "strategy": "size",
                "min_processes": 0,
                "max_processes": 3,
                "max_shift": 1,
                "cooldown": 1.0,
                "memory": 256,
                "mode": "inline",
            },
        },
    },
}
