"""The console's read of the solvency monitor's serving keys: the Redis store (on the real local
Redis, the keys written as the worker writes them) and the memory store read the same."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from rebate_guard.contract.records import SolvencyReading
from rebate_guard.settings import Settings
from streams.console.store import ConsoleStore, MemoryConsoleStore, RedisConsoleStore
from tests.solvency_world import reading, serve, serve_in_memory, serve_in_redis

T = TypeVar("T")
Write = Callable[[Sequence[SolvencyReading], Sequence[SolvencyReading]], None]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def console(request: pytest.FixtureRequest) -> Iterator[tuple[ConsoleStore, Any, Write]]:
    if request.param == "memory":
        memory = MemoryConsoleStore()
        yield (
            memory,
            asyncio.run,
            lambda closed, now: serve_in_memory(memory.solvency, serve(closed, now)),
        )
        return
    settings: Settings = request.getfixturevalue("stack_settings")
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(settings.redis_url)
    store = RedisConsoleStore(client, settings.app_id, ttl_s=3600, history_keep=3)

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coro)

    def write(closed: Sequence[SolvencyReading], now: Sequence[SolvencyReading]) -> None:
        run(serve_in_redis(client, settings.app_id, written=serve(closed, now)))

    try:
        yield store, run, write
    finally:
        run(client.aclose())
        loop.close()


def test_books_series_and_alerts_as_the_worker_serves_them(
    console: tuple[ConsoleStore, Any, Write],
) -> None:
    store, run, write = console
    empty = run(store.solvency_books(10))
    assert (empty.current, empty.latest, empty.alerts) == ({}, {}, [])
    assert run(store.solvency_series("platform", 10)) == []
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
    now = [reading("platform", 4, liability=700, distributable=0)]
    write(closed, now)
    books = run(store.solvency_books(2))
    assert books.current == {"platform": now[0].dumps()}
    # The last closed reading of the scopes shown (not every merchant's).
    assert books.latest == {"platform": closed[-3].dumps()}
    written = serve(closed)["alerts"]
    assert len(written) > 2 and books.alerts == written[:-3:-1]  # the newest two, newest first
    platform = [r.dumps() for r in closed if r.scope == "platform"]
    assert run(store.solvency_series("platform", 10)) == platform
    assert run(store.solvency_series("platform", 2)) == platform[-2:]
    assert run(store.solvency_series("merchant:m-1", 10)) == []
    write([], [reading("region:north", 4, liability=1, distributable=1)])
    books = run(store.solvency_books(1))
    assert sorted(books.current) == ["platform", "region:north"]
    assert books.latest["region:north"] == closed[-2].dumps()
