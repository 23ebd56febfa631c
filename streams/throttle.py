"""Login rate limiting (streams/auth.py): failures counted per key (a client address, a
user name) over a sliding window; a key with `attempts` failures in the window is refused until
the oldest of them leaves it. In memory, per worker, bounded in size."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

ATTEMPTS = 5
WINDOW_S = 300.0
#: Keys remembered at most: past it the least recently failed key is forgotten, so random user
#: names cannot grow memory without bound (though a flood of them can make a worker forget a
#: name's failures early; the client address of the flood stays counted).
MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(
        self,
        attempts: int = ATTEMPTS,
        window_s: float = WINDOW_S,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def wait_s(self, *keys: str) -> float:
        """Seconds until every key may try again; 0 when they all may now."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            failures = self._live(key, now)
            if len(failures) >= self.attempts:
                wait = max(wait, failures[-self.attempts] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> float:
        """Counts a failure for every key; returns its time, for `forgive`."""
        now = self.clock()
        for key in keys:
            failures = self._live(key, now)
            if key not in self._failures:
                self._make_room()
                self._failures[key] = failures
            failures.append(now)
            self._failures.move_to_end(key)
        return now

    def forgive(self, key: str, at: float | None = None) -> None:
        """Forgets `key`'s failure counted `at`, or all of its failures."""
        failures = self._failures.get(key)
        if failures is None:
            return
        if at is not None and at in failures:
            failures.remove(at)
        if at is None or not failures:
            del self._failures[key]

    def _live(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def _make_room(self) -> None:
        # Least recently failed first: the keys whose failures have all expired lead.
        while len(self._failures) >= self.max_keys:
            self._failures.popitem(last=False)
