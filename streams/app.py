"""The Faust worker: thin agents over the input and internal topics, delegating to
`BatchProcessor`.

One agent per input topic (transactions, signups, labels) feeds the user shards; one per
internal topic carries envelopes between the feature stages and to the graph shard
(streams/shards.py). All topics
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import faust
from faust.types import TP, EventT, Message
from mode import Service

from rebate_guard.client import RebateStatus, rebate_status
from rebate_guard.contract.records import (
    ENTITY_REQUESTS,
    ENTITY_RESULTS,
    GRAPH_EVENTS,
    INPUT_TOPICS,
    INTERNAL_TOPICS,
    PAYMENT,
    TRANSACTIONS,
    Decision,
    Transaction,
    decision_on,
    requested_rebate_cents,
)
from rebate_guard.core.policy import FAILED_CLOSED, Policy, PolicyError
from rebate_guard.settings import Settings
from streams.auth import Guard
from streams.console.store import ConsoleStore, MemoryConsoleStore, RedisConsoleStore
from streams.processor import (
    BatchOutcome,
    BatchProcessor,
    RawEvent,
    entity_unit,
    graph_unit,
    user_unit,
)
from streams.shards import GRAPH_PARTITION
from streams.sink import KafkaSink, Sink
from streams.store import DecisionStore, RedisDecisionStore, save_checkpoint_sync
from streams.transport import RebateGuardApp

log = logging.getLogger(__name__)


#: The exit status of a worker stopped by a processing failure (EX_SOFTWARE).
FAILED_BATCH_EXIT = 70

#: How often a waiting `POST /score` asks Redis for a decision another worker made.
SCORE_POLL_S = 0.05


def _exit_hard() -> None:
    logging.shutdown()
    os._exit(FAILED_BATCH_EXIT)


async def _exited_cleanly(pid: int) -> bool:
    loop = asyncio.get_running_loop()
    _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


class Runtime:
    """What the agents share: the processor, the I/O clients it uses, and the checkpoints."""

    def __init__(
        self,
        settings: Settings,
        store: DecisionStore,
        sink: Sink,
        console: ConsoleStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        #: The console's records (claims, drafts, audit) and views, kept by the processor
        #: too when `RG_CONSOLE_INDEX` is on.
        self.console: ConsoleStore = console if console is not None else MemoryConsoleStore()
        with_broker = isinstance(sink, KafkaSink)
        self.processor = BatchProcessor(store, sink, settings, loopback=not with_broker)
        if settings.console_index:
            self.processor.console = self.console
        # The shards are touched by five agents, three timers and rebalances: one at a time,
        # and never in the middle of a batch.
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()
        #: With a real broker, input is acknowledged only once a checkpoint covers it; the
        #: in-memory test contexts have no broker to commit to.
        self.hold_acks = with_broker
        self.held: list[Message] = []
        self.ack: Any = None  # set by create_worker: acknowledges one held message
        self.checkpointing = False
        #: Called when a batch fails for a reason other than bad input or I/O (a bug):
        #: ends the process at once (see `_handle`); tests replace it.
        self.fail_stop: Callable[[], None] = _exit_hard
        # Forking needs the real Redis (the child opens its own connection to it).
        self.fork_checkpoints = isinstance(store, RedisDecisionStore)
        #: The policy document last taken from Redis, and what the status page shows.
        self._policy_text: bytes | None = None
        #: `POST /score` requests waiting for a decision, by tx_id.
        self._score_waiters: dict[str, list[asyncio.Future[bytes]]] = {}
        #: `POST /score` requests being worked on (admission: `RG_SCORE_MAX_IN_FLIGHT`).
        self.scoring = 0
        self.processor.on_decided = self._wake_score_waiters
        self.policy_status: dict[str, Any] = {
            "version": self.processor.policy.version,
            "source": "start",
            "rejected": None,
        }
        if not with_broker:
            self.processor.own_all()  # no broker, no assignment: every partition is ours
            self.ready.set()

    async def start(self) -> None:
        await self.refresh_policy()
        if isinstance(self.sink, KafkaSink):
            await self.sink.start()
            await self._check_partitions(self.sink)

    async def score(self, tx: Transaction, value: bytes, wait_s: float) -> RebateStatus:
        """A decision at payment time (`POST /score`): the stored one if `tx` was decided
        already (same tx_id, same answer); else `tx` goes into the pipeline (the same
        logic, idempotent by tx_id) and is decided at once from the state as it stands
        where this worker can (`BatchProcessor.decide_at_payment`), or else its decision
        is awaited for up to `wait_s`. If it cannot be had in time, a provisional
        fail-closed answer that grants nothing: the real decision follows on the
        decisions topic and by tx_id.

        The wait wakes when this worker stores the decision (its user partition is
        usually here); Redis is asked only every `SCORE_POLL_S`, for a decision made by
        another worker: many waiting requests must not crowd the worker's own loop.

        Past `RG_SCORE_MAX_IN_FLIGHT` requests in flight the transaction is only produced
        and the answer provisional at once: a worker past its capacity would otherwise
        queue every request until all of them time out (benchmarks/README.md)."""
        limit = self.settings.score_max_in_flight
        if limit and self.scoring >= limit:
            return await self._overloaded(tx, value)
        self.scoring += 1
        try:
            return await self._score(tx, value, wait_s)
        finally:
            self.scoring -= 1

    async def _overloaded(self, tx: Transaction, value: bytes) -> RebateStatus:
        # Not even the stored-decision check: a repeated tx_id gets a provisional answer,
        # which grants nothing; the stream dedupes the transaction by tx_id.
        self.processor.counters.overload += 1
        try:
            await self._produce(tx, value)
        except Exception as exc:
            return self._fail_closed(tx, "broker", exc)
        return self._fail_closed(tx, "overload", None)

    async def _score(self, tx: Transaction, value: bytes, wait_s: float) -> RebateStatus:
        deadline = time.monotonic() + wait_s
        decided = asyncio.get_running_loop().create_future()
        self._score_waiters.setdefault(tx.tx_id, []).append(decided)
        at_payment = self.settings.score_at_payment
        try:
            try:  # decided already? (and, to decide now, the ring scores: one round trip)
                ring_keys = self.processor.ring_keys([tx]) if at_payment else []
                stored, rings = await self.store.decision_and_rings(tx.tx_id, ring_keys)
            except Exception as exc:
                return self._fail_closed(tx, "redis", exc)
            if stored is not None:
                return await self._status_of(stored)
            produce = partial(self._produce, tx, value)
            try:
                produced = False
                if at_payment:
                    known = rings if ring_keys else None
                    produced, now = await self.processor.decide_at_payment(tx, produce, known)
                    if now is not None:  # just decided: no ledger change yet
                        return rebate_status(now, None)
                if not produced:
                    await produce()
            except Exception as exc:
                return self._fail_closed(tx, "broker", exc)
            while not decided.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._fail_closed(tx, "timeout", None)
                await asyncio.wait([decided], timeout=min(left, SCORE_POLL_S))
                if decided.done():
                    break
                try:
                    status = await self._stored_status(tx.tx_id)
                except Exception as exc:
                    return self._fail_closed(tx, "redis", exc)
                if status is not None:
                    return status
            return await self._status_of(decided.result())
        finally:
            waiters = self._score_waiters.get(tx.tx_id, [])
            if decided in waiters:
                waiters.remove(decided)
            if not waiters:
                self._score_waiters.pop(tx.tx_id, None)

    async def _produce(self, tx: Transaction, value: bytes) -> None:
        await self.sink.send_one(self.settings.topic(TRANSACTIONS), tx.user_id.encode(), value)

    def _wake_score_waiters(self, standing: dict[str, bytes]) -> None:
        if not self._score_waiters:
            return
        for tx_id, value in standing.items():
            for waiter in self._score_waiters.get(tx_id, ()):
                if not waiter.done():
                    waiter.set_result(value)

    async def _status_of(self, value: bytes) -> RebateStatus:
        decision = Decision.loads(value)
        try:
            ledger = await self.store.get_ledger(decision.tx_id)
        except Exception:  # the decision stands; only the ledger's later changes are unknown
            ledger = None
        return rebate_status(decision, ledger)

    async def _stored_status(self, tx_id: str) -> RebateStatus | None:
        found = await self.store.get_many([tx_id])
        if tx_id not in found:
            return None
        return await self._status_of(found[tx_id])

    def _fail_closed(self, tx: Transaction, part: str, exc: Exception | None) -> RebateStatus:
        if exc is not None:
            log.warning(
                "POST /score %s: %s unavailable (%s); answering %s",
                tx.tx_id,
                part,
                exc,
                self.settings.fail_closed_action,
            )
        self.processor.counters.fail_closed += 1
        requested = (
            requested_rebate_cents(tx.amount_cents, tx.rebate_rate) if tx.kind == PAYMENT else 0
        )
        decision = decision_on(
            tx,
            risk=1.0,
            trust_weight=0.0,
            action=self.settings.fail_closed_action,
            rebate_requested_cents=requested,
            rebate_granted_cents=0,
            reasons=[f"fail_closed:{part}"],
            model_version="",
            decided_at=int(time.time() * 1000),
            policy_version=self.processor.policy.version,
            commission_tiers=0,
            threshold_version=FAILED_CLOSED,
        )
        return rebate_status(decision, None, provisional=True)

    async def refresh_policy(self) -> None:
        """Takes up a new live policy from Redis (hot reload, between batches). It is
        validated first: one that fails is logged and reported, and the current policy
        stays. With no policy in Redis yet, this worker's starting one becomes the live
        one. Redis being down only delays this to the next poll."""
        start = self.processor.policy
        try:
            text = await self.store.get_policy()
            if text is None:
                await self.store.seed_policy(start.version, start.to_json())
                text = await self.store.get_policy()
        except Exception as exc:  # I/O: the next poll tries again
            log.warning("cannot read the policy from Redis (%s); keeping %s", exc, start.version)
            return
        if text is None or text == self._policy_text:
            return
        self._policy_text = text
        try:
            policy = Policy.from_text(text)
        except PolicyError as exc:
            log.error("rejected the policy in Redis, keeping %s: %s", start.version, exc)
            self.policy_status["rejected"] = str(exc)
            return
        if policy != start:
            async with self.lock:
                self.processor.set_policy(policy)
            log.info("policy %s -> %s (from Redis)", start.version, policy.version)
        self.policy_status = {"version": policy.version, "source": "redis", "rejected": None}

    async def _check_partitions(self, sink: KafkaSink) -> None:
        """Refuse to run on topics whose partition counts differ: co-partitioning (and the
        user shards' routing) needs them all equal to `RG_PARTITIONS`."""
        wrong = {}
        for name in (*INPUT_TOPICS, *INTERNAL_TOPICS):
            topic = self.settings.topic(name)
            count = await sink.partition_count(topic)
            if count != self.settings.partitions:
                wrong[topic] = count
        if wrong:
            raise RuntimeError(
                f"RG_PARTITIONS is {self.settings.partitions} but these topics have other "
                f"partition counts: {wrong}; all input and internal topics need the same count"
            )

    async def stop(self) -> None:
        if self.processor.units():
            await self.handover()
        if isinstance(self.sink, KafkaSink):
            await self.sink.stop()
        if isinstance(self.store, RedisDecisionStore):
            await self.store.close()

    async def on_assigned(self, assigned: set[TP]) -> None:
        s = self.settings
        user_topics = {s.topic(k) for k in INPUT_TOPICS} | {s.topic(ENTITY_RESULTS)}
        units = {user_unit(tp.partition) for tp in assigned if tp.topic in user_topics}
        units |= {
            entity_unit(tp.partition) for tp in assigned if tp.topic == s.topic(ENTITY_REQUESTS)
        }
        if s.graph and TP(s.topic(GRAPH_EVENTS), GRAPH_PARTITION) in assigned:
            units.add(graph_unit(GRAPH_PARTITION))
        async with self.lock:
            current = set(self.processor.units())
            self.processor.release(current - units)
            for unit in sorted(units - current):
                blob = await self.store.load_checkpoint(unit)
                self.processor.install(unit, blob)
                if blob is not None:
                    log.info("restored %s from its checkpoint (%d bytes)", unit, len(blob))
        log.info("shards assigned: %s", ", ".join(sorted(units)) or "none")
        self.ready.set()

    async def handover(self) -> None:
        """Partitions are being revoked: their next owner must find them checkpointed as of
        now, and Faust commits what the checkpoint acknowledged. So wait out a checkpoint
        already being written (it holds older state) and write a fresh one."""
        while self.checkpointing:
            await asyncio.sleep(0.05)
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Save every shard with its offsets, then acknowledge the input they cover."""
        if self.checkpointing:
            return  # the previous one is still being written
        self.checkpointing = True
        try:
            async with self.lock:
                snapshots, written = self.processor.checkpoints()
                if not snapshots:
                    return
                held, self.held = self.held, []
                writer = self._fork_writer(snapshots) if self.fork_checkpoints else None
                blobs = None if writer is not None else {n: f() for n, f in snapshots.items()}
            if blobs is not None:
                for name, blob in blobs.items():
                    save = partial(self.store.save_checkpoint, name, blob)
                    await self.processor.retry("save checkpoint", save)
            elif writer is not None and not await _exited_cleanly(writer):
                log.warning("checkpoint writer %d failed; retrying at the next interval", writer)
                self.held = held + self.held
                return
            written()
            for message in held:
                self.ack(message)
            self.processor.counters.checkpoints += 1
        finally:
            self.checkpointing = False

    def _fork_writer(self, snapshots: dict[str, Callable[[], bytes]]) -> int | None:
        """Write the checkpoints from a forked child, as Redis's BGSAVE does.

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
            for name, snapshot in snapshots.items():
                save_checkpoint_sync(
                    self.settings.redis_url, self.settings.app_id, name, snapshot()
                )
            status = 0
        finally:
            os._exit(status)

    async def tick(self) -> None:
        async with self.lock:
            await self.processor.tick()

    async def handle(self, kind: str, events: Sequence[EventT]) -> BatchOutcome | None:
        """One batch from `kind`: an input topic, or an internal one."""
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
    ) -> BatchOutcome | None:
        async with self.lock:
            outcome: BatchOutcome | None = None
            try:
                if kind == ENTITY_REQUESTS:
                    await self.processor.handle_requests(raw)
                elif kind == GRAPH_EVENTS:
                    await self.processor.handle_graph(raw)
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
                self.held.extend(messages)
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
    console: ConsoleStore | None = None
    if isinstance(store, RedisDecisionStore):
        console = RedisConsoleStore(
            store.client,
            settings.app_id,
            ttl_s=settings.decision_ttl_s,
            history_keep=settings.console_history_keep,
        )
    runtime = Runtime(settings, store, sink if sink is not None else KafkaSink(settings), console)

    runtime.ack = lambda message: message.ack(app.consumer)

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
        await runtime.handover()  # whoever gets the partitions next resumes from here

    @app.timer(interval=settings.checkpoint_interval_s)
    async def checkpoint() -> None:
        await runtime.checkpoint()

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
