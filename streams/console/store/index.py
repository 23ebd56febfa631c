"""What the console indexes per decision, as both console stores keep it: the overview's
series buckets, the review queue's holds, the entity indexes (with each user's links for ring
graphs), labels, ring versions and audit entries; and the Redis store's batch payload.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rebate_guard.contract.records import (
    HOLD,
    RELEASE,
    VOID,
    Decision,
    Label,
    RebateAdjustment,
    Transaction,
)
from rebate_guard.core.policy import in_review_sample

#: Seconds per bucket of the overview's time series.
SERIES_STEP_S = 10
#: How long a bucket of the series stays (the overview shows at most this far back).
SERIES_TTL_S = 2 * 86_400
#: Newest decisions kept per user, merchant and device.
ENTITY_KEEP = 200
AUDIT_KEEP = 10_000
#: Entity kinds the console searches by: user, merchant, device.
ENTITY_KINDS = ("user", "merchant", "device")
SERIES_FIELDS = ("decisions", "requested", "granted", "held", "withheld")


@dataclass(frozen=True)
class Indexed:
    """A new decision, its payment, and (for payments) its history row for backtests."""

    decision: Decision
    tx: Transaction
    history_row: bytes | None = None


#: Added to the review queue's score of a hold in the review sample (`REVIEW_SAMPLE`), so
#: the sorted queue lists the sample first, most money first in each part; a score below
#: it is cents held (float-exact: 2^50 + cents stays below 2^53).
SAMPLE_OFFSET = 2**50


def queue_score(decision: Decision) -> int:
    """A hold's score in the review queue (0: not a hold)."""
    held = held_cents(decision)
    sampled = held and in_review_sample(decision.action, decision.reasons)
    return held + SAMPLE_OFFSET if sampled else held


def queue_entry(tx_id: str, score: int) -> tuple[str, int, bool]:
    """(tx_id, cents held, in the review sample) from a queue score."""
    return (tx_id, score - SAMPLE_OFFSET, True) if score >= SAMPLE_OFFSET else (tx_id, score, False)


def held_cents(decision: Decision) -> int:
    """What a decision holds in escrow: all of the rebate not granted, for a hold."""
    if decision.action != HOLD:
        return 0
    return decision.rebate_requested_cents - decision.rebate_granted_cents


def indexed_entities(entry: Indexed) -> list[tuple[str, str]]:
    found = [("user", entry.tx.user_id), ("merchant", entry.tx.merchant_id)]
    if entry.tx.device_id:
        found.append(("device", entry.tx.device_id))
    return found


#: What a user's payments link them to, for ring graphs: (kind, transaction field).
LINK_KINDS = (
    ("merchant", "merchant_id"),
    ("device", "device_id"),
    ("ip", "ip"),
    ("card", "card_id"),
)
LINK_SEP = "\x1f"


def link_fields(tx: Transaction) -> list[str]:
    values = ((kind, getattr(tx, name)) for kind, name in LINK_KINDS)
    return [f"{kind}{LINK_SEP}{value}" for kind, value in values if value]


def parse_link(field: str) -> tuple[str, str]:
    kind, _, value = field.partition(LINK_SEP)
    return kind, value


def series_totals(entries: Sequence[Indexed]) -> dict[int, dict[str, int]]:
    """Totals per bucket start (s) for these decisions."""
    buckets: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for entry in entries:
        d = entry.decision
        bucket = buckets[d.decided_at // 1000 // SERIES_STEP_S * SERIES_STEP_S]
        held = held_cents(d)
        bucket["decisions"] += 1
        bucket[f"action:{d.action}"] += 1
        bucket["requested"] += d.rebate_requested_cents
        bucket["granted"] += d.rebate_granted_cents
        bucket["held"] += held
        bucket["withheld"] += d.rebate_requested_cents - d.rebate_granted_cents - held
    return buckets


#: One entity index write in this many also trims the index back to `ENTITY_KEEP`.
TRIM_EVERY = 16
#: Between a user index member's tx_id and what the payment linked the user to (merchant,
#: device, ip, card): the ring graph's edges come from the user's index itself.
MEMBER_SEP = "\x1e"


def record_payload(entries: Sequence[Indexed], keep_history: bool) -> str:
    """A batch for `RedisConsoleStore`'s Lua script (`_RECORD`), as one JSON argument."""
    series = [[start, list(totals.items())] for start, totals in series_totals(entries).items()]
    holds = [[e.decision.tx_id, score] for e in entries if (score := queue_score(e.decision))]
    rows = [
        [e.tx.ts, e.history_row.decode()]
        for e in entries
        if keep_history and e.history_row is not None
    ]
    index = [
        [kind, value, e.tx.ts, _member(kind, e)]
        for e in entries
        for kind, value in indexed_entities(e)
    ]
    for i, write in enumerate(index):
        write.append(int(i % TRIM_EVERY == 0))
    return _ENCODER.encode({"s": series, "h": holds, "r": rows, "x": index})


def _member(kind: str, entry: Indexed) -> str:
    if kind != "user":
        return entry.decision.tx_id
    return MEMBER_SEP.join([entry.decision.tx_id, *link_fields(entry.tx)])


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def label_json(label: Label) -> bytes:
    return json.dumps(
        {
            "label": label.label,
            "ts": label.ts,
            "source": label.source,
            "reviewer": label.reviewer,
            "tx_id": label.tx_id,
            "user_id": label.user_id,
        },
        separators=(",", ":"),
    ).encode()


def resolved_holds(adjustments: Sequence[RebateAdjustment]) -> list[str]:
    """The transactions whose hold these adjustments resolved (released or voided)."""
    return [a.tx_id for a in adjustments if a.kind in (RELEASE, VOID) and a.held_cents == 0]


def audit_entry(who: str, action: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"at": int(time.time() * 1000), "who": who, "action": action, "detail": detail}


#: Versions kept per ring.
RING_VERSIONS_KEEP = 50


def distinct_versions(raw: Sequence[bytes | str]) -> list[dict[str, Any]]:
    """Newest first, each (version, status) once: a re-run after a restore publishes a
    version again."""
    seen, out = set(), []
    for value in raw:
        event = json.loads(value)
        key = (event.get("version"), event.get("status"))
        if key not in seen:
            seen.add(key)
            out.append(event)
    return out
