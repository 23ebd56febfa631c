"""The solvency monitor's serving state as the console reads it (docs/economics.md): what the
stream keeps in Redis, and the same layout in memory for broker-free worlds.

The worker writes (the console only reads):

- `{app}:solvency:current`: hash scope -> the running `SolvencyReading` JSON (the platform and
  each region), for the dashboard's figures now;
- `{app}:solvency:latest`: hash scope -> the `SolvencyReading` JSON of its last closed period;
- `{app}:solvency:series:{scope}`: list of the scope's closed readings, oldest first (only the
  platform and regions);
- `{app}:alerts`: list of `PlatformAlert` JSON, newest last.

Values stay bytes here: parsing (and skipping what does not parse) is the data layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from rebate_guard.core.solvency import PLATFORM
from streams.store.protocol import charted


@dataclass(frozen=True)
class SolvencyBooks:
    """The platform's and regions' readings as stored, and the newest alerts."""

    #: scope -> running reading (platform and regions).
    current: dict[str, bytes]
    #: scope -> reading of its last closed period, for the scopes of `current` and the platform.
    latest: dict[str, bytes]
    #: Newest first.
    alerts: list[bytes]


def shown_scopes(current: dict[str, bytes]) -> list[str]:
    """The scopes whose figures the console shows: the platform and every region the worker
    keeps running figures for."""
    return [PLATFORM, *sorted(s for s in current if s != PLATFORM and charted(s))]


class SolvencyLayout(Protocol):
    """The Redis layout in memory, as a broker-free world's worker serves it (the memory
    decision store keeps these attributes, so the console's memory store can read them)."""

    solvency_current: dict[str, bytes]
    solvency_latest: dict[str, bytes]
    solvency_series: dict[str, list[bytes]]
    #: Newest last, as the Redis list.
    alerts: list[bytes]


@dataclass
class ServedSolvency:
    """A `SolvencyLayout` of its own, for a console store no worker's store is shared with."""

    solvency_current: dict[str, bytes] = field(default_factory=dict)
    solvency_latest: dict[str, bytes] = field(default_factory=dict)
    solvency_series: dict[str, list[bytes]] = field(default_factory=dict)
    alerts: list[bytes] = field(default_factory=list)


def books(served: SolvencyLayout, alerts: int) -> SolvencyBooks:
    current = dict(served.solvency_current)
    shown = [s for s in shown_scopes(current) if s in served.solvency_latest]
    newest = served.alerts[-alerts:] if alerts > 0 else []
    return SolvencyBooks(current, {s: served.solvency_latest[s] for s in shown}, newest[::-1])


def newest_readings(served: SolvencyLayout, scope: str, *, limit: int) -> list[bytes]:
    return served.solvency_series.get(scope, [])[-limit:] if limit > 0 else []
