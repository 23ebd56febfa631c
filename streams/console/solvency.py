"""What the solvency page and the overview's solvency card show: the monitor's readings and
alerts as the worker serves them (store/solvency.py), parsed with the contract's records, and
the policy lines the worker runs (docs/economics.md).

A stored entry that is not the record it should be (not JSON, a field missing or of the wrong
type, a level the contract does not know) is skipped and counted on the page: one bad value
never takes the page down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from rebate_guard.contract.records import (
    SOLVENCY_LEVELS,
    PlatformAlert,
    Record,
    SolvencyReading,
)
from rebate_guard.core.policy import Policy
from rebate_guard.core.solvency import PLATFORM
from streams.console import policy_desk
from streams.console.chart import ratio_chart
from streams.console.store import ConsoleStore
from streams.console.store.solvency import shown_scopes
from streams.store.protocol import charted

if TYPE_CHECKING:
    from streams.app import Runtime

#: Alerts listed on the page, newest first.
ALERTS_SHOWN = 50
#: Closed periods charted, at most (the worker keeps 2,000 per scope).
CHART_POINTS = 2_000
R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Lines:
    """The policy's solvency lines, and which policy they are from."""

    warning: float
    critical: float
    policy_version: str


def policy_lines(policy: Policy) -> Lines:
    terms = policy.solvency
    return Lines(terms.warning_ratio, terms.critical_ratio, policy.version)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: What a value of each annotated field type must be (the records' annotations are text).
_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _number,
}


def well_typed(record: Record) -> bool:
    """Every field of the type the record declares, and the levels the contract's."""
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        kind, _, optional = str(f.type).partition(" | ")
        if not (value is None and optional == "None") and not _CHECKS[kind](value):
            return False
    levels = [getattr(record, name, None) for name in ("level", "previous_level")]
    return all(level in SOLVENCY_LEVELS for level in levels if level is not None)


def parse(cls: type[R], raw: bytes) -> R | None:
    """`raw` as a `cls` record, or None when it is not one."""
    try:
        found = cls.loads(raw)
    # Not UTF-8 or not JSON (ValueError), not an object (AttributeError), a field missing
    # (TypeError).
    except (ValueError, AttributeError, TypeError):
        return None
    return found if well_typed(found) else None


@dataclass
class Parsed:
    """Records read from the store, and how many stored entries were skipped."""

    skipped: int = 0

    def many(self, cls: type[R], raws: Iterable[bytes]) -> list[R]:
        found = [parse(cls, raw) for raw in raws]
        self.skipped += sum(1 for r in found if r is None)
        return [r for r in found if r is not None]

    def by_scope(self, raws: Mapping[str, bytes]) -> dict[str, SolvencyReading]:
        readings = {s: parse(SolvencyReading, v) for s, v in raws.items()}
        self.skipped += sum(1 for r in readings.values() if r is None)
        return {s: r for s, r in readings.items() if r is not None}


async def page(runtime: Runtime, scope: str) -> dict[str, Any]:
    """The solvency page, against the policy the workers run."""
    return await read_page(runtime.console, await policy_desk.live(runtime), scope=scope)


async def read_page(console: ConsoleStore, policy: Policy, *, scope: str) -> dict[str, Any]:
    """Each scope's figures now and at its last closed period, `scope`'s ratio over time
    against `policy`'s lines, and the newest alerts."""
    books = await console.solvency_books(ALERTS_SHOWN)
    parsed = Parsed()
    current = parsed.by_scope(books.current)
    latest = parsed.by_scope(books.latest)
    alerts = parsed.many(PlatformAlert, books.alerts)
    raw_series = await console.solvency_series(scope, CHART_POINTS) if charted(scope) else []
    series = parsed.many(SolvencyReading, raw_series)
    lines = policy_lines(policy)
    rows = [
        {"scope": s, "now": current.get(s), "closed": latest.get(s)}
        for s in shown_scopes(books.current)
        if s in current or s in latest
    ]
    return {
        "scope": scope,
        "charted": charted(scope),
        "chart": ratio_chart(
            series, warning=lines.warning, critical=lines.critical, running=current.get(scope)
        ),
        "lines": lines,
        "rows": rows,
        "alerts": alerts,
        "skipped": parsed.skipped,
    }


async def platform_now(console: ConsoleStore) -> dict[str, Any]:
    """The overview's card: the platform's running reading (else its last closed one) and
    the newest alert."""
    books = await console.solvency_books(1)
    parsed = Parsed()
    readings = {**parsed.by_scope(books.latest), **parsed.by_scope(books.current)}
    alerts = parsed.many(PlatformAlert, books.alerts)
    return {"reading": readings.get(PLATFORM), "alert": next(iter(alerts), None)}
