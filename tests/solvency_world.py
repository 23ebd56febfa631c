"""Solvency readings and alerts as the solvency monitor makes them (docs/economics.md), and the
serving state as the worker writes it (streams/console/store/solvency.py): what the console's
solvency tests show, over the memory store and over Redis alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rebate_guard.contract.records import SOLVENT, PlatformAlert, SolvencyReading
from rebate_guard.core.policy import SolvencyTerms
from rebate_guard.core.solvency import Movement, SolvencyMonitor, alert_of, level_of
from streams.console.store.solvency import SolvencyKeys, SolvencyLayout, charted

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


def alert_for(now: SolvencyReading, previous_level: str, *, message: str = "") -> PlatformAlert:
    """The monitor's alert for `now` (its own message, unless `message` is given)."""
    made = alert_of(now, previous=previous_level, terms=TERMS)
    return replace(made, message=message) if message else made


def as_served(
    outputs: Sequence[SolvencyReading | PlatformAlert], current: dict[str, SolvencyReading]
) -> dict[str, Any]:
    """What the worker writes for the monitor's outputs, in order: each reading in the
    latest hash and (platform and regions) its series, each alert in the list, and the
    running figures of the platform and regions."""
    latest: dict[str, bytes] = {}
    series: dict[str, list[bytes]] = {}
    alerts: list[bytes] = []
    for out in outputs:
        if isinstance(out, PlatformAlert):
            alerts.append(out.dumps())
            continue
        latest[out.scope] = out.dumps()
        if charted(out.scope):
            series.setdefault(out.scope, []).append(out.dumps())
    running = {s: r.dumps() for s, r in current.items() if charted(s)}
    return {"latest": latest, "series": series, "alerts": alerts, "current": running}


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


def serve_in_memory(served: SolvencyLayout, written: dict[str, Any]) -> None:
    """`as_served(...)` into a memory layout, as the worker's memory store keeps it."""
    served.solvency_latest.update(written["latest"])
    for scope, values in written["series"].items():
        served.solvency_series.setdefault(scope, []).extend(values)
    served.alerts.extend(written["alerts"])
    served.solvency_current.update(written["current"])


async def serve_in_redis(client: Any, app_id: str, *, written: dict[str, Any]) -> None:
    """`as_served(...)` into the Redis keys, as the worker writes them."""
    keys = SolvencyKeys(app_id)
    if written["latest"]:
        await client.hset(keys.latest, mapping=written["latest"])
    for scope, values in written["series"].items():
        await client.rpush(keys.series(scope), *values)
    if written["alerts"]:
        await client.rpush(keys.alerts, *written["alerts"])
    if written["current"]:
        await client.hset(keys.current, mapping=written["current"])


def serve(
    readings: Sequence[SolvencyReading], current: Sequence[SolvencyReading] = ()
) -> dict[str, Any]:
    """What the worker writes as `readings` close, with `current` the running figures."""
    return as_served(outputs_of(readings), {r.scope: r for r in current})
