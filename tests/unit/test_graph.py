"""The graph layer: the windowed entity graph, candidate groups, and each ring detector on a
small hand-built ring and on the look-alike that must stay unflagged."""

from __future__ import annotations

import copy
import pickle
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import polars as pl
import pytest

from graph.candidates import Candidates
from graph.entity_graph import EntityGraph
from graph.layer import GraphConfig, GraphLayer, RingEvent
from graph.rings import NEW_ACCOUNT_MS, SIGNUP_BATCH, SIGNUP_BATCH_MAX, densest_block
from rebate_guard.contract.order import Event, order_key
from rebate_guard.contract.records import PlatformEvent, Signup, Transaction
from rebate_guard.contract.time import DAY_MS
from rebate_guard.contract.validation import parse_signup, parse_transaction
from rebate_guard.core.decider import Scorer
from rebate_guard.tools.replay import replay
from rebate_guard.tools.ring_quality import ring_quality
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from tests.factories import HOUR, MINUTE, T0, signup, tx

Stream = list[Event]


class World:
    """Builds an event stream; ids are unique per world."""

    def __init__(self) -> None:
        self.events: Stream = []
        self.n = 0

    def user(self, user_id: str, ts: int, **fields: Any) -> None:
        fields.setdefault("device_id", f"dev-{user_id}")
        fields.setdefault("phone_hash", f"ph-{user_id}")
        fields.setdefault("ip", f"ip-{user_id}")
        self.events.append(parse_signup(signup(user_id, ts, **fields)))

    def pay(self, user_id: str, merchant: str, ts: int, **fields: Any) -> str:
        self.n += 1
        tx_id = f"t{self.n}"
        fields.setdefault("device_id", f"dev-{user_id}")
        fields.setdefault("ip", f"ip-{user_id}")
        fields.setdefault("card_id", f"card-{user_id}")
        fields.setdefault("rebate_rate", 0.1)
        self.events.append(
            parse_transaction(tx(tx_id, ts, user_id=user_id, merchant_id=merchant, **fields))
        )
        return tx_id

    def busy_merchant(self, merchant: str, start: int, customers: int = 60, **fields: Any) -> None:
        """A merchant with many one-off customers (too busy to link anyone)."""
        fields.setdefault("amount_cents", 2_345)
        for i in range(customers):
            self.user(f"{merchant}-c{i}", start - 400 * DAY_MS)
            self.pay(f"{merchant}-c{i}", merchant, start + i * MINUTE, **fields)

    def run(self, layer: GraphLayer | None = None) -> tuple[GraphLayer, list[RingEvent]]:
        layer = layer or GraphLayer()
        events = sorted(self.events, key=lambda e: order_key(e, 0))
        out = feed(layer, events)
        out += layer.scan(events[-1].ts)
        return layer, out


def feed(layer: GraphLayer, events: Sequence[Event]) -> list[RingEvent]:
    """`events` (in order) into `layer`, as replay gives them; the ring events they cause."""
    out: list[RingEvent] = []
    for event in events:
        if isinstance(event, Transaction):
            out += layer.transaction(event)
        elif isinstance(event, Signup):
            out += layer.signup(event)
        elif isinstance(event, PlatformEvent):
            out += layer.platform_event(event)
    return out


def _rings(events: list[RingEvent]) -> dict[str, RingEvent]:
    """The final version of each ring."""
    return {e.ring_id: e for e in events}


def _flagged(events: list[RingEvent]) -> set[str]:
    return {u for e in events for u in e.users}


# --- scenarios ------------------------------------------------------------------------------
def referral_farm(w: World, start: int = T0) -> set[str]:
    members = {f"farm{i}" for i in range(8)}
    for i in range(8):
        ts = start + i * 10 * MINUTE
        referrer = f"farm{i - 1}" if i else None
        w.user(f"farm{i}", ts, referrer_id=referrer, device_id=f"farmdev{i % 2}", phone_hash="fp")
        w.pay(
            f"farm{i}", "grocer", ts + 20 * MINUTE, amount_cents=1_000, device_id=f"farmdev{i % 2}"
        )
    w.busy_merchant("grocer", start - DAY_MS)
    return members


def viral_referrer(w: World, start: int = T0) -> None:
    w.user("star", start - 300 * DAY_MS)
    for i in range(30):
        ts = start + i * 3 * HOUR
        w.user(f"fan{i}", ts, referrer_id="star")
        w.pay(f"fan{i}", f"shop{i % 3}", ts + 20 * MINUTE, amount_cents=1_000)
    for i in range(3):
        w.busy_merchant(f"shop{i}", start - DAY_MS)


def pyramid(w: World, start: int = T0) -> set[str]:
    members, tier = ["p0"], ["p0"]
    w.user("p0", start)
    for depth in range(1, 6):  # five tiers below the root, each recruiting two
        nxt = []
        for parent in tier[:3]:
            for k in range(2):
                child = f"{parent}.{k}"
                w.user(child, start + depth * 8 * HOUR + k * MINUTE, referrer_id=parent)
                w.pay(child, "scheme", start + depth * 8 * HOUR + HOUR, amount_cents=99_900)
                nxt.append(child)
        members += nxt
        tier = nxt
    w.busy_merchant("scheme", start - DAY_MS)
    return set(members)


def collusion(w: World, start: int = T0) -> set[str]:
    users = [f"col{i}" for i in range(4)]
    for u in users:
        w.user(u, start - 200 * DAY_MS)
    for day in range(8):
        for i, u in enumerate(users):
            for m in ("salonA", "salonB", "salonC"):
                ts = start + day * DAY_MS + i * HOUR + hash(m) % 30 * MINUTE
                w.pay(u, m, ts, amount_cents=66_600, rebate_rate=0.28)
    return set(users)


def loyal_daily(w: World, start: int = T0) -> None:
    w.user("loyal", start - 300 * DAY_MS)
    for day in range(20):
        w.pay("loyal", "cafe", start + day * DAY_MS + 8 * HOUR, amount_cents=1_800)
    w.busy_merchant("cafe", start - DAY_MS)


def brushing(w: World, start: int = T0) -> set[str]:
    accounts = [f"br{i}" for i in range(10)]
    for i, a in enumerate(accounts):
        w.user(a, start - 2 * DAY_MS + i * MINUTE, device_id=f"brdev{i % 2}")
    for burst in range(3):
        for k in range(60):
            a = accounts[k % 10]
            ts = start + burst * DAY_MS + k * MINUTE
            w.pay(a, "brushed", ts, amount_cents=5_000, rebate_rate=0.25, device_id=f"brdev{k % 2}")
    return set(accounts)


def family_device(w: World, start: int = T0) -> None:
    for i in range(4):
        w.user(f"fam{i}", start - (500 + 100 * i) * DAY_MS, device_id="famdev")
        for day in range(6):
            merchant = f"mall{(i + day) % 3}"
            w.pay(f"fam{i}", merchant, start + day * DAY_MS + i * HOUR, device_id="famdev")
    for i in range(3):
        w.busy_merchant(f"mall{i}", start - DAY_MS)


def cash_out(w: World, start: int = T0) -> set[str]:
    accounts = [f"co{i}" for i in range(3)]
    for a in accounts:
        w.user(a, start - 30 * DAY_MS)
    for round_ in range(4):
        for i, a in enumerate(accounts):
            ts = start + round_ * DAY_MS + i * HOUR
            paid = w.pay(a, "electronics", ts, amount_cents=60_000, card_id="shared-card")
            w.pay(
                a,
                "electronics",
                ts + 40 * MINUTE,
                amount_cents=60_000,
                kind="refund",
                ref_tx_id=paid,
                card_id="shared-card",
            )
    w.busy_merchant("electronics", start - DAY_MS)
    return set(accounts)


def ordinary_refund(w: World, start: int = T0) -> None:
    w.user("buyer", start - 300 * DAY_MS)
    paid = w.pay("buyer", "electronics2", start, amount_cents=60_000)
    w.pay("buyer", "electronics2", start + HOUR, amount_cents=60_000, kind="refund", ref_tx_id=paid)
    w.busy_merchant("electronics2", start - DAY_MS)


def signup_batch(w: World, start: int = T0) -> set[str]:
    """Six accounts registered within hours on two phones, one phone number: nothing
    bought yet."""
    accounts = {f"sb{i}" for i in range(6)}
    for i in range(6):
        w.user(f"sb{i}", start + i * 40 * MINUTE, device_id=f"sbdev{i % 2}", phone_hash="sbph")
    w.busy_merchant("corner", start)  # the clock moves on
    return accounts


def crew_on_one_line(w: World, start: int = T0) -> set[str]:
    """Seven accounts registered within a day from one home line, each on its own phone:
    nothing links them but the address, which nobody else uses."""
    accounts = {f"crew{i}" for i in range(7)}
    for i in range(7):
        w.user(f"crew{i}", start + i * 3 * HOUR, ip="crewline")
    w.busy_merchant("bakery", start)
    return accounts


def new_hires_on_the_office_ip(w: World, start: int = T0) -> None:
    """Six new accounts in a day from an office IP that 60 colleagues use: not a batch."""
    for i in range(60):
        w.user(f"colleague{i}", start - (100 + i) * DAY_MS, ip="office")
        w.pay(f"colleague{i}", f"canteen{i % 5}", start - DAY_MS + i * MINUTE, ip="office")
    for i in range(6):
        w.user(f"hire{i}", start + i * HOUR, ip="office")
    for i in range(5):
        w.busy_merchant(f"canteen{i}", start - 2 * DAY_MS)


def fans_of_a_star_in_a_day(w: World, start: int = T0) -> None:
    """A viral post: eight new accounts in a day, all referred by one old account, each on
    its own phone: referred, but not by each other."""
    w.user("star2", start - 300 * DAY_MS)
    for i in range(8):
        w.user(f"fan2_{i}", start + i * 2 * HOUR, referrer_id="star2")
    w.busy_merchant("cafe", start)


def family_joins_over_months(w: World, start: int = T0) -> None:
    """A family of five registering on one phone, months apart: not a batch."""
    for i in range(5):
        w.user(f"fj{i}", start - (200 - 30 * i) * DAY_MS, device_id="fjdev")
    w.busy_merchant("kiosk", start)


def fast_organic_chain(w: World, start: int = T0) -> None:
    """Friends referring friends as a platform's referrals bunch up: a tree five tiers deep
    grown within days, every member on their own phone shopping where they like: the shape
    of a pyramid without its scheme."""
    tier = ["oc0"]
    w.user("oc0", start)
    n = 0
    for depth in range(1, 6):
        nxt = []
        for parent in tier[:3]:
            for k in range(2):
                child = f"{parent}.{k}"
                ts = start + depth * 8 * HOUR + k * MINUTE
                w.user(child, ts, referrer_id=parent)
                n += 1
                w.pay(child, f"store{n % 12}", ts + HOUR, amount_cents=4_500)
                nxt.append(child)
        tier = nxt
    for i in range(12):
        w.busy_merchant(f"store{i}", start - DAY_MS)


RINGS = {
    "referral_farm": referral_farm,
    "pyramid": pyramid,
    "collusion": collusion,
    "brushing": brushing,
    "cash_out": cash_out,
    "signup_batch": signup_batch,
}
#: Other shapes a batch is found in (kind `signup_batch`): an address, a referral chain.
BATCHES = [crew_on_one_line]
LOOKALIKES = [
    viral_referrer,
    loyal_daily,
    family_device,
    ordinary_refund,
    family_joins_over_months,
    new_hires_on_the_office_ip,
    fans_of_a_star_in_a_day,
]


@pytest.mark.parametrize("kind", sorted(RINGS))
def test_each_detector_finds_its_ring_and_names_it(kind: str) -> None:
    world = World()
    members = RINGS[kind](world)
    _, events = world.run()
    rings = [r for r in _rings(events).values() if r.kind == kind]
    assert len(rings) == 1, [(e.kind, e.users) for e in events]
    ring = rings[0]
    assert set(ring.users) == members
    assert 0.5 <= ring.score <= 1.0
    assert ring.evidence["traits"]  # which traits, and how strongly
    if kind == SIGNUP_BATCH:  # nothing bought yet: a warning, never a block
        assert ring.score <= SIGNUP_BATCH_MAX and ring.rebate_at_risk_cents == 0
    else:
        assert ring.rebate_at_risk_cents > 0


@pytest.mark.parametrize("lookalike", LOOKALIKES, ids=lambda f: f.__name__)
def test_look_alikes_stay_unflagged(lookalike: Any) -> None:
    world = World()
    lookalike(world)
    _, events = world.run()
    assert events == []


def test_rings_are_found_among_look_alikes_without_flagging_them() -> None:
    world = World()
    members = set().union(*(make(world) for make in RINGS.values()))
    for lookalike in LOOKALIKES:
        lookalike(world)
    _, events = world.run()
    assert _flagged(events) == members
    assert {e.kind for e in events} == set(RINGS)


def test_money_rings_at_busy_merchants_are_found_by_their_regular_payers() -> None:
    """A ring's merchants also serve passers-by: 60 one-off customers at the brushed shop
    (its crew still brings three quarters of the payments) and 150 at each salon (the ring's
    payments are a fifth of theirs). Neither hides the ring: candidates and the collusion
    score read the merchants' regular payers, and one-off customers are none."""
    world = World()
    crew, ring = brushing(world), collusion(world)
    world.busy_merchant("brushed", T0 + HOUR, customers=60, rebate_rate=0.25)
    for salon in ("salonA", "salonB", "salonC"):
        world.busy_merchant(salon, T0 + 2 * HOUR, customers=150, rebate_rate=0.28)
    layer, events = world.run()
    assert layer.graph.degree("m:salonA") > 150 > layer.config.limits.merchant
    found = {r.kind: set(r.users) for r in _rings(events).values() if r.status == "active"}
    assert found == {"brushing": crew, "collusion": ring}
    assert (
        _rings(events)[next(e.ring_id for e in events if e.kind == "collusion")].evidence[
            "share_of_all_payments"
        ]
        < 0.25
    )


def test_regular_payers_follow_payments_and_the_window() -> None:
    graph = EntityGraph(window_ms=10 * DAY_MS)
    for i, (user, day) in enumerate([("a", 0), ("a", 1), ("b", 1), ("c", 8), ("c", 9)]):
        graph.transaction(parse_transaction(tx(f"t{i}", T0 + day * DAY_MS, user_id=user)))
    assert graph.regular_payers["m:m1"] == {"u:a", "u:c"}  # b paid once
    assert graph.merchant_payments["m:m1"] == 5
    graph.expire(T0 + 13 * DAY_MS)  # a's and b's payments left the window, c's did not
    assert graph.regular_payers["m:m1"] == {"u:c"}
    assert graph.merchant_payments["m:m1"] == 2
    graph.expire(T0 + 30 * DAY_MS)
    assert "m:m1" not in graph.regular_payers and "m:m1" not in graph.merchant_payments


def test_a_graph_checkpointed_before_the_regular_payer_index_restores_with_it() -> None:
    graph = EntityGraph()
    for i, user in enumerate(["a", "a", "a", "b"]):
        graph.transaction(parse_transaction(tx(f"t{i}", T0 + i, user_id=user)))
    state = dict(graph.__dict__)  # what a checkpoint of an older version held
    for name in ("regular_at", "regular_payers", "regular_merchants", "merchant_payments"):
        del state[name]
    restored = EntityGraph.__new__(EntityGraph)
    restored.__setstate__(state)
    assert restored.regular_payers == graph.regular_payers == {"m:m1": {"u:a"}}
    assert restored.regular_merchants == graph.regular_merchants == {"u:a": {"m:m1"}}
    assert restored.merchant_payments == graph.merchant_payments == {"m:m1": 4}
    assert pickle.loads(pickle.dumps(graph)).regular_payers == graph.regular_payers


def _regular_merchants_afresh(graph: EntityGraph) -> dict[str, set[str]]:
    """Each user's merchants with `regular_at` payments or more, read from every edge."""
    out: dict[str, set[str]] = {}
    for (user, other), edge in graph.edges.items():
        if other.startswith("m:") and edge.payments >= graph.regular_at:
            out.setdefault(user, set()).add(other)
    return out


def _merchants_grouped_afresh(graph: EntityGraph, merchant: str, limits: Any) -> set[str]:
    """The merchants of `merchant`'s group (`Candidates.merchant_group`) found as before
    `regular_merchants`: each regular payer's whole neighbourhood read, its edges' payments
    counted."""
    rate = limits.money_ring_rate
    if graph.rebate_rates.get(merchant[2:], 0.0) < rate:
        return {merchant}
    shared = Counter(
        other
        for payer in graph.regular_payers.get(merchant, ())
        for other in graph.adjacent[payer]
        if other.startswith("m:")
        and other != merchant
        and graph.edges[(payer, other)].payments >= graph.regular_at
        and graph.rebate_rates.get(other[2:], 0.0) >= rate
    )
    few = {m for m in shared if len(graph.regular_payers.get(m, ())) <= limits.merchant}
    return {merchant} | {m for m in few if shared[m] >= 2}


def test_regular_merchants_stay_the_regular_payers_inverted_as_payments_come_and_expire() -> None:
    """Over a random stream of payments, refunds and expiries, each user's regular merchants
    are what reading every edge gives, and merchant groups are what reading each payer's
    whole neighbourhood gave."""
    rng = random.Random(20)
    graph, candidates = EntityGraph(window_ms=5 * DAY_MS), Candidates()
    rates = {f"m{i}": rate for i, rate in enumerate([0.2, 0.15, 0.13, 0.05, 0.2, 0.02])}
    now, paid, joined = T0, [], 0
    for i in range(3_000):
        now += rng.randrange(2 * HOUR)
        user, merchant = f"u{rng.randrange(12)}", rng.choice(sorted(rates))
        event = tx(f"t{i}", now, user_id=user, merchant_id=merchant, rebate_rate=rates[merchant])
        if paid and rng.random() < 0.1:
            event.update(kind="refund", ref_tx_id=rng.choice(paid))
        else:
            paid.append(f"t{i}")
        graph.transaction(parse_transaction(event))
        if rng.random() < 0.02:
            graph.expire(now)
        assert graph.regular_merchants == _regular_merchants_afresh(graph)
        if i % 50 == 0:
            for m in sorted(graph.regular_payers):
                group = candidates.merchant_group(graph, m)
                want = _merchants_grouped_afresh(graph, m, candidates.limits)
                assert {node for node in group if node.startswith("m:")} == want
                joined += len(want) - 1
    assert joined > 10 and len(graph.regular_merchants) > 3


def test_an_identifier_shared_by_many_links_nobody_and_ips_never_link() -> None:
    graph, candidates = EntityGraph(), Candidates()
    for i in range(30):
        event = parse_transaction(
            tx(f"t{i}", T0 + i, user_id=f"u{i}", device_id="office-pc", ip="10.0.0.1")
        )
        candidates.observe(graph, graph.transaction(event))
    groups = {candidates.find(f"u:u{i}") for i in range(30)}
    # The first dozen shared the device before it became common; no IP linked anyone.
    assert candidates.user_count[candidates.find("u:u0")] == candidates.limits.device
    assert all(candidates.find(f"u:u{i}") == f"u:u{i}" for i in range(13, 30))
    assert len(groups) == 30 - candidates.limits.device + 1


def test_edges_expire_with_the_window_and_rebuilt_groups_forget_them() -> None:
    graph, candidates = EntityGraph(window_ms=10 * DAY_MS), Candidates()
    for i, ts in enumerate((T0, T0 + 9 * DAY_MS)):
        event = parse_transaction(tx(f"t{i}", ts, user_id=f"u{i}", device_id="d", card_id=None))
        candidates.observe(graph, graph.transaction(event))
    assert candidates.find("u:u0") == candidates.find("u:u1")
    gone = graph.expire(T0 + 12 * DAY_MS)
    assert ("u:u0", "d:d") in gone and ("u:u0", "m:m1") in gone
    assert "u:u0" not in graph.adjacent and ("u:u1", "d:d") in graph.edges
    candidates.rebuild(graph)
    assert candidates.find("u:u0") != candidates.find("u:u1")


def test_an_edge_touched_on_several_days_expires_once() -> None:
    """Found by `rebate-guard up`, whose episodes leave the window whole: an edge listed on
    each day it was touched, all of them past the window, is dropped once."""
    graph = EntityGraph(window_ms=10 * DAY_MS)
    for day in range(3):
        event = parse_transaction(tx(f"t{day}", T0 + day * DAY_MS, user_id="u0", device_id="d"))
        graph.transaction(event)
    gone = graph.expire(T0 + 30 * DAY_MS)
    assert sorted(gone) == [
        ("u:u0", "c:c1"),
        ("u:u0", "d:d"),
        ("u:u0", "ip:10.0.0.1"),
        ("u:u0", "m:m1"),
    ]
    assert not graph.edges and not graph.adjacent and graph.merchant_edges == 0
    assert "u0" not in graph.users  # nothing of the user is left: its record goes too


def test_an_edge_is_listed_once_however_often_it_is_touched() -> None:
    graph = EntityGraph(window_ms=10 * DAY_MS)
    for day in range(8):
        event = parse_transaction(tx(f"t{day}", T0 + day * DAY_MS, user_id="u0", device_id="d"))
        graph.transaction(event)
    listed = [key for keys in graph.touched_days.values() for key in keys]
    assert sorted(listed) == sorted(graph.edges)  # on the day they were created
    assert graph.expire(T0 + 15 * DAY_MS) == []  # touched on day 7: still in the window
    listed = [key for keys in graph.touched_days.values() for key in keys]
    assert sorted(listed) == sorted(graph.edges)
    assert set(graph.touched_days) == {(T0 + 7 * DAY_MS) // DAY_MS}  # moved on, once
    assert len(graph.expire(T0 + 18 * DAY_MS)) == 4


def _old_listing(graph: EntityGraph, touches: list[tuple[tuple[str, str], int]]) -> dict[str, Any]:
    """`graph`'s state as a checkpoint of the version that listed an edge again on every
    day it was touched held it."""
    state = copy.deepcopy(graph.__dict__)
    del state["touched_days_layout"]
    days: dict[int, list[tuple[str, str]]] = {}
    for key, ts in touches:
        if key not in days.get(ts // DAY_MS, []):
            days.setdefault(ts // DAY_MS, []).append(key)
    state["touched_days"] = days
    return state


def test_a_graph_checkpointed_with_edges_listed_every_day_expires_them_as_before() -> None:
    graph = EntityGraph(window_ms=10 * DAY_MS)
    touches = []
    for i, (user, day) in enumerate([("a", 0), ("a", 3), ("b", 1), ("a", 6), ("c", 2)]):
        ts = T0 + day * DAY_MS
        event = parse_transaction(tx(f"t{i}", ts, user_id=user, device_id=f"d{user}"))
        touches += [(key, ts) for key in graph.transaction(event)]
    restored = EntityGraph.__new__(EntityGraph)
    restored.__setstate__(_old_listing(graph, touches))
    listed = [key for keys in restored.touched_days.values() for key in keys]
    assert sorted(listed) == sorted(restored.edges)  # each edge once
    for day in (11, 12, 13, 14, 17):
        now = T0 + day * DAY_MS
        assert sorted(restored.expire(now)) == sorted(graph.expire(now))
        assert restored.edges.keys() == graph.edges.keys()
    assert not restored.edges and pickle.loads(pickle.dumps(restored)).touched_days == {}


def _random_links(rng: random.Random, day: int, users: list[str]) -> list[Transaction | Signup]:
    """A day of signups (some referred) and payments on mostly own devices, cards and
    phones, some of them shared in small groups and a few by many: groups that form and
    split, and identifiers that grow past their limits and shrink back as links expire."""

    def own(kind: str, user: str, pool: int) -> str:
        if rng.random() < 0.03:
            return f"{kind}-common{rng.randint(0, 1)}"
        return f"{kind}-{user}" if rng.random() < 0.9 else f"{kind}{rng.randint(0, pool)}"

    out: list[Transaction | Signup] = []
    for i in range(rng.randint(3, 8)):
        user = f"u{day}-{i}"
        referrer = rng.choice(users[-30:]) if users and rng.random() < 0.1 else None
        fields = {"device_id": own("d", user, 80), "phone_hash": own("p", user, 80)}
        ts = T0 + day * DAY_MS + i * HOUR
        out.append(parse_signup(signup(user, ts, referrer_id=referrer, **fields)))
        users.append(user)
    for i in range(rng.randint(10, 30)):
        ts = T0 + day * DAY_MS + i * MINUTE
        user = rng.choice(users[-60:])
        fields = {"device_id": own("d", user, 80), "card_id": own("c", user, 80)}
        event = tx(f"t{day}-{i}", ts, user_id=user, merchant_id=f"m{rng.randint(0, 5)}", **fields)
        out.append(parse_transaction(event))
    return sorted(out, key=lambda e: order_key(e, 0))


def test_a_rebuild_regroups_only_what_changed_and_gives_the_groups_of_grouping_afresh() -> None:
    """Rebuilt daily over 60 days of a 10-day window, the groups (roots, members in order,
    user counts) are those of grouping every live link afresh, though most days only some
    groups are taken apart."""
    rng = random.Random(7)
    graph, candidates = EntityGraph(window_ms=10 * DAY_MS), Candidates()
    users: list[str] = []
    partial = 0
    for day in range(60):
        for event in _random_links(rng, day, users):
            if isinstance(event, Signup):
                candidates.observe(graph, graph.signup(event))
            else:
                candidates.observe(graph, graph.transaction(event))
        candidates.links_expired(graph, graph.expire(T0 + (day + 1) * DAY_MS))
        afresh = copy.deepcopy(candidates)
        afresh.regroup_all = True
        afresh.rebuild(graph)
        partial += len(copy.deepcopy(candidates)._to_regroup(graph)) < len(candidates.parent) / 2
        candidates.rebuild(graph)
        assert candidates.members == afresh.members
        assert candidates.user_count == afresh.user_count
        assert {n: candidates.find(n) for n in candidates.parent} == {
            n: afresh.find(n) for n in afresh.parent
        }
        assert candidates.dirty == set(afresh.members)
    assert partial >= 35  # most days, less than half the nodes were regrouped
    assert max(len(m) for m in candidates.members.values()) >= 5


def test_groups_checkpointed_before_regrouping_was_tracked_are_all_regrouped() -> None:
    graph, candidates = EntityGraph(window_ms=10 * DAY_MS), Candidates()
    for i, ts in enumerate((T0, T0 + 9 * DAY_MS)):
        event = parse_transaction(tx(f"t{i}", ts, user_id=f"u{i}", device_id="d", card_id=None))
        candidates.observe(graph, graph.transaction(event))
    state = dict(candidates.__dict__)
    for name in ("joined", "regroup", "outgrown", "regroup_all"):
        del state[name]
    restored = Candidates.__new__(Candidates)
    restored.__setstate__(state)
    assert restored.regroup_all
    restored.links_expired(graph, graph.expire(T0 + 12 * DAY_MS))
    restored.rebuild(graph)
    assert restored.members == {"u:u1": ["u:u1", "d:d"]}  # u0's links left the window
    assert not restored.regroup_all


def test_a_ring_whose_accounts_all_left_the_window_is_retired() -> None:
    world = World()
    members = cash_out(world)
    world.busy_merchant("far-later", T0 + 45 * DAY_MS, customers=3)  # the clock moves on
    layer, events = world.run()
    final = _rings(events)
    (ring,) = [r for r in final.values() if r.kind == "cash_out"]
    assert set(ring.users) == members
    assert ring.status == "retired" and ring.evidence["expired"]
    assert not layer.book.rings and layer.ring_score("co0", "electronics") == (0.0, [])


def test_greedy_peeling_finds_the_planted_dense_block() -> None:
    block = nx.Graph()
    for u in ("a", "b", "c"):
        for m in ("x", "y", "z"):
            block.add_edge(u, m, weight=5)
    for i in range(20):  # a sparse fringe
        block.add_edge(f"f{i}", "x" if i % 2 else f"g{i}", weight=1)
    assert densest_block(block) == {"a", "b", "c", "x", "y", "z"}


def test_a_growing_ring_keeps_its_id_and_each_change_is_a_new_version() -> None:
    world = World()
    referral_farm(world)
    for i in range(8, 12):  # four more accounts join the same farm a day later
        ts = T0 + DAY_MS + i * 10 * MINUTE
        world.user(
            f"farm{i}", ts, referrer_id=f"farm{i - 1}", device_id="farmdev0", phone_hash="fp"
        )
        world.pay(f"farm{i}", "grocer", ts + 20 * MINUTE, amount_cents=1_000, device_id="farmdev0")
    layer, events = world.run()
    farm = [e for e in events if e.kind == "referral_farm"]
    assert len({e.ring_id for e in farm}) == 1
    assert [e.version for e in farm] == list(range(1, len(farm) + 1)) and len(farm) >= 2
    assert len(farm[-1].users) == 12 and farm[-1].detected_at == farm[0].ts
    assert layer.ring_score("farm11", "grocer") == (farm[-1].score, ["ring:referral_farm"])
    # A farm's merchant is where it shopped, not a member: its customers are not scored.
    assert layer.ring_score("grocer-c1", "grocer") == (0.0, [])


def test_a_brushed_merchant_scores_every_payment_to_it() -> None:
    world = World()
    brushing(world)
    layer, _ = world.run()
    score, reasons = layer.ring_score("a-new-account", "brushed")
    assert score >= 0.5 and reasons == ["ring:brushing"]


def test_the_layer_resumes_identically_from_a_pickle() -> None:
    world = World()
    for make in RINGS.values():
        make(world)
    events = sorted(world.events, key=lambda e: order_key(e, 0))
    cut = len(events) // 2

    straight = GraphLayer(GraphConfig())
    expected = feed(straight, events)
    resumed = GraphLayer(GraphConfig())
    got = feed(resumed, events[:cut])
    got += feed(pickle.loads(pickle.dumps(resumed)), events[cut:])
    assert got == expected and expected


def test_a_ring_members_next_payment_is_trusted_less_with_the_rings_reason() -> None:
    world = World()
    members = cash_out(world)
    after = max(e.ts for e in world.events) + DAY_MS
    member = sorted(members)[0]
    scorer = Scorer(graph=GraphLayer())
    events = sorted(world.events, key=lambda e: order_key(e, 0))
    for event in events:
        scorer.apply(event, decided_at=0)
    probe = parse_transaction(
        tx("probe", after, user_id=member, merchant_id="elsewhere", amount_cents=60_000)
    )
    clean = parse_transaction(
        tx("clean", after, user_id="stranger", merchant_id="elsewhere", amount_cents=60_000)
    )
    flagged = scorer.apply(probe, decided_at=0)
    unflagged = scorer.apply(clean, decided_at=0)
    assert flagged is not None and unflagged is not None
    assert "ring:cash_out" in flagged.reasons and "ring:cash_out" not in unflagged.reasons
    assert flagged.trust_weight < unflagged.trust_weight
    assert any(e.kind == "cash_out" for e in scorer.ring_events)


def test_replay_of_a_simulated_world_finds_every_ring_and_no_look_alike(tmp_path: Path) -> None:
    config = WorldConfig(
        seed=3, n_users=3_000, n_merchants=120, days=14, target_transactions=25_000
    )
    paths = write_world(simulate_world(config), tmp_path / "world")
    summary = replay(
        paths["transactions"], tmp_path / "out", paths["signups"], paths["labels"], progress=None
    )
    rings = pl.read_parquet(summary.outputs["rings"])
    quality = ring_quality(rings, tmp_path / "world")
    assert quality.true_rings == 5 and set(quality.per_kind) == {
        "brushing",
        "cash_out",
        "collusion_ring",
        "pyramid",
        "referral_farm",
    }
    assert quality.found == quality.true_rings
    assert quality.precise == quality.flagged
    assert quality.lookalike_share <= 0.01
    decisions = pl.read_parquet(summary.outputs["decisions"])
    ring_reasons = decisions.filter(
        pl.col("reasons").list.eval(pl.element().str.starts_with("ring:")).list.any()
    )
    assert ring_reasons.height > 0  # the rings reached the trust weights


def _quality_world(tmp_path: Path) -> Path:
    """A hand-made world: two true rings, one look-alike group, users joining at known ts."""
    world = tmp_path / "hand"
    (world / "truth").mkdir(parents=True)
    users = [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(4)]
    pl.DataFrame(
        {
            "ring_id": ["r1", "r2"],
            "kind": ["referral_farm", "cash_out"],
            "users": [users[:12], users[12:]],
            "fifth_member_joined_ts": [T0 + 4 * HOUR, None],
        }
    ).write_parquet(world / "truth" / "rings_truth.parquet")
    roles = {u: "referral_farm" for u in users[:12]} | {u: "cash_out" for u in users[12:]}
    roles |= {f"fam{i}": "family_device" for i in range(10)}
    pl.DataFrame({"user_id": list(roles), "role": list(roles.values())}).write_parquet(
        world / "truth" / "user_truth.parquet"
    )
    pl.DataFrame({"tx_id": ["t0"], "ts": [T0], "user_id": ["x"]}).write_parquet(
        world / "transactions.parquet"
    )
    pl.DataFrame({"tx_id": ["t0"], "is_fraud": [False]}).write_parquet(
        world / "truth" / "tx_truth.parquet"
    )
    pl.DataFrame(  # a{i} joins at T0 + i hours
        {"user_id": users[:12], "ts": [T0 + i * HOUR for i in range(12)]}
    ).write_parquet(world / "signups.parquet")
    return world


def _ring_versions(rows: list[tuple[str, int, list[str], int, str]]) -> pl.DataFrame:
    """`rings.parquet` rows from (ring_id, version, users, ts, status)."""
    return pl.DataFrame(
        [{"ring_id": r, "version": v, "users": u, "ts": ts, "status": s} for r, v, u, ts, s in rows]
    )


def test_ring_quality_by_hand(tmp_path: Path) -> None:
    world = _quality_world(tmp_path)
    farm_early = ["a0", "a1", "a2", "a3", "a4"]  # all five who had joined by T0 + 4.5 h
    rows = [  # ring_id, version, users, ts, status
        ("x1", 1, farm_early, T0 + 4 * HOUR + 30 * MINUTE, "active"),
        ("x1", 2, [f"a{i}" for i in range(12)], T0 + 13 * HOUR, "active"),
        ("x2", 1, ["fam0", "fam1"], T0, "active"),  # a false ring on look-alikes ...
        ("x2", 2, ["fam0", "fam1"], T0 + HOUR, "retired"),  # ... retired later
        ("x3", 1, ["b0", "zz1", "zz2", "zz3", "zz4"], T0, "active"),  # J = 1/8: not b's
    ]
    q = ring_quality(_ring_versions(rows), world)
    assert (q.true_rings, q.found) == (2, 1)  # r2 matched by nothing
    assert (q.flagged, q.precise) == (2, 1)  # x1 and x3 stand; x2 was retired
    assert q.lookalikes["family_device"] == (2, 10)  # flagged once counts
    # Matched the members joined by then 30 min after the fifth joined; the final
    # membership (twelve) only at T0 + 13 h, nine hours after the fifth joined.
    assert q.median_delay_min == 30.0
    assert q.median_delay_final_min == 9 * 60.0


def test_ring_quality_counts_a_ring_flagged_before_the_fifth_member_joined(
    tmp_path: Path,
) -> None:
    """A ring flagged with three members an hour before the fifth joins (and never
    re-announced) is detected as the fifth joins: 3 of 5 present, Jaccard 0.6. A flag
    retired before then does not count."""
    world = _quality_world(tmp_path)
    early = ["a0", "a1", "a2"]
    standing = [("x1", 1, early, T0 + 3 * HOUR, "active")]
    assert ring_quality(_ring_versions(standing), world).median_delay_min == 0.0
    # Retired at 3.5 h, then flagged again at 5 h: detected when it was flagged again,
    # with six members present (3/6 = 0.5).
    again = [
        ("x1", 2, early, T0 + 3 * HOUR + 30 * MINUTE, "retired"),
        ("x9", 1, early, T0 + 5 * HOUR, "active"),
    ]
    assert ring_quality(_ring_versions(standing + again), world).median_delay_min == 60.0
    # Never matching the members present: three of the eight present at 7 h is J < 0.5.
    late = [("x1", 1, early, T0 + 7 * HOUR, "active")]
    assert ring_quality(_ring_versions(late), world).median_delay_min is None


def test_a_farm_is_first_a_signup_batch_then_a_farm_that_retires_it() -> None:
    """The farm's accounts are flagged as a batch at signup, before any purchase; once
    the farm shows (its accounts buy the next day), the farm ring takes them over."""
    world = World()
    members = {f"farm{i}" for i in range(8)}
    for i in range(8):
        ts = T0 + i * 10 * MINUTE
        referrer = f"farm{i - 1}" if i else None
        device = f"farmdev{i % 2}"
        world.user(f"farm{i}", ts, referrer_id=referrer, device_id=device, phone_hash="fp")
        world.pay(f"farm{i}", "grocer", ts + 20 * HOUR, amount_cents=1_000, device_id=device)
    world.busy_merchant("grocer", T0 - DAY_MS)
    _, events = world.run()
    first = events[0]
    assert first.kind == SIGNUP_BATCH and set(first.users) <= members
    farm = next(e for e in events if e.kind == "referral_farm")
    assert first.ts < farm.ts
    final = _rings(events)
    assert final[first.ring_id].status == "retired"
    assert final[first.ring_id].evidence["superseded_by"] == farm.ring_id


def test_a_batch_that_never_abuses_is_retired_once_its_accounts_are_not_new() -> None:
    world = World()
    members = signup_batch(world)
    for day in range(1, 10):  # a quiet week and more: ordinary shopping elsewhere
        world.busy_merchant(f"shop{day}", T0 + day * DAY_MS, customers=3)
    layer, events = world.run()
    batch = [e for e in events if e.kind == SIGNUP_BATCH]
    assert batch[0].status == "active" and set(batch[0].users) <= members
    assert set(batch[-1].users) == members  # grown to the sixth account
    assert batch[-1].status == "retired" and batch[-1].evidence["expired"]
    assert batch[-1].ts - batch[0].detected_at > NEW_ACCOUNT_MS
    assert layer.ring_score("sb0", "any") == (0.0, [])


@pytest.mark.parametrize("batch", BATCHES, ids=lambda f: f.__name__)
def test_a_batch_is_found_by_what_links_it(batch: Any) -> None:
    world = World()
    members = batch(world)
    _, events = world.run()
    assert {e.kind for e in events} == {SIGNUP_BATCH}
    assert set(_rings(events)[events[0].ring_id].users) == members


def test_new_accounts_referring_each_other_are_a_batch_before_they_buy() -> None:
    """A pyramid being built: each new account refers the next, on its own phone."""
    world = World()
    for i in range(6):
        referrer = f"chain{i - 1}" if i else None
        world.user(f"chain{i}", T0 + i * 2 * HOUR, referrer_id=referrer)
    world.busy_merchant("deli", T0)
    _, events = world.run()
    assert [e.kind for e in events][:1] == [SIGNUP_BATCH]
    assert events[0].evidence["traits"]["linked"] == 1.0
    assert set(events[-1].users) == {f"chain{i}" for i in range(6)}


def test_a_ring_that_left_the_window_keeps_its_verdict_in_ring_quality(tmp_path: Path) -> None:
    """Retired because its accounts left the window, a ring still counts (found, precise) as
    last announced; retired as withdrawn, it does not."""
    world = _quality_world(tmp_path)
    farm = [f"a{i}" for i in range(12)]
    rows = [("x1", 1, farm, T0 + 13 * HOUR, "active"), ("x1", 2, farm, T0 + 40 * DAY_MS, "retired")]
    frame = _ring_versions(rows).with_columns(
        pl.Series("evidence", ["{}", '{"expired": true, "left_window": true}'])
    )
    q = ring_quality(frame, world)
    assert (q.found, q.flagged, q.precise) == (1, 1, 1)
    withdrawn = frame.with_columns(pl.Series("evidence", ["{}", '{"expired": true}']))
    q = ring_quality(withdrawn, world)
    assert (q.found, q.flagged) == (0, 0)


def test_a_ring_whose_accounts_left_the_window_is_retired_as_such() -> None:
    w = World()
    members = collusion(w)
    layer, events = w.run()
    later = T0 + 45 * DAY_MS
    w2 = World()
    w2.busy_merchant("elsewhere", later)
    for event in sorted(w2.events, key=lambda e: order_key(e, 0)):
        if isinstance(event, Transaction):
            events += layer.transaction(event)
        elif isinstance(event, Signup):
            events += layer.signup(event)
    retired = [e for e in events if e.status == "retired" and set(e.users) & members]
    assert retired and retired[-1].evidence["left_window"] and retired[-1].evidence["expired"]


def test_members_that_left_the_window_stay_in_their_ring() -> None:
    """Ten brushing accounts; five stop after the first days and leave the 30-day window
    while the other five go on: the ring's later versions still hold all ten."""
    w = World()
    accounts = [f"br{i}" for i in range(10)]
    for i, a in enumerate(accounts):
        w.user(a, T0 - 2 * DAY_MS + i * MINUTE, device_id=f"brdev{i % 2}")
    for day in range(0, 45, 3):
        active = accounts if day < 3 else accounts[5:]
        for k in range(40):
            a = active[k % len(active)]
            ts = T0 + day * DAY_MS + k * MINUTE
            w.pay(a, "brushed", ts, amount_cents=5_000, rebate_rate=0.25, device_id=f"brdev{k % 2}")
    layer, events = w.run()
    versions = [e for e in events if e.kind == "brushing" and e.status == "active"]
    assert versions and set(versions[0].users) == set(accounts)
    assert set(versions[-1].users) == set(accounts)
    assert versions[-1].ts > T0 + 31 * DAY_MS  # after the five left the window
    assert not any(a in layer.graph.users for a in accounts[:5])


def test_a_deep_fast_chain_whose_members_shop_apart_is_no_pyramid() -> None:
    w = World()
    fast_organic_chain(w)
    _, events = w.run()
    assert not [e for e in events if e.kind == "pyramid"]
    w = World()
    members = pyramid(w)  # the same shape, buying its packages at one scheme
    _, events = w.run()
    pyramids = [e for e in events if e.kind == "pyramid" and e.status == "active"]
    assert pyramids and set(pyramids[-1].users) == members
    assert pyramids[-1].evidence["traits"]["pay_at_one_merchant"] == 1.0


def test_a_finding_inside_a_larger_ring_of_another_kind_is_that_ring_not_a_new_one() -> None:
    from graph.layer import RingBook
    from graph.rings import Finding

    book = RingBook()
    tree = frozenset(f"p{i}" for i in range(40))
    book.record(Finding("pyramid", tree, frozenset({"scheme"}), 0.6), T0)
    branch = frozenset(f"p{i}" for i in range(10))  # a branch on one phone: farm-shaped
    assert book.record(Finding("referral_farm", branch, frozenset({"scheme"}), 1.0), T0) == []
    assert [r.kind for r in book.rings.values()] == ["pyramid"]
    # The other way round, the larger finding is the ring and retires the smaller one.
    farm = frozenset(f"p{i}" for i in range(60))
    events = book.record(Finding("referral_farm", farm, frozenset({"grocer"}), 1.0), T0)
    assert [(e.kind, e.status) for e in events] == [
        ("referral_farm", "active"),
        ("pyramid", "retired"),
    ]
