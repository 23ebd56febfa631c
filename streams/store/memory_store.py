"""`MemoryDecisionStore`: the decision store's semantics in process memory, for broker-free
unit tests of the agents (`tests/integration/test_store.py` holds it to the Redis store)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graph.layer import RingScore
from streams.shards.checkpoints import chain_blob
from streams.store.protocol import (
    ALERTS_KEEP,
    RECENT_KEEP,
    RECENT_SHOWN,
    SOLVENCY_SERIES_KEEP,
    CheckpointConflict,
    PolicyConflict,
    RingKey,
    charted,
)


@dataclass
class MemoryDecisionStore:
    """The same semantics in process memory, for broker-free unit tests of the agents."""

    decisions: dict[str, bytes] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    dead: set[tuple[str, int, int]] = field(default_factory=set)
    #: Per name, the chain's blob as `load_checkpoint` returns it.
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    #: Per name, the chain's pieces: (generation, blob), the full one first.
    chains: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    referrals: dict[str, tuple[str, int]] = field(default_factory=dict)
    ring_events: dict[str, bytes] = field(default_factory=dict)
    ring_scores: dict[RingKey, RingScore] = field(default_factory=dict)
    adjustments: dict[str, bytes] = field(default_factory=dict)
    ledgers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The live policy document, and every version's.
    policy: bytes | None = None
    policies: dict[str, bytes] = field(default_factory=dict)
    graph_beat_ms: int | None = None
    #: The newest decisions first, as Redis keeps them for the status page.
    recent: list[bytes] = field(default_factory=list)
    #: The solvency monitor's: scope -> last closed reading, series (oldest first), running
    #: reading; alerts by id, and the newest last.
    solvency_latest: dict[str, bytes] = field(default_factory=dict)
    solvency_series: dict[str, list[bytes]] = field(default_factory=dict)
    solvency_current: dict[str, bytes] = field(default_factory=dict)
    alert_ids: dict[str, bytes] = field(default_factory=dict)
    alerts: list[bytes] = field(default_factory=list)

    async def put_solvency(
        self, readings: Sequence[tuple[str, int, bytes]], current: Mapping[str, bytes]
    ) -> None:
        for scope, period_end, value in readings:
            latest = self.solvency_latest.get(scope)
            if latest is not None and json.loads(latest)["period_end"] >= period_end:
                continue  # a period read again after a restore
            self.solvency_latest[scope] = value
            if charted(scope):
                series = self.solvency_series.setdefault(scope, [])
                series.append(value)
                del series[:-SOLVENCY_SERIES_KEEP]
        self.solvency_current.update(current)

    async def put_alerts(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for alert_id, value in items:
            out.append(self.alert_ids.get(alert_id))
            if out[-1] is None:
                self.alert_ids[alert_id] = value
                self.alerts.append(value)
        del self.alerts[:-ALERTS_KEEP]
        return out

    async def get_policy(self) -> bytes | None:
        return self.policy

    async def put_graph_heartbeat(self, at_ms: int) -> None:
        self.graph_beat_ms = at_ms

    async def graph_heartbeat(self) -> int | None:
        return self.graph_beat_ms

    async def push_policy(self, version: str, document: str) -> bytes | None:
        text = document.encode()
        if self.policies.get(version, text) != text:
            raise PolicyConflict(
                f"policy version {version} is already taken by another policy: give this "
                "one a new version"
            )
        before, self.policy = self.policy, text
        self.policies[version] = text
        return before

    async def seed_policy(self, version: str, document: str) -> bool:
        self.policies.setdefault(version, document.encode())
        if self.policy is not None:
            return False
        self.policy = document.encode()
        return True

    async def put_rings(
        self, rings: Sequence[tuple[str, bytes | None]], scores: Mapping[RingKey, RingScore]
    ) -> None:
        for ring_id, event in rings:
            if event is None:
                self.ring_events.pop(ring_id, None)
            else:
                self.ring_events[ring_id] = event
        for key, score in scores.items():
            if score is None:
                self.ring_scores.pop(key, None)
            else:
                self.ring_scores[key] = score

    async def get_ring_scores(self, keys: Sequence[RingKey]) -> dict[RingKey, RingScore]:
        return {k: self.ring_scores[k] for k in keys if k in self.ring_scores}

    async def decision_and_rings(
        self, tx_id: str, keys: Sequence[RingKey]
    ) -> tuple[bytes | None, dict[RingKey, RingScore]]:
        return self.decisions.get(tx_id), await self.get_ring_scores(keys)

    async def rings(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.ring_events.values()]

    async def put_referrals(self, writes: Sequence[tuple[str, str, int]]) -> None:
        for user, referrer, ts in writes:
            self.referrals[user] = (referrer, ts)

    async def get_referrals(self, user_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        return {u: self.referrals[u] for u in user_ids if u in self.referrals}

    async def get_many(self, tx_ids: Sequence[str]) -> dict[str, bytes]:
        return {t: self.decisions[t] for t in tx_ids if t in self.decisions}

    async def put_new(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for tx_id, value in items:
            if tx_id in self.decisions:
                out.append(self.decisions[tx_id])
                continue
            self.decisions[tx_id] = value
            d = json.loads(value)
            for name, amount in (
                ("decisions", 1),
                (f"action:{d['action']}", 1),
                ("rebate_requested_cents", d["rebate_requested_cents"]),
                ("rebate_granted_cents", d["rebate_granted_cents"]),
            ):
                self.counters[name] = self.counters.get(name, 0) + amount
            self.recent.insert(0, value)
            out.append(None)
        del self.recent[RECENT_KEEP:]
        return out

    async def put_adjustments(self, items: Sequence[tuple[str, str, bytes]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for adjustment_id, tx_id, value in items:
            if adjustment_id in self.adjustments:
                out.append(self.adjustments[adjustment_id])
                continue
            self.adjustments[adjustment_id] = value
            a = json.loads(value)
            for name, amount in (
                ("adjustments", 1),
                (f"adjustments:{a['kind']}", 1),
                (f"adjusted_cents:{a['kind']}", a["cents"]),
            ):
                self.counters[name] = self.counters.get(name, 0) + amount
            self.ledgers[tx_id] = {
                name: a[name]
                for name in ("requested_cents", "granted_cents", "held_cents", "voided_cents")
            } | {"last_adjustment": adjustment_id}
            out.append(None)
        return out

    async def get_ledger(self, tx_id: str) -> dict[str, Any] | None:
        return self.ledgers.get(tx_id)

    async def count_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int:
        fresh = [p for p in positions if p not in self.dead]
        self.dead.update(fresh)
        self.counters["dead_letters"] = self.counters.get("dead_letters", 0) + len(fresh)
        return len(fresh)

    async def stats(self) -> dict[str, Any]:
        recent = [json.loads(r) for r in self.recent[:RECENT_SHOWN]]
        return {"counters": dict(self.counters), "recent": recent}

    async def save_checkpoint(
        self, name: str, blob: bytes, *, generation: str | None = None, extends: str | None = None
    ) -> None:
        if extends is None:
            self.chains[name] = [(generation or "", blob)]
        else:
            chain = self.chains.get(name)
            if not chain or chain[-1][0] != extends:
                raise CheckpointConflict(f"checkpoint {name!r} no longer ends at {extends}")
            chain.append((generation or "", blob))
        self.checkpoints[name] = chain_blob([piece for _, piece in self.chains[name]])

    async def load_checkpoint(self, name: str) -> bytes | None:
        return self.checkpoints.get(name)
