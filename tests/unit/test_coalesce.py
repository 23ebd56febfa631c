"""`Coalesced`: the calls many `POST /score` requests make in one turn of the event loop,
sent as one."""

from __future__ import annotations

import asyncio

import pytest

from streams.coalesce import Coalesced


class Doubler:
    """A batch call that records what each call carried."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("redis down")
        return [2 * item for item in items]


def test_calls_in_one_turn_go_as_one_and_each_caller_gets_its_own_result() -> None:
    async def run() -> None:
        call = Doubler()
        coalesced = Coalesced(call)
        assert await asyncio.gather(*(coalesced(i) for i in (1, 2, 3))) == [2, 4, 6]
        assert call.batches == [[1, 2, 3]]
        assert await coalesced(5) == 10  # a lone caller: a call of its own
        assert call.batches == [[1, 2, 3], [5]]
        assert coalesced.counts() == {"calls": 2, "items": 4}

    asyncio.run(run())


def test_a_call_queued_while_one_is_under_way_goes_in_the_next() -> None:
    async def run() -> None:
        call = Doubler()
        call.gate.clear()
        coalesced = Coalesced(call)
        first = asyncio.ensure_future(coalesced(1))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(coalesced(2))
        await asyncio.sleep(0.01)
        assert call.batches == [[1], [2]] and not first.done()
        call.gate.set()
        assert (await first, await second) == (2, 4)

    asyncio.run(run())


def test_a_failed_call_fails_every_caller_of_its_batch_and_only_those() -> None:
    async def run() -> None:
        call = Doubler(fail=True)
        coalesced = Coalesced(call)
        got = await asyncio.gather(coalesced(1), coalesced(2), return_exceptions=True)
        assert [type(e) for e in got] == [ConnectionError, ConnectionError]
        call.fail = False
        assert await coalesced(3) == 6

    asyncio.run(run())


def test_a_caller_that_goes_does_not_stop_the_others_call() -> None:
    async def run() -> None:
        call = Doubler()
        call.gate.clear()
        coalesced = Coalesced(call)
        gone = asyncio.ensure_future(coalesced(1))
        staying = asyncio.ensure_future(coalesced(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        call.gate.set()
        assert await staying == 4
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert call.batches == [[1, 2]]  # sent with the item of the caller that went

    asyncio.run(run())
