"""What the shards send each other: item identities, envelopes, and where event time stands.

An item names the input message it comes from (`Identity`: input topic code and offset in a
user partition), so a stage that hears of it twice applies it once. An envelope is a JSON
object carrying a batch of items and, from a user shard, its `Mark`: what it will never send
anything earlier than, and what it will never send again.
"""

from __future__ import annotations

import json
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
from streams.alignment import START

#: Input topics by the code that identifies them inside a user partition.
TOPIC_CODES = {TRANSACTIONS: 0, SIGNUPS: 1, LABELS: 2, PLATFORM_EVENTS: 3}
Identity = tuple[int, int]  # (topic code, offset): one input message of a user partition
#: Where an event sits in event-time order: `order_key` without the input order.
OrderKey = tuple[int, int, str]
#: The ring scores' key kind of the ring a user's points requests read (`REQUESTER`, user id):
#: its strongest that is not a signup batch (`graph.layer.GraphLayer.requester_ring`), beside
#: its strongest ("u", user id) and a merchant's ("m", merchant id).
REQUESTER = "r"
#: What a referral-tree write is: (user, referrer, signup ts).
TreeWrite = tuple[str, str, int]
#: A referral depth to find: keyed by (user, signup ts), asked as (referrer, user, signup ts).
DepthKey = tuple[str, int]
DepthRequest = tuple[str, str, int]
#: Where a user shard's event time stands: (watermark, idle, durable floor per topic code).
Mark = tuple[int, bool, tuple[int, ...]]

#: The records items carry, by the kind an item names first.
ITEM_KINDS: dict[str, type[Transaction] | type[Signup] | type[Label] | type[PlatformEvent]] = {
    "t": Transaction,
    "s": Signup,
    "l": Label,
    "p": PlatformEvent,
}

#: Items per envelope: keeps messages far below Kafka's 1 MB default request size.
ENVELOPE_ITEMS = 256
#: The graph-events partition the graph shard reads; the topic has `RG_PARTITIONS` like
#: every internal topic (co-partitioning), the others stay empty. benchmarks/README.md
#: "Ten to a hundred workers on a Kafka cluster" says how it bounds the rate, and what
#: splitting the graph past one partition would take.
GRAPH_PARTITION = 0


def dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def chunks(items: list[list[Any]]) -> list[list[list[Any]]]:
    """`items` in envelope-sized pieces; always at least one (maybe empty) piece."""
    return [items[i : i + ENVELOPE_ITEMS] for i in range(0, len(items), ENVELOPE_ITEMS)] or [[]]


def drain(outbox: dict[int, list[list[Any]]], header: dict[str, Any]) -> list[tuple[int, bytes]]:
    """(partition, envelope) pairs with every item in `outbox`, which is left empty."""
    out = [
        (partition, dumps({**header, "items": chunk}))
        for partition, items in outbox.items()
        for chunk in chunks(items)
    ]
    outbox.clear()
    return out


def marked_envelopes(
    partition: int, items: list[list[Any]] | None, *, told: Mark | None, mark: Mark
) -> list[bytes]:
    """User partition `partition`'s envelopes with `items` (maybe none) to a stage last
    told `told`, the newest of them telling it `mark`."""
    pieces = chunks(items or [])
    # Only the last piece moves the watermark: the later pieces' items are not sent yet.
    held = START if told is None else told[0]
    out = [_envelope(partition, (held, False, mark[2]), piece) for piece in pieces[:-1]]
    out.append(_envelope(partition, mark, pieces[-1]))
    return out


def _envelope(partition: int, mark: Mark, items: list[list[Any]]) -> bytes:
    watermark, idle, floor = mark
    return dumps({"p": partition, "wm": watermark, "idle": idle, "floor": floor, "items": items})
