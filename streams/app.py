"""The Faust worker: thin agents over the input topics, delegating to `BatchProcessor`.

One agent per input topic (transactions, signups, labels), all sharing one processor, which
merges them into event-time order (streams/alignment.py). Agents batch with `take_events`.

Recovery is by checkpoint, not by Faust's changelogs (which Tansu's ListOffsets bug breaks):
every `RG_CHECKPOINT_INTERVAL_S` the processor's whole state, with the next input offset of
every partition, is written to Redis; only then are the input messages it covers acknowledged
(each message holds an extra reference until that point), so the committed offsets never run
ahead of the checkpoint. After a crash the worker restores the checkpoint for its partitions
and Faust re-delivers from the committed offsets; what the checkpoint already covers is skipped
by offset. The state after recovery is therefore exactly that of an uninterrupted run.
Checkpoints are per set of assigned partitions: exact recovery holds for a worker that gets the
same partitions back (always, with one worker).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, EventT, Message
from mode import Service

from features.engine import FeatureEngine
from rebate_guard.scoring import Scorer
from rebate_guard.settings import Settings
from streams.processor import BatchOutcome, BatchProcessor, RawEvent
from streams.records import INPUT_TOPICS
from streams.sink import KafkaSink, Sink
from streams.store import DecisionStore, RedisDecisionStore, save_checkpoint_sync

log = logging.getLogger(__name__)


async def _exited_cleanly(pid: int) -> bool:
    loop = asyncio.get_running_loop()
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def checkpoint_name(sources: frozenset[tuple[str, int]]) -> str:
    """Checkpoints are named by the exact set of input partitions whose state they hold."""
    listing = ",".join(f"{t}:{p}" for t, p in sorted(sources))
    return "features-" + hashlib.sha1(listing.encode()).hexdigest()[:16]


class Runtime:
    """What the agents share: the processor, the I/O clients it uses, and the checkpoints."""

    def __init__(self, settings: Settings, store: DecisionStore, sink: Sink) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.processor = BatchProcessor(
            Scorer(features=FeatureEngine(settings.engine_config())), store, sink, settings
        )
        # The processor's state is touched by three agents, a timer and rebalances: one at a
        # time, and never in the middle of a batch.
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()
        #: With a real broker, input is acknowledged only once a checkpoint covers it; the
        #: in-memory test contexts have no broker to commit to.
        self.hold_acks = isinstance(sink, KafkaSink)
        self.held: list[Message] = []
        self.ack: Any = None  # set by create_worker: acknowledges one held message
        self.checkpoint_name: str | None = None
        self.checkpointing = False
        # Forking needs the real Redis (the child opens its own connection to it).
        self.fork_checkpoints = isinstance(store, RedisDecisionStore)
        if not self.hold_acks:
            self.ready.set()

    async def start(self) -> None:
        if isinstance(self.sink, KafkaSink):
            await self.sink.start()

    async def stop(self) -> None:
        if self.checkpoint_name is not None:
            await self.checkpoint()
        if isinstance(self.sink, KafkaSink):
            await self.sink.stop()
        if isinstance(self.store, RedisDecisionStore):
            await self.store.close()

    async def on_assigned(self, assigned: set[TP]) -> None:
        inputs = {self.settings.topic(k) for k in INPUT_TOPICS}
        sources = frozenset((tp.topic, tp.partition) for tp in assigned if tp.topic in inputs)
        async with self.lock:
            name = checkpoint_name(sources)
            if name != self.checkpoint_name:
                blob = await self.store.load_checkpoint(name)
                if blob is not None:
                    self.processor.restore(blob)
                    log.info("restored checkpoint %s (%d bytes)", name, len(blob))
                elif self.checkpoint_name is not None:
                    log.warning(
                        "no checkpoint for the new partition set %s: feature state carries "
                        "over from the previous assignment",
                        sorted(sources),
                    )
                self.checkpoint_name = name
            await self.processor.assign(sources)
        self.ready.set()

    async def checkpoint(self) -> None:
        """Save the state with its offsets, then acknowledge the input it covers."""
        if self.checkpointing:
            return  # the previous one is still being written
        self.checkpointing = True
        try:
            async with self.lock:
                name = self.checkpoint_name
                if name is None:
                    return
                held, self.held = self.held, []
                writer = self._fork_writer(name) if self.fork_checkpoints else None
                if writer is None:
                    blob = self.processor.snapshot()
            if writer is None:
                await self.processor.retry(
                    "save checkpoint", lambda: self.store.save_checkpoint(name, blob)
                )
            elif not await _exited_cleanly(writer):
                log.warning("checkpoint writer %d failed; retrying at the next interval", writer)
                self.held = held + self.held
                return
            for message in held:
                self.ack(message)
            self.processor.counters.checkpoints += 1
        finally:
            self.checkpointing = False

    def _fork_writer(self, name: str) -> int | None:
        """Write the checkpoint from a forked child, as Redis's BGSAVE does.

        Pickling the whole state blocks for seconds at a few hundred MB (benchmarks/
        README.md); the child gets a copy-on-write image of the state as it is now, between
        batches, and pickles and writes it while this process goes on. Returns the child's
        pid, or None where fork is unavailable (then the caller pickles inline).
        """
        if not hasattr(os, "fork"):
            return None
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:  # the child: no event loop, no logging, no shared connections; exit hard
            os.nice(10)  # the worker and the broker come first; this uses what is spare
            blob = self.processor.snapshot()
            save_checkpoint_sync(self.settings.redis_url, self.settings.app_id, name, blob)
            status = 0
        finally:
            os._exit(status)

    async def tick(self) -> None:
        async with self.lock:
            await self.processor.tick()

    async def handle(self, kind: str, events: Sequence[EventT]) -> BatchOutcome:
        await self.ready.wait()
        if self.hold_acks:
            for event in events:  # take_events acks the batch; this keeps it unacked
                event.message.incref()
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
        task = asyncio.ensure_future(self._handle(kind, raw, [e.message for e in events]))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def _handle(
        self, kind: str, raw: list[RawEvent], messages: list[Message]
    ) -> BatchOutcome:
        async with self.lock:
            outcome = await self.processor.handle(kind, raw)
            if self.hold_acks:
                self.held.extend(messages)
            return outcome


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
        # Input stays unacknowledged until a checkpoint covers it, so Faust must not wait for
        # "all acked" before a rebalance or shutdown; the checkpoint offsets make that safe.
        stream_wait_empty=False,
    )
    runtime = Runtime(
        settings,
        store if store is not None else RedisDecisionStore(settings),
        sink if sink is not None else KafkaSink(settings),
    )

    runtime.ack = lambda message: message.ack(app.consumer)

    @app.service
    class PipelineService(Service):
        async def on_start(self) -> None:
            await runtime.start()

        async def on_stop(self) -> None:
            await runtime.stop()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await runtime.on_assigned(set(args[0]))  # the signal sends the assigned TPs

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await runtime.checkpoint()  # whoever gets the partitions next resumes from here

    @app.timer(interval=settings.checkpoint_interval_s)
    async def checkpoint() -> None:
        await runtime.checkpoint()

    @app.timer(interval=min(0.5, settings.source_idle_s / 2))
    async def release_idle_sources() -> None:
        await runtime.tick()

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
