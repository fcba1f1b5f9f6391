"""In-memory token buckets: how many requests a caller may make, and how long to wait when over."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter"]

MAX_CALLERS = 10_000  # buckets kept before full (idle) ones are dropped


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``per_minute`` requests a minute per caller, in bursts of up to ``per_minute``.

    Each caller has a bucket of ``per_minute`` tokens, refilled at ``per_minute / 60`` a second;
    a request takes one. The buckets live in this process only (one per server).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"RateLimiter expects at least 1 request a minute, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, caller: str) -> int:
        """0 when ``caller`` may make a request now (one token is taken), else the seconds to wait."""
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            self._prune(now)
            bucket = self._buckets[caller] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def _prune(self, now: float) -> None:
        """Forget the callers whose buckets have filled up again, once there are too many."""
        if len(self._buckets) < MAX_CALLERS:
            return
        full = [c for c, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.capacity]
        for caller in full:
            del self._buckets[caller]
