"""The Redis key layout of a deployment, and the ledger hash as Python: shared by the worker's
store (`streams.store`) and the rebate engines' client (`rebate_guard.client`), which loads
nothing else of the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Keys:
    """Redis key layout, under a prefix derived from the app id (one deployment per prefix)."""

    def __init__(self, app_id: str) -> None:
        self.prefix = f"{app_id}:"
        self.stats = f"{self.prefix}stats"
        self.recent = f"{self.prefix}recent"
        #: Hash: ring id -> its latest event (JSON), for the rings that stand.
        self.rings = f"{self.prefix}rings"
        #: The live policy document (JSON), read by every worker.
        self.policy = f"{self.prefix}policy"
        #: Wall-clock ms at which the graph shard last showed it was running.
        self.graph_heartbeat = f"{self.prefix}graph:heartbeat"
        # The solvency monitor's serving state (docs/economics.md), which the console reads.
        #: Hash: scope -> its running `SolvencyReading` (the platform and each region).
        self.solvency_current = f"{self.prefix}solvency:current"
        #: Hash: scope -> the `SolvencyReading` of its last closed period.
        self.solvency_latest = f"{self.prefix}solvency:latest"
        #: List of `PlatformAlert`, newest last.
        self.alerts = f"{self.prefix}alerts"

    def policy_version(self, version: str) -> str:
        """Every version's document, kept: a decision's `policy_version` can be looked up."""
        return f"{self.prefix}policy:version:{version}"

    def decision(self, tx_id: str) -> str:
        return f"{self.prefix}decision:{tx_id}"

    def adjustment(self, adjustment_id: str) -> str:
        return f"{self.prefix}adjustment:{adjustment_id}"

    def ledger(self, tx_id: str) -> str:
        """A transaction's rebate balances after its latest adjustment (hash)."""
        return f"{self.prefix}ledger:{tx_id}"

    def dead_letter(self, topic: str, partition: int, offset: int) -> str:
        return f"{self.prefix}dead:{topic}:{partition}:{offset}"

    def checkpoint(self, name: str) -> str:
        return f"{self.prefix}checkpoint:{name}"

    def referral(self, user_id: str) -> str:
        return f"{self.prefix}referral:{user_id}"

    def solvency_series(self, scope: str) -> str:
        """A scope's closed readings, oldest first (the platform and regions only)."""
        return f"{self.prefix}solvency:series:{scope}"

    def alert(self, alert_id: str) -> str:
        """An alert as first stored: a redelivered period alerts once."""
        return f"{self.prefix}alert:{alert_id}"

    def ring_score(self, key: tuple[str, str]) -> str:
        """A user's ("u", id) or merchant's ("m", id) strongest ring, or the ring a user's
        points requests read ("r", id: `streams.shards.wire.REQUESTER`)."""
        return f"{self.prefix}ring:{key[0]}:{key[1]}"


def ledger_balances(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A transaction's ledger hash as Redis returns it (bytes), as cents and the id of the
    adjustment that set them."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name, text = as_bytes(key).decode(), as_bytes(value).decode()
        out[name] = int(text) if name.endswith("_cents") else text
    return out


def as_bytes(value: bytes | str) -> bytes:
    # The clients are created without decode_responses, so Redis answers bytes.
    return value.encode() if isinstance(value, str) else value
