"""The console's store: one contract, held by the Redis store (on the real local Redis) and
by the in-memory one the broker-free tests use."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from rebate_guard.contract.records import ALLOW, BLOCK, HOLD, Decision, Label, Transaction
from rebate_guard.core.policy import REVIEW_SAMPLE
from rebate_guard.settings import Settings
from streams.console.store import (
    ENTITY_KEEP,
    SERIES_STEP_S,
    ConsoleStore,
    Indexed,
    MemoryConsoleStore,
    RedisConsoleStore,
)
from tests.factories import T0
from tests.factories import tx as tx_event

T = TypeVar("T")


def tx(**values: Any) -> Transaction:
    return Transaction(**tx_event(**values))


def decided(t: Transaction, action: str, granted: int, decided_at: int) -> Decision:
    requested = t.amount_cents // 10
    return Decision(
        tx_id=t.tx_id,
        ts=t.ts,
        user_id=t.user_id,
        merchant_id=t.merchant_id,
        risk=0.5,
        trust_weight=0.5,
        action=action,
        rebate_requested_cents=requested,
        rebate_granted_cents=granted,
        reasons=[],
        model_version="m",
        decided_at=decided_at,
    )


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def console(request: pytest.FixtureRequest) -> Iterator[tuple[ConsoleStore, Any]]:
    if request.param == "memory":
        yield MemoryConsoleStore(history_keep=3), asyncio.run
        return
    settings: Settings = request.getfixturevalue("stack_settings")
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(settings.redis_url)
    store = RedisConsoleStore(client, settings.app_id, ttl_s=3600, history_keep=3)

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coro)

    try:
        yield store, run
    finally:
        run(client.aclose())
        loop.close()


def test_views_of_new_decisions(console: tuple[ConsoleStore, Any]) -> None:
    store, run = console
    now_s = 1_700_000_000
    a = tx(tx_id="a", user_id="u1", merchant_id="m1", device_id="d1", amount_cents=1000)
    b = tx(tx_id="b", user_id="u1", merchant_id="m2", amount_cents=2000, ts=T0 + 1, device_id=None)
    c = tx(tx_id="c", user_id="u2", merchant_id="m1", amount_cents=5000, ts=T0 + 2, device_id=None)
    entries = [
        Indexed(decided(a, ALLOW, 100, now_s * 1000), a, b'{"row":"a"}'),
        Indexed(decided(b, HOLD, 0, now_s * 1000 + 1), b, b'{"row":"b"}'),
        Indexed(decided(c, BLOCK, 0, (now_s + SERIES_STEP_S) * 1000), c, b'{"row":"c"}'),
    ]
    run(store.record(entries))
    # The review queue: only the hold, by its cents.
    assert run(store.review_queue(10)) == [("b", 200, False)]
    assert run(store.queue_size()) == 1
    # Claims: the first claimer keeps it.
    assert run(store.claim("b", "ann")) == "ann"
    assert run(store.claim("b", "bob")) == "ann"
    assert run(store.claims(["b", "a"])) == {"b": "ann"}
    run(store.resolve_holds(["b"]))
    assert run(store.review_queue(10)) == []
    assert run(store.claims(["b"])) == {}
    # Entities: newest first; a device only where the payment had one.
    assert run(store.by_entity("user", "u1", 10)) == ["b", "a"]
    assert run(store.by_entity("merchant", "m1", 1)) == ["c"]
    assert run(store.by_entity("device", "d1", 10)) == ["a"]
    # Links: what each user paid with, counted.
    links = run(store.links(["u1", "nobody"]))
    assert links["nobody"] == {}
    assert links["u1"][("merchant", "m1")] == 1 and links["u1"][("merchant", "m2")] == 1
    assert links["u1"][("device", "d1")] == 1 and links["u1"][("ip", "10.0.0.1")] == 2
    # History: oldest first from `since_ms`, capped to the newest `limit`.
    assert run(store.history(T0 + 1, 10)) == [b'{"row":"b"}', b'{"row":"c"}']
    assert run(store.history(0, 1)) == [b'{"row":"c"}']


def test_series_totals_on_the_wall_clock(console: tuple[ConsoleStore, Any]) -> None:
    """Both stores bucket by when a decision was made; Redis keeps buckets to `now`."""
    import time

    store, run = console
    now_s = int(time.time()) // SERIES_STEP_S * SERIES_STEP_S - SERIES_STEP_S
    a, b = tx(tx_id="sa", amount_cents=1000), tx(tx_id="sb", amount_cents=3000)
    run(
        store.record(
            [
                Indexed(decided(a, ALLOW, 100, now_s * 1000 + 5), a),
                Indexed(decided(b, HOLD, 0, now_s * 1000 + 9), b),
            ]
        )
    )
    [bucket] = [
        x
        for x in run(store.series(now_s - 3 * SERIES_STEP_S, now_s + SERIES_STEP_S))
        if x["t"] == now_s
    ]
    assert bucket["decisions"] == 2
    assert (bucket["requested"], bucket["granted"], bucket["held"]) == (400, 100, 300)
    assert (bucket["action:allow"], bucket["action:hold"]) == (1, 1)


def test_history_keeps_the_newest(console: tuple[ConsoleStore, Any]) -> None:
    store, run = console
    txs = [tx(tx_id=f"h{i}", ts=T0 + i) for i in range(5)]
    run(store.record([Indexed(decided(t, ALLOW, 0, 0), t, t.tx_id.encode()) for t in txs]))
    assert run(store.history(0, 100)) == [b"h2", b"h3", b"h4"]  # history_keep=3


def test_history_rows_of_decisions_already_in_the_views(console: tuple[ConsoleStore, Any]) -> None:
    """A decision made at payment time is recorded without its row, which `record_history`
    adds later: to the history only, nothing counted twice, a row kept once."""
    store, run = console
    a, b = tx(tx_id="pa", ts=T0 + 1, amount_cents=1000), tx(tx_id="pb", ts=T0 + 2)
    run(store.record([Indexed(decided(a, HOLD, 0, 5_000), a)]))
    assert run(store.history(0, 10)) == []
    rows = [Indexed(decided(a, HOLD, 0, 5_000), a, b"pa"), Indexed(decided(b, HOLD, 0, 0), b)]
    run(store.record_history(rows))
    run(store.record_history(rows[:1]))  # again (a redelivery): kept once
    assert run(store.history(0, 10)) == [b"pa"]
    assert run(store.review_queue(10)) == [("pa", 100, False)]
    assert sum(x["decisions"] for x in run(store.series(0, 10))) == 1
    assert run(store.by_entity("user", a.user_id, 10)) == ["pa"]


def test_entity_index_is_bounded(console: tuple[ConsoleStore, Any]) -> None:
    store, run = console
    txs = [tx(tx_id=f"e{i:04d}", user_id="busy", ts=T0 + i) for i in range(ENTITY_KEEP + 5)]
    run(store.record([Indexed(decided(t, ALLOW, 0, 0), t) for t in txs]))
    newest = run(store.by_entity("user", "busy", 1000))
    assert len(newest) == ENTITY_KEEP
    assert newest[0] == txs[-1].tx_id and newest[-1] == txs[5].tx_id


def test_a_batch_with_many_payments_of_one_user(console: tuple[ConsoleStore, Any]) -> None:
    """One call with more members for a key than one Redis command takes at once."""
    store, run = console
    txs = [tx(tx_id=f"m{i:04d}", user_id="hot", ts=T0 + i) for i in range(1_200)]
    run(store.record([Indexed(decided(t, HOLD, 0, 0), t, t.tx_id.encode()) for t in txs]))
    newest = run(store.by_entity("merchant", "m1", 1000))
    assert newest == [t.tx_id for t in reversed(txs[-ENTITY_KEEP:])]
    # Links count the user's newest payments (those its index keeps).
    assert run(store.links(["hot"]))["hot"][("card", "c1")] == ENTITY_KEEP
    assert run(store.queue_size()) == 1_200
    assert run(store.history(0, 10)) == [b"m1197", b"m1198", b"m1199"]  # history_keep=3


def test_labels_audit_and_drafts(console: tuple[ConsoleStore, Any]) -> None:
    store, run = console
    run(
        store.record_labels(
            [
                Label(ts=1, label="fraud", source="chargeback", tx_id="t1"),
                Label(ts=2, label="legit", source="review", user_id="u9", reviewer="ann"),
            ]
        )
    )
    found = run(store.labels(["t1", "t2"], ["u9"]))
    assert found["tx"]["t1"]["label"] == "fraud" and "t2" not in found["tx"]
    assert found["user"]["u9"]["reviewer"] == "ann"
    run(store.audit("ann", "label", {"tx_id": "t1"}))
    run(store.audit("bob", "publish", {"version": "v2"}))
    log = run(store.audit_log(10))
    assert [(e["who"], e["action"]) for e in log] == [("bob", "publish"), ("ann", "label")]
    run(store.put_draft("d1", {"text": "x", "author": "ann"}))
    assert run(store.drafts()) == {"d1": {"text": "x", "author": "ann"}}
    run(store.delete_draft("d1"))
    assert run(store.drafts()) == {}


def test_ring_versions_newest_first_each_once(console: tuple[ConsoleStore, Any]) -> None:
    store, run = console

    def event(version: int, status: str = "active") -> bytes:
        return json.dumps({"ring_id": "r1", "version": version, "status": status}).encode()

    run(store.record_rings([("r1", event(1)), ("r1", event(2)), ("r2", event(1))]))
    run(store.record_rings([("r1", event(2)), ("r1", event(2, "retired"))]))  # a re-run
    versions = [(v["version"], v["status"]) for v in run(store.ring_versions("r1"))]
    assert versions == [(2, "retired"), (2, "active"), (1, "active")]
    assert run(store.ring_versions("nobody")) == []


def test_the_review_queue_lists_the_review_sample_first(console: tuple[ConsoleStore, Any]) -> None:
    """A hold whose decision is in the review sample (`review_sample:hold`) comes before
    every other hold, whatever its money; each part most money first."""
    store, run = console
    big, mid, small = (
        tx(tx_id=t, ts=T0 + i, amount_cents=c)
        for i, (t, c) in enumerate([("big", 90_000), ("mid", 5_000), ("small", 1_000)])
    )
    sampled = [REVIEW_SAMPLE]
    run(
        store.record(
            [
                Indexed(decided(big, HOLD, 0, 1_000), big),
                Indexed(replace(decided(mid, HOLD, 0, 1_000), reasons=sampled), mid),
                Indexed(replace(decided(small, HOLD, 0, 1_000), reasons=sampled), small),
            ]
        )
    )
    assert run(store.review_queue(10)) == [
        ("mid", 500, True),
        ("small", 100, True),
        ("big", 9_000, False),
    ]
    assert run(store.review_queue(1)) == [("mid", 500, True)]
    run(store.resolve_holds(["mid"]))
    assert [t for t, _, _ in run(store.review_queue(10))] == ["small", "big"]
