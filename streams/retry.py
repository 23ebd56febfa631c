"""Retrying I/O until it succeeds: a Redis or broker failure is waited out, never dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from streams.batch import Counters

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Retrying:
    """Calls `call` until it returns, waiting `base_s` after the first failure and twice as
    long after each next one, up to `max_s`; every failure is logged and counted."""

    counters: Counters
    base_s: float = 0.2
    max_s: float = 5.0

    async def __call__(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = self.base_s
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any I/O failure: wait and try again, never drop
                self.counters.retries += 1
                log.warning(
                    "%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_s)
