"""The console's views in Redis, kept as decisions are stored, and the console's own records.

What the worker writes (one Lua call per batch, only for decisions that were new, so a
redelivery does not count twice):

- **series**: per 10 s of wall clock (when decided), decisions, actions and money
  (requested, granted, held, withheld), for the overview's charts;
- **review queue**: held payments by cents held; a release or void of the hold takes it out;
- **entity index**: each user's, merchant's and device's newest decisions (`ENTITY_KEEP`);
- **history**: the newest payment decisions with what the policy saw
  (`rebate_guard.core.backtest.HistoryRow` JSON), which a draft policy is backtested on;
- **labels**: the newest label of each transaction and user, with its source and reviewer.

What the console writes: claims on queue items, policy drafts, and the audit log (who did
what, when; never trimmed below `AUDIT_KEEP` entries).

`MemoryConsoleStore` keeps the same semantics in memory for broker-free tests.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from rebate_guard.contract.records import (
    HOLD,
    RELEASE,
    VOID,
    Decision,
    Label,
    RebateAdjustment,
    Transaction,
)

#: Seconds per bucket of the overview's time series.
SERIES_STEP_S = 10
#: How long a bucket of the series stays (the overview shows at most this far back).
SERIES_TTL_S = 2 * 86_400
#: Newest decisions kept per user, merchant and device.
ENTITY_KEEP = 200
AUDIT_KEEP = 10_000
#: Entity kinds the console searches by: user, merchant, device.
ENTITY_KINDS = ("user", "merchant", "device")
SERIES_FIELDS = ("decisions", "requested", "granted", "held", "withheld")


@dataclass(frozen=True)
class Indexed:
    """A new decision, its payment, and (for payments) its history row for backtests."""

    decision: Decision
    tx: Transaction
    history_row: bytes | None = None


def held_cents(decision: Decision) -> int:
    """What a decision holds in escrow: all of the rebate not granted, for a hold."""
    if decision.action != HOLD:
        return 0
    return decision.rebate_requested_cents - decision.rebate_granted_cents


def _entities(entry: Indexed) -> list[tuple[str, str]]:
    found = [("user", entry.tx.user_id), ("merchant", entry.tx.merchant_id)]
    if entry.tx.device_id:
        found.append(("device", entry.tx.device_id))
    return found


#: What a user's payments link them to, for ring graphs: (kind, transaction field).
LINK_KINDS = (
    ("merchant", "merchant_id"),
    ("device", "device_id"),
    ("ip", "ip"),
    ("card", "card_id"),
)
LINK_SEP = "\x1f"


def _links(tx: Transaction) -> list[str]:
    values = ((kind, getattr(tx, name)) for kind, name in LINK_KINDS)
    return [f"{kind}{LINK_SEP}{value}" for kind, value in values if value]


def _link(field: str) -> tuple[str, str]:
    kind, _, value = field.partition(LINK_SEP)
    return kind, value


def _series(entries: Sequence[Indexed]) -> dict[int, dict[str, int]]:
    """Totals per bucket start (s) for these decisions."""
    buckets: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for entry in entries:
        d = entry.decision
        bucket = buckets[d.decided_at // 1000 // SERIES_STEP_S * SERIES_STEP_S]
        held = held_cents(d)
        bucket["decisions"] += 1
        bucket[f"action:{d.action}"] += 1
        bucket["requested"] += d.rebate_requested_cents
        bucket["granted"] += d.rebate_granted_cents
        bucket["held"] += held
        bucket["withheld"] += d.rebate_requested_cents - d.rebate_granted_cents - held
    return buckets


#: One entity index write in this many also trims the index back to `ENTITY_KEEP`.
TRIM_EVERY = 16
#: Between a user index member's tx_id and what the payment linked the user to (merchant,
#: device, ip, card): the ring graph's edges come from the user's index itself.
MEMBER_SEP = "\x1e"


def _payload(entries: Sequence[Indexed], keep_history: bool) -> str:
    """A batch for the `_RECORD` script, as one JSON argument."""
    series = [[start, list(totals.items())] for start, totals in _series(entries).items()]
    holds = [[e.decision.tx_id, cents] for e in entries if (cents := held_cents(e.decision))]
    rows = [
        [e.tx.ts, e.history_row.decode()]
        for e in entries
        if keep_history and e.history_row is not None
    ]
    index = [
        [kind, value, e.tx.ts, _member(kind, e)] for e in entries for kind, value in _entities(e)
    ]
    for i, write in enumerate(index):
        write.append(int(i % TRIM_EVERY == 0))
    return _ENCODER.encode({"s": series, "h": holds, "r": rows, "x": index})


def _member(kind: str, entry: Indexed) -> str:
    if kind != "user":
        return entry.decision.tx_id
    return MEMBER_SEP.join([entry.decision.tx_id, *_links(entry.tx)])


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def label_json(label: Label) -> bytes:
    return json.dumps(
        {
            "label": label.label,
            "ts": label.ts,
            "source": label.source,
            "reviewer": label.reviewer,
            "tx_id": label.tx_id,
            "user_id": label.user_id,
        },
        separators=(",", ":"),
    ).encode()


def resolved_holds(adjustments: Sequence[RebateAdjustment]) -> list[str]:
    """The transactions whose hold these adjustments resolved (released or voided)."""
    return [a.tx_id for a in adjustments if a.kind in (RELEASE, VOID) and a.held_cents == 0]


class ConsoleStore(Protocol):
    async def record(self, entries: Sequence[Indexed]) -> None: ...
    async def record_history(self, entries: Sequence[Indexed]) -> None:
        """Only the history rows of `entries`: decisions made at payment time are recorded
        then (`record`) without one, and their rows come when the stream reaches them."""
        ...

    async def resolve_holds(self, tx_ids: Sequence[str]) -> None: ...
    async def record_labels(self, labels: Sequence[Label]) -> None: ...
    async def series(self, since_s: int, until_s: int) -> list[dict[str, int]]:
        """Buckets from `since_s` to `until_s` (decision time), oldest first; each has `t`
        (its start, s)."""
        ...

    async def review_queue(self, limit: int) -> list[tuple[str, int]]:
        """(tx_id, cents held), most money first."""
        ...

    async def queue_size(self) -> int: ...
    async def links(self, user_ids: Sequence[str]) -> dict[str, dict[tuple[str, str], int]]:
        """Per user: (kind, id) of each merchant, device, ip and card they paid with ->
        how many of their newest (`ENTITY_KEEP`) payments did."""
        ...

    async def claims(self, tx_ids: Sequence[str]) -> dict[str, str]: ...
    async def claim(self, tx_id: str, user: str) -> str:
        """Claims `tx_id` for `user` unless someone has; returns who holds the claim."""
        ...

    async def set_claim(self, tx_id: str, user: str) -> None:
        """Gives `tx_id` to `user`, whoever held it (an assignment)."""
        ...

    async def by_entity(self, kind: str, entity_id: str, limit: int) -> list[str]:
        """The entity's newest tx_ids, newest first."""
        ...

    async def history(self, since_ms: int, limit: int) -> list[bytes]:
        """History rows of payments at or after `since_ms` (event time), at most the newest
        `limit`, oldest first."""
        ...

    async def labels(self, tx_ids: Sequence[str], user_ids: Sequence[str]) -> dict[str, Any]:
        """{"tx": {tx_id: label}, "user": {user_id: label}} for those that have one."""
        ...

    async def record_rings(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Each (ring id, event JSON) the graph published: the ring's version history."""
        ...

    async def ring_versions(self, ring_id: str) -> list[dict[str, Any]]:
        """The ring's published versions, newest first (each once)."""
        ...

    async def audit(self, who: str, action: str, detail: dict[str, Any]) -> None: ...
    async def audit_log(self, limit: int) -> list[dict[str, Any]]: ...
    async def put_draft(self, name: str, entry: dict[str, Any]) -> None: ...
    async def drafts(self) -> dict[str, dict[str, Any]]: ...
    async def delete_draft(self, name: str) -> None: ...


def audit_entry(who: str, action: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"at": int(time.time() * 1000), "who": who, "action": action, "detail": detail}


_RECORD = """
-- One call per batch. ARGV: the key prefix, ttl, entity_keep, history_keep, and the batch as
-- JSON (`_payload`): {"s": [[bucket, [[field, n]...]]...], "h": [[tx_id, cents]...],
-- "r": [[ts, row]...], "x": [[kind, id, ts, member, trim]...]}.
-- One argument instead of ~15 per decision: packing them was most of the worker's cost.
-- The keys are made here from the prefix, so this needs one Redis (not a cluster), as the
-- rest of the serving state does.
local prefix = ARGV[1]
local ttl = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local history_keep = tonumber(ARGV[4])
local p = cjson.decode(ARGV[5])
for _, bucket in ipairs(p.s) do
  local key = prefix .. 'series:' .. string.format('%d', bucket[1])
  for _, pair in ipairs(bucket[2]) do redis.call('HINCRBY', key, pair[1], pair[2]) end
  redis.call('EXPIRE', key, SERIES_TTL)
end
local review = prefix .. 'review'
for _, hold in ipairs(p.h) do redis.call('ZADD', review, hold[2], hold[1]) end
if #p.r > 0 then
  local history = prefix .. 'history'
  for _, row in ipairs(p.r) do redis.call('ZADD', history, row[1], row[2]) end
  redis.call('ZREMRANGEBYRANK', history, 0, -history_keep - 1)
end
-- Entity indexes: two calls a write; trimmed back to `keep` on the writes `_payload` marks
-- (one in TRIM_EVERY), so an index holds at most about TRIM_EVERY more than it keeps.
for _, x in ipairs(p.x) do
  local key = prefix .. 'ix:' .. x[1] .. ':' .. x[2]
  redis.call('ZADD', key, x[3], x[4])
  redis.call('EXPIRE', key, ttl)
  if x[5] == 1 then redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1) end
end
return 0
"""


class ConsoleKeys:
    def __init__(self, app_id: str) -> None:
        base = f"{app_id}:console:"
        self.base = base
        self.review = f"{base}review"
        self.claims = f"{base}claims"
        self.history = f"{base}history"
        self.audit = f"{base}audit"
        self.drafts = f"{base}drafts"

    def series(self, bucket_s: int) -> str:
        return f"{self.base}series:{bucket_s}"

    def entity(self, kind: str, entity_id: str) -> str:
        return f"{self.base}ix:{kind}:{entity_id}"

    def ring(self, ring_id: str) -> str:
        return f"{self.base}ring:{ring_id}"

    def label(self, kind: str, entity_id: str) -> str:
        return f"{self.base}label:{kind}:{entity_id}"


class RedisConsoleStore:
    def __init__(
        self, client: aioredis.Redis, app_id: str, *, ttl_s: int, history_keep: int
    ) -> None:
        self.client = client
        self.keys = ConsoleKeys(app_id)
        self.ttl_s = ttl_s
        self.history_keep = history_keep
        script = _RECORD.replace("SERIES_TTL", str(SERIES_TTL_S))
        self._record = client.register_script(script.replace("TRIM_EVERY", str(TRIM_EVERY)))

    async def record(self, entries: Sequence[Indexed]) -> None:
        if not entries:
            return
        payload = _payload(entries, self.history_keep > 0)
        args: list[str | int] = [
            self.keys.base,
            self.ttl_s,
            ENTITY_KEEP,
            max(self.history_keep, 1),
            payload,
        ]
        await self._record(keys=[], args=args)

    async def record_history(self, entries: Sequence[Indexed]) -> None:
        rows = {e.history_row: e.tx.ts for e in entries if e.history_row is not None}
        if not rows or self.history_keep <= 0:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.history, rows)
            pipe.zremrangebyrank(self.keys.history, 0, -self.history_keep - 1)
            await pipe.execute()

    async def links(self, user_ids: Sequence[str]) -> dict[str, dict[tuple[str, str], int]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zrevrange(self.keys.entity("user", user_id), 0, ENTITY_KEEP - 1)
            raw = await pipe.execute()
        found: dict[str, dict[tuple[str, str], int]] = {}
        for user_id, members in zip(user_ids, raw, strict=True):
            counts: dict[tuple[str, str], int] = {}
            for member in members:
                for text in _text(member).split(MEMBER_SEP)[1:]:
                    link = _link(text)
                    counts[link] = counts.get(link, 0) + 1
            found[user_id] = counts
        return found

    async def resolve_holds(self, tx_ids: Sequence[str]) -> None:
        if tx_ids:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.review, *tx_ids)
                pipe.hdel(self.keys.claims, *tx_ids)
                await pipe.execute()

    async def record_labels(self, labels: Sequence[Label]) -> None:
        if not labels:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for label in labels:
                value = label_json(label)
                if label.tx_id:
                    pipe.set(self.keys.label("tx", label.tx_id), value, ex=self.ttl_s)
                if label.user_id:
                    pipe.set(self.keys.label("user", label.user_id), value, ex=self.ttl_s)
            await pipe.execute()

    async def series(self, since_s: int, until_s: int) -> list[dict[str, int]]:
        start = since_s // SERIES_STEP_S * SERIES_STEP_S
        buckets = list(range(start, until_s + 1, SERIES_STEP_S))
        async with self.client.pipeline(transaction=False) as pipe:
            for b in buckets:
                pipe.hgetall(self.keys.series(b))
            raw = await pipe.execute()
        return [
            {"t": b, **{_text(k): int(v) for k, v in values.items()}}
            for b, values in zip(buckets, raw, strict=True)
            if values
        ]

    async def review_queue(self, limit: int) -> list[tuple[str, int]]:
        raw: list[Any] = await self.client.zrevrange(
            self.keys.review, 0, limit - 1, withscores=True
        )
        return [(_text(tx_id), int(score)) for tx_id, score in raw]

    async def queue_size(self) -> int:
        return int(await self.client.zcard(self.keys.review))

    async def claims(self, tx_ids: Sequence[str]) -> dict[str, str]:
        if not tx_ids:
            return {}
        values = await self.client.hmget(self.keys.claims, list(tx_ids))
        return {t: _text(v) for t, v in zip(tx_ids, values, strict=True) if v is not None}

    async def claim(self, tx_id: str, user: str) -> str:
        await self.client.hsetnx(self.keys.claims, tx_id, user)
        return _text(await self.client.hget(self.keys.claims, tx_id) or user)

    async def set_claim(self, tx_id: str, user: str) -> None:
        await self.client.hset(self.keys.claims, tx_id, user)

    async def by_entity(self, kind: str, entity_id: str, limit: int) -> list[str]:
        # The index may hold up to ~TRIM_EVERY more than it keeps: never show those.
        shown = min(limit, ENTITY_KEEP)
        raw: list[Any] = await self.client.zrevrange(
            self.keys.entity(kind, entity_id), 0, shown - 1
        )
        return [_text(v).split(MEMBER_SEP, 1)[0] for v in raw]

    async def history(self, since_ms: int, limit: int) -> list[bytes]:
        raw: list[Any] = await self.client.zrevrangebyscore(
            self.keys.history, "+inf", since_ms, start=0, num=limit
        )
        return [v if isinstance(v, bytes) else v.encode() for v in reversed(raw)]

    async def labels(self, tx_ids: Sequence[str], user_ids: Sequence[str]) -> dict[str, Any]:
        names = [self.keys.label("tx", t) for t in tx_ids]
        names += [self.keys.label("user", u) for u in user_ids]
        values = await self.client.mget(names) if names else []
        found: dict[str, Any] = {"tx": {}, "user": {}}
        for i, value in enumerate(values):
            if value is None:
                continue
            if i < len(tx_ids):
                found["tx"][tx_ids[i]] = json.loads(value)
            else:
                found["user"][user_ids[i - len(tx_ids)]] = json.loads(value)
        return found

    async def record_rings(self, events: Sequence[tuple[str, bytes]]) -> None:
        if not events:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for ring_id, value in events:
                pipe.lpush(self.keys.ring(ring_id), value)
                pipe.ltrim(self.keys.ring(ring_id), 0, RING_VERSIONS_KEEP - 1)
                pipe.expire(self.keys.ring(ring_id), self.ttl_s)
            await pipe.execute()

    async def ring_versions(self, ring_id: str) -> list[dict[str, Any]]:
        return _distinct_versions(await self.client.lrange(self.keys.ring(ring_id), 0, -1))

    async def audit(self, who: str, action: str, detail: dict[str, Any]) -> None:
        entry = json.dumps(audit_entry(who, action, detail), separators=(",", ":"))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.audit, entry)
            pipe.ltrim(self.keys.audit, 0, AUDIT_KEEP - 1)
            await pipe.execute()

    async def audit_log(self, limit: int) -> list[dict[str, Any]]:
        return [json.loads(v) for v in await self.client.lrange(self.keys.audit, 0, limit - 1)]

    async def put_draft(self, name: str, entry: dict[str, Any]) -> None:
        await self.client.hset(self.keys.drafts, name, json.dumps(entry))

    async def drafts(self) -> dict[str, dict[str, Any]]:
        raw = await self.client.hgetall(self.keys.drafts)
        return {_text(k): json.loads(v) for k, v in raw.items()}

    async def delete_draft(self, name: str) -> None:
        await self.client.hdel(self.keys.drafts, name)


#: Versions kept per ring.
RING_VERSIONS_KEEP = 50


def _distinct_versions(raw: Sequence[bytes | str]) -> list[dict[str, Any]]:
    """Newest first, each (version, status) once: a re-run after a restore publishes a
    version again."""
    seen, out = set(), []
    for value in raw:
        event = json.loads(value)
        key = (event.get("version"), event.get("status"))
        if key not in seen:
            seen.add(key)
            out.append(event)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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

    async def record(self, entries: Sequence[Indexed]) -> None:
        for start, totals in _series(entries).items():
            bucket = self.buckets.setdefault(start, {})
            for name, value in totals.items():
                bucket[name] = bucket.get(name, 0) + value
        for e in entries:
            if held_cents(e.decision) > 0:
                self.queue[e.decision.tx_id] = held_cents(e.decision)
            for kind, entity_id in _entities(e):
                newest = self.entities.setdefault((kind, entity_id), {})
                newest[e.decision.tx_id] = e.tx.ts
                while len(newest) > ENTITY_KEEP:
                    del newest[min(newest, key=lambda t: (newest[t], t))]
            self.tx_links[e.decision.tx_id] = [_link(f) for f in _links(e.tx)]
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

    async def review_queue(self, limit: int) -> list[tuple[str, int]]:
        # As ZREVRANGE: most cents first, equal cents by tx_id descending.
        return sorted(self.queue.items(), key=lambda item: (item[1], item[0]), reverse=True)[:limit]

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
        return _distinct_versions(self.rings.get(ring_id, []))

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
