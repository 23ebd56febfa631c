"""Event-time order, defined once: the order in which replay, one worker and N workers over any
partitioning apply the input events, so that all of them decide the same.

`order_key` orders events in memory (the worker's aligner and shards, replay's tests);
`EVENT_KINDS` gives the same order to whoever sorts columns instead (replay's Polars sort:
its rank is the position here, its id the first non-null of `id_fields`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rebate_guard.contract.records import (
    LABELS,
    PLATFORM_EVENTS,
    SIGNUPS,
    TRANSACTIONS,
    Label,
    PlatformEvent,
    Signup,
    Transaction,
)
from rebate_guard.contract.validation import (
    parse_label,
    parse_platform_event,
    parse_signup,
    parse_transaction,
)

Event = Signup | Transaction | Label | PlatformEvent


@dataclass(frozen=True)
class EventKind:
    """One kind of input event: its topic (and replay file) name, record and parser, and the
    fields whose first non-null value is its id (the tie-break at equal ts and kind)."""

    name: str
    record: type[Event]
    parse: Callable[[Mapping[str, Any]], Event]
    id_fields: tuple[str, ...]


# At equal ts: signups first (an account exists before it pays), then labels, then the
# platform's events, then transactions. A label with ts t has "arrived by t" (the features'
# definition), and it is not later than a transaction at t, so applying it first leaks nothing
# from the future; a binding or settlement stamped t has likewise happened by a payment at t.
EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind(SIGNUPS, Signup, parse_signup, ("user_id",)),
    EventKind(LABELS, Label, parse_label, ("tx_id", "user_id")),
    EventKind(PLATFORM_EVENTS, PlatformEvent, parse_platform_event, ("event_id",)),
    EventKind(TRANSACTIONS, Transaction, parse_transaction, ("tx_id",)),
)
#: A kind's place in the order at equal ts.
KIND_RANK: dict[type[Event], int] = {kind.record: rank for rank, kind in enumerate(EVENT_KINDS)}
_ID_FIELDS = {kind.record: kind.id_fields for kind in EVENT_KINDS}


def order_key(event: Event, seq: int) -> tuple[int, int, str, int]:
    """Event-time order: ts, then kind, then the event's id, then input order `seq`.

    The id (tx_id; user_id for a signup; tx_id or else user_id for a label; event_id for a
    platform event) breaks ties
    because a partitioned log has no input order across partitions: it is the one order that
    replay, one worker and N workers over any partitioning all reproduce. Input order only
    separates events with the same id (a repeated tx_id: the first stands).

    Examples
    --------
    At equal ts a signup comes first, then a label, a platform event, a transaction:

    >>> from rebate_guard.contract.records import Label, PlatformEvent, Signup, Transaction
    >>> ts = 1_700_000_000_000
    >>> events = [Transaction("t-1", ts, "u-1", "m-1", 500, 0.05, "payment"),
    ...           PlatformEvent("e-1", ts, "pool_topup", 10_000),
    ...           Label(ts, "fraud", "review", tx_id="t-0"), Signup("u-1", ts)]
    >>> [type(e).__name__ for e in sorted(events, key=lambda e: order_key(e, 0))]
    ['Signup', 'Label', 'PlatformEvent', 'Transaction']
    """
    return (event.ts, KIND_RANK[type(event)], event_id(event), seq)


def event_id(event: Event) -> str:
    """The first non-null of the kind's `id_fields`; "" if all are null.

    Examples
    --------
    >>> from rebate_guard.contract.records import Label
    >>> event_id(Label(1_700_000_000_000, "fraud", "review", user_id="u-9"))
    'u-9'
    """
    for name in _ID_FIELDS[type(event)]:
        value: str | None = getattr(event, name)
        if value is not None:
            return value
    return ""
