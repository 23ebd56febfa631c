"""One contract for both decision stores: the Redis one (real server) and the in-memory twin
used by broker-free unit tests, so the twin cannot drift from what production does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rebate_guard.contract.records import Decision, RebateAdjustment
from rebate_guard.settings import Settings
from streams.store import (
    DecisionStore,
    MemoryDecisionStore,
    RedisDecisionStore,
    save_checkpoint_sync,
)
from tests.factories import T0

pytestmark = pytest.mark.integration


def _decision(tx_id: str, granted: int, action: str = "allow") -> bytes:
    return Decision(
        tx_id=tx_id,
        ts=T0,
        user_id="u",
        merchant_id="m",
        risk=0.1,
        trust_weight=0.9,
        action=action,
        rebate_requested_cents=granted + 5,
        rebate_granted_cents=granted,
        reasons=[],
        model_version="v",
        decided_at=1,
    ).dumps()


@pytest.fixture(params=["redis", "memory"])
def run_with_store(
    request: pytest.FixtureRequest, stack_settings: Settings
) -> Callable[[Callable[[DecisionStore], Awaitable[Any]]], Any]:
    def run(body: Callable[[DecisionStore], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            store: Any = (
                RedisDecisionStore(stack_settings)
                if request.param == "redis"
                else MemoryDecisionStore()
            )
            try:
                return await body(store)
            finally:
                if isinstance(store, RedisDecisionStore):
                    await store.close()

        return asyncio.run(go())

    return run


def test_first_write_wins_and_counts_once(run_with_store) -> None:
    async def body(store: DecisionStore) -> None:
        first = [("a", _decision("a", 10)), ("b", _decision("b", 20, "scale"))]
        assert await store.put_new(first) == [None, None]
        again = await store.put_new([("a", _decision("a", 99)), ("c", _decision("c", 1))])
        assert again == [first[0][1], None]
        assert await store.get_many(["a", "b", "c", "zz"]) == {
            "a": first[0][1],
            "b": first[1][1],
            "c": _decision("c", 1),
        }
        counters = (await store.stats())["counters"]
        assert counters["decisions"] == 3
        assert counters["rebate_granted_cents"] == 31
        assert counters["rebate_requested_cents"] == 46
        assert counters["action:allow"] == 2 and counters["action:scale"] == 1

    run_with_store(body)


def _adjustment(tx_id: str, slot: str, kind: str, cents: int, after: tuple[int, int, int]) -> bytes:
    granted, held, voided = after
    return RebateAdjustment(
        adjustment_id=f"{tx_id}:{slot}",
        tx_id=tx_id,
        user_id="u",
        ts=T0,
        kind=kind,
        cents=cents,
        cause="label:fraud",
        requested_cents=granted + held + voided,
        granted_cents=granted,
        held_cents=held,
        voided_cents=voided,
        policy_version="p",
        decided_at=1,
    ).dumps()


def test_adjustments_first_write_wins_and_the_ledger_follows_them(run_with_store) -> None:
    async def body(store: DecisionStore) -> None:
        void = _adjustment("a", "hold", "void", 100, (0, 0, 100))
        claw = _adjustment("b", "clawback", "clawback", 40, (0, 0, 50))
        assert await store.put_adjustments([("a:hold", "a", void), ("b:clawback", "b", claw)]) == [
            None,
            None,
        ]
        release = _adjustment("a", "hold", "release", 100, (100, 0, 0))  # a re-run's other idea
        assert await store.put_adjustments([("a:hold", "a", release)]) == [void]
        assert await store.get_ledger("a") == {
            "requested_cents": 100,
            "granted_cents": 0,
            "held_cents": 0,
            "voided_cents": 100,
            "last_adjustment": "a:hold",
        }
        assert await store.get_ledger("zz") is None
        counters = (await store.stats())["counters"]
        assert counters["adjustments"] == 2
        assert counters["adjusted_cents:void"] == 100 and counters["adjusted_cents:clawback"] == 40

    run_with_store(body)


def test_dead_letters_are_counted_once_per_position(run_with_store) -> None:
    async def body(store: DecisionStore) -> None:
        assert await store.count_dead_letters([("t", 0, 1), ("t", 0, 2)]) == 2
        assert await store.count_dead_letters([("t", 0, 2), ("t", 1, 2)]) == 1
        assert (await store.stats())["counters"]["dead_letters"] == 3

    run_with_store(body)


def test_checkpoints_replace_whole_and_read_back_byte_for_byte(
    run_with_store, monkeypatch: pytest.MonkeyPatch, stack_settings: Settings
) -> None:
    import streams.store.checkpoints

    monkeypatch.setattr(streams.store.checkpoints, "CHECKPOINT_CHUNK", 1000)  # force several chunks

    async def body(store: DecisionStore) -> None:
        assert await store.load_checkpoint("w") is None
        first = bytes(range(256)) * 17
        await store.save_checkpoint("w", first)
        assert await store.load_checkpoint("w") == first
        second = b"x" * 2500
        await store.save_checkpoint("w", second)
        assert await store.load_checkpoint("w") == second
        await store.save_checkpoint("empty", b"")
        assert await store.load_checkpoint("empty") == b""
        assert await store.load_checkpoint("w") == second  # names are independent
        if isinstance(store, RedisDecisionStore):  # the old generation's chunks are gone
            keys = await store.client.keys(store.keys.checkpoint("w") + ":*")
            assert len(keys) == 3
            # The blocking writer (used by the forked checkpoint process) is the same format.
            third = b"y" * 2100
            save_checkpoint_sync(stack_settings.redis_url, stack_settings.app_id, "w", third)
            assert await store.load_checkpoint("w") == third
            assert len(await store.client.keys(store.keys.checkpoint("w") + ":*")) == 3

    run_with_store(body)


async def _books(store: Any) -> dict[str, Any]:
    """The solvency keys as the console reads them (from Redis, or the twin's fields)."""
    if isinstance(store, MemoryDecisionStore):
        return {
            "latest": store.solvency_latest,
            "current": store.solvency_current,
            "series": store.solvency_series,
            "alerts": store.alerts,
        }
    client = store.client
    keys = store.keys
    base = keys.solvency_series("")
    series = {}
    async for key in client.scan_iter(f"{base}*"):
        name = key.decode() if isinstance(key, bytes) else key
        series[name.removeprefix(base)] = await client.lrange(key, 0, -1)
    latest, current = [
        {k.decode(): v for k, v in (await client.hgetall(key)).items()}
        for key in (keys.solvency_latest, keys.solvency_current)
    ]
    return {
        "latest": latest,
        "current": current,
        "series": series,
        "alerts": await client.lrange(keys.alerts, 0, -1),
    }


def _reading(scope: str, period_end: int) -> bytes:
    return f'{{"scope":"{scope}","period_end":{period_end}}}'.encode()


def test_solvency_periods_are_kept_once_and_alerts_first_write_wins(run_with_store) -> None:
    async def body(store: DecisionStore) -> None:
        hour = 3_600_000
        first = [(s, T0 + hour, _reading(s, T0 + hour)) for s in ("platform", "merchant:m")]
        running = {"platform": b"now", "region:east": b"east now"}
        await store.put_solvency(first, running)
        # A period read again (a restored solvency shard), then the next one.
        later = _reading("platform", T0 + 2 * hour)
        await store.put_solvency([first[0], ("platform", T0 + 2 * hour, later)], {})
        books = await _books(store)
        assert books["series"] == {"platform": [first[0][2], later]}  # merchants: no series
        assert books["latest"] == {"platform": later, "merchant:m": first[1][2]}
        assert books["current"] == running
        assert await store.put_alerts([("a1", b"one"), ("a2", b"two")]) == [None, None]
        assert await store.put_alerts([("a1", b"other"), ("a3", b"three")]) == [b"one", None]
        assert (await _books(store))["alerts"] == [b"one", b"two", b"three"]

    run_with_store(body)
