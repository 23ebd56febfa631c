"""Every feature of the engine equals a brute-force recomputation from the whole history.

Two inputs: a small simulated world (realistic mixes), and generated event sequences crowded
onto window edges (t - width exactly, +-1 ms), equal timestamps and repeated ids.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.engine import FEATURE_NAMES, FeatureEngine
from rebate_guard.contract.order import Event, order_key
from rebate_guard.contract.records import Label, PlatformEvent, Signup, Transaction
from rebate_guard.contract.validation import (
    parse_label,
    parse_platform_event,
    parse_signup,
    parse_transaction,
)
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from tests.factories import T0
from tests.reference import DAY, HOUR, History


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _compare(events: list[Event | PlatformEvent]) -> int:
    engine, history = FeatureEngine(), History()
    checked = 0
    for event in events:
        expected = history.apply(event)
        if isinstance(event, Transaction):
            got = engine.transaction(event)
            assert expected is not None and set(expected) == set(FEATURE_NAMES)
            wrong = {
                n: (got[n], expected[n]) for n in FEATURE_NAMES if not _same(got[n], expected[n])
            }
            assert not wrong, f"{event.tx_id}: engine vs reference {wrong}"
            checked += 1
        elif isinstance(event, Signup):
            engine.signup(event)
        elif isinstance(event, PlatformEvent):
            engine.platform_event(event)
        else:
            engine.label(event)
    return checked


def test_every_feature_matches_the_reference_on_a_simulated_world(tmp_path: Path) -> None:
    world = simulate_world(
        WorldConfig(seed=9, n_users=250, n_merchants=25, days=10, target_transactions=2_500)
    )
    paths = write_world(world, tmp_path)
    files = EventFiles(paths["transactions"], paths["signups"], paths["labels"], progress=None)
    assert _compare(list(files)) == world.transactions.height


# Timestamps crowd onto the window edges: 1 h, 24 h, 7 d and 30 d apart, exactly and +-1 ms.
_EDGES = [0, 1, HOUR - 1, HOUR, HOUR + 1, DAY - 1, DAY, DAY + 1, 7 * DAY, 7 * DAY + 1]
_EDGES += [30 * DAY - 1, 30 * DAY, 30 * DAY + 1, 31 * DAY]
_ts = st.builds(lambda a, b: T0 + a + b, st.sampled_from(_EDGES), st.sampled_from(_EDGES))
_id = st.sampled_from
_txs = st.fixed_dictionaries(
    {
        "ts": _ts,
        "user_id": _id(["u1", "u2", "u3"]),
        "merchant_id": _id(["m1", "m2"]),
        "amount_cents": st.sampled_from([100, 250, 1_000, 1_234]),
        "rebate_rate": st.sampled_from([0.06, 0.1, 0.3]),
        "kind": st.sampled_from(["payment", "payment", "refund"]),
        "device_id": st.none() | _id(["d1", "d2"]),
        "ip": st.none() | _id(["ip1"]),
        "card_id": st.none() | _id(["c1", "c2"]),
        "merchant_category": st.none() | _id(["food", "beauty"]),
        "ref_tx_id": _id(["t0", "t1", "t2"]),
    }
)
_signups = st.fixed_dictionaries(
    {
        "ts": _ts,
        "user_id": _id(["u1", "u2", "u3", "u4"]),
        "referrer_id": st.none() | _id(["u1", "u2", "u4"]),
        "device_id": st.none() | _id(["d1", "d2"]),
        "ip": st.none() | _id(["ip1"]),
    }
)
_labels = st.fixed_dictionaries(
    {"ts": _ts, "tx_id": _id(["t0", "t1", "t2", "t3"]), "label": _id(["fraud", "legit"])}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_txs, min_size=1, max_size=25),
    st.lists(_signups, max_size=6),
    st.lists(_labels, max_size=6),
)
def test_window_edges_ties_and_repeats_match_the_reference(
    txs: list[dict[str, Any]], signups: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    events: list[Signup | Transaction | Label] = [
        parse_transaction({**t, "tx_id": f"t{i}"}) for i, t in enumerate(txs)
    ]
    events += [parse_signup(s) for s in signups]
    events += [parse_label(lb) for lb in labels]
    ordered = [e for _, e in sorted(((order_key(e, i), e) for i, e in enumerate(events)))]
    assert _compare(ordered) == len(txs)


# Platform events on the same crowded timestamps: every kind a feature reads, on the users,
# merchants, devices and IPs the transactions use, with coupons and transfers between them.
_platform = st.fixed_dictionaries(
    {
        "ts": _ts,
        "kind": _id(
            [
                "binding",
                "binding",
                "coupon_issue",
                "coupon_redeem",
                "points_grant",
                "points_redeem",
                "points_withdraw",
                "retention_commission",
                "pool_topup",
            ]
        ),
        "user_id": _id(["u1", "u2", "u3"]),
        "merchant_id": _id(["m1", "m2"]),
        "amount_cents": st.sampled_from([100, 700]),
        "tx_id": _id(["t0", "t1", "t2"]),
        "coupon_id": _id(["c1", "c2"]),
        "counterparty_id": st.none() | _id(["u1", "u2", "u4"]),
        "device_id": st.none() | _id(["d1", "d2"]),
        "ip": st.none() | _id(["ip1"]),
    }
)
#: At equal ts: signups, labels, platform events, then transactions (docs/events.md).
_RANK = {Signup: 0, Label: 1, PlatformEvent: 2, Transaction: 3}


def _in_event_order(events: list[Event | PlatformEvent]) -> list[Event | PlatformEvent]:
    def key(item: tuple[int, Event | PlatformEvent]) -> tuple[int, int, str, int]:
        seq, e = item
        ident = e.event_id if isinstance(e, PlatformEvent) else order_key(e, seq)[2]
        return (e.ts, _RANK[type(e)], ident, seq)

    return [e for _, e in sorted(enumerate(events), key=key)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_txs, min_size=1, max_size=20),
    st.lists(_signups, max_size=5),
    st.lists(_platform, max_size=25),
)
def test_platform_features_on_window_edges_and_ties_match_the_reference(
    txs: list[dict[str, Any]], signups: list[dict[str, Any]], platform: list[dict[str, Any]]
) -> None:
    events: list[Event | PlatformEvent] = [
        parse_transaction({**t, "tx_id": f"t{i}"}) for i, t in enumerate(txs)
    ]
    events += [parse_signup(s) for s in signups]
    events += [parse_platform_event({**e, "event_id": f"pe{i}"}) for i, e in enumerate(platform)]
    assert _compare(_in_event_order(events)) == len(txs)
