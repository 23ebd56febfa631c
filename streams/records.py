"""The event contract, declared once. docs/events.md documents each record with an example.

Timestamps are epoch milliseconds (UTC) on the wire and in memory; files may carry either a UTC
timestamp column or epoch ms (see `rebate_guard.io`). Money is integer minor units (cents).
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar

import faust

# Topic names of the contract; `Settings.topic()` adds the configured prefix.
TRANSACTIONS = "transactions"
SIGNUPS = "signups"
LABELS = "labels"
DECISIONS = "decisions"
RINGS = "rings"
DEAD_LETTERS = "dead-letters"
FEATURES = "features"
REBATE_ADJUSTMENTS = "rebate-adjustments"
INPUT_TOPICS = (TRANSACTIONS, SIGNUPS, LABELS)
OUTPUT_TOPICS = (DECISIONS, RINGS, DEAD_LETTERS, FEATURES, REBATE_ADJUSTMENTS)
# Between the two feature stages (streams/shards.py): not part of the contract.
ENTITY_REQUESTS = "entity-requests"
ENTITY_RESULTS = "entity-results"
# From the user shards to the graph shard (streams/shards.py: `GraphShard`).
GRAPH_EVENTS = "graph-events"
INTERNAL_TOPICS = (ENTITY_REQUESTS, ENTITY_RESULTS, GRAPH_EVENTS)

PAYMENT = "payment"
REFUND = "refund"
TX_KINDS = (PAYMENT, REFUND)

FRAUD = "fraud"
LEGIT = "legit"
LABEL_VALUES = (FRAUD, LEGIT)

ALLOW = "allow"
SCALE = "scale"
HOLD = "hold"
BLOCK = "block"
ACTIONS = (ALLOW, SCALE, HOLD, BLOCK)

#: What a rebate adjustment does: a held rebate paid out, a held rebate dropped, or a
#: granted rebate taken back.
RELEASE = "release"
VOID = "void"
CLAWBACK = "clawback"
ADJUSTMENT_KINDS = (RELEASE, VOID, CLAWBACK)

MAX_REBATE_RATE = 0.30


class Transaction(faust.Record, serializer="json", include_metadata=False):
    """A payment or a refund; the rebate requested is floor(amount_cents x rebate_rate)."""

    tx_id: str
    ts: int
    user_id: str
    merchant_id: str
    amount_cents: int
    rebate_rate: float
    kind: str
    ref_tx_id: Optional[str] = None  # noqa: UP045
    device_id: Optional[str] = None  # noqa: UP045
    ip: Optional[str] = None  # noqa: UP045
    card_id: Optional[str] = None  # noqa: UP045
    merchant_category: Optional[str] = None  # noqa: UP045


class Signup(faust.Record, serializer="json", include_metadata=False):
    user_id: str
    ts: int
    referrer_id: Optional[str] = None  # noqa: UP045
    device_id: Optional[str] = None  # noqa: UP045
    ip: Optional[str] = None  # noqa: UP045
    phone_hash: Optional[str] = None  # noqa: UP045


class Label(faust.Record, serializer="json", include_metadata=False):
    """Delayed feedback (review, chargeback): ts is when it became known, not the tx's ts."""

    ts: int
    label: str
    source: str
    tx_id: Optional[str] = None  # noqa: UP045
    user_id: Optional[str] = None  # noqa: UP045
    #: Who decided it, for labels from the console's review queue (source `review`).
    reviewer: Optional[str] = None  # noqa: UP045


class Decision(faust.Record, serializer="json", include_metadata=False):
    """The answer for one transaction; rebate engines read it by tx_id."""

    tx_id: str
    ts: int
    user_id: str
    merchant_id: str
    risk: float
    trust_weight: float
    action: str
    rebate_requested_cents: int
    rebate_granted_cents: int
    reasons: list[str]
    model_version: str
    decided_at: int
    policy_version: str = ""
    #: Upline tiers that may be paid referral commission on this payment: the buyer's
    #: referral depth, at most the policy's `max_commission_tiers` (never more than 3), and
    #: 0 when no rebate is granted now.
    commission_tiers: int = 0
    #: Which thresholds decided it: `budget:<group>:<epoch start ms>:<cut>:<block cut>`
    #: (the friction budget's cut), `fixed` (the policy's fixed thresholds), `lists`,
    #: `campaign:<name>`, `fail_closed`; "" for decisions made before it was recorded.
    threshold_version: str = ""


class RebateAdjustment(faust.Record, serializer="json", include_metadata=False):
    """A change to a transaction's rebate after its decision, with the balances after it:
    granted + held + voided = requested, always. At most one per (tx_id, slot): a hold is
    resolved once (`<tx_id>:hold`), a grant clawed back once (`<tx_id>:clawback`)."""

    adjustment_id: str
    tx_id: str
    user_id: str
    ts: int  # event time of its cause (a label, a refund, the hold's timeout)
    kind: str  # RELEASE, VOID or CLAWBACK
    cents: int  # moved by this adjustment
    cause: str  # "label:fraud", "label:legit", "refund:<tx_id>", "hold_timeout"
    requested_cents: int
    granted_cents: int
    held_cents: int
    voided_cents: int
    policy_version: str
    decided_at: int


class Ring(faust.Record, serializer="json", include_metadata=False):
    ring_id: str
    kind: str
    users: list[str]
    merchants: list[str]
    devices: list[str]
    score: float
    detected_at: int
    rebate_at_risk_cents: int
    evidence: dict[str, Any]


class FeatureVector(faust.Record, serializer="json", include_metadata=False):
    """What the models saw for one transaction: the training log, free of serving skew."""

    tx_id: str
    ts: int
    features: dict[str, Any]


class DeadLetter(faust.Record, serializer="json", include_metadata=False):
    """An input event that could not be used, with why; `payload` is the raw bytes as text."""

    topic: str
    partition: int
    offset: int
    reason: str
    payload: str
    received_at: int


R = TypeVar("R", bound=faust.Record)
_FIELD_NAMES: dict[type, frozenset[str]] = {}


def build(cls: type[R], **values: Any) -> R:
    """A record from values that are already validated, every field given.

    Equal to `cls(**values)` (tests hold it to that), without faust's per-field descriptor
    calls, which are about a third of the worker's own CPU per event. Only for values that
    passed `streams.validation` or come from our own code.
    """
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(cls._options.fields)
    if values.keys() != names:
        missing = names - values.keys()
        extra = values.keys() - names
        raise TypeError(f"{cls.__name__}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    record = cls.__new__(cls)
    record.__dict__.update(values)
    record.__evaluated_fields__ = set()
    return record


def decision_on(tx: Transaction, **values: Any) -> Decision:
    """The decision on `tx` (its ids and ts copied) with the other fields from `values`."""
    return build(
        Decision,
        tx_id=tx.tx_id,
        ts=tx.ts,
        user_id=tx.user_id,
        merchant_id=tx.merchant_id,
        **values,
    )


def to_row(record: faust.Record) -> list[Any]:
    """A record's field values in declaration order: the compact form of events on the
    pipeline's internal topics (`from_row` reads it back)."""
    values = record.__dict__
    return [values[name] for name in record._options.fields]


def from_row(cls: type[R], row: list[Any]) -> R:
    """The record `to_row` wrote; only for rows our own workers produced. A row written
    before optional fields were added to the record's end (a worker of the previous release,
    during a rolling upgrade) takes their defaults."""
    names = list(cls._options.fields)
    if len(row) < len(names):
        defaults = cls._options.defaults
        row = [*row, *(defaults[name] for name in names[len(row) :])]
    return build(cls, **dict(zip(names, row, strict=True)))


def requested_rebate_cents(amount_cents: int, rebate_rate: float) -> int:
    """floor(amount_cents x rebate_rate), exact: the rate is honoured to six decimal places.

    Multiplying by the float directly would floor 100 x 0.29 to 28; scaling the rate to an
    integer number of millionths first keeps the arithmetic in integers.
    """
    rate_ppm = round(rebate_rate * 1_000_000)
    return (amount_cents * rate_ppm) // 1_000_000


def scale_cents(cents: int, weight: float) -> int:
    """floor(cents x weight) in integers (weight honoured to six decimal places)."""
    return (cents * round(weight * 1_000_000)) // 1_000_000
