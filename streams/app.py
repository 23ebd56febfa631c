"""The Faust worker: thin agents over the input and internal topics, delegating to
`BatchProcessor`, and the `Runtime` that composes it with the checkpoint writer, the
policy watcher and `POST /score`'s requests.

One agent per input topic (transactions, signups, labels, platform events) feeds the user
shards; one per internal topic carries envelopes between the feature stages and to the graph
and solvency shards (streams/shards/). All topics
have the same partition count, so Faust co-partitions them: partition i of every topic, and
so user shard i and entity shard i, belong to the same worker. Agents batch with
`take_events`.

Recovery is by checkpoint, not by Faust's changelogs (which Tansu's ListOffsets bug breaks):
every `RG_CHECKPOINT_INTERVAL_S` each shard's state, with the next offset of each partition
it reads, is written to Redis under the shard's own name; only then are the messages it
covers acknowledged (each holds an extra reference until that point), so committed offsets
never run ahead of a checkpoint. A worker that is assigned a partition restores that shard's
checkpoint, and Faust re-delivers from the committed offsets; what the checkpoint already
covers is skipped by offset. So the state after a crash, a restart or a rebalance is exactly
that of an uninterrupted run, however the partitions move between workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, EventT, Message
from mode import Service

from rebate_guard.client import RebateStatus
from rebate_guard.contract.records import (
    ENTITY_REQUESTS,
    ENTITY_RESULTS,
    GRAPH_EVENTS,
    INPUT_TOPICS,
    INTERNAL_TOPICS,
    SOLVENCY_MOVEMENTS,
    Transaction,
)
from rebate_guard.settings import Settings
from streams.admission import Admission
from streams.auth import Guard
from streams.batch import BatchOutcome, RawEvent
from streams.checkpoint_writer import CheckpointWriter
from streams.console.store import ConsoleStore, MemoryConsoleStore, RedisConsoleStore
from streams.policy_watch import PolicyWatcher
from streams.processor import BatchProcessor
from streams.registry import entity_unit, graph_unit, solvency_unit, user_unit
from streams.score_requests import DecisionWaiters, ScoreRequests
from streams.shards import GRAPH_PARTITION, SOLVENCY_PARTITION
from streams.sink import KafkaSink, Sink
from streams.store import DecisionStore, RedisDecisionStore
from streams.transport import RebateGuardApp

log = logging.getLogger(__name__)


#: The exit status of a worker stopped by a processing failure (EX_SOFTWARE).
FAILED_BATCH_EXIT = 70


def _exit_hard() -> None:
    logging.shutdown()
    os._exit(FAILED_BATCH_EXIT)


class Runtime:
    """What the agents share: the processor, the I/O clients it uses, and the parts around
    it: checkpoints (`checkpoints`), the live policy (`policy_watch`) and `POST /score`
    (`requests`). With a sink that loops back (no broker) every partition is this
    process's and nothing is acknowledged to a broker."""

    def __init__(
        self,
        settings: Settings,
        store: DecisionStore,
        sink: Sink,
        console: ConsoleStore | None = None,
        *,
        fork_checkpoints: bool = False,
        close_store: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        #: The console's records (claims, drafts, audit) and views, kept by the processor
        #: too when `RG_CONSOLE_INDEX` is on.
        self.console: ConsoleStore = console if console is not None else MemoryConsoleStore()
        waiters = DecisionWaiters()
        self.processor = BatchProcessor(
            store,
            sink,
            settings,
            console=self.console if settings.console_index else None,
            on_decided=waiters.wake,
        )
        processor, counters = self.processor, self.processor.counters
        # The shards are touched by five agents, three timers and rebalances: one at a time,
        # and never in the middle of a batch.
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()
        #: With a real broker, input is acknowledged only once a checkpoint covers it; the
        #: in-memory test contexts have no broker to commit to.
        self.hold_acks = not sink.loopback
        self.checkpoints = CheckpointWriter(
            processor.shards,
            store,
            settings,
            lock=self.lock,
            retry=processor.retry,
            counters=counters,
            fork=fork_checkpoints,
        )
        self.policy_watch = PolicyWatcher(
            store, current=lambda: processor.policy, apply=processor.set_policy, lock=self.lock
        )
        admission = Admission(
            settings, counters=counters, policy_version=lambda: processor.policy.version
        )
        self.requests = ScoreRequests(
            settings,
            store,
            sink,
            admission=admission,
            waiters=waiters,
            decide_now=processor.payment_time.decide,
            ring_keys=processor.graph.ring_keys,
        )
        self._close_store = close_store
        #: Called when a batch fails for a reason other than bad input or I/O (a bug):
        #: ends the process at once (see `_handle`); tests replace it.
        self.fail_stop: Callable[[], None] = _exit_hard
        if sink.loopback:
            processor.shards.own_all()  # no broker, no assignment: every partition is ours
            self.ready.set()

    @property
    def policy_status(self) -> dict[str, Any]:
        return self.policy_watch.status

    async def refresh_policy(self) -> None:
        await self.policy_watch.refresh()

    async def score(self, tx: Transaction, value: bytes, wait_s: float) -> RebateStatus:
        """`POST /score` (`streams.score_requests`)."""
        return await self.requests.score(tx, value, wait_s)

    async def start(self) -> None:
        await self.refresh_policy()
        await self.sink.start()
        await self._check_partitions()

    async def _check_partitions(self) -> None:
        """Refuse to run on topics whose partition counts differ: co-partitioning (and the
        user shards' routing) needs them all equal to `RG_PARTITIONS`."""
        wrong = {}
        for name in (*INPUT_TOPICS, *INTERNAL_TOPICS):
            topic = self.settings.topic(name)
            count = await self.sink.partition_count(topic)
            if count is not None and count != self.settings.partitions:
                wrong[topic] = count
        if wrong:
            raise RuntimeError(
                f"RG_PARTITIONS is {self.settings.partitions} but these topics have other "
                f"partition counts: {wrong}; all input and internal topics need the same count"
            )

    async def stop(self) -> None:
        if self.processor.shards.units():
            await self.checkpoints.handover()
        await self.sink.stop()
        if self._close_store is not None:
            await self._close_store()

    async def on_assigned(self, assigned: set[TP]) -> None:
        s = self.settings
        user_topics = {s.topic(k) for k in INPUT_TOPICS} | {s.topic(ENTITY_RESULTS)}
        units = {user_unit(tp.partition) for tp in assigned if tp.topic in user_topics}
        units |= {
            entity_unit(tp.partition) for tp in assigned if tp.topic == s.topic(ENTITY_REQUESTS)
        }
        if s.graph and TP(s.topic(GRAPH_EVENTS), GRAPH_PARTITION) in assigned:
            units.add(graph_unit(GRAPH_PARTITION))
        if TP(s.topic(SOLVENCY_MOVEMENTS), SOLVENCY_PARTITION) in assigned:
            units.add(solvency_unit(SOLVENCY_PARTITION))
        shards = self.processor.shards
        async with self.lock:
            current = set(shards.units())
            self.processor.release(current - units)
            for unit in sorted(units - current):
                blob = await self.store.load_checkpoint(unit)
                shards.install(unit, blob)
                if blob is not None:
                    log.info("restored %s from its checkpoint (%d bytes)", unit, len(blob))
        log.info("shards assigned: %s", ", ".join(sorted(units)) or "none")
        self.ready.set()

    async def tick(self) -> None:
        async with self.lock:
            await self.processor.tick()

    async def handle(self, kind: str, events: Sequence[EventT]) -> BatchOutcome | None:
        """One batch from `kind`: an input topic, or an internal one."""
        await self.ready.wait()
        if self.hold_acks:
            for event in events:  # take_events acks the batch; this keeps it unacked
                event.message.incref()
        messages = [e.message for e in events]
        raw = [RawEvent(m.topic, m.partition, m.offset, m.key, m.value) for m in messages]
        # Faust acknowledges a `take_events` batch in a `finally`, even when the agent is
        # cancelled mid-batch (shutdown, rebalance). Finish the batch first, so what is
        # acknowledged has really been decided, stored and produced.
        task = asyncio.ensure_future(self._handle(kind, raw, messages))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def _handle(
        self, kind: str, raw: list[RawEvent], messages: list[Message]
    ) -> BatchOutcome | None:
        async with self.lock:
            outcome: BatchOutcome | None = None
            try:
                if kind == ENTITY_REQUESTS:
                    await self.processor.handle_requests(raw)
                elif kind == GRAPH_EVENTS:
                    await self.processor.handle_graph(raw)
                elif kind == SOLVENCY_MOVEMENTS:
                    await self.processor.handle_solvency(raw)
                elif kind == ENTITY_RESULTS:
                    outcome = await self.processor.handle_results(raw)
                else:
                    outcome = await self.processor.handle(kind, raw)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Bad input never gets here (it is a dead letter); I/O failures are retried
                # inside. What is left is a bug, and the shards may be half way through the
                # batch. Faust would restart the agent over that state, and a graceful stop
                # would checkpoint it: stop hard instead, so the worker restarts from its
                # last checkpoint, as after a kill -9 (exact, tested).
                log.critical(
                    "processing a %s batch failed; stopping this worker without a checkpoint "
                    "so it restarts from its last one",
                    kind,
                    exc_info=True,
                )
                self.fail_stop()
                raise
            if self.hold_acks:
                self.checkpoints.hold(messages)
            return outcome


@dataclass
class Worker:
    app: faust.App
    runtime: Runtime
    agents: dict[str, Any]
    guard: Guard


def create_worker(
    settings: Settings, store: DecisionStore | None = None, sink: Sink | None = None
) -> Worker:
    guard = Guard(settings)  # in front of every route, Faust's own included
    app = RebateGuardApp(
        settings.app_id,
        consumer_fetch_wait_ms=settings.consumer_fetch_wait_ms,
        broker=settings.faust_broker_url,
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        web_enabled=True,
        # Faust listens on web_bind (its default: every interface); web_host is only the
        # name it advertises.
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_application_options={"middlewares": [guard.middleware]},
        web_router_enabled=settings.faust_web_pages,
        web_tables_enabled=settings.faust_web_pages,
        web_stats_enabled=False,
        web_graph_enabled=False,
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
    if store is None:
        store = RedisDecisionStore(settings)
    # What only the real Redis has: the console's store over its client, checkpoints
    # written by a forked child (it opens its own connection), a connection to close.
    redis = store if isinstance(store, RedisDecisionStore) else None
    console: ConsoleStore | None = None
    if redis is not None:
        console = RedisConsoleStore(
            redis.client,
            settings.app_id,
            ttl_s=settings.decision_ttl_s,
            history_keep=settings.console_history_keep,
        )
    runtime = Runtime(
        settings,
        store,
        sink if sink is not None else KafkaSink(settings),
        console,
        fork_checkpoints=redis is not None,
        close_store=redis.close if redis is not None else None,
    )
    runtime.checkpoints.ack = lambda message: message.ack(app.consumer)

    def caught_up(topic: str, partition: int, next_offset: int) -> bool:
        # The high-water mark comes with fetch responses: unknown (None) until the first
        # one, so a partition is never idle before this worker has fetched from it. (Tansu
        # reports the last batch's base offset + 1; reads are whole batches, so "at or past
        # it" still means "read everything".)
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned (any more), or no consumer yet
            return False
        return highwater is not None and next_offset >= highwater

    if runtime.hold_acks:  # with a broker; the in-memory test contexts are always caught up
        runtime.processor.caught_up = caught_up

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
        await runtime.checkpoints.handover()  # whoever gets them next resumes from here

    @app.timer(interval=settings.checkpoint_interval_s)
    async def checkpoint() -> None:
        await runtime.checkpoints.checkpoint()

    @app.timer(interval=settings.policy_poll_s)
    async def refresh_policy() -> None:
        await runtime.refresh_policy()

    @app.timer(interval=min(0.5, settings.source_idle_s / 2))
    async def release_idle_sources() -> None:
        await runtime.tick()

    agents: dict[str, Any] = {}
    for kind in (*INPUT_TOPICS, *INTERNAL_TOPICS):
        agents[kind] = _make_agent(app, settings, runtime, kind)

    from streams.web import register_views

    register_views(app, runtime, guard)
    return Worker(app, runtime, agents, guard)


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
