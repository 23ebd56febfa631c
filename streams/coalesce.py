"""Calls that many `POST /score` requests make at once, merged into one.

A Redis command costs the worker ~0.25 ms of CPU however few keys it carries (the client's
Python and the loopback write: benchmarks/README.md, "Payment-time latency"), which made
three of them per request about a third of a request's cost. Requests being worked on at
the same moment reach the same step within a turn or two of the event loop, so each such
step is queued and the queue is sent as one call at the end of the turn: one command for
every request that got there by then. A lone request waits one turn of the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalesced(Generic[Item, Result]):
    """`await coalesced(item)`: `call`'s result for `item`, where `call` takes every item
    queued in the same turn of the event loop, in the order queued, and returns one result
    for each, in that order. If `call` raises, every caller of that batch gets the error."""

    def __init__(self, call: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self.call = call
        self._queued: list[tuple[Item, asyncio.Future[Result]]] = []
        self._sending: set[asyncio.Future[None]] = set()
        #: Calls made and the items they carried (`/api/stats`: how much was merged).
        self.calls = 0
        self.items = 0

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        answer: asyncio.Future[Result] = loop.create_future()
        self._queued.append((item, answer))
        return await answer

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "items": self.items}

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        self.calls += 1
        self.items += len(batch)
        # The batch is sent even if some of its callers have gone (cancelled): one call
        # carries many requests' writes, which must not depend on one of them.
        sending = asyncio.ensure_future(self._send(batch))
        self._sending.add(sending)  # the loop keeps only a weak reference to a task
        sending.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self.call([item for item, _ in batch])
        except BaseException as exc:
            for _, answer in batch:
                if answer.done():
                    continue
                if isinstance(exc, Exception):
                    answer.set_exception(exc)
                else:  # cancelled (the worker stopping): so are its callers
                    answer.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)
