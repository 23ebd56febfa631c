"""Feeding a simulated world into the broker, as a platform would: at a steady rate
(`produce_events`), or as `rebate-guard up` does (`feed_live`): its history back-filled
fast, then live traffic on the wall clock whose payments ask `POST /score` at payment time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp

from rebate_guard.contract.records import TRANSACTIONS
from rebate_guard.settings import Settings
from streams.sink import KafkaSink, Record, key_partition

if TYPE_CHECKING:  # the simulator (numpy, polars) loads only when `feed_live` runs
    from rebate_guard.tools.simulator import World

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
            await _send_many(sink, settings, chunk)
            sent += len(chunk)
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await sink.stop()
    return sent


async def produce_world(settings: Settings, world: World, rate: float | None = None) -> int:
    from rebate_guard.tools.simulator import event_stream

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


def wall_ms() -> int:
    """The wall clock, in epoch milliseconds (what a payment service stamps)."""
    return int(time.time() * 1000)


class FeedClock:
    """When `feed_live` sends each event of a world, and the ts the event carries.

    Back-fill: while the feed is behind the wall clock (the next event's ts is not after
    now), events go out as fast as the back-fill rate allows, with their own ts: history,
    compressed. Live: from the first event whose ts is after now, the feed waits for each
    event's time and stamps it with the wall clock as it sends it (never below the stamp
    before), so live traffic is "now", in real time, at the world's own pace. Once live,
    always live: an event the feed reaches late (a burst) is stamped now, not in the past.
    """

    def __init__(self) -> None:
        self.live = False
        self.last_ms: int | None = None

    def wait_ms(self, ts: int, *, now_ms: int) -> int:
        """How long to wait, at `now_ms`, before sending the event scheduled at `ts`."""
        if ts > now_ms:
            self.live = True
            return ts - now_ms
        return 0

    def stamp(self, ts: int, *, now_ms: int) -> int:
        """The ts of the event scheduled at `ts` when it is sent at `now_ms`."""
        stamped = now_ms if self.live else ts
        if self.last_ms is not None:
            stamped = max(stamped, self.last_ms)
        self.last_ms = stamped
        return stamped


@dataclass
class ScoreTally:
    """What `POST /score` answered the live payments."""

    #: The pipeline's decision (made at payment time, or the stream's within the wait).
    decided: int = 0
    #: Fail-closed answers (nothing granted), by reason.
    provisional: Counter[str] = field(default_factory=Counter)
    #: No answer (the worker unreachable): the payment went to the topic instead.
    unanswered: int = 0
    #: Round trips of the decided answers since the last `summary`, milliseconds.
    latencies_ms: list[float] = field(default_factory=list)
    #: With several workers: payments asked of the worker owning their user's partition,
    #: and of the next worker in turn (the owner not known: before the first assignment).
    to_owner: int = 0
    in_turn: int = 0

    def summary(self) -> str:
        """The counts so far, and the latency since the last summary (then forgotten)."""
        ordered = sorted(self.latencies_ms)
        self.latencies_ms = []
        took = ""
        if ordered:
            p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
            took = f"; the last {len(ordered)} in p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        asked = self.decided + sum(self.provisional.values()) + self.unanswered
        routed = ""
        if self.to_owner or self.in_turn:
            routed = (  # counted as sent, the rest as answered
                f" (sent: {self.to_owner} to their partition's worker, {self.in_turn} in turn)"
            )
        return (
            f"{asked} live payments asked POST /score{routed}: {self.decided} decided, "
            f"{dict(self.provisional) or 0} provisional, {self.unanswered} unanswered{took}"
        )


class ScoreRoutes:
    """Which worker's `POST /score` a live payment asks: the one that owns its user's
    partition (the producer's partitioner, `key_partition`, on the user_id key), as each
    worker's `/api/stats` shows it (its user shards' `models`); a partition whose owner is
    not known (before the first assignment, or between a rebalance and `refresh`) goes to
    the next worker in turn. Only the owner can decide at payment time (it holds the user
    shard); any other produces the payment and waits for the stream's decision, polling
    Redis for it."""

    def __init__(self, workers: Sequence[Settings]) -> None:
        from rebate_guard.client import web_request

        self.n_partitions = workers[0].partitions
        self.urls = [web_request(w, "/score").full_url for w in workers]
        self.stats = [web_request(w, "/api/stats") for w in workers]
        self.owners: dict[int, int] = {}
        self.turn = itertools.cycle(range(len(workers)))

    def url_for(self, key: str, tally: ScoreTally) -> str:
        """Where the payment keyed `key` (its user_id) goes; counted in `tally`."""
        if len(self.urls) == 1:
            return self.urls[0]
        owner = self.owners.get(key_partition(key.encode(), self.n_partitions))
        if owner is None:
            tally.in_turn += 1
            return self.urls[next(self.turn)]
        tally.to_owner += 1
        return self.urls[owner]

    def update(self, worker: int, units: Iterable[str]) -> None:
        """`worker` owns the user shards among `units` (`user-3`: partition 3) and no
        others."""
        self.owners = {p: w for p, w in self.owners.items() if w != worker}
        for unit in units:
            kind, _, number = unit.partition("-")
            if kind == "user":
                self.owners[int(number)] = worker

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        """Each worker's user partitions, from its `/api/stats` (one that does not answer
        keeps what it had)."""
        if len(self.urls) == 1:
            return
        for worker, request in enumerate(self.stats):
            try:
                async with session.get(
                    request.full_url,
                    headers=dict(request.header_items()),
                    timeout=aiohttp.ClientTimeout(total=ROUTES_TIMEOUT_S),
                ) as response:
                    response.raise_for_status()
                    stats = await response.json()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("worker %d's /api/stats: %s; its partitions as they were", worker, exc)
                continue
            self.update(worker, stats.get("models", {}))


#: How long `ScoreRoutes.refresh` waits for a worker's `/api/stats`, seconds.
ROUTES_TIMEOUT_S = 2.0


class PaymentScorer:
    """Asks a worker's `POST /score` for each live payment, as a rebate engine does at
    payment time: the worker produces the payment to the transactions topic and answers
    with its decision. With several `workers`, the one owning the payment's user partition
    (`ScoreRoutes`). Up to `max_in_flight` requests at once; a payment the worker does not
    answer (unreachable, an error status) is produced to the topic by `fallback`, so the
    stream still has it."""

    def __init__(
        self,
        workers: Sequence[Settings],
        *,
        fallback: Callable[[str, bytes], Awaitable[None]],
        max_in_flight: int = 64,
    ) -> None:
        from rebate_guard.client import web_request

        self.routes = ScoreRoutes(workers)
        self.headers = dict(web_request(workers[0], "/score").header_items())
        self.fallback = fallback
        self.slots = asyncio.Semaphore(max_in_flight)
        self.tally = ScoreTally()
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PaymentScorer:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            await asyncio.gather(*self.tasks)
        for task in self.tasks:
            task.cancel()
        assert self.session is not None
        await self.session.close()

    async def refresh_routes(self) -> None:
        assert self.session is not None
        await self.routes.refresh(self.session)

    async def ask(self, key: str, payment: dict[str, object]) -> None:
        """Starts the request for `payment` (waits only for a free slot)."""
        await self.slots.acquire()
        url = self.routes.url_for(key, self.tally)
        task = asyncio.ensure_future(self._ask(url, key, _json(payment)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _ask(self, url: str, key: str, body: bytes) -> None:
        assert self.session is not None
        sent = time.perf_counter()
        try:
            async with self.session.post(url, data=body, headers=self.headers) as response:
                answer = await response.json() if response.status == 200 else None
            if answer is None:
                raise aiohttp.ClientError(f"POST /score answered {response.status}")
            if answer["provisional"]:
                self.tally.provisional[answer["decision"]["reasons"][0]] += 1
            else:
                self.tally.decided += 1
                self.tally.latencies_ms.append((time.perf_counter() - sent) * 1000)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Produced again if the worker did produce it: the stream dedupes by tx_id.
            self.tally.unanswered += 1
            log.warning("POST /score failed (%s): the payment goes to the topic", exc)
            await self.fallback(key, body)
        finally:
            self.slots.release()


#: How often `feed_live` logs what `POST /score` answered, seconds.
SCORE_LOG_EVERY_S = 30.0


@dataclass
class FeedReport:
    """What `feed_live` sent: events back-filled, events sent live (payments through
    `POST /score`), and what `POST /score` answered."""

    backfilled: int = 0
    live: int = 0
    scores: ScoreTally = field(default_factory=ScoreTally)


async def feed_live(
    settings: Settings,
    spans: Iterable[World],
    *,
    backfill_rate: float | None,
    score: bool = True,
    workers: Sequence[Settings] = (),
    now_ms: Callable[[], int] = wall_ms,
) -> FeedReport:
    """Feeds the worlds of `spans`, one after the other, on the wall clock (`FeedClock`):
    the events before now as back-fill, at most `backfill_rate` per second, then the rest
    live, each when its time comes, stamped with the clock; live payments ask `POST /score`
    first (`score`: of the worker among `workers`, default the one `settings` names, that
    owns the payment's user partition) and reach the topic through it."""
    from rebate_guard.tools.simulator import event_stream

    sink = KafkaSink(settings)
    await sink.start()
    clock = FeedClock()
    backfill: list[Event] = []
    started = time.perf_counter()

    async def to_topic(topic: str, key: str, value: bytes) -> None:
        await sink.send_one(settings.topic(topic), key.encode(), value)

    scorer = PaymentScorer(
        workers or [settings], fallback=lambda key, body: to_topic(TRANSACTIONS, key, body)
    )
    report = FeedReport(scores=scorer.tally)

    async def send_backfill() -> None:
        await _send_many(sink, settings, backfill)
        report.backfilled += len(backfill)
        backfill.clear()
        if backfill_rate:
            ahead = report.backfilled / backfill_rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    try:
        async with scorer:
            logged = time.monotonic()
            events = itertools.chain.from_iterable(event_stream(span) for span in spans)
            for topic, key, payload in events:
                ts = payload["ts"]
                assert isinstance(ts, int)
                wait = clock.wait_ms(ts, now_ms=now_ms())
                if not clock.live:
                    backfill.append((topic, key, payload))
                    if len(backfill) == CHUNK:
                        await send_backfill()
                    continue
                if not report.live:
                    await send_backfill()
                    log.info(
                        "the back-fill (%d events) has caught up with the clock: live "
                        "traffic from now on",
                        report.backfilled,
                    )
                    logged = time.monotonic()
                    if score:
                        await scorer.refresh_routes()
                if wait > 0:
                    await asyncio.sleep(wait / 1000)
                event = {**payload, "ts": clock.stamp(ts, now_ms=now_ms())}
                if score and topic == TRANSACTIONS and event["kind"] == "payment":
                    await scorer.ask(key, event)
                else:
                    await to_topic(topic, key, _json(event))
                report.live += 1
                if score and time.monotonic() - logged >= SCORE_LOG_EVERY_S:
                    logged = time.monotonic()
                    log.info("live: %s", scorer.tally.summary())
                    await scorer.refresh_routes()  # a worker may have come or gone
            if backfill:
                await send_backfill()
        if score:
            log.info("live: %s", scorer.tally.summary())
    finally:
        await sink.stop()
    return report


def _json(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


async def _send_many(sink: KafkaSink, settings: Settings, events: Iterable[Event]) -> None:
    """`events` in order, one produce request per topic."""
    by_topic: dict[str, list[Record]] = {}
    for topic, key, payload in events:
        by_topic.setdefault(settings.topic(topic), []).append((key.encode(), _json(payload)))
    for topic, records in by_topic.items():
        await sink.send_many(topic, records)
