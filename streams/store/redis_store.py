"""Serving state in Redis: one decision per tx_id, written once, plus live counters.

`put_new` is one Lua script per batch: for each decision `SET key value NX EX ttl`; only a
decision that was really new bumps the counters. A decision already stored (by an earlier
delivery, or by another worker after a rebalance) is returned instead and wins, so a
redelivered transaction is always answered with the first decision: never a second grant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis as syncredis
import redis.asyncio as aioredis

from graph.layer import RingScore
from rebate_guard.contract.time import DAY_MS
from rebate_guard.keys import Keys, as_bytes, ledger_balances
from rebate_guard.settings import Settings
from streams.store.checkpoints import (
    APPEND_DELTA,
    CheckpointConflict,
    checkpoint_plan,
    chunk_keys,
    joined,
    piece_keys,
)
from streams.store.protocol import (
    ALERTS_KEEP,
    RECENT_KEEP,
    RECENT_SHOWN,
    SOLVENCY_SERIES_KEEP,
    PolicyConflict,
    RingKey,
    charted,
)

_PUT_DECISIONS = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 3, #KEYS do
  local value = ARGV[i]
  if redis.call('SET', KEYS[i], value, 'NX', 'EX', ttl) then
    local d = cjson.decode(value)
    redis.call('HINCRBY', KEYS[1], 'decisions', 1)
    redis.call('HINCRBY', KEYS[1], 'action:' .. d['action'], 1)
    redis.call('HINCRBY', KEYS[1], 'rebate_requested_cents', d['rebate_requested_cents'])
    redis.call('HINCRBY', KEYS[1], 'rebate_granted_cents', d['rebate_granted_cents'])
    redis.call('LPUSH', KEYS[2], value)
    out[#out + 1] = false
  else
    out[#out + 1] = redis.call('GET', KEYS[i])
  end
end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
return out
"""

_PUT_ADJUSTMENTS = """
-- KEYS: stats, then (adjustment key, ledger key) per adjustment; ARGV: ttl, then its JSON.
local ttl = tonumber(ARGV[1])
local out = {}
for j = 2, #ARGV do
  local value, key, ledger = ARGV[j], KEYS[2 * j - 2], KEYS[2 * j - 1]
  if redis.call('SET', key, value, 'NX', 'EX', ttl) then
    local a = cjson.decode(value)
    redis.call('HINCRBY', KEYS[1], 'adjustments', 1)
    redis.call('HINCRBY', KEYS[1], 'adjustments:' .. a['kind'], 1)
    redis.call('HINCRBY', KEYS[1], 'adjusted_cents:' .. a['kind'], a['cents'])
    redis.call('HSET', ledger, 'requested_cents', a['requested_cents'],
      'granted_cents', a['granted_cents'], 'held_cents', a['held_cents'],
      'voided_cents', a['voided_cents'], 'last_adjustment', a['adjustment_id'])
    redis.call('EXPIRE', ledger, ttl)
    out[#out + 1] = false
  else
    out[#out + 1] = redis.call('GET', key)
  end
end
return out
"""

_COUNT_DEAD_LETTERS = """
local ttl = tonumber(ARGV[1])
local fresh = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then fresh = fresh + 1 end
end
if fresh > 0 then redis.call('HINCRBY', KEYS[1], 'dead_letters', fresh) end
return fresh
"""

_PUT_SOLVENCY = """
-- KEYS: latest, current, then the series key per reading ('' when not charted); ARGV: keep,
-- the number of readings, then (scope, period end, JSON) per reading, then (scope, JSON) per
-- running reading.
local keep, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, n do
  local scope, period_end, value = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), ARGV[3 * i + 2]
  local latest = redis.call('HGET', KEYS[1], scope)
  if not latest or cjson.decode(latest)['period_end'] < period_end then
    redis.call('HSET', KEYS[1], scope, value)
    local series = KEYS[2 + i]
    if series ~= '' then
      redis.call('RPUSH', series, value)
      redis.call('LTRIM', series, -keep, -1)
    end
  end
end
for j = 3 + 3 * n, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
end
return n
"""

_PUT_ALERTS = """
-- KEYS: the alerts list, then the alert's key per alert; ARGV: ttl, keep, then its JSON.
local ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 2, #KEYS do
  local value = ARGV[i + 1]
  if redis.call('SET', KEYS[i], value, 'NX', 'EX', ttl) then
    redis.call('RPUSH', KEYS[1], value)
    out[#out + 1] = false
  else
    out[#out + 1] = redis.call('GET', KEYS[i])
  end
end
redis.call('LTRIM', KEYS[1], -keep, -1)
return out
"""

_PUSH_POLICY = """
local taken = redis.call('GET', KEYS[2])
if taken and taken ~= ARGV[1] then
  return redis.error_reply('policy version ' .. ARGV[2] .. ' is already taken by another ' ..
    'policy: give this one a new version')
end
local before = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
return before or false
"""


#: Connections a worker keeps to Redis at most (one per command in flight).
REDIS_CONNECTIONS = 64


class RedisDecisionStore:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.keys = Keys(settings.app_id)
        self.ttl = settings.decision_ttl_s
        self.tree_ttl_ms = settings.user_ttl_days * DAY_MS
        if client is None:
            # Many `POST /score` requests at once share the pool: past its size they wait
            # for a connection (up to the socket timeout) instead of failing, which the
            # default pool does at 100 ("Too many connections").
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=REDIS_CONNECTIONS,
                timeout=5,
                socket_timeout=5,
                socket_connect_timeout=5,
            )
            client = aioredis.Redis(connection_pool=pool)
        self.client = client
        self._put = self.client.register_script(_PUT_DECISIONS)
        self._dead = self.client.register_script(_COUNT_DEAD_LETTERS)
        self._push_policy = self.client.register_script(_PUSH_POLICY)
        self._adjust = self.client.register_script(_PUT_ADJUSTMENTS)
        self._solvency = self.client.register_script(_PUT_SOLVENCY)
        self._alerts = self.client.register_script(_PUT_ALERTS)

    async def close(self) -> None:
        await self.client.aclose()

    async def put_referrals(self, writes: Sequence[tuple[str, str, int]]) -> None:
        if not writes:
            return
        # The tree is shared by every worker: entity partitions walk it for referral depths.
        # Entries expire a user TTL after they are written (wall clock) only to bound Redis;
        # an entry is immutable, so a rewrite after a restart is harmless.
        async with self.client.pipeline(transaction=False) as pipe:
            for user, referrer, ts in writes:
                pipe.set(self.keys.referral(user), f"{ts}:{referrer}", px=self.tree_ttl_ms)
            await pipe.execute()

    async def get_referrals(self, user_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        if not user_ids:
            return {}
        values = await self.client.mget([self.keys.referral(u) for u in user_ids])
        out = {}
        for user, value in zip(user_ids, values, strict=True):
            if value is not None:
                ts, _, referrer = as_bytes(value).decode().partition(":")
                out[user] = (referrer, int(ts))
        return out

    async def put_rings(
        self, rings: Sequence[tuple[str, bytes | None]], scores: Mapping[RingKey, RingScore]
    ) -> None:
        if not rings and not scores:
            return
        async with self.client.pipeline(transaction=True) as pipe:
            for ring_id, event in rings:
                if event is None:
                    pipe.hdel(self.keys.rings, ring_id)
                else:
                    pipe.hset(self.keys.rings, ring_id, event)
            for key, score in scores.items():
                if score is None:
                    pipe.delete(self.keys.ring_score(key))
                else:
                    pipe.set(self.keys.ring_score(key), json.dumps(score))
            await pipe.execute()

    async def get_ring_scores(self, keys: Sequence[RingKey]) -> dict[RingKey, RingScore]:
        if not keys:
            return {}
        values = await self.client.mget([self.keys.ring_score(k) for k in keys])
        return {k: _ring_score(v) for k, v in zip(keys, values, strict=True) if v is not None}

    async def decision_and_rings(
        self, tx_id: str, keys: Sequence[RingKey]
    ) -> tuple[bytes | None, dict[RingKey, RingScore]]:
        names = [self.keys.decision(tx_id)] + [self.keys.ring_score(k) for k in keys]
        decision, *scores = await self.client.mget(names)
        rings = {k: _ring_score(v) for k, v in zip(keys, scores, strict=True) if v is not None}
        return (None if decision is None else as_bytes(decision)), rings

    async def rings(self) -> list[dict[str, Any]]:
        raw = await self.client.hvals(self.keys.rings)
        return [json.loads(v) for v in raw]

    async def put_solvency(
        self, readings: Sequence[tuple[str, int, bytes]], current: Mapping[str, bytes]
    ) -> None:
        if not readings and not current:
            return
        keys = [self.keys.solvency_latest, self.keys.solvency_current]
        args: list[Any] = [SOLVENCY_SERIES_KEEP, len(readings)]
        for scope, period_end, value in readings:
            keys.append(self.keys.solvency_series(scope) if charted(scope) else "")
            args += [scope, period_end, value]
        for scope, value in current.items():
            args += [scope, value]
        await self._solvency(keys=keys, args=args)

    async def put_alerts(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        if not items:
            return []
        keys = [self.keys.alerts] + [self.keys.alert(alert_id) for alert_id, _ in items]
        args: list[Any] = [self.ttl, ALERTS_KEEP] + [value for _, value in items]
        return [
            None if v is None else as_bytes(v) for v in await self._alerts(keys=keys, args=args)
        ]

    async def get_policy(self) -> bytes | None:
        value = await self.client.get(self.keys.policy)
        return None if value is None else as_bytes(value)

    async def put_graph_heartbeat(self, at_ms: int) -> None:
        await self.client.set(self.keys.graph_heartbeat, at_ms)

    async def graph_heartbeat(self) -> int | None:
        value = await self.client.get(self.keys.graph_heartbeat)
        return None if value is None else int(value)

    async def push_policy(self, version: str, document: str) -> bytes | None:
        keys = [self.keys.policy, self.keys.policy_version(version)]
        try:
            before = await self._push_policy(keys=keys, args=[document, version])
        except syncredis.ResponseError as err:
            if "already taken" in str(err):
                raise PolicyConflict(str(err)) from None
            raise
        return None if before is None else as_bytes(before)

    async def seed_policy(self, version: str, document: str) -> bool:
        await self.client.set(self.keys.policy_version(version), document, nx=True)
        return bool(await self.client.set(self.keys.policy, document, nx=True))

    async def get_many(self, tx_ids: Sequence[str]) -> dict[str, bytes]:
        if not tx_ids:
            return {}
        values = await self.client.mget([self.keys.decision(t) for t in tx_ids])
        return {t: as_bytes(v) for t, v in zip(tx_ids, values, strict=True) if v is not None}

    async def put_new(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        if not items:
            return []
        keys = [self.keys.stats, self.keys.recent] + [self.keys.decision(t) for t, _ in items]
        args: list[Any] = [self.ttl, RECENT_KEEP] + [v for _, v in items]
        result = await self._put(keys=keys, args=args)
        return list(result)

    async def put_adjustments(self, items: Sequence[tuple[str, str, bytes]]) -> list[bytes | None]:
        if not items:
            return []
        keys = [self.keys.stats]
        args: list[Any] = [self.ttl]
        for adjustment_id, tx_id, value in items:
            keys += [self.keys.adjustment(adjustment_id), self.keys.ledger(tx_id)]
            args.append(value)
        return list(await self._adjust(keys=keys, args=args))

    async def get_ledger(self, tx_id: str) -> dict[str, Any] | None:
        raw = await self.client.hgetall(self.keys.ledger(tx_id))
        return ledger_balances(raw) if raw else None

    async def count_dead_letters(self, positions: Sequence[tuple[str, int, int]]) -> int:
        if not positions:
            return 0
        keys = [self.keys.stats] + [self.keys.dead_letter(*p) for p in positions]
        return int(await self._dead(keys=keys, args=[self.ttl]))

    async def save_checkpoint(
        self, name: str, blob: bytes, *, generation: str | None = None, extends: str | None = None
    ) -> None:
        base = self.keys.checkpoint(name)
        old = await self.client.get(base) if extends is None else None
        chunks, pointer = checkpoint_plan(base, blob, generation=generation)
        async with self.client.pipeline(transaction=False) as pipe:
            for key, chunk in chunks.items():
                pipe.set(key, chunk)
            await pipe.execute()
        if extends is not None:
            args = [extends, json.loads(pointer)["generation"], len(chunks)]
            if not await self.client.eval(APPEND_DELTA, 1, base, *args):
                await self.client.delete(*chunks)
                raise CheckpointConflict(f"checkpoint {name!r} no longer ends at {extends}")
            return
        await self.client.set(base, pointer)
        if old is not None:
            await self.client.delete(*chunk_keys(base, old))

    async def load_checkpoint(self, name: str) -> bytes | None:
        base = self.keys.checkpoint(name)
        pointer = await self.client.get(base)
        if pointer is None:
            return None
        pieces = []
        for keys in piece_keys(base, pointer):
            parts = await self.client.mget(keys)
            present = [as_bytes(p) for p in parts if p is not None]
            if len(present) != len(parts):
                raise RuntimeError(f"checkpoint {name!r} is incomplete in Redis")
            pieces.append(present)
        return joined(pieces)

    async def get(self, tx_id: str) -> bytes | None:
        value = await self.client.get(self.keys.decision(tx_id))
        return None if value is None else as_bytes(value)

    async def stats(self) -> dict[str, Any]:
        raw = await self.client.hgetall(self.keys.stats)
        recent = await self.client.lrange(self.keys.recent, 0, RECENT_SHOWN - 1)
        counters = {as_bytes(k).decode(): int(v) for k, v in raw.items()}
        return {"counters": counters, "recent": [json.loads(r) for r in recent]}


def _ring_score(value: bytes | str) -> RingScore:
    score, kind, ring_id = json.loads(value)
    return float(score), str(kind), str(ring_id)
