"""Solvency readings and alerts as the solvency monitor makes them (docs/economics.md), stored
as the worker's publisher stores them (streams/publisher.py): what the console's solvency tests
show, over the memory store and over Redis alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from rebate_guard.contract.records import (
    MERCHANT_SETTLEMENT,
    POINTS_GRANT,
    SOLVENT,
    PlatformAlert,
    PlatformEvent,
    SolvencyReading,
)
from rebate_guard.core.policy import SolvencyTerms
from rebate_guard.core.solvency import Movement, SolvencyMonitor, alert_of, level_of
from streams.store import DecisionStore

#: 2026-01-01T00:00Z and the monitor's default period.
T0 = 1_767_225_600_000
PERIOD_MS = 3_600_000
#: The documented default lines.
TERMS = SolvencyTerms()
WARNING_LINE, CRITICAL_LINE = TERMS.warning_ratio, TERMS.critical_ratio


def reading(scope: str, period: int, *, liability: int, distributable: int) -> SolvencyReading:
    """`scope`'s reading at the end of period number `period` from `T0`."""
    start = T0 + period * PERIOD_MS
    return SolvencyReading(
        scope=scope,
        period_start=start,
        period_end=start + PERIOD_MS,
        liability_cents=liability,
        merchant_funding_cents=distributable + 10_000,
        new_money_cents=0,
        payouts_cents=10_000,
        distributable_cents=distributable,
        ratio=liability / distributable if distributable > 0 else None,
        level=level_of(liability, distributable, terms=TERMS),
        new_money_share=0.25,
        growth_needed=0.5 if liability >= WARNING_LINE * distributable else 0.0,
    )


def growth_stall(
    stalled_region: str,
    *,
    periods: int = 12,
    terms: SolvencyTerms = TERMS,
    close_last: bool = True,
) -> tuple[list[SolvencyReading | PlatformAlert], dict[str, SolvencyReading]]:
    """The solvency monitor's outputs, and its running figures after, for a platform whose
    rebates keep growing while the money coming in stops after three periods: a merchant in
    `stalled_region` funds and grants, one in `region:north` stays small and funded. With
    `close_last` false the last period is left open (its figures are the running ones)."""
    monitor = SolvencyMonitor(terms)
    outputs: list[SolvencyReading | PlatformAlert] = []
    for i in range(periods):
        ts = T0 + i * PERIOD_MS
        funded = i < 3
        moves = [
            Movement(f"s-{i}", ts, "m-stall", stalled_region, liability_cents=200_000,
                     merchant_funding_cents=100_000 if funded else 0,
                     new_money_cents=50_000 if funded else 0, payouts_cents=10_000),
            Movement(f"n-{i}", ts + 1, "m-north", "north", liability_cents=1_000,
                     merchant_funding_cents=2_000),
        ]  # fmt: skip
        for move in moves:
            outputs += monitor.apply(move)
    if close_last:
        outputs += monitor.advance(T0 + periods * PERIOD_MS)
    return outputs, monitor.current()


def stall_events(region: str, *, hours: int = 14) -> list[PlatformEvent]:
    """Platform events of a growth stall, one merchant in `region`: it pays in for three
    hours, then stops, while points keep being granted every hour (event time from `T0`)."""
    merchant = {"merchant_id": "m-1", "region": region}
    events = []
    for hour in range(hours):
        at = T0 + hour * PERIOD_MS
        if hour < 3:
            events.append(PlatformEvent(f"s-{hour}", at, MERCHANT_SETTLEMENT, 150_000, **merchant))
        grant = PlatformEvent(f"g-{hour}", at + 1, POINTS_GRANT, 200_000, f"u-{hour}", **merchant)
        events.append(grant)
    return events


def alert_for(now: SolvencyReading, previous_level: str, *, message: str = "") -> PlatformAlert:
    """The monitor's alert for `now` (its own message, unless `message` is given)."""
    made = alert_of(now, previous=previous_level, terms=TERMS)
    return replace(made, message=message) if message else made


def outputs_of(readings: Sequence[SolvencyReading]) -> list[SolvencyReading | PlatformAlert]:
    """`readings` as the monitor outputs them: each followed by an alert where its scope's
    level changed."""
    outputs: list[SolvencyReading | PlatformAlert] = []
    levels: dict[str, str] = {}
    for r in readings:
        outputs.append(r)
        before = levels.get(r.scope, SOLVENT)
        if before != r.level:
            outputs.append(alert_for(r, before))
        levels[r.scope] = r.level
    return outputs


async def publish(
    store: DecisionStore,
    outputs: Sequence[SolvencyReading | PlatformAlert],
    current: Mapping[str, SolvencyReading] | None = None,
) -> None:
    """What the worker's publisher stores for the monitor's outputs (streams/publisher.py):
    the readings, the alerts (each first stored wins), and the running figures `current`
    (the solvency shard's: the platform's and the regions')."""
    readings = [
        (o.scope, o.period_end, o.dumps()) for o in outputs if isinstance(o, SolvencyReading)
    ]
    running = {scope: r.dumps() for scope, r in (current or {}).items()}
    await store.put_solvency(readings, running)
    alerts = [(o.alert_id, o.dumps()) for o in outputs if isinstance(o, PlatformAlert)]
    if alerts:
        await store.put_alerts(alerts)
