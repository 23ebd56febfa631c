"""What the worker and the console need of the serving state: `DecisionStore`.

One decision per tx_id, written once (a redelivered transaction is always answered with the
first decision: never a second grant), live counters, the ledger, checkpoints, the referral
tree, the graph's published rings, and the live policy. `RedisDecisionStore` keeps them in
Redis, `MemoryDecisionStore` in memory for broker-free tests (one contract test holds both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from graph.layer import RingScore

#: The newest decisions kept for the status page.
RECENT_KEEP = 100
#: How many of them `stats` returns (the status page's table).
RECENT_SHOWN = 20
#: A user ("u", id) or a merchant ("m", id), as ring scores are keyed; or the ring a user's
#: points requests read (`streams.shards.wire.REQUESTER`, id).
RingKey = tuple[str, str]
#: The solvency readings kept per scope (the platform's and the regions'), oldest dropped.
SOLVENCY_SERIES_KEEP = 2_000
#: The newest platform alerts kept.
ALERTS_KEEP = 500


def charted(scope: str) -> bool:
    """Whether a scope's readings are kept as a series: the platform's and the regions'."""
    return scope == "platform" or scope.startswith("region:")


class CheckpointConflict(RuntimeError):
    """A delta's chain ends, in the store, at another piece than the one it extends."""


class PolicyConflict(ValueError):
    """A policy was pushed under a version another policy already has."""


class DecisionStore(Protocol):
    async def get_many(self, tx_ids: Sequence[str]) -> dict[str, bytes]: ...

    async def put_new(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        """Store each (tx_id, decision JSON) unless one exists; None = stored now,
        bytes = the decision that was already there (and stands)."""
        ...

    async def count_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int: ...

    async def put_adjustments(self, items: Sequence[tuple[str, str, bytes]]) -> list[bytes | None]:
        """Store each (adjustment id, tx_id, adjustment JSON) unless one with that id
        exists, and the transaction's balances after it; None = stored now, bytes = the
        adjustment that was already there (and stands)."""
        ...

    async def get_ledger(self, tx_id: str) -> dict[str, Any] | None:
        """A transaction's rebate balances after its latest adjustment, if it had one."""
        ...

    async def stats(self) -> dict[str, Any]: ...

    async def save_checkpoint(
        self, name: str, blob: bytes, *, generation: str | None = None, extends: str | None = None
    ) -> None:
        """Replace checkpoint `name` atomically: a reader sees the old one or the new one.
        With `extends`, `blob` is a delta appended to the chain (`load_checkpoint` then
        returns the whole chain), atomically too, and only if the chain's last piece is
        the one named `extends` (else `CheckpointConflict`); `generation` names the piece."""
        ...

    async def load_checkpoint(self, name: str) -> bytes | None: ...

    async def put_referrals(self, writes: Sequence[tuple[str, str, int]]) -> None:
        """Record first signups in the referral tree: (user, referrer, signup ts)."""
        ...

    async def get_referrals(self, user_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """The tree entries (referrer, signup ts) of those users that have one."""
        ...

    async def put_rings(
        self, rings: Sequence[tuple[str, bytes | None]], scores: Mapping[RingKey, RingScore]
    ) -> None:
        """Publish the graph's state: each (ring id, latest event JSON, or None once the
        ring is retired), and each user's or merchant's strongest ring (None: none)."""
        ...

    async def get_ring_scores(self, keys: Sequence[RingKey]) -> dict[RingKey, RingScore]:
        """The strongest ring of each of those users and merchants that is in one."""
        ...

    async def decision_and_rings(
        self, tx_id: str, keys: Sequence[RingKey]
    ) -> tuple[bytes | None, dict[RingKey, RingScore]]:
        """`get_many([tx_id])` and `get_ring_scores(keys)` in one round trip."""
        ...

    async def rings(self) -> list[dict[str, Any]]:
        """The latest event of every ring that stands."""
        ...

    async def put_solvency(
        self, readings: Sequence[tuple[str, int, bytes]], current: Mapping[str, bytes]
    ) -> None:
        """The solvency monitor's closed periods, (scope, period end, reading JSON) in order:
        each scope's latest, and the series of the charted ones (`charted`), each period
        once (a period read again after a restore is not appended again); and the running
        reading of each scope in `current`."""
        ...

    async def put_alerts(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        """Store each (alert_id, alert JSON) unless one exists, appending the new ones to the
        alerts list; None = stored now, bytes = the alert that was already there."""
        ...

    async def get_policy(self) -> bytes | None:
        """The live policy document, if any."""
        ...

    async def put_graph_heartbeat(self, at_ms: int) -> None:
        """The graph shard is running (wall-clock ms): its ring scores are current."""
        ...

    async def graph_heartbeat(self) -> int | None:
        """When the graph shard last said it was running (wall-clock ms), if ever."""
        ...

    async def push_policy(self, version: str, document: str) -> bytes | None:
        """Make `document` the live policy (and keep it under its version); returns the
        document it replaced. `PolicyConflict` if `version` names another document."""
        ...

    async def seed_policy(self, version: str, document: str) -> bool:
        """Make `document` the live policy only if there is none yet; whether it did."""
        ...
