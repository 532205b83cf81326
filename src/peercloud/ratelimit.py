"""Token buckets: how often an untrusted party may ask for work, with a burst allowance."""

import time
from collections.abc import Callable


class Buckets:
    """One token bucket per key (an IP, a link), bounded in number: the stalest key goes first."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key → (tokens, when counted)

    def take(self, key: object, wanted: int = 1) -> int:
        """Take up to `wanted` tokens for `key`; how many it had (0: refuse the request)."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))  # re-inserted last: most recent
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        granted = min(wanted, int(tokens))
        self._buckets[key] = (tokens - granted, now)
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return granted

    def forget(self, key: object) -> None:
        """Drop a key's bucket (its link closed)."""
        self._buckets.pop(key, None)
