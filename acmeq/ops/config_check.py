"""Checks of a configuration that parses but cannot work as meant (`acmeq config validate`).

Parsing (``acmeq.config.loader``) already names every bad value. What it cannot see is a
mistake that is valid TOML with valid values: a misspelt ``[queues.paymnts]`` is simply a new
queue. Jobs put on a queue that no profile's supervisor serves wait forever, so such a queue is
reported unless it is marked ``unserved = true`` (served by something else, or on purpose idle).
"""

from __future__ import annotations

from acmeq.config.settings import Settings


def unserved_queues(settings: Settings) -> list[str]:
    """One problem line per queue that no supervisor of any profile serves (and that is not
    marked ``unserved = true``), naming the queue and the profiles."""
    served = {
        queue
        for profile in settings.profiles.values()
        for supervisor in profile.supervisors
        for queue in supervisor.queues
    }
    profiles = ", ".join(sorted(settings.profiles)) or "(none)"
    return [
        f"queues.{name}: no supervisor of any profile ({profiles}) serves queue {name!r}: "
        f"add it to a supervisor's queues, or set queues.{name}.unserved = true"
        for name, spec in sorted(settings.queues.items())
        if name not in served and not spec.unserved
    ]
