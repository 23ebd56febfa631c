"""Solvency readings and alerts as the solvency monitor makes them (docs/economics.md), and the
serving state as the worker writes it (streams/console/store/solvency.py): what the console's
solvency tests show, over the memory store and over Redis alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rebate_guard.contract.records import (
    CRITICAL,
    SOLVENT,
    WARNING,
    PlatformAlert,
    SolvencyReading,
)
from streams.console.store.solvency import SolvencyKeys, SolvencyLayout, charted

#: 2026-01-01T00:00Z and the monitor's default period.
T0 = 1_767_225_600_000
PERIOD_MS = 3_600_000
#: The documented default lines.
WARNING_LINE, CRITICAL_LINE = 3.0, 5.0


def level_of(liability: int, distributable: int) -> str:
    """The level by the documented rule, in integers: nothing distributable is critical if
    anything is owed."""
    if distributable <= 0:
        return CRITICAL if liability > 0 else SOLVENT
    if liability >= CRITICAL_LINE * distributable:
        return CRITICAL
    return WARNING if liability >= WARNING_LINE * distributable else SOLVENT


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
        level=level_of(liability, distributable),
        new_money_share=0.25,
        growth_needed=0.5 if liability >= WARNING_LINE * distributable else 0.0,
    )


def alert_for(now: SolvencyReading, previous_level: str, message: str = "") -> PlatformAlert:
    line = {CRITICAL: CRITICAL_LINE}.get(now.level, WARNING_LINE)
    return PlatformAlert(
        alert_id=f"{now.scope}:{now.level}:{now.period_start}",
        ts=now.period_end,
        scope=now.scope,
        level=now.level,
        previous_level=previous_level,
        ratio=now.ratio,
        line=line,
        liability_cents=now.liability_cents,
        distributable_cents=now.distributable_cents,
        new_money_share=now.new_money_share,
        growth_needed=now.growth_needed,
        message=message or f"{now.scope}: {now.level}",
    )


def closed_periods(readings: Sequence[SolvencyReading]) -> dict[str, Any]:
    """What the worker writes as these periods close, in order: per reading the latest hash
    and (platform and regions) the series; per level change an alert."""
    latest: dict[str, bytes] = {}
    series: dict[str, list[bytes]] = {}
    alerts: list[bytes] = []
    levels: dict[str, str] = {}
    for r in readings:
        latest[r.scope] = r.dumps()
        if charted(r.scope):
            series.setdefault(r.scope, []).append(r.dumps())
        if levels.get(r.scope, SOLVENT) != r.level:
            alerts.append(alert_for(r, levels.get(r.scope, SOLVENT)).dumps())
        levels[r.scope] = r.level
    return {"latest": latest, "series": series, "alerts": alerts}


def serve_in_memory(
    served: SolvencyLayout,
    readings: Sequence[SolvencyReading],
    current: Sequence[SolvencyReading] = (),
) -> None:
    written = closed_periods(readings)
    served.solvency_latest.update(written["latest"])
    for scope, values in written["series"].items():
        served.solvency_series.setdefault(scope, []).extend(values)
    served.alerts.extend(written["alerts"])
    served.solvency_current.update({r.scope: r.dumps() for r in current})


async def serve_in_redis(
    client: Any,
    app_id: str,
    readings: Sequence[SolvencyReading],
    current: Sequence[SolvencyReading] = (),
) -> None:
    keys = SolvencyKeys(app_id)
    written = closed_periods(readings)
    if written["latest"]:
        await client.hset(keys.latest, mapping=written["latest"])
    for scope, values in written["series"].items():
        await client.rpush(keys.series(scope), *values)
    if written["alerts"]:
        await client.rpush(keys.alerts, *written["alerts"])
    if current:
        await client.hset(keys.current, mapping={r.scope: r.dumps() for r in current})
