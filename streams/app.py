"""The Faust worker: thin agents over the input topics, delegating to `BatchProcessor`.

One agent per input topic (transactions, signups, labels), all sharing one `Scorer`. The
input topics are co-partitioned and keyed by user_id, so one worker sees a user's signup and
payments. Agents batch with `take_events` and acknowledge a batch only after its decisions
are stored and produced (see streams/processor.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import EventT
from mode import Service

from features.engine import FeatureEngine
from rebate_guard.scoring import Scorer
from rebate_guard.settings import Settings
from streams.processor import BatchOutcome, BatchProcessor, RawEvent
from streams.records import INPUT_TOPICS
from streams.sink import KafkaSink, Sink
from streams.store import DecisionStore, RedisDecisionStore

log = logging.getLogger(__name__)


class Runtime:
    """What the agents share: the processor and the I/O clients it uses."""

    def __init__(self, settings: Settings, store: DecisionStore, sink: Sink) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.processor = BatchProcessor(
            Scorer(features=FeatureEngine(settings.engine_config())), store, sink, settings
        )
        self.ready = asyncio.Event()
        if not isinstance(sink, KafkaSink):
            self.ready.set()

    async def start(self) -> None:
        if isinstance(self.sink, KafkaSink):
            await self.sink.start()
        self.ready.set()

    async def stop(self) -> None:
        if isinstance(self.sink, KafkaSink):
            await self.sink.stop()
        if isinstance(self.store, RedisDecisionStore):
            await self.store.close()

    async def handle(self, kind: str, events: Sequence[EventT]) -> BatchOutcome:
        await self.ready.wait()
        raw = [
            RawEvent(
                topic=e.message.topic,
                partition=e.message.partition,
                offset=e.message.offset,
                key=e.message.key,
                value=e.message.value,
            )
            for e in events
        ]
        # Faust acknowledges a `take_events` batch in a `finally`, even when the agent is
        # cancelled mid-batch (shutdown, rebalance). Finish the batch first, so what is
        # acknowledged has really been decided, stored and produced.
        task = asyncio.ensure_future(self.processor.handle(kind, raw))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise


@dataclass
class Worker:
    app: faust.App
    runtime: Runtime
    agents: dict[str, Any]


def create_worker(
    settings: Settings, store: DecisionStore | None = None, sink: Sink | None = None
) -> Worker:
    app = faust.App(
        settings.app_id,
        broker=settings.faust_broker_url,
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    runtime = Runtime(
        settings,
        store if store is not None else RedisDecisionStore(settings),
        sink if sink is not None else KafkaSink(settings),
    )

    @app.service
    class PipelineService(Service):
        async def on_start(self) -> None:
            await runtime.start()

        async def on_stop(self) -> None:
            await runtime.stop()

    agents: dict[str, Any] = {}
    for kind in INPUT_TOPICS:
        agents[kind] = _make_agent(app, settings, runtime, kind)

    from streams.web import register_views

    register_views(app, runtime)
    return Worker(app, runtime, agents)


def _make_agent(app: faust.App, settings: Settings, runtime: Runtime, kind: str) -> Any:
    topic = app.topic(
        settings.topic(kind),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    async def agent(stream: Any) -> None:  # faust.Stream; StreamT lacks take_events
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            await runtime.handle(kind, events)

    agent.__name__ = f"score_{kind.replace('-', '_')}"
    return app.agent(topic, name=f"rebate-guard.{kind}")(agent)
