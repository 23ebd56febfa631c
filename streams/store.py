"""Serving state in Redis: one decision per tx_id, written once, plus live counters.

`put_new` is one Lua script per batch: for each decision `SET key value NX EX ttl`; only a
decision that was really new bumps the counters. A decision already stored (by an earlier
delivery, or by another worker after a rebalance) is returned instead and wins, so a
redelivered transaction is always answered with the first decision: never a second grant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis as syncredis
import redis.asyncio as aioredis

from graph.layer import RingScore
from rebate_guard.contract.time import DAY_MS
from rebate_guard.keys import Keys, as_bytes, ledger_balances
from rebate_guard.settings import Settings

RECENT_KEEP = 100
#: How many of them `stats` returns (the status page's table).
RECENT_SHOWN = 20
#: A user ("u", id) or a merchant ("m", id), as ring scores are keyed.
RingKey = tuple[str, str]

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

    async def save_checkpoint(self, name: str, blob: bytes) -> None:
        """Replace checkpoint `name` atomically: a reader sees the old one or the new one."""
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


#: Connections a worker keeps to Redis at most (one per command in flight).
REDIS_CONNECTIONS = 64
# Redis strings hold at most 512 MB; checkpoints are written in chunks well below that.
CHECKPOINT_CHUNK = 64 * 1024 * 1024


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

    async def save_checkpoint(self, name: str, blob: bytes) -> None:
        base = self.keys.checkpoint(name)
        old = await self.client.get(base)
        chunks, pointer = _checkpoint_plan(base, blob)
        async with self.client.pipeline(transaction=False) as pipe:
            for key, chunk in chunks.items():
                pipe.set(key, chunk)
            await pipe.execute()
        await self.client.set(base, pointer)
        if old is not None:
            await self.client.delete(*_chunk_keys(base, old))

    async def load_checkpoint(self, name: str) -> bytes | None:
        base = self.keys.checkpoint(name)
        pointer = await self.client.get(base)
        if pointer is None:
            return None
        parts = await self.client.mget(_chunk_keys(base, pointer))
        present = [as_bytes(p) for p in parts if p is not None]
        if len(present) != len(parts):
            raise RuntimeError(f"checkpoint {name!r} is incomplete in Redis")
        return b"".join(present)

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


def save_checkpoint_sync(redis_url: str, app_id: str, name: str, blob: bytes) -> None:
    """`RedisDecisionStore.save_checkpoint` with a blocking client of its own: for a forked
    checkpoint writer, which must not touch the parent's event loop or connections."""
    client = syncredis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        base = Keys(app_id).checkpoint(name)
        old = client.get(base)
        chunks, pointer = _checkpoint_plan(base, blob)
        pipe = client.pipeline(transaction=False)
        for key, chunk in chunks.items():
            pipe.set(key, chunk)
        pipe.execute()
        client.set(base, pointer)
        if old is not None:
            client.delete(*_chunk_keys(base, old))
    finally:
        client.close()


def _checkpoint_plan(base: str, blob: bytes) -> tuple[dict[str, bytes], str]:
    """Chunks under a fresh generation, and the pointer that makes them current.

    Writers store the chunks first, then flip the pointer with one SET, then delete the old
    generation: a crash at any point leaves one complete checkpoint readable.
    """
    generation = uuid.uuid4().hex
    pieces = [blob[i : i + CHECKPOINT_CHUNK] for i in range(0, len(blob), CHECKPOINT_CHUNK)]
    chunks = {f"{base}:{generation}:{i}": piece for i, piece in enumerate(pieces or [b""])}
    return chunks, json.dumps({"generation": generation, "chunks": len(chunks)})


def _chunk_keys(base: str, pointer: bytes | str) -> list[str]:
    meta = json.loads(pointer)
    return [f"{base}:{meta['generation']}:{i}" for i in range(meta["chunks"])]


@dataclass
class MemoryDecisionStore:
    """The same semantics in process memory, for broker-free unit tests of the agents."""

    decisions: dict[str, bytes] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    dead: set[tuple[str, int, int]] = field(default_factory=set)
    checkpoints: dict[str, bytes] = field(default_factory=dict)
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

    async def save_checkpoint(self, name: str, blob: bytes) -> None:
        self.checkpoints[name] = blob

    async def load_checkpoint(self, name: str) -> bytes | None:
        return self.checkpoints.get(name)
