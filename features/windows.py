"""Event-time window primitives used by the feature families.

Events arrive in ts order per key (the ordering contract of the engine); each structure keeps
only what its window needs, so memory per key is bounded by activity inside the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class WindowSum:
    """Count and sum of values with ts in (t - width, t], for non-decreasing t."""

    width_ms: int
    items: deque[tuple[int, int]] = field(default_factory=deque)
    total: int = 0

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - self.width_ms
        items = self.items
        while items and items[0][0] <= horizon:
            self.total -= items.popleft()[1]

    def add(self, ts_ms: int, value: int) -> None:
        self.items.append((ts_ms, value))
        self.total += value

    @property
    def count(self) -> int:
        return len(self.items)


@dataclass
class WindowDistinct:
    """Distinct members seen with ts in (t - width, t], for non-decreasing t.

    `last_seen` is kept in last-seen order (a member seen again moves to the end), so expiry
    pops from the front and stops at the first member still inside the window.
    """

    width_ms: int
    last_seen: dict[str, int] = field(default_factory=dict)

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - self.width_ms
        last_seen = self.last_seen
        while last_seen:
            member = next(iter(last_seen))
            if last_seen[member] > horizon:
                return
            del last_seen[member]

    def add(self, ts_ms: int, member: str) -> None:
        self.last_seen.pop(member, None)
        self.last_seen[member] = ts_ms

    def count_with(self, member: str) -> int:
        """Distinct count including `member` (the current event's entity)."""
        return len(self.last_seen) + (0 if member in self.last_seen else 1)


@dataclass
class LabelledWindow:
    """Payments with ts in (t - width, t] and the labels that have arrived for them.

    `fraud_rate()` is the share labelled fraud among those with a label (None when none has
    one). A later label for the same payment replaces the earlier one.
    """

    width_ms: int
    items: deque[tuple[int, str]] = field(default_factory=deque)
    labels: dict[str, bool] = field(default_factory=dict)
    fraud: int = 0

    def add(self, ts_ms: int, tx_id: str) -> None:
        self.items.append((ts_ms, tx_id))

    def label(self, tx_id: str, is_fraud: bool) -> None:
        previous = self.labels.get(tx_id)
        if previous is not None:
            self.fraud -= previous
        self.labels[tx_id] = is_fraud
        self.fraud += is_fraud

    def expire(self, now_ms: int) -> list[str]:
        """Drop payments that left the window; returns their tx_ids."""
        horizon = now_ms - self.width_ms
        gone: list[str] = []
        items = self.items
        while items and items[0][0] <= horizon:
            tx_id = items.popleft()[1]
            gone.append(tx_id)
            was_fraud = self.labels.pop(tx_id, None)
            if was_fraud is not None:
                self.fraud -= was_fraud
        return gone

    def fraud_rate(self) -> float | None:
        return self.fraud / len(self.labels) if self.labels else None
