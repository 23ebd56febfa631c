"""The console's read of the solvency monitor's serving keys: the Redis store (on the real local
Redis) and the memory store read the same, from what the worker's own stores wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from rebate_guard.contract.records import PlatformAlert
from rebate_guard.settings import Settings
from streams.console.store import ConsoleStore, MemoryConsoleStore, RedisConsoleStore
from streams.store import DecisionStore, MemoryDecisionStore, RedisDecisionStore
from tests.solvency_world import outputs_of, publish, reading

T = TypeVar("T")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def stores(request: pytest.FixtureRequest) -> Iterator[tuple[ConsoleStore, DecisionStore, Any]]:
    """The console's store, the worker's store it reads, and how to run a coroutine."""
    if request.param == "memory":
        worker = MemoryDecisionStore()
        yield MemoryConsoleStore(solvency=worker), worker, asyncio.run
        return
    settings: Settings = request.getfixturevalue("stack_settings")
    loop = asyncio.new_event_loop()
    redis = RedisDecisionStore(settings)
    console = RedisConsoleStore(redis.client, settings.app_id, ttl_s=3600, history_keep=3)

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coro)

    try:
        yield console, redis, run
    finally:
        run(redis.close())
        loop.close()


def test_books_series_and_alerts_as_the_worker_stores_them(
    stores: tuple[ConsoleStore, DecisionStore, Any],
) -> None:
    console, worker, run = stores
    empty = run(console.solvency_books(10))
    assert (empty.current, empty.latest, empty.alerts) == ({}, {}, [])
    assert run(console.solvency_series("platform", 10)) == []
    stall = [(100, 100), (300, 90), (450, 80), (600, 0)]
    closed = [
        r
        for i, (owed, held) in enumerate(stall)
        for r in (
            reading("platform", i, liability=owed, distributable=held),
            reading("region:north", i, liability=owed // 3, distributable=held),
            reading(f"merchant:m-{i}", i, liability=owed, distributable=1),
        )
    ]
    outputs = outputs_of(closed)
    running = reading("platform", 4, liability=700, distributable=0)
    run(publish(worker, outputs, {"platform": running}))
    books = run(console.solvency_books(2))
    assert books.current == {"platform": running.dumps()}
    # The last closed reading of the scopes shown (not every merchant's).
    assert books.latest == {"platform": closed[-3].dumps()}
    written = [o.dumps() for o in outputs if isinstance(o, PlatformAlert)]
    assert len(written) > 2 and books.alerts == written[:-3:-1]  # the newest two, newest first
    platform = [r.dumps() for r in closed if r.scope == "platform"]
    assert run(console.solvency_series("platform", 10)) == platform
    assert run(console.solvency_series("platform", 2)) == platform[-2:]
    assert run(console.solvency_series("merchant:m-1", 10)) == []
    run(
        publish(
            worker, [], {"region:north": reading("region:north", 4, liability=1, distributable=1)}
        )
    )
    books = run(console.solvency_books(1))
    assert sorted(books.current) == ["platform", "region:north"]
    assert books.latest["region:north"] == closed[-2].dumps()
