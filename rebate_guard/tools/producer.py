"""Feeding a simulated world into the broker at a steady rate, as a platform would."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Iterator

from rebate_guard.settings import Settings
from streams.sink import KafkaSink, Record

log = logging.getLogger(__name__)

Event = tuple[str, str, dict[str, object]]  # (contract topic, key, payload)
CHUNK = 500


async def produce_events(
    settings: Settings, events: Iterable[Event], rate: float | None = None
) -> int:
    """Produce `events` in order, at most `rate` per second (None: as fast as possible)."""
    sink = KafkaSink(settings)
    await sink.start()
    sent = 0
    started = time.perf_counter()
    try:
        for chunk in _chunks(iter(events), CHUNK):
            by_topic: dict[str, list[Record]] = {}
            for topic, key, payload in chunk:
                by_topic.setdefault(settings.topic(topic), []).append(
                    (key.encode(), json.dumps(payload, separators=(",", ":")).encode())
                )
            for topic, records in by_topic.items():
                await sink.send_many(topic, records)
            sent += len(chunk)
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await sink.stop()
    return sent


async def produce_world(settings: Settings, world: object, rate: float | None = None) -> int:
    from rebate_guard.tools.simulator import World, event_stream

    assert isinstance(world, World)
    return await produce_events(settings, event_stream(world), rate)


def _chunks(events: Iterator[Event], size: int) -> Iterator[list[Event]]:
    chunk: list[Event] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
