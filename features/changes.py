"""Which keys of a stage's keyed state changed since someone last asked: what an incremental
checkpoint (`streams.shards.deltas`) writes instead of the whole state.

A stage with tracking on (`UserStage.track_changes`, `EntityStage.track_changes`) adds, per
event, the key of each family it reads or writes to the set of that key space. Reading counts
too: a read expires windows in place. Keys leaving the state (sweeps, expiry) need no mark: a
checkpoint finds them by comparing key sets. Pure: sets of keys, no I/O, off by default (a
replay has no checkpoints, and would only grow the sets).
"""

from __future__ import annotations

from typing import Any

#: The key spaces a stage marks: the user stage's users, the entity stage's families.
KEY_SPACES = ("users", "merchants", "devices", "ips", "cards", "referrers")


class ChangedKeys:
    """Per key space, the keys touched since the last `take`."""

    __slots__ = KEY_SPACES

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.merchants: set[str] = set()
        self.devices: set[str] = set()
        self.ips: set[str] = set()
        self.cards: set[str] = set()
        self.referrers: set[str] = set()

    def take(self) -> dict[str, set[str]]:
        """The keys touched per key space, and a fresh start."""
        out = {space: getattr(self, space) for space in KEY_SPACES}
        for space in KEY_SPACES:
            setattr(self, space, set())
        return out


class MarksChanges:
    """A stage that marks the keys it touches once asked to (`track_changes`). The marks
    belong to the process, never to a checkpoint: a stage restored from one marks nothing
    until asked again."""

    changes: ChangedKeys | None = None

    def track_changes(self) -> ChangedKeys:
        """Mark the keys touched from now on (for incremental checkpoints)."""
        if self.changes is None:
            self.changes = ChangedKeys()
        return self.changes

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name != "changes"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.changes = None
