"""Event-time window primitives used by the feature families.

Events reach a key in processing order, which is event-time order (the engine's contract), so
every structure here is a queue that grows at the back and expires from the front: memory per
key is bounded by the activity inside its longest window, and each event is added and expired
once (amortised O(1)). Windows are half-open on the left: (t - width, t].
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol, TypeVar


class PaymentLog:
    """Count and sum of values over several trailing horizons at once, e.g. 1 h/24 h/7 d/30 d.

    One list of (ts, value) spans the longest horizon; each horizon keeps the index of its
    oldest item still inside and its running sum, so four windows cost one append and four
    cursor checks instead of four queues.
    """

    __slots__ = ("heads", "sums", "ts", "values", "widths")

    def __init__(self, widths: tuple[int, ...]) -> None:
        self.widths = widths  # longest first: heads[0] is the smallest index
        self.ts: list[int] = []
        self.values: list[int] = []
        self.heads = [0] * len(widths)
        self.sums = [0] * len(widths)

    def expire(self, now_ms: int) -> None:
        ts, values, heads, sums = self.ts, self.values, self.heads, self.sums
        n = len(ts)
        for i, width in enumerate(self.widths):
            head = heads[i]
            horizon = now_ms - width
            if head < n and ts[head] <= horizon:
                total = sums[i]
                while head < n and ts[head] <= horizon:
                    total -= values[head]
                    head += 1
                heads[i], sums[i] = head, total
        # Compact once the expired prefix outgrows what is inside, so the lists stay within
        # twice the items in the window; a compaction moves fewer items than it drops, so it
        # costs O(1) per item. No floor: with a floor of 64 items, a user paying a few times a
        # month kept up to 64 expired payments, filled over a year of history (issue #20).
        first = heads[0]
        if first * 2 > n:
            del ts[:first], values[:first]
            self.heads = [h - first for h in heads]

    def total_at(self, now_ms: int, horizon: int = 0) -> int:
        """What `sums[horizon]` would be after `expire(now_ms)`, without expiring (a read
        that must change nothing)."""
        ts, values = self.ts, self.values
        head, total = self.heads[horizon], self.sums[horizon]
        cutoff = now_ms - self.widths[horizon]
        while head < len(ts) and ts[head] <= cutoff:
            total -= values[head]
            head += 1
        return total

    def add(self, ts_ms: int, value: int) -> None:
        self.ts.append(ts_ms)
        self.values.append(value)
        sums = self.sums
        for i in range(len(sums)):
            sums[i] += value

    def count(self, horizon: int) -> int:
        return len(self.ts) - self.heads[horizon]

    def __len__(self) -> int:
        return len(self.ts) - self.heads[0]


class WindowDistinct:
    """Distinct members seen with ts in (t - width, t].

    `last_seen` is kept in last-seen order (a member seen again moves to the end), so expiry
    pops from the front and stops at the first member still inside the window.
    """

    __slots__ = ("last_seen", "width_ms")

    def __init__(self, width_ms: int) -> None:
        self.width_ms = width_ms
        self.last_seen: dict[str, int] = {}

    def expire(self, now_ms: int) -> None:
        last_seen = self.last_seen
        horizon = now_ms - self.width_ms
        for oldest in last_seen.values():  # usually nothing has expired: look at one entry
            if oldest <= horizon:
                drop_oldest(last_seen, horizon)
            return

    def add(self, ts_ms: int, member: str) -> None:
        last_seen = self.last_seen
        last_seen.pop(member, None)
        last_seen[member] = ts_ms

    def count_with(self, member: str) -> int:
        """Distinct count including `member` (the current event's entity)."""
        return len(self.last_seen) + (member not in self.last_seen)

    def __len__(self) -> int:
        return len(self.last_seen)


class WindowCount:
    """How many events have ts in (t - width, t]."""

    __slots__ = ("items", "width_ms")

    def __init__(self, width_ms: int) -> None:
        self.width_ms = width_ms
        self.items: deque[int] = deque()

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - self.width_ms
        items = self.items
        while items and items[0] <= horizon:
            items.popleft()

    def add(self, ts_ms: int) -> None:
        self.items.append(ts_ms)

    def __len__(self) -> int:
        return len(self.items)


class LabelledWindow:
    """Payments with ts in (t - width, t] for several widths at once (longest first), and the
    labels that have arrived for them.

    Per width: `labelled(i)`, how many of its payments have a label so far, and
    `fraud_rate(i)`, the share labelled fraud among those (None when none has one). Labels
    arrive days after their payments, so a short window holds few: that is the label delay,
    applied as it is in production, not a gap to fill. A later label for the same payment
    replaces the earlier one. Only a payment inside the window takes a label: one never
    added, or already expired, is ignored (`label` returns False), so a stray or late label
    cannot leave a count behind. A repeated tx_id is the latest payment with it.

    One list of (ts, tx_id) spans the longest width (as `PaymentLog`): each width keeps the
    index of its oldest payment still inside and its label counts.
    """

    __slots__ = (
        "base",
        "fraud",
        "heads",
        "labelled_n",
        "labels",
        "members",
        "ts",
        "tx_ids",
        "widths",
    )

    def __init__(self, widths: tuple[int, ...]) -> None:
        self.widths = widths
        self.ts: list[int] = []
        self.tx_ids: list[str] = []
        #: Payments compacted off the front: list index + base = the payment's position.
        self.base = 0
        #: tx_id -> position of its latest payment (only payments inside the longest width).
        self.members: dict[str, int] = {}
        self.labels: dict[str, bool] = {}
        self.heads = [0] * len(widths)
        self.labelled_n = [0] * len(widths)
        self.fraud = [0] * len(widths)

    def add(self, ts_ms: int, tx_id: str) -> None:
        previous = self.members.get(tx_id)
        if previous is not None:
            self._unlabel(tx_id, previous)  # its label was the earlier payment's
        self.members[tx_id] = self.base + len(self.ts)
        self.ts.append(ts_ms)
        self.tx_ids.append(tx_id)

    def label(self, tx_id: str, is_fraud: bool) -> bool:
        """Takes the label of a payment inside the window; False (and nothing) otherwise."""
        position = self.members.get(tx_id)
        if position is None:
            return False
        previous = self.labels.get(tx_id)
        self.labels[tx_id] = is_fraud
        index = position - self.base
        for i, head in enumerate(self.heads):
            if index >= head:
                if previous is None:
                    self.labelled_n[i] += 1
                else:
                    self.fraud[i] -= previous
                self.fraud[i] += is_fraud
        return True

    def _unlabel(self, tx_id: str, position: int) -> None:
        was = self.labels.pop(tx_id, None)
        if was is None:
            return
        index = position - self.base
        for i, head in enumerate(self.heads):
            if index >= head:
                self.labelled_n[i] -= 1
                self.fraud[i] -= was

    def expire(self, now_ms: int) -> list[str]:
        """Drop payments that left each width; returns the tx_ids that left the longest."""
        ts, tx_ids, heads = self.ts, self.tx_ids, self.heads
        members, labels = self.members, self.labels
        n, base = len(ts), self.base
        gone: list[str] = []
        # Shortest first: a payment leaving the longest width leaves the others too, and
        # its label is forgotten only once every width has let it go.
        for i in range(len(heads) - 1, -1, -1):
            head = heads[i]
            horizon = now_ms - self.widths[i]
            while head < n and ts[head] <= horizon:
                tx_id = tx_ids[head]
                latest = members.get(tx_id) == base + head
                was = labels.get(tx_id) if latest else None
                if was is not None:
                    self.labelled_n[i] -= 1
                    self.fraud[i] -= was
                if i == 0:
                    gone.append(tx_id)
                    if latest:
                        del members[tx_id]
                        labels.pop(tx_id, None)
                head += 1
            heads[i] = head
        first = heads[0]
        if first > 64 and first * 2 > n:
            del ts[:first], tx_ids[:first]
            self.heads = [h - first for h in heads]
            self.base = base + first
        return gone

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restores a checkpoint; one written before there were several widths (one
        `width_ms`, a deque of (ts, tx_id), labels) comes back as a window of that width."""
        slots = state[1]
        if "width_ms" not in slots:
            for name, value in slots.items():
                setattr(self, name, value)
            return
        self.__init__((slots["width_ms"],))  # type: ignore[misc]
        for ts, tx_id in slots["items"]:
            self.add(ts, tx_id)
        for tx_id, is_fraud in slots["labels"].items():
            self.label(tx_id, is_fraud)

    def widened(self, widths: tuple[int, ...]) -> LabelledWindow:
        """The same payments and labels over `widths` (longest first): exact from its next
        `expire` on (each shorter width then lets its older payments go, labels with them)."""
        out = LabelledWindow(widths)
        first = self.heads[0]
        for ts, tx_id in zip(self.ts[first:], self.tx_ids[first:], strict=True):
            out.add(ts, tx_id)
        for tx_id, is_fraud in self.labels.items():
            out.label(tx_id, is_fraud)
        return out

    def labelled(self, width: int = 0) -> int:
        return self.labelled_n[width]

    def fraud_rate(self, width: int = 0) -> float | None:
        n = self.labelled_n[width]
        return self.fraud[width] / n if n else None

    def __len__(self) -> int:
        """Payments inside the longest width."""
        return len(self.ts) - self.heads[0]


class TopShare:
    """Multiset of members with O(1) add, remove and "share of the most frequent member".

    `freq[c]` counts members that occur exactly c times, so the maximum only ever moves by one
    when a member at the maximum is removed.
    """

    __slots__ = ("counts", "freq", "top", "total")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.freq: dict[int, int] = {}
        self.top = 0
        self.total = 0

    def add(self, member: str) -> None:
        counts, freq = self.counts, self.freq
        c = counts.get(member, 0) + 1
        counts[member] = c
        if c > 1:
            freq[c - 1] -= 1
        freq[c] = freq.get(c, 0) + 1
        if c > self.top:
            self.top = c
        self.total += 1

    def remove(self, member: str) -> None:
        counts, freq = self.counts, self.freq
        c = counts[member]
        freq[c] -= 1
        if c > 1:
            counts[member] = c - 1
            freq[c - 1] += 1
        else:
            del counts[member]
        if c == self.top and not freq[c]:
            self.top = c - 1
        self.total -= 1

    def __len__(self) -> int:
        """Distinct members."""
        return len(self.counts)


K = TypeVar("K")
V = TypeVar("V")


def drop_oldest(last_seen: dict[K, int], horizon: int) -> None:
    """Delete the leading entries whose value (a ts, in non-decreasing order) is <= horizon.

    Counts first, then deletes: calling next(iter(d)) per deletion would rescan the deleted
    slots at the front each time (CPython compacts a dict only when it resizes).
    """
    stale = 0
    for seen in last_seen.values():
        if seen > horizon:
            break
        stale += 1
    if stale == len(last_seen):
        last_seen.clear()
    elif stale:
        for key in list(islice(last_seen, stale)):
            del last_seen[key]


class Keyed(Protocol):
    last_ts: int


KS = TypeVar("KS", bound=Keyed)


def touch(state: dict[K, KS], key: K, *, ts: int, new: Callable[[], KS]) -> KS:
    """The state of `key`, moved to the back of `state` (which is kept in last-activity order
    so idle keys can be swept from the front without a full scan)."""
    value = state.pop(key, None)
    if value is None:
        value = new()
    value.last_ts = ts
    state[key] = value
    return value


def sweep_idle(state: dict[K, KS], horizon: int) -> list[KS]:
    """Remove and return the states idle since `horizon` or earlier (from the front)."""
    gone: list[KS] = []
    stale = []
    for key, value in state.items():
        if value.last_ts > horizon:
            break
        stale.append(key)
        gone.append(value)
    for key in stale:
        del state[key]
    return gone
