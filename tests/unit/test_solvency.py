"""The solvency monitor (rebate_guard/core/solvency.py) against docs/economics.md: every
expected figure is worked out here from the movements and the definitions."""

from __future__ import annotations

import pickle
from dataclasses import replace
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from rebate_guard.contract.records import (
    POINTS_TRANSFER,
    POOL_TOPUP,
    PlatformAlert,
    PlatformEvent,
    SolvencyReading,
)
from rebate_guard.core.policy import PolicyError, SolvencyTerms
from rebate_guard.core.solvency import (
    Movement,
    Output,
    SolvencyMonitor,
    level_of,
    platform_movement,
)
from tests.factories import HOUR, MINUTE, T0

TERMS = SolvencyTerms()  # one hour, warning 3:1, critical 5:1


def run(movements: list[Movement], terms: SolvencyTerms = TERMS) -> list[Output]:
    monitor = SolvencyMonitor(terms)
    out: list[Output] = []
    for m in movements:
        out += monitor.apply(m)
    return out + monitor.advance(2**62)


def readings(out: list[Output]) -> dict[tuple[str, int], SolvencyReading]:
    return {(r.scope, r.period_start): r for r in out if isinstance(r, SolvencyReading)}


def alerts(out: list[Output]) -> list[PlatformAlert]:
    return [a for a in out if isinstance(a, PlatformAlert)]


def test_the_books_of_one_period_by_scope() -> None:
    grant, settled, topup, redeemed, commission = 40_000, 10_000, 2_000, 1_000, 500
    movements = [
        # m1's first movement names no region: its books start in region:unknown...
        Movement("d-1", T0 + 1 * MINUTE, "m1", None, liability_cents=grant),
        # ...and move to east with it when a settlement names east.
        Movement("s-1", T0 + 2 * MINUTE, "m1", "east", merchant_funding_cents=settled),
        Movement("p-1", T0 + 3 * MINUTE, None, None, new_money_cents=topup),
        Movement(
            "r-1",
            T0 + 4 * MINUTE,
            "m2",
            "west",
            liability_cents=-redeemed,
            payouts_cents=redeemed,
        ),
        Movement("c-1", T0 + 5 * MINUTE, "m1", None, payouts_cents=commission),
    ]
    out = run(movements)
    got = readings(out)
    assert set(got) == {
        ("platform", T0),
        ("region:east", T0),
        ("region:west", T0),
        ("merchant:m1", T0),
        ("merchant:m2", T0),
    }

    platform = got["platform", T0]
    liability = grant - redeemed
    distributable = settled + topup - (redeemed + commission)
    assert (platform.period_start, platform.period_end) == (T0, T0 + HOUR)
    assert platform.liability_cents == liability
    assert platform.merchant_funding_cents == settled
    assert platform.new_money_cents == topup
    assert platform.payouts_cents == redeemed + commission
    assert platform.distributable_cents == distributable
    assert platform.ratio == round(liability / distributable, 6)
    assert 3 * distributable <= liability < 5 * distributable and platform.level == "warning"
    # The period's payouts were all covered by the merchant funding that came in.
    assert platform.new_money_share == 0.0
    # (liability / 3 - distributable) / money in
    need = (Fraction(liability, 3) - distributable) / (settled + topup)
    assert platform.growth_needed == round(float(need), 6)

    east = got["region:east", T0]
    # East holds m1 alone: the same books.
    assert {**east.asdict(), "scope": ""} == {**got["merchant:m1", T0].asdict(), "scope": ""}
    assert east.liability_cents == grant
    assert east.distributable_cents == settled - commission
    assert east.level == "warning"  # 40,000 vs 3 x 9,500 and 5 x 9,500

    west = got["region:west", T0]
    assert west.liability_cents == -redeemed and west.distributable_cents == -redeemed
    assert west.ratio is None and west.level == "ok"  # nothing distributable, nothing owed
    assert west.new_money_share == 1.0  # no merchant funding covered the redemption
    assert west.growth_needed == 0.0  # nothing came in, and nothing is needed

    # region:unknown held m1 only until the settlement named east: no merchant is left in
    # it, so it is not read (in any order of the period's movements).
    assert ("region:unknown", T0) not in got


def test_merchant_scopes_are_read_only_in_periods_with_a_movement() -> None:
    out = run(
        [
            Movement("a", T0, "m1", "east", merchant_funding_cents=100),
            Movement("b", T0 + HOUR, "m2", "east", merchant_funding_cents=100),
        ]
    )
    scopes = {key for key in readings(out)}
    assert ("merchant:m1", T0) in scopes and ("merchant:m1", T0 + HOUR) not in scopes
    assert ("merchant:m2", T0 + HOUR) in scopes and ("merchant:m2", T0) not in scopes
    # The platform and regions are read in every period.
    assert {("platform", T0), ("platform", T0 + HOUR)} <= scopes
    assert {("region:east", T0), ("region:east", T0 + HOUR)} <= scopes
    assert readings(out)["region:east", T0 + HOUR].merchant_funding_cents == 200


def test_an_alert_once_per_level_change() -> None:
    funding = 1_000
    movements = [Movement("f", T0, None, None, merchant_funding_cents=funding)]
    # Period 1: 3x -> warning; period 2: still 3x (no alert); period 3: 5x -> critical;
    # period 4: money in brings it under 3x -> ok again.
    movements.append(Movement("g1", T0 + 1, None, None, liability_cents=3 * funding))
    movements.append(Movement("g2", T0 + HOUR, None, None, liability_cents=0, payouts_cents=0))
    movements.append(Movement("g3", T0 + 2 * HOUR, None, None, liability_cents=2 * funding))
    movements.append(Movement("p", T0 + 3 * HOUR, None, None, new_money_cents=2 * funding))
    # g2 moves nothing: the monitor still reads its period.
    out = run(movements)
    got = alerts(out)
    assert [(a.alert_id, a.previous_level) for a in got] == [
        (f"platform:warning:{T0}", "ok"),
        (f"platform:critical:{T0 + 2 * HOUR}", "warning"),
        (f"platform:ok:{T0 + 3 * HOUR}", "critical"),
    ]
    assert [a.ts for a in got] == [T0 + HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR]
    assert [a.line for a in got] == [3.0, 5.0, 3.0]
    assert got[1].ratio == 5.0 and got[1].liability_cents == 5 * funding
    assert "past the critical line 5:1" in got[1].message
    assert "back under the warning line 3:1" in got[2].message


def test_levels_at_the_lines_exactly() -> None:
    assert level_of(3 * 700, 700, terms=TERMS) == "warning"
    assert level_of(3 * 700 - 1, 700, terms=TERMS) == "ok"
    assert level_of(5 * 700, 700, terms=TERMS) == "critical"
    assert level_of(5 * 700 - 1, 700, terms=TERMS) == "warning"
    # Exact decimals: 3.5:1 is 7/2, compared in integers (0.1 has no exact float).
    terms = SolvencyTerms(warning_ratio=3.5, critical_ratio=5.1)
    assert level_of(7 * 10, 2 * 10, terms=terms) == "warning"
    assert level_of(7 * 10 - 1, 2 * 10, terms=terms) == "ok"
    assert (
        level_of(51, 10, terms=terms) == "critical" and level_of(50, 10, terms=terms) == "warning"
    )


def test_nothing_distributable() -> None:
    owed = run([Movement("g", T0, None, None, liability_cents=1)])
    reading = readings(owed)["platform", T0]
    assert reading.ratio is None and reading.level == "critical"
    # Nothing came in and the line is crossed: no growth of nothing brings it back.
    assert reading.growth_needed is None
    overpaid = run([Movement("c", T0, None, None, payouts_cents=10)])
    reading = readings(overpaid)["platform", T0]
    assert (reading.distributable_cents, reading.ratio, reading.level) == (-10, None, "ok")


def test_the_policy_section_checks_its_lines() -> None:
    for bad in (
        SolvencyTerms(warning_ratio=5, critical_ratio=5),
        SolvencyTerms(warning_ratio=0, critical_ratio=5),
        SolvencyTerms(period_minutes=0),
    ):
        try:
            bad.check()
        except PolicyError:
            continue
        raise AssertionError(f"{bad} passed the check")


def _world() -> list[Movement]:
    """A few periods of every kind of movement, two merchants changing region."""
    out = []
    for i in range(40):
        ts = T0 + i * 7 * MINUTE
        merchant = f"m{i % 3}"
        region = ("east", "west", None)[i % 4 % 3]
        out.append(
            Movement(
                f"x{i:02d}",
                ts,
                merchant if i % 5 else None,
                region,
                liability_cents=(i * 37) % 900 - 100,
                merchant_funding_cents=(i * 53) % 400,
                new_money_cents=(i * 11) % 50,
                payouts_cents=(i * 29) % 300,
            )
        )
    return out


def test_a_pickle_round_trip_in_between_changes_nothing() -> None:
    movements = _world()
    whole = run(movements)
    for cut in (1, 13, 29):
        monitor = SolvencyMonitor(TERMS)
        out: list[Output] = []
        for m in movements[:cut]:
            out += monitor.apply(m)
        monitor = pickle.loads(pickle.dumps(monitor))
        for m in movements[cut:]:
            out += monitor.apply(m)
        assert out + monitor.advance(2**62) == whole


movement = st.builds(
    Movement,
    st.text("abcd", min_size=1, max_size=4),
    st.integers(T0, T0 + 3 * HOUR),
    st.sampled_from([None, "m1", "m2", "m3"]),
    st.sampled_from([None, "east", "west"]),
    liability_cents=st.integers(-500, 2_000),
    merchant_funding_cents=st.integers(0, 800),
    new_money_cents=st.integers(0, 300),
    payouts_cents=st.integers(0, 500),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(movement, max_size=30, unique_by=lambda m: m.movement_id),
    st.randoms(use_true_random=False),
)
def test_any_order_that_respects_ts_reads_the_same(movements: list[Movement], rng: object) -> None:
    # The contract order breaks ties at equal ts by id: here movement_id (then the rest).
    canonical = sorted(movements, key=lambda m: (m.ts, m.movement_id, m))
    shuffled = list(movements)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    respecting_ts = sorted(shuffled, key=lambda m: m.ts)  # stable: ties in any order
    assert run(respecting_ts) == run(canonical)


def test_current_reads_the_open_period_without_closing_it() -> None:
    monitor = SolvencyMonitor(TERMS)
    assert monitor.current() == {}
    monitor.apply(Movement("a", T0, "m1", "east", liability_cents=900, new_money_cents=100))
    now = monitor.current()
    assert now["platform"].ratio == 9.0 and now["region:east"].level == "critical"
    assert monitor.current() == now  # changes nothing: no alert was recorded
    out = monitor.advance(T0 + HOUR)
    # Merchants' scopes are read, and alert only when the policy asks (`alert_merchants`).
    assert [a.scope for a in alerts(out)] == ["platform", "region:east"]
    assert "merchant:m1" in {scope for scope, _ in readings(out)}
    assert monitor.current() == {r.scope: r for r in readings(out).values()}
    asked = SolvencyMonitor(replace(TERMS, alert_merchants=True))
    asked.apply(Movement("a", T0, "m1", "east", liability_cents=900, new_money_cents=100))
    scopes = [a.scope for a in alerts(asked.advance(T0 + HOUR))]
    assert scopes == ["platform", "region:east", "merchant:m1"]


def test_a_region_holds_money_of_its_own_that_its_merchants_do_not_take_along() -> None:
    deposit, owed, settled = 6_000, 9_000, 1_000
    out = run(
        [
            # A depositor's top-up names east and no merchant: east's books alone.
            Movement("dep", T0, None, "east", new_money_cents=deposit),
            Movement("g", T0 + MINUTE, "m1", "east", liability_cents=owed),
            Movement("s", T0 + 2 * MINUTE, "m1", None, merchant_funding_cents=settled),
            # Capital naming no region: the platform's alone.
            Movement("cap", T0 + 3 * MINUTE, None, None, new_money_cents=50_000),
            # Next period m1 moves to west, taking its books, not the deposit.
            Movement("b", T0 + HOUR, "m1", "west"),
            # A deposit naming a region no merchant is in: that region is read from then on.
            Movement("dep2", T0 + HOUR + 1, None, "south", new_money_cents=700),
        ]
    )
    got = readings(out)
    east = got["region:east", T0]
    assert (east.liability_cents, east.new_money_cents) == (owed, deposit)
    assert east.distributable_cents == deposit + settled
    assert east.ratio == round(owed / (deposit + settled), 6) and east.level == "ok"
    assert got["platform", T0].new_money_cents == deposit + 50_000
    assert ("merchant:m1", T0) in got and got["merchant:m1", T0].new_money_cents == 0

    # m1 left east: east keeps its deposit, owes nothing, and is still read.
    east = got["region:east", T0 + HOUR]
    assert (east.liability_cents, east.distributable_cents) == (0, deposit)
    west = got["region:west", T0 + HOUR]
    assert (west.liability_cents, west.distributable_cents) == (owed, settled)
    assert west.level == "critical"
    south = got["region:south", T0 + HOUR]
    assert (south.new_money_cents, south.liability_cents, south.level) == (700, 0, "ok")
    assert ("region:south", T0) not in got
    # East was never past a line; west's first reading is critical.
    assert [a.scope for a in alerts(out)] == ["region:west"]


def test_a_transfer_counts_in_the_platform_alone_whatever_it_names() -> None:
    transfer = PlatformEvent(
        "t", T0, POINTS_TRANSFER, 300, user_id="u1", merchant_id="m1", region="east"
    )
    moved = platform_movement(transfer, points_moved=-300)
    assert moved is not None
    assert (moved.merchant_id, moved.region, moved.liability_cents) == (None, None, -300)
    scopes = {scope for scope, _ in readings(run([moved]))}
    assert scopes == {"platform"}
    # A top-up naming a region and no merchant counts in that region.
    topup = PlatformEvent("p", T0, POOL_TOPUP, 500, user_id="u1", region="east")
    moved = platform_movement(topup, points_moved=0)
    assert moved is not None and (moved.merchant_id, moved.region) == (None, "east")
    assert readings(run([moved]))["region:east", T0].new_money_cents == 500


def test_a_monitor_checkpointed_before_regions_held_money_restores_with_none() -> None:
    monitor = SolvencyMonitor(TERMS)
    monitor.apply(Movement("a", T0, "m1", "east", liability_cents=900))
    del monitor.__dict__["funded_regions"]  # as pickled before the field existed
    restored = pickle.loads(pickle.dumps(monitor))
    assert restored.funded_regions == set()
    restored.apply(Movement("dep", T0 + 1, None, "west", new_money_cents=100))
    assert set(restored.current()) == {"platform", "region:east", "region:west", "merchant:m1"}


@settings(max_examples=150, deadline=None)
@given(st.lists(movement, max_size=30, unique_by=lambda m: m.movement_id))
def test_every_movement_naming_a_merchant_or_region_counts_in_one_read_region(
    movements: list[Movement],
) -> None:
    """The regions read at the end add up to the platform, less the movements that name
    neither a merchant nor a region (the platform's alone): none is lost or counted twice
    as merchants move between regions."""
    out = run(sorted(movements, key=lambda m: (m.ts, m.movement_id)))
    got = readings(out)
    if not got:
        return
    last = max(start for _, start in got)
    figures = ("liability_cents", "merchant_funding_cents", "new_money_cents", "payouts_cents")
    regional = [r for (scope, start), r in got.items() if start == last and scope != "platform"]
    regional = [r for r in regional if r.scope.startswith("region:")]
    alone = [m for m in movements if m.merchant_id is None and m.region is None]
    for name in figures:
        in_regions = sum(getattr(r, name) for r in regional)
        platform_alone = sum(getattr(m, name) for m in alone)
        assert in_regions == getattr(got["platform", last], name) - platform_alone, name
