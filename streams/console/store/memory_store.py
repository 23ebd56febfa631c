"""`MemoryConsoleStore`: the console store's semantics in process memory, for broker-free
tests (`tests/integration/test_console_store.py` holds it to the Redis store)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rebate_guard.contract.records import Label
from streams.console.store.index import (
    AUDIT_KEEP,
    ENTITY_KEEP,
    RING_VERSIONS_KEEP,
    SERIES_STEP_S,
    Indexed,
    audit_entry,
    distinct_versions,
    indexed_entities,
    label_json,
    link_fields,
    parse_link,
    queue_entry,
    queue_score,
    series_totals,
)
from streams.console.store.solvency import (
    ServedSolvency,
    SolvencyBooks,
    SolvencyLayout,
    books,
    newest_readings,
)


@dataclass
class MemoryConsoleStore:
    """`RedisConsoleStore`'s semantics in process memory (no expiry), for broker-free tests."""

    history_keep: int = 200_000
    buckets: dict[int, dict[str, int]] = field(default_factory=dict)
    queue: dict[str, int] = field(default_factory=dict)
    claimed: dict[str, str] = field(default_factory=dict)
    entities: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    rows: list[tuple[int, bytes]] = field(default_factory=list)
    label_values: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    audits: list[dict[str, Any]] = field(default_factory=list)
    draft_entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    tx_links: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    rings: dict[str, list[bytes]] = field(default_factory=dict)
    #: The solvency monitor's serving state as the worker writes it: the memory decision
    #: store's, when the worker shares it (as the Redis store reads the worker's keys).
    solvency: SolvencyLayout = field(default_factory=ServedSolvency)

    async def record(self, entries: Sequence[Indexed]) -> None:
        for start, totals in series_totals(entries).items():
            bucket = self.buckets.setdefault(start, {})
            for name, value in totals.items():
                bucket[name] = bucket.get(name, 0) + value
        for e in entries:
            if score := queue_score(e.decision):
                self.queue[e.decision.tx_id] = score
            for kind, entity_id in indexed_entities(e):
                newest = self.entities.setdefault((kind, entity_id), {})
                newest[e.decision.tx_id] = e.tx.ts
                while len(newest) > ENTITY_KEEP:
                    del newest[min(newest, key=lambda t: (newest[t], t))]
            self.tx_links[e.decision.tx_id] = [parse_link(f) for f in link_fields(e.tx)]
        await self.record_history(entries)

    async def record_history(self, entries: Sequence[Indexed]) -> None:
        if self.history_keep <= 0:
            return
        new = {(e.tx.ts, e.history_row) for e in entries if e.history_row is not None}
        self.rows = sorted(set(self.rows) | new)  # a sorted set, as Redis keeps them
        del self.rows[: max(0, len(self.rows) - self.history_keep)]

    async def resolve_holds(self, tx_ids: Sequence[str]) -> None:
        for tx_id in tx_ids:
            self.queue.pop(tx_id, None)
            self.claimed.pop(tx_id, None)

    async def record_labels(self, labels: Sequence[Label]) -> None:
        for label in labels:
            value = json.loads(label_json(label))
            if label.tx_id:
                self.label_values[("tx", label.tx_id)] = value
            if label.user_id:
                self.label_values[("user", label.user_id)] = value

    async def series(self, since_s: int, until_s: int) -> list[dict[str, int]]:
        start = since_s // SERIES_STEP_S * SERIES_STEP_S
        return [{"t": t, **self.buckets[t]} for t in sorted(self.buckets) if start <= t <= until_s]

    async def review_queue(self, limit: int) -> list[tuple[str, int, bool]]:
        # As ZREVRANGE: highest score first, equal scores by tx_id descending.
        ranked = sorted(self.queue.items(), key=lambda item: (item[1], item[0]), reverse=True)
        return [queue_entry(tx_id, score) for tx_id, score in ranked[:limit]]

    async def queue_size(self) -> int:
        return len(self.queue)

    async def links(self, user_ids: Sequence[str]) -> dict[str, dict[tuple[str, str], int]]:
        found: dict[str, dict[tuple[str, str], int]] = {}
        for user_id in user_ids:
            newest = await self.by_entity("user", user_id, ENTITY_KEEP)
            found[user_id] = dict(Counter(x for t in newest for x in self.tx_links.get(t, [])))
        return found

    async def claims(self, tx_ids: Sequence[str]) -> dict[str, str]:
        return {t: self.claimed[t] for t in tx_ids if t in self.claimed}

    async def claim(self, tx_id: str, user: str) -> str:
        return self.claimed.setdefault(tx_id, user)

    async def set_claim(self, tx_id: str, user: str) -> None:
        self.claimed[tx_id] = user

    async def by_entity(self, kind: str, entity_id: str, limit: int) -> list[str]:
        newest = self.entities.get((kind, entity_id), {})
        return sorted(newest, key=lambda t: (newest[t], t), reverse=True)[:limit]

    async def history(self, since_ms: int, limit: int) -> list[bytes]:
        rows = [row for ts, row in self.rows if ts >= since_ms]
        return rows[-limit:] if limit else []

    async def labels(self, tx_ids: Sequence[str], user_ids: Sequence[str]) -> dict[str, Any]:
        values = self.label_values
        return {
            "tx": {t: values[("tx", t)] for t in tx_ids if ("tx", t) in values},
            "user": {u: values[("user", u)] for u in user_ids if ("user", u) in values},
        }

    async def record_rings(self, events: Sequence[tuple[str, bytes]]) -> None:
        for ring_id, value in events:
            versions = self.rings.setdefault(ring_id, [])
            versions.insert(0, value)
            del versions[RING_VERSIONS_KEEP:]

    async def ring_versions(self, ring_id: str) -> list[dict[str, Any]]:
        return distinct_versions(self.rings.get(ring_id, []))

    async def audit(self, who: str, action: str, detail: dict[str, Any]) -> None:
        self.audits.insert(0, audit_entry(who, action, detail))
        del self.audits[AUDIT_KEEP:]

    async def audit_log(self, limit: int) -> list[dict[str, Any]]:
        return self.audits[:limit]

    async def put_draft(self, name: str, entry: dict[str, Any]) -> None:
        self.draft_entries[name] = entry

    async def drafts(self) -> dict[str, dict[str, Any]]:
        return dict(self.draft_entries)

    async def delete_draft(self, name: str) -> None:
        self.draft_entries.pop(name, None)

    async def solvency_books(self, alerts: int) -> SolvencyBooks:
        return books(self.solvency, alerts)

    async def solvency_series(self, scope: str, limit: int) -> list[bytes]:
        return newest_readings(self.solvency, scope, limit=limit)
