"""The smoothed rate behind a progress record's ETA (:class:`RateEstimator`)."""

from __future__ import annotations

import math

from acmeq.errors import UsageError

SMOOTHING_S = 10.0  # time constant of the rate's exponential smoothing


class RateEstimator:
    """Items per second, smoothed exponentially over time (time constant ``tau`` seconds).

    Each :meth:`update` blends the rate of the last interval into the estimate with weight
    ``1 - exp(-dt / tau)``: unlike the naive average since the start, the estimate follows a job
    whose speed changes (a slow warm-up, a faster second half) within a few ``tau``, and unlike
    the last interval's rate alone it does not jump with every hiccup. Uneven intervals are
    weighted by their length.
    """

    def __init__(self, tau: float = SMOOTHING_S) -> None:
        if tau <= 0:
            raise UsageError(f"smoothing must be > 0 seconds, got {tau!r}")
        self.tau = tau
        self.rate: float | None = None
        self._t: float | None = None
        self._n = 0

    def update(self, count: int, now: float) -> float | None:
        """Record that ``count`` items were done by ``now`` (monotonic seconds); return the rate."""
        if self._t is None:
            self._t, self._n = now, count
            return self.rate
        dt = now - self._t
        if dt <= 0:
            return self.rate
        instant = max(0, count - self._n) / dt
        if self.rate is None:
            self.rate = instant
        else:
            self.rate += (1.0 - math.exp(-dt / self.tau)) * (instant - self.rate)
        self._t, self._n = now, count
        return self.rate

    def eta_seconds(self, remaining: int) -> float | None:
        if self.rate is None or self.rate <= 0:
            return None
        return max(0, remaining) / self.rate
