"""Raw message batches -> shard state machines -> decisions, dead letters, envelopes.

The async driver of `streams.shards`: it feeds this worker's user and entity shards (one
per assigned partition: `streams.registry`), parses input, moves envelopes between the
stages, walks the referral tree in Redis, and has the results published
(`streams.publisher`). At-least-once input, exactly-once effects:
1. every input message is parsed; what breaks the contract becomes a dead letter with the
   reason;
2. a message at an offset its shard already covers (re-read after a restart) is skipped;
3. user shards order their input by event time and send entity requests; new referral-tree
   entries are written to Redis *before* the envelopes that advance event time past them, so
   an entity shard that walks the tree at ts t finds every signup before t;
4. decisions are stored first-write-wins in Redis (one Lua call; after a restart a
   re-decided transaction finds its earlier decision there, which stands), then the standing
   decisions, their feature vectors and the dead letters are produced and awaited.
Each shard is checkpointed with its own offsets (`ShardRegistry.checkpoints`); restoring one
and re-reading its input from those offsets gives exactly the state of an uninterrupted run.
Failures of Redis or the broker are retried (with backoff), never dropped.

Without a broker (Faust's test contexts, unit tests) the sink returns the envelopes to this
process (`Sink.loopback`), which delivers them to its own shards, so the same protocol runs
end to end in one process. Decisions at payment time: `streams.payment_time`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import (
    ENTITY_REQUESTS,
    ENTITY_RESULTS,
    GRAPH_EVENTS,
    LABELS,
    PLATFORM_EVENTS,
    SIGNUPS,
    SOLVENCY_MOVEMENTS,
    TRANSACTIONS,
    DeadLetter,
    Decision,
    Transaction,
)
from rebate_guard.contract.validation import (
    InvalidEvent,
    decode_json_object,
    parse_label,
    parse_platform_event,
    parse_signup,
    parse_transaction,
)
from rebate_guard.core.policy import Policy
from rebate_guard.settings import Settings
from streams.alignment import Released
from streams.batch import BatchOutcome, Counters, RawEvent
from streams.console.store import ConsoleStore
from streams.graph_status import GraphStatus
from streams.payment_time import PaymentTimeDecider
from streams.publisher import Publisher
from streams.referral_walks import run_walks
from streams.registry import ShardRegistry
from streams.retry import Retrying
from streams.shard_reports import ShardReports
from streams.shards import TOPIC_CODES, Completed, Inbox, UserShard
from streams.sink import Sink
from streams.store import DecisionStore

log = logging.getLogger(__name__)

PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    TRANSACTIONS: parse_transaction,
    SIGNUPS: parse_signup,
    LABELS: parse_label,
    PLATFORM_EVENTS: parse_platform_event,
}


def _always_caught_up(topic: str, partition: int, offset: int) -> bool:
    return True


async def _true() -> bool:
    return True


class BatchProcessor:
    """Drives the shards batch by batch; composed of the shard registry (`shards`), the
    publisher, the graph's status, the payment-time decider and the shards' reports."""

    def __init__(
        self,
        store: DecisionStore,
        sink: Sink,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        console: ConsoleStore | None = None,
        on_decided: Callable[[dict[str, bytes]], None] = lambda standing: None,
        caught_up: Callable[[str, int, int], bool] = _always_caught_up,
        retry_base_s: float = 0.2,
    ) -> None:
        self.store = store
        self.sink = sink
        self.settings = settings
        self.clock = clock
        #: Whether this worker has read all a partition holds: (topic, partition, next
        #: offset) -> bool. An input counts as idle only when silent *and* caught up:
        #: silence alone also happens while a (re)started consumer has not begun fetching,
        #: and idling a source that still has data would make its events late. Without a
        #: broker everything is caught up.
        self.caught_up = caught_up
        self.counters = Counters()
        self.retry = Retrying(self.counters, base_s=retry_base_s)
        # The parts read the clock through this processor: a test may move it (`clock`).
        wall = self._wall
        self.shards = ShardRegistry(settings, clock=wall, own_missing=sink.loopback)
        self.reports = ShardReports(self.shards)
        self.graph = GraphStatus(self.shards, store, settings, retry=self.retry, clock=wall)
        self.publisher = Publisher(
            store,
            sink,
            settings,
            retry=self.retry,
            counters=self.counters,
            clock=wall,
            console=console,
            on_decided=on_decided,
        )
        self.payment_time = PaymentTimeDecider(
            self.shards,
            store,
            graph=self.graph,
            counters=self.counters,
            clock=wall,
            console=console,
        )

    def _wall(self) -> float:
        return self.clock()

    # --- what the worker's status page and console read -----------------------------------
    @property
    def n_partitions(self) -> int:
        return self.settings.partitions

    @property
    def users(self) -> dict[int, UserShard]:
        return self.shards.users

    @property
    def policy(self) -> Policy:
        return self.shards.policy

    def set_policy(self, policy: Policy) -> None:
        self.shards.set_policy(policy)

    def release(self, units: Iterable[str]) -> None:
        """Forget shards this worker no longer owns (after their checkpoint); the new
        owner of a user shard decides what is still in flight there."""
        self.payment_time.released(self.shards.release(units))

    def _stray(self, message: RawEvent) -> None:
        """A message for a partition this worker does not own (still buffered when it was
        revoked): left alone, the owner reads it from the committed offset."""
        self.counters.stray += 1
        log.debug("stray message %s[%d]@%d", message.topic, message.partition, message.offset)

    # --- input ----------------------------------------------------------------------------
    async def handle(self, kind: str, raw: Sequence[RawEvent]) -> BatchOutcome:
        """Process one batch from the input topic `kind` (a contract name, no prefix)."""
        parser, code = PARSERS[kind], TOPIC_CODES[kind]
        outcome = BatchOutcome()
        dead: list[DeadLetter] = []
        touched: set[int] = set()
        now = self.clock()
        for message in raw:
            shard = self.shards.user(message.partition)
            if shard is None:
                self._stray(message)
                continue
            if message.offset < shard.next_offset.get(code, 0):
                outcome.skipped += 1
                continue
            self.shards.heard[(message.partition, code)] = now
            try:
                event: Event | None = parser(decode_json_object(message.value))
            except InvalidEvent as exc:
                dead.append(self.publisher.dead_letter(message, str(exc)))
                event = None
            shard.offer(code, message.offset, event)
            touched.add(message.partition)
        outcome.dead_letters = len(dead)
        if dead:
            await self.publisher.dead_letters(dead)
        await self._after_users(touched, outcome)
        c = self.counters
        c.batches += 1
        c.events += len(raw)
        c.decided += outcome.decided
        c.redelivered += outcome.redelivered
        c.dead_letters += outcome.dead_letters
        return outcome

    async def tick(self) -> BatchOutcome:
        """Called periodically: inputs silent for `source_idle_s` stop holding event time."""
        now = self.clock()
        idle_after = self.settings.source_idle_s
        topics = {code: self.settings.topic(kind) for kind, code in TOPIC_CODES.items()}
        for (p, code), heard in self.shards.heard.items():
            shard = self.shards.users.get(p)
            if shard is None or now - heard < idle_after or code in shard.aligner.idle_sources:
                continue
            if self.caught_up(topics[code], p, shard.next_offset.get(code, 0)):
                shard.idle(code)
        await self.graph.beat()
        outcome = BatchOutcome()
        await self._after_users(set(self.shards.users), outcome)
        self.counters.decided += outcome.decided
        self.counters.redelivered += outcome.redelivered
        return outcome

    def _offer(
        self, raw: Sequence[RawEvent], shard_of: Callable[[int], Inbox | None]
    ) -> dict[int, list[Released]]:
        """Envelopes from user shards into the entity or graph shards that own them: what
        each shard's aligner releases, by partition."""
        by_shard: dict[int, list[Released]] = {}
        for message in raw:
            shard = shard_of(message.partition)
            if shard is None:
                self._stray(message)
                continue
            released = shard.offer(message.offset, message.value or b"")
            if released is not None:
                by_shard.setdefault(message.partition, []).extend(released)
        self.counters.envelopes_received += len(raw)
        return by_shard

    async def handle_requests(self, raw: Sequence[RawEvent]) -> None:
        """Envelopes from user shards, for this worker's entity shards."""
        results: list[tuple[int, bytes]] = []
        for q, released in self._offer(raw, self.shards.entity).items():
            shard = self.shards.entities[q]
            depths = {}
            requests = shard.depth_requests(released)
            if requests:
                walk = partial(run_walks, requests, self.store.get_referrals)
                depths = await self.retry("walk the referral tree", walk)
            shard.apply(released, depths)
            self.payment_time.applied_at(q, released)
            results += shard.envelopes()
        await self._send(ENTITY_RESULTS, results)

    async def handle_graph(self, raw: Sequence[RawEvent]) -> None:
        """Envelopes from user shards for this worker's graph shard: the graph advances,
        and what it found is published (rings topic, ring scores in Redis)."""
        await self.graph.beat()
        for g, released in sorted(self._offer(raw, self.shards.graph).items()):
            shard = self.shards.graphs[g]
            shard.apply(released)
            events, scores = shard.take()
            if events or scores:
                await self.publisher.rings(events, scores)

    async def handle_solvency(self, raw: Sequence[RawEvent]) -> None:
        """Movements from user shards for this worker's solvency shard: the books advance,
        and the periods closed are published (solvency and alerts topics, Redis), with the
        running figures that changed (the platform's and the regions': a batch that moved
        nothing writes nothing)."""
        for b, released in sorted(self._offer(raw, self.shards.solvency).items()):
            shard = self.shards.solvencies[b]
            shard.apply(released)
            await self.publisher.solvency(shard.take(), shard.running())

    async def handle_results(self, raw: Sequence[RawEvent]) -> BatchOutcome:
        """Entity results coming back to this worker's user shards."""
        outcome = BatchOutcome()
        await self._after_users(self._take_results(raw), outcome)
        self.counters.decided += outcome.decided
        self.counters.redelivered += outcome.redelivered
        return outcome

    def _take_results(self, raw: Iterable[RawEvent]) -> set[int]:
        touched: set[int] = set()
        for message in raw:
            self.counters.envelopes_received += 1
            shard = self.shards.user(message.partition)
            if shard is None:
                self._stray(message)
            elif shard.results(message.offset, message.value or b""):
                touched.add(message.partition)
        return touched

    async def _after_users(self, partitions: Iterable[int], outcome: BatchOutcome) -> None:
        """What user shards produced: tree writes first, then envelopes, then decisions.
        The shards' reads, writes and produces go together, one of each per batch: a batch
        holds the lock through its round trips (benchmarks/README.md, session 9)."""
        touched = set(partitions)
        publish = self.publisher
        while touched:
            shards = [self.shards.users[p] for p in sorted(touched) if p in self.shards.users]
            writes = [w for shard in shards for w in shard.take_tree_writes()]
            if writes:
                write = partial(self.store.put_referrals, writes)
                await self.retry("write the referral tree", write)
            await asyncio.gather(
                self._send(ENTITY_REQUESTS, [e for shard in shards for e in shard.envelopes()]),
                self._send(GRAPH_EVENTS, [e for s in shards for e in s.graph_envelopes()]),
            )
            finished, indexed = await self._complete(shards)
            await self._send(
                SOLVENCY_MOVEMENTS, [e for s in shards for e in s.solvency_envelopes()]
            )
            await publish.decisions([done for _, done in finished], outcome, indexed)
            await publish.points([done for _, done in finished], outcome)
            await publish.adjustments([(s, a) for s, done in finished for a in done.adjustments])
            await publish.labels([label for _, done in finished for label in done.labels])
            for shard in shards:
                self.reports.log_drift(shard)
            # Labels and examples for the other user shards (models learn every label).
            await self._send(ENTITY_RESULTS, [e for s in shards for e in s.peer_envelopes()])
            # Without a broker the results are back already: take them in now.
            returned = self.sink.take_returned(self.settings.topic(ENTITY_RESULTS))
            touched = self._take_results(self.shards.at_next_offsets(ENTITY_RESULTS, returned))

    async def _complete(
        self, shards: list[UserShard]
    ) -> tuple[list[tuple[UserShard, Completed]], set[str]]:
        """Each shard decides what it has ready, following the decisions that stand: those
        in Redis (a shard that may be re-deciding, or any while decisions are made at
        payment time) and those made here at payment time; and which of these the
        console's views have already (`Publisher.decisions`)."""
        readies = [(shard, shard.ready()) for shard in shards]
        # The users of the points requests about to be decided: their rings weigh on them.
        requesters = {s.partition: s.requesters() if s.feeds_graph else [] for s in shards}
        # Decisions made at payment time stand too, and may precede the stream's (here, or
        # before a restart or a rebalance): then every batch asks Redis.
        asks = {s.partition for s in shards if s.redo or self.settings.score_at_payment}
        graphed = [tx for s, r in readies if s.feeds_graph for tx in r]
        # The reads from Redis go out together: one round trip's wait per batch, not three.
        stored, rings, graph_up = await asyncio.gather(
            self._standing([tx for s, r in readies if s.partition in asks for tx in r]),
            self.graph.ring_scores(graphed, [u for us in requesters.values() for u in us]),
            self.graph.running() if graphed else _true(),
        )
        paid = await self.payment_time.decided_among([tx for _, r in readies for tx in r])
        indexed = self.payment_time.indexed(paid)
        graph_down = rings is not None and not graph_up
        finished: list[tuple[UserShard, Completed]] = []
        for shard, ready in readies:
            standing = None
            if ready and shard.partition in asks:
                assert stored is not None
                standing = {tx.tx_id: stored[tx.tx_id] for tx in ready if tx.tx_id in stored}
            mine = {tx.tx_id: paid[tx.tx_id] for tx in ready if tx.tx_id in paid}
            if mine:
                standing = {**(standing or {}), **mine}
            asked = ready or requesters[shard.partition]
            shard_rings = rings if asked and shard.feeds_graph else None
            now_ms = int(self.clock() * 1000)
            done = shard.complete(
                now_ms, standing, shard_rings, shard_rings is not None and graph_down
            )
            self.payment_time.settle_all(done.order)  # all of the stream's state has them
            finished.append((shard, done))
        return finished, indexed

    async def _standing(self, ready: list[Transaction]) -> dict[str, Decision] | None:
        """For a shard that may be re-deciding: the decisions already in Redis (they stand)
        of the transactions it is about to decide."""
        if not ready:
            return None
        tx_ids = [tx.tx_id for tx in ready]
        stored = await self.retry("read decisions", lambda: self.store.get_many(tx_ids))
        return {t: Decision.loads(v) for t, v in stored.items()}

    async def _send(self, kind: str, envelopes: list[tuple[int, bytes]]) -> None:
        """Envelopes to the internal topic `kind`. Without a broker the sink returns them,
        and this process's shards take requests and graph events in at once (results: at
        the end of the user shards' round, `_after_users`)."""
        await self.publisher.send(kind, envelopes)
        if kind == ENTITY_RESULTS or not envelopes:
            return
        returned = self.sink.take_returned(self.settings.topic(kind))
        if not returned:
            return
        messages = self.shards.at_next_offsets(kind, returned)
        if kind == ENTITY_REQUESTS:
            await self.handle_requests(messages)
        elif kind == GRAPH_EVENTS:
            await self.handle_graph(messages)
        else:
            await self.handle_solvency(messages)
