"""The platform's books in the stream: user shards send their deciders' movements to one
solvency shard, whose readings and alerts must be replay's (`Scorer` with a
`SolvencyMonitor`) whatever the partitioning, the schedule, the duplicates and the crashes.

Drives the shard protocol through `tests.unit.test_shards.Cluster`; the worker's parts
(processor, publisher, store) are in `tests/unit/test_processor.py`."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import pytest

from rebate_guard.contract.order import Event, order_key
from rebate_guard.contract.records import (
    BINDING,
    BLOCK,
    MERCHANT_SETTLEMENT,
    POINTS_EXPIRE,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_TRANSFER,
    POINTS_WITHDRAW,
    POOL_TOPUP,
    RETENTION_COMMISSION,
    PlatformAlert,
    PlatformEvent,
    SolvencyReading,
    Transaction,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS
from rebate_guard.contract.validation import parse_platform_event, parse_signup, parse_transaction
from rebate_guard.core.decider import Scorer
from rebate_guard.core.solvency import Movement, SolvencyMonitor
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from streams.shards import SOLVENCY_PARTITION, MovementFeed, SolvencyShard
from streams.shards.solvency import Output
from tests import factories
from tests.factories import T0
from tests.unit.test_shards import _cluster

REGIONS = ("east", "west", "north")
#: Regions members deposit in: south has no merchant, its books are its deposits alone.
DEPOSIT_REGIONS = ("east", "south")


def platform_world(seed: int, *, users: list[str], days: int, start: int = T0) -> list[Event]:
    """Platform events for `users`: merchants paying in, points granted, asked for, moved
    and expired, commissions, top-ups (the platform's, and members' deposits naming their
    region), over `days`; in the second half the merchants' settlements all but stop after
    the first third (a growth stall), so the liability outgrows what is there."""
    rng = random.Random(seed)
    merchants = [f"m{i}" for i in range(6)]
    out: list[dict[str, Any]] = []

    def add(ts: int, kind: str, amount: int, **fields: Any) -> None:
        out.append(
            {"event_id": f"pe-{seed}-{len(out)}", "ts": ts, "kind": kind, "amount_cents": amount}
            | fields
        )

    for hour in range(days * 24):
        at = start + hour * HOUR_MS
        stalled = hour >= days * 8
        for merchant in rng.sample(merchants, 2):
            region = REGIONS[int(merchant[1:]) % len(REGIONS)]
            amount = rng.randint(50, 200) if stalled else rng.randint(500, 2_500)
            add(
                at + rng.randrange(HOUR_MS),
                MERCHANT_SETTLEMENT,
                amount,
                merchant_id=merchant,
                region=region,
            )
        for _ in range(rng.randint(3, 8)):
            user, merchant = rng.choice(users), rng.choice(merchants)
            ts = at + rng.randrange(HOUR_MS)
            kind = rng.choice(
                (POINTS_GRANT,) * 4
                + (POINTS_REDEEM, POINTS_REDEEM, POINTS_TRANSFER, POINTS_WITHDRAW, POINTS_EXPIRE)
                + (BINDING, RETENTION_COMMISSION)
            )
            fields: dict[str, Any] = {"user_id": user}
            if kind in (POINTS_REDEEM, BINDING, RETENTION_COMMISSION, POINTS_GRANT):
                fields |= {"merchant_id": merchant, "region": REGIONS[int(merchant[1:]) % 3]}
            if kind == POINTS_TRANSFER:
                fields["counterparty_id"] = rng.choice([u for u in users if u != user])
            if kind == RETENTION_COMMISSION:
                fields["tx_id"] = f"t-{len(out)}"
            amount = rng.randint(500, 5_000) if kind == POINTS_GRANT else rng.randint(100, 2_500)
            add(ts, kind, 0 if kind == BINDING else amount, **fields)
        if hour % 24 == 0:
            add(at + 1, POOL_TOPUP, rng.randint(1_000, 4_000))
        if hour % 6 == 3:  # a member's deposit: their region's books (no merchant's)
            region = DEPOSIT_REGIONS[hour // 6 % len(DEPOSIT_REGIONS)]
            user = users[hour // 6 % len(users)]
            add(at + 2, POOL_TOPUP, 300 + 7 * hour, user_id=user, region=region)
    events = [parse_platform_event(e) for e in out]
    return sorted(events, key=lambda e: order_key(e, 0))


def replayed(world: list[Event], *, until: int) -> tuple[list[Output], dict[str, Any]]:
    """Replay's readings and alerts: one `Scorer` with a monitor, over the world in order,
    then what event time reaching `until` does (as the stream's watermark did: holds past
    their timeout resolve, periods past it close); and its points decisions."""
    monitor = SolvencyMonitor()
    scorer = Scorer(solvency=monitor)
    points = {}
    for event in world:
        decision = scorer.apply(event, decided_at=0)
        if isinstance(event, PlatformEvent) and decision is not None:
            points[decision.tx_id] = decision
    scorer.decider.advance(until, decided_at=0)
    outputs = scorer.solvency_outputs
    for movement in scorer.decider.take_movements():
        outputs += monitor.apply(movement)
    return outputs + monitor.advance(until), points


def first_of_each(outputs: list[Output]) -> list[Output]:
    """The outputs as they stand: a period read again (after a crash of the solvency shard)
    must read the same, and counts once (first write wins, as in Redis)."""
    stood: dict[tuple[str, ...], Output] = {}
    for output in outputs:
        if isinstance(output, PlatformAlert):
            key: tuple[str, ...] = ("alert", output.alert_id)
        else:
            key = ("reading", output.scope, str(output.period_start))
        first = stood.setdefault(key, output)
        assert first == output, f"{key} read otherwise the second time"
    return list(stood.values())


@pytest.fixture(scope="module")
def points_world() -> list[Event]:
    return platform_world(3, users=[f"u{i}" for i in range(40)], days=4)


@pytest.mark.parametrize(
    ("n_user", "seed", "crash_rate"),
    [(1, 21, 0.0), (3, 22, 0.0), (4, 23, 0.01), (2, 24, 0.02)],
)
def test_the_books_read_the_same_on_any_number_of_partitions(
    points_world: list[Event], n_user: int, seed: int, crash_rate: float
) -> None:
    """Platform events alone (decided by the points policy, whatever the models learned):
    1 or N user partitions, duplicates and crashes of any shard give replay's readings,
    alerts and points decisions."""
    cluster = _cluster(points_world, n_user, 2, seed, with_books=True)
    cluster.run(crash_rate)
    want, points = replayed(points_world, until=cluster.books.aligner.watermark)
    got = first_of_each(cluster.books_outputs)
    assert [o.asdict() for o in got] == [o.asdict() for o in want]
    levels = {o.level for o in got if isinstance(o, PlatformAlert) and o.scope == "platform"}
    assert levels >= {"warning", "critical"}  # the stall crosses both lines
    assert sum(isinstance(o, SolvencyReading) and o.scope.startswith("merchant:") for o in got)
    # Deposits count in their region: south, where no merchant is, holds them alone.
    south = [o for o in got if isinstance(o, SolvencyReading) and o.scope == "region:south"]
    assert south and south[-1].new_money_cents == south[-1].distributable_cents > 0
    assert all(o.liability_cents == 0 for o in south)
    assert {t: d.asdict() for t, d in cluster.points.items()} == {
        t: d.asdict() for t, d in points.items()
    }
    withdrawals = [
        d for t, d in cluster.points.items() if "policy:points_not_withdrawable" in d.reasons
    ]
    assert withdrawals and all(d.action == BLOCK for d in withdrawals)
    assert cluster.books.late == 0
    if crash_rate:
        assert cluster.crashes >= 3


@pytest.fixture(scope="module")
def paying_world(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    """A simulated world's payments, labels (releases, clawbacks, hold timeouts) and the
    platform events of its users over the days of its payments (from the first: its signups
    go back a year, and a year of platform events alone, ~40 times as many, would only cost
    time: `test_the_books_read_the_same_on_any_number_of_partitions` has those)."""
    config = WorldConfig(seed=5, n_users=200, n_merchants=20, days=8, target_transactions=1_500)
    paths = write_world(simulate_world(config), tmp_path_factory.mktemp("paying_world"))
    events = list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))
    users = sorted({e.user_id for e in events if isinstance(e, Transaction)})
    start = min(e.ts for e in events if isinstance(e, Transaction))
    days = 1 + (max(e.ts for e in events) - start) // (24 * HOUR_MS)
    extra = platform_world(7, users=users, days=days, start=start)
    return sorted(events + extra, key=lambda e: order_key(e, 0))


@pytest.mark.parametrize(("seed", "crash_rate"), [(31, 0.0), (32, 0.01)])
def test_one_partition_reads_the_books_of_replay_with_payments_and_crashes(
    paying_world: list[Event], seed: int, crash_rate: float
) -> None:
    """With payments the grants, releases, clawbacks and hold timeouts move the books too:
    one user partition (its decisions are replay's; after a crash the standing ones count)
    gives replay's readings exactly."""
    cluster = _cluster(paying_world, 1, 2, seed, with_books=True)
    cluster.run(crash_rate)
    want, _ = replayed(paying_world, until=cluster.books.aligner.watermark)
    got = first_of_each(cluster.books_outputs)
    assert [o.asdict() for o in got] == [o.asdict() for o in want]
    released = [a for a in cluster.adjustments.values() if a.cause == "hold_timeout"]
    assert released  # timeouts resolved as event time passed them, in order
    assert cluster.books.late == 0


def test_a_hold_past_its_timeout_moves_the_books_when_event_time_passes_it() -> None:
    """A held rebate is released when its timeout passes, also when no later payment of its
    user comes to resolve it: the user shard resolves it before telling the solvency shard
    that event time has passed, so the release counts in its own period, not late."""
    payment = parse_transaction(factories.tx("p1", T0))
    later = parse_signup(factories.signup("u2", T0 + 4 * DAY_MS))
    cluster = _cluster([payment, later], 1, 1, seed=9, with_books=True)
    cluster.stood["p1"] = factories.decision("p1", "hold", requested=1_000, ts=T0)
    cluster.run(crash_rate=0.0)
    (release,) = cluster.adjustments.values()
    assert release.kind == "release" and release.ts == T0 + 3 * DAY_MS
    readings = [o for o in cluster.books_outputs if isinstance(o, SolvencyReading)]
    platform = [r for r in readings if r.scope == "platform"]
    assert [(r.period_start, r.liability_cents) for r in platform] == [(release.ts, 1_000)]
    assert cluster.books.late == 0


def _movement(movement_id: str, ts: int, liability: int = 100) -> Movement:
    return Movement(movement_id, ts, "m1", "east", liability_cents=liability)


def _sent(feed: MovementFeed, partition: int, *, idle: bool = False) -> list[bytes]:
    return [envelope for _, envelope in feed.envelopes(partition, idle=idle)]


def test_a_restored_solvency_shard_continues_exactly() -> None:
    """A solvency shard pickled mid-stream (its checkpoint) and fed the rest gives what the
    uninterrupted one gives, and a movement sent again by a restored user shard counts once."""
    feeds = {p: MovementFeed() for p in range(2)}
    envelopes: list[bytes] = []
    for step in range(40):
        p = step % 2
        ts = T0 + step * 20 * 60_000
        feeds[p].take([_movement(f"x{step}", ts, 100 + step)])
        feeds[p].mark = ts
        envelopes += _sent(feeds[p], p)
    envelopes.append(envelopes[7])  # a duplicate, as a restored user shard would send again
    for p in feeds:
        envelopes += _sent(feeds[p], p, idle=True)

    def run(shard: SolvencyShard, pieces: list[bytes], start: int) -> list[Output]:
        for offset, envelope in enumerate(pieces, start):
            released = shard.offer(offset, envelope)
            assert released is not None
            shard.apply(released)
        return shard.take()

    whole = run(SolvencyShard(SOLVENCY_PARTITION, 2, SolvencyMonitor(), 10**9), envelopes, 0)
    first = SolvencyShard(SOLVENCY_PARTITION, 2, SolvencyMonitor(), 10**9)
    before = run(first, envelopes[:19], 0)
    restored = pickle.loads(first.snapshot())
    after = run(restored, envelopes[19:], 19)
    assert before + after == whole
    assert restored.offer(3, envelopes[3]) is None  # already covered by offset
    assert restored.current()["platform"].liability_cents == sum(100 + s for s in range(40))
    assert len([o for o in whole if isinstance(o, SolvencyReading)]) >= 10


def test_a_user_shard_forgets_nothing_it_could_send_again() -> None:
    """The solvency shard forgets a movement id once the sender's durable mark has passed
    its ts; a late event's (flagged) it keeps for `late_memory_ms`."""
    feed = MovementFeed()
    feed.take([_movement("a", T0)])
    feed.mark = T0 + 10
    feed.take([_movement("late", T0 + 5)])  # older than the mark already set
    shard = SolvencyShard(SOLVENCY_PARTITION, 1, SolvencyMonitor(), late_memory_ms=1_000)
    shard.offer(0, _sent(feed, 0)[0])
    assert set(shard.movements[0]) == {"a", "late"}
    feed.durable = T0 + 10
    feed.mark = T0 + 20
    shard.offer(1, _sent(feed, 0)[0])
    assert set(shard.movements[0]) == {"late"}
    feed.durable = T0 + 2_000
    feed.mark = T0 + 2_000
    shard.offer(2, _sent(feed, 0)[0])
    assert shard.movements[0] == {}


def test_a_user_shard_checkpointed_before_platform_events_feeds_the_books() -> None:
    """A checkpoint from before issue #21 (the committed fixture): the shard's aligner gains
    the platform-events source (holding event time until it delivers or falls idle, as a
    new shard's do), its floor a fourth offset, and it starts feeding the books."""
    from streams.shards import TOPIC_CODES, load_checkpoint
    from tests.unit.test_checkpoint_moves import _shards_fixture

    blob = _shards_fixture()["checkpoints"]["user-0"]
    shard = load_checkpoint(blob)
    assert shard.aligner.sources == frozenset(TOPIC_CODES.values())
    assert len(shard.durable_floor) == len(shard.floor()) == len(TOPIC_CODES)
    assert shard.books.mark < T0 and not shard.seen_events
    grant = parse_platform_event(
        {
            "event_id": "g",
            "ts": T0 + 400 * DAY_MS,
            "kind": POINTS_GRANT,
            "amount_cents": 7,
            "user_id": "u-new",
        }
    )
    shard.offer(TOPIC_CODES["platform-events"], 0, grant)
    for code in TOPIC_CODES.values():
        shard.idle(code)
    # Released, in its turn behind what the checkpoint still had waiting for entity results.
    assert shard.queue[-1].event == grant and shard.queue[0].missing
    shard.complete(0)
    ((_, envelope),) = shard.solvency_envelopes()
    mark = json.loads(envelope)
    assert mark["wm"] == shard.queue[0].key[0] and not mark["idle"]  # held by the oldest


@pytest.mark.parametrize(("n_user", "seed", "crash_rate"), [(3, 33, 0.0), (4, 34, 0.01)])
def test_n_partitions_read_the_books_of_the_decisions_they_made(
    paying_world: list[Event], n_user: int, seed: int, crash_rate: float
) -> None:
    """With payments on N partitions each user shard's models learn their own traffic, so
    its decisions (and grants) may differ from one process's; the books are then exactly
    those of the movements the shards made: one monitor over them in (ts, movement_id)
    order, each once (a restored shard sends some again, the same)."""
    cluster = _cluster(paying_world, n_user, 2, seed, with_books=True)
    cluster.run(crash_rate)
    sent: dict[str, Movement] = {}
    for payload in cluster.movements:
        for _, _, row in json.loads(payload)["items"]:
            movement = Movement(*row)
            assert sent.setdefault(movement.movement_id, movement) == movement
    monitor = SolvencyMonitor()
    want: list[Output] = []
    for movement in sorted(sent.values(), key=lambda m: (m.ts, m.movement_id)):
        want += monitor.apply(movement)
    want += monitor.advance(cluster.books.aligner.watermark)
    got = first_of_each(cluster.books_outputs)
    assert [o.asdict() for o in got] == [o.asdict() for o in want]
    assert cluster.books.late == 0 and len(sent) > 1_000
    if crash_rate:
        assert cluster.crashes >= 3
