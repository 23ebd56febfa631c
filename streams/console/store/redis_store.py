"""`RedisConsoleStore`: the console's views in Redis, one Lua call per batch of decisions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from rebate_guard.contract.records import Label
from rebate_guard.keys import Keys, as_bytes
from streams.console.store.index import (
    AUDIT_KEEP,
    ENTITY_KEEP,
    MEMBER_SEP,
    RING_VERSIONS_KEEP,
    SERIES_STEP_S,
    SERIES_TTL_S,
    TRIM_EVERY,
    Indexed,
    audit_entry,
    distinct_versions,
    label_json,
    parse_link,
    queue_entry,
    record_payload,
)
from streams.console.store.solvency import SolvencyBooks, shown_scopes

_RECORD = """
-- One call per batch. ARGV: the key prefix, ttl, entity_keep, history_keep, and the batch as
-- JSON (`record_payload`): {"s": [[bucket, [[field, n]...]]...], "h": [[tx_id, queue score]...],
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
-- Entity indexes: two calls a write; trimmed back to `keep` on the writes `record_payload` marks
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
        self.worker_keys = Keys(app_id)  # what the worker writes
        self.ttl_s = ttl_s
        self.history_keep = history_keep
        script = _RECORD.replace("SERIES_TTL", str(SERIES_TTL_S))
        self._record = client.register_script(script.replace("TRIM_EVERY", str(TRIM_EVERY)))

    async def record(self, entries: Sequence[Indexed]) -> None:
        if not entries:
            return
        payload = record_payload(entries, self.history_keep > 0)
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
                    link = parse_link(text)
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

    async def review_queue(self, limit: int) -> list[tuple[str, int, bool]]:
        raw: list[Any] = await self.client.zrevrange(
            self.keys.review, 0, limit - 1, withscores=True
        )
        return [queue_entry(_text(tx_id), int(score)) for tx_id, score in raw]

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
        return distinct_versions(await self.client.lrange(self.keys.ring(ring_id), 0, -1))

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

    async def solvency_books(self, alerts: int) -> SolvencyBooks:
        keys = self.worker_keys
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.solvency_current)
            pipe.lrange(keys.alerts, -max(alerts, 1), -1)
            raw_current, raw_alerts = await pipe.execute()
        current = {_text(k): as_bytes(v) for k, v in raw_current.items()}
        # Only the scopes shown: the latest hash holds every merchant's too.
        scopes = shown_scopes(current)
        values = await self.client.hmget(keys.solvency_latest, scopes)
        latest = {s: as_bytes(v) for s, v in zip(scopes, values, strict=True) if v is not None}
        newest = [as_bytes(v) for v in reversed(raw_alerts)] if alerts > 0 else []
        return SolvencyBooks(current, latest, newest)

    async def solvency_series(self, scope: str, limit: int) -> list[bytes]:
        if limit <= 0:
            return []
        series = self.worker_keys.solvency_series(scope)
        raw: list[Any] = await self.client.lrange(series, -limit, -1)
        return [as_bytes(v) for v in raw]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
