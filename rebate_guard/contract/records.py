"""The event contract, declared once. docs/events.md documents each record with an example.

Timestamps are epoch milliseconds (UTC) on the wire and in memory; files may carry either a UTC
timestamp column or epoch ms (see `rebate_guard.tools.io`). Money is integer minor units (cents).

Records are plain slotted dataclasses (`Record`, `@record`): nothing here imports Faust, so the
features, detectors, graph and the client load none of it. On the wire a record is the JSON
object of its fields in declaration order, as compact as JSON goes (`Record.dumps`): byte for
byte what the Faust records of earlier releases wrote (tests/unit/test_contract.py).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar, Self, TypeVar, dataclass_transform
from uuid import UUID

# Topic names of the contract; `Settings.topic()` adds the configured prefix.
TRANSACTIONS = "transactions"
SIGNUPS = "signups"
LABELS = "labels"
DECISIONS = "decisions"
RINGS = "rings"
DEAD_LETTERS = "dead-letters"
FEATURES = "features"
REBATE_ADJUSTMENTS = "rebate-adjustments"
# The platform's money and points flows (issue #21): funding, points, bindings, coupons.
PLATFORM_EVENTS = "platform-events"
# The solvency monitor's readings and alerts (rebate_guard/core/solvency.py).
SOLVENCY = "solvency"
PLATFORM_ALERTS = "platform-alerts"
#: What the worker reads: keyed by user (else as docs/events.md says), co-partitioned.
INPUT_TOPICS = (TRANSACTIONS, SIGNUPS, LABELS, PLATFORM_EVENTS)
OUTPUT_TOPICS = (
    DECISIONS,
    RINGS,
    DEAD_LETTERS,
    FEATURES,
    REBATE_ADJUSTMENTS,
    SOLVENCY,
    PLATFORM_ALERTS,
)
#: The platform's economics (among the above): its flows in, the solvency monitor's
#: readings and alerts out.
PLATFORM_TOPICS = (PLATFORM_EVENTS, SOLVENCY, PLATFORM_ALERTS)
# Between the two feature stages (streams/shards/): not part of the contract.
ENTITY_REQUESTS = "entity-requests"
ENTITY_RESULTS = "entity-results"
# From the user shards to the graph shard (streams/shards/inbox.py: `GraphShard`).
GRAPH_EVENTS = "graph-events"
# From the user shards to the solvency shard: the books' movements (streams/shards/solvency.py).
SOLVENCY_MOVEMENTS = "solvency-movements"
INTERNAL_TOPICS = (ENTITY_REQUESTS, ENTITY_RESULTS, GRAPH_EVENTS, SOLVENCY_MOVEMENTS)

PAYMENT = "payment"
REFUND = "refund"
TX_KINDS = (PAYMENT, REFUND)

FRAUD = "fraud"
LEGIT = "legit"
#: The label source of the risk team's reviews (the console's review queue).
REVIEW_SOURCE = "review"
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

# What a `PlatformEvent` is (docs/events.md, "platform-events"). Money in: a merchant paying
# in the discount that funds its payments' rebates, and money from anywhere else ("new
# money": the platform's capital, joining fees, top-ups).
MERCHANT_SETTLEMENT = "merchant_settlement"
POOL_TOPUP = "pool_topup"
# Points (the users' unredeemed rebates and bonuses: the platform's liability).
POINTS_GRANT = "points_grant"
POINTS_REDEEM = "points_redeem"
POINTS_EXPIRE = "points_expire"
POINTS_TRANSFER = "points_transfer"
POINTS_WITHDRAW = "points_withdraw"
# A merchant's customers: "brought in by merchant M", and M's commission on their spending.
BINDING = "binding"
RETENTION_COMMISSION = "retention_commission"
# Coupons a merchant issues (pushed after a payment elsewhere) and their use.
COUPON_ISSUE = "coupon_issue"
COUPON_REDEEM = "coupon_redeem"
COUPON_EXPIRE = "coupon_expire"
#: Every kind, and the fields each requires besides `event_id`, `ts` and `kind`.
PLATFORM_EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    MERCHANT_SETTLEMENT: ("merchant_id", "amount_cents"),
    POOL_TOPUP: ("amount_cents",),
    POINTS_GRANT: ("user_id", "amount_cents"),
    POINTS_REDEEM: ("user_id", "amount_cents"),
    POINTS_EXPIRE: ("user_id", "amount_cents"),
    POINTS_TRANSFER: ("user_id", "counterparty_id", "amount_cents"),
    POINTS_WITHDRAW: ("user_id", "amount_cents"),
    BINDING: ("user_id", "merchant_id"),
    RETENTION_COMMISSION: ("merchant_id", "user_id", "tx_id", "amount_cents"),
    COUPON_ISSUE: ("coupon_id", "user_id", "merchant_id", "amount_cents"),
    COUPON_REDEEM: ("coupon_id", "user_id", "merchant_id", "amount_cents"),
    COUPON_EXPIRE: ("coupon_id", "user_id", "amount_cents"),
}
PLATFORM_EVENT_KINDS = tuple(PLATFORM_EVENT_FIELDS)
#: The kinds that ask to move a user's points: each gets a decision (`decisions`, keyed by
#: event_id); the others are facts the platform reports.
POINTS_REQUESTS = (POINTS_REDEEM, POINTS_TRANSFER, POINTS_WITHDRAW)

#: Solvency levels, worst last.
SOLVENT = "ok"
WARNING = "warning"
CRITICAL = "critical"
SOLVENCY_LEVELS = (SOLVENT, WARNING, CRITICAL)


def _json_default(value: Any) -> Any:
    """What JSON has no type for, as Faust's JSON codec wrote it (`faust.utils.json`)."""
    if isinstance(value, Decimal | UUID | bytes):
        return str(value)
    if isinstance(value, date | time):
        if not isinstance(value, datetime | time):
            value = datetime(value.year, value.month, value.day)
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | deque | tuple):
        return list(value)
    if isinstance(value, Record):
        return value.asdict()
    raise TypeError(f"JSON cannot serialize {type(value).__name__!r}: {value!r}")


#: Compact separators, ASCII only, NaN/Infinity allowed, keys in field order.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


class Record:
    """A contract record: keyword (or positional, in field order) construction, `asdict()`,
    `dumps()` to JSON bytes and `Cls.loads(bytes)`; equal, ordered and hashed by its fields.
    Declare one with `@record`. A field with a default given None takes its default.

    Examples
    --------
    A record round-trips through the JSON its topic carries:

    >>> tx = Transaction("t-1", 1_700_000_000_000, "u-1", "m-1", amount_cents=10_000,
    ...                  rebate_rate=0.05, kind="payment")
    >>> wire = tx.dumps()
    >>> wire[:50]
    b'{"tx_id":"t-1","ts":1700000000000,"user_id":"u-1",'
    >>> Transaction.loads(wire) == tx
    True
    """

    __slots__ = ()
    #: Field names in declaration order.
    _fields: ClassVar[tuple[str, ...]] = ()
    _field_set: ClassVar[frozenset[str]] = frozenset()
    #: The declared defaults, by field.
    _defaults: ClassVar[dict[str, Any]] = {}
    #: (field, default) for defaults other than None: None given there becomes the default.
    _none_means_default: ClassVar[tuple[tuple[str, Any], ...]] = ()

    def __post_init__(self) -> None:
        for name, default in self._none_means_default:
            if getattr(self, name) is None:
                setattr(self, name, default)

    def __setstate__(self, state: Any) -> None:
        """Unpickling: the `(None, {slot: value})` pickle writes for a slotted object, or the
        attribute dict a checkpoint of a release before issue #19 holds for a Faust record
        (`streams.processor.load_checkpoint` finds the class for it)."""
        values = state[1] if isinstance(state, tuple) else state
        for name in self._fields:
            setattr(self, name, values[name] if name in values else self._defaults[name])

    def asdict(self) -> dict[str, Any]:
        """The fields in declaration order (a new dict; the values themselves, not copies)."""
        raise NotImplementedError  # made by `@record`

    def _row(self) -> list[Any]:
        raise NotImplementedError  # made by `@record`

    def dumps(self) -> bytes:
        """The record as its topic carries it: the JSON object of `asdict()`.

        Returns
        -------
        bytes
            Compact JSON, keys in field order, ASCII only.

        Examples
        --------
        >>> Signup("u-1", 1_700_000_000_000, device_id="d-1").dumps()
        b'{"user_id":"u-1","ts":1700000000000,"referrer_id":null,"device_id":"d-1","ip":null,"phone_hash":null}'
        """
        return _ENCODER.encode(self.asdict()).encode()

    @classmethod
    def loads(cls, data: bytes | str) -> Self:
        """The record `dumps` wrote.

        Parameters
        ----------
        data : bytes or str
            A JSON object of the record's fields.

        Returns
        -------
        Record
            Of this class. Unknown keys are ignored; a missing key with a default (or null
            there) takes the default.

        Raises
        ------
        TypeError
            A required field is missing. Only for our own JSON: untrusted input goes through
            `rebate_guard.contract.validation`.

        Examples
        --------
        >>> Signup.loads(b'{"user_id": "u-1", "ts": 1700000000000, "channel": "ads"}')
        Signup(user_id='u-1', ts=1700000000000, referrer_id=None, device_id=None, ip=None,
               phone_hash=None)
        """
        if not isinstance(data, str):
            data = bytes(data).decode()
        values = json.loads(data)
        known = cls._field_set
        return cls(**{name: value for name, value in values.items() if name in known})


def _method(name: str, source: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(f"def {name}(self):\n    return {source}\n", namespace)
    return namespace[name]


RecordT = TypeVar("RecordT", bound=Record)


@dataclass_transform(eq_default=True, order_default=True)
def record(cls: type[RecordT]) -> type[RecordT]:
    """Make a `Record` subclass a slotted dataclass with its field table and its generated
    `asdict` (a dict literal: faster than a loop on every record written)."""
    made = dataclass(slots=True, order=True, unsafe_hash=True)(cls)
    declared = fields(made)  # type: ignore[arg-type]
    names = tuple(f.name for f in declared)
    made._fields = names
    made._field_set = frozenset(names)
    made._defaults = {f.name: f.default for f in declared if f.default is not MISSING}
    made._none_means_default = tuple(
        (name, value) for name, value in made._defaults.items() if value is not None
    )
    made.asdict = _method(  # type: ignore[method-assign]
        "asdict", "{" + ", ".join(f"{n!r}: self.{n}" for n in names) + "}"
    )
    made._row = _method("_row", "[" + ", ".join(f"self.{n}" for n in names) + "]")  # type: ignore[method-assign]
    return made


@record
class Transaction(Record):
    """A payment or a refund; the rebate requested is floor(amount_cents x rebate_rate)."""

    tx_id: str
    ts: int
    user_id: str
    merchant_id: str
    amount_cents: int
    rebate_rate: float
    kind: str
    ref_tx_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    card_id: str | None = None
    merchant_category: str | None = None


@record
class Signup(Record):
    user_id: str
    ts: int
    referrer_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    phone_hash: str | None = None


@record
class Label(Record):
    """Delayed feedback (review, chargeback): ts is when it became known, not the tx's ts."""

    ts: int
    label: str
    source: str
    tx_id: str | None = None
    user_id: str | None = None
    #: Who decided it, for labels from the console's review queue (source `review`).
    reviewer: str | None = None


@record
class PlatformEvent(Record):
    """A money or points flow of the platform (docs/events.md, "platform-events"): which
    fields `kind` requires is `PLATFORM_EVENT_FIELDS`; the rest may be null. `amount_cents`
    is the money or points moved (points count in the minor unit they redeem for), 0 for a
    binding. Keyed by `user_id` (co-partitioned with the user's payments), else
    `merchant_id`, else `event_id`."""

    event_id: str
    ts: int
    kind: str
    amount_cents: int = 0
    user_id: str | None = None
    merchant_id: str | None = None
    #: The payment it belongs to: a settlement's, a commission's, a coupon's use.
    tx_id: str | None = None
    coupon_id: str | None = None
    #: The other user of a points transfer (who receives the points).
    counterparty_id: str | None = None
    #: The merchant's region (the solvency monitor's per-region books); on an event naming
    #: no merchant, the region whose books it counts in (a member's deposit: theirs).
    region: str | None = None
    device_id: str | None = None
    ip: str | None = None


@record
class Decision(Record):
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


@record
class RebateAdjustment(Record):
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


@record
class Ring(Record):
    ring_id: str
    kind: str
    users: list[str]
    merchants: list[str]
    devices: list[str]
    score: float
    detected_at: int
    rebate_at_risk_cents: int
    evidence: dict[str, Any]


@record
class SolvencyReading(Record):
    """The solvency of one scope (`platform`, `region:<r>`, `merchant:<m>`) at the end of one
    period of event time: its books so far and what the period moved. Money in cents."""

    scope: str
    period_start: int
    period_end: int
    #: Points granted and not redeemed, expired or taken back: what the platform owes.
    liability_cents: int
    #: Money in so far: merchants' settlements, and new money (top-ups).
    merchant_funding_cents: int
    new_money_cents: int
    #: Money out so far: redeemed points and retention commissions paid.
    payouts_cents: int
    #: Funding less payouts: what is there to meet the liability.
    distributable_cents: int
    #: liability / distributable; None when nothing is distributable (then the level is
    #: critical if anything is owed).
    ratio: float | None
    level: str  # SOLVENT, WARNING or CRITICAL (the policy's lines)
    #: Of this period's payouts, the share that merchant funding did not cover.
    new_money_share: float
    #: How much the money coming in must grow, per period, to bring the ratio back to the
    #: warning line as the liability stands (0: it holds already; None: the period brought
    #: no money in, so no growth of it can).
    growth_needed: float | None


@record
class PlatformAlert(Record):
    """A scope's solvency crossing a policy line (or coming back under the warning line)."""

    alert_id: str  # <scope>:<level>:<period_start>: one per scope, level and period
    ts: int  # the period's end, in event time
    scope: str
    level: str  # WARNING, CRITICAL, or SOLVENT (recovered)
    previous_level: str
    ratio: float | None
    line: float  # the policy line crossed
    liability_cents: int
    distributable_cents: int
    new_money_share: float
    growth_needed: float | None
    message: str


@record
class FeatureVector(Record):
    """What the models saw for one transaction: the training log, free of serving skew."""

    tx_id: str
    ts: int
    features: dict[str, Any]


@record
class DeadLetter(Record):
    """An input event that could not be used, with why; `payload` is the raw bytes as text."""

    topic: str
    partition: int
    offset: int
    reason: str
    payload: str
    received_at: int


def build(cls: type[RecordT], **values: Any) -> RecordT:
    """A record from values that are already validated, every field given.

    `cls(**values)` that refuses a missing field rather than defaulting it. Only for values
    that passed `rebate_guard.contract.validation` or come from our own code.

    Parameters
    ----------
    cls : type
        The record class.
    **values
        One value per field, by name.

    Returns
    -------
    Record
        A `cls`.

    Raises
    ------
    TypeError
        A field is missing or unknown; the message names them.

    Examples
    --------
    >>> build(Signup, user_id="u-1", ts=1_700_000_000_000)
    Traceback (most recent call last):
    ...
    TypeError: Signup: missing ['device_id', 'ip', 'phone_hash', 'referrer_id'], unexpected []
    """
    if values.keys() != cls._field_set:
        missing = cls._field_set - values.keys()
        extra = values.keys() - cls._field_set
        raise TypeError(f"{cls.__name__}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return cls(**values)


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


def to_row(record: Record) -> list[Any]:
    """A record's field values in declaration order: the compact form of events on the
    pipeline's internal topics (`from_row` reads it back).

    Examples
    --------
    >>> to_row(Signup("u-1", 1_700_000_000_000, referrer_id="u-0"))
    ['u-1', 1700000000000, 'u-0', None, None, None]
    """
    return record._row()


def from_row(cls: type[RecordT], row: list[Any]) -> RecordT:
    """The record `to_row` wrote; only for rows our own workers produced.

    A row written before optional fields were added to the record's end (a worker of the
    previous release, during a rolling upgrade) takes their defaults.

    Examples
    --------
    >>> from_row(Signup, ["u-1", 1_700_000_000_000, "u-0"])
    Signup(user_id='u-1', ts=1700000000000, referrer_id='u-0', device_id=None, ip=None,
           phone_hash=None)
    """
    names = cls._fields
    if len(row) < len(names):
        defaults = cls._defaults
        row = [*row, *(defaults[name] for name in names[len(row) :])]
    return build(cls, **dict(zip(names, row, strict=True)))


def requested_rebate_cents(amount_cents: int, rebate_rate: float) -> int:
    """floor(amount_cents x rebate_rate), exact: the rate is honoured to six decimal places.

    Multiplying by the float directly would floor 100 x 0.29 to 28; scaling the rate to an
    integer number of millionths first keeps the arithmetic in integers.

    Examples
    --------
    >>> int(100 * 0.29), requested_rebate_cents(100, 0.29)
    (28, 29)
    """
    rate_ppm = round(rebate_rate * 1_000_000)
    return (amount_cents * rate_ppm) // 1_000_000


def scale_cents(cents: int, weight: float) -> int:
    """floor(cents x weight) in integers (weight honoured to six decimal places).

    Examples
    --------
    >>> scale_cents(500, 0.82), scale_cents(999, 0.5)
    (410, 499)
    """
    return (cents * round(weight * 1_000_000)) // 1_000_000


#: A payment at the binder is a purchase, and ends the lead, when it is at least this share
#: of what the user pays on average (its payments so far, the led one included, so that an
#: account with nothing else, a token then the big payment, is weighed against that). A
#: regular's visit is one of its own purchases, and a person's prices spread log-normally
#: (within a category about x2 either way, category medians within x5): its visit is seldom
#: more than ten times under its average, and tens of times only when that average is a big
#: purchase and little else (a new customer bound at a cheap shop's counter, shopping big in
#: the mall next). A token paid to fake a visit (an accomplice paying a cent at the binder
#: before each big payment elsewhere; the money goes to its own merchant anyway) is as small
#: as it can be, its average being its big payments: hundreds to thousands of times under.
#: On tuning worlds 0, 1, 4, 6, 8 and 9 (random profile, 20k) the legit visits before a big
#: payment elsewhere were 1/19 of their user's average or more, the tokens 1/45 or less:
#: 1/30 is between them in orders of magnitude. To pass, an accomplice would pay at the
#: binder a sizeable share of its big payments each time, which cycles the commission
#: (`user_commission_cycle_share_30d`). Relative to the user, not to the binder's ticket:
#: the user stage knows the user's payments, not the merchant's. Where the graph asks whether
#: a bound user buys from its binder (`graph.entity_graph.Binding`) the share is the same, on
#: its own inputs: the largest payment there since the first binding, against the user's mean
#: over the graph's window (the feature: since the latest binding, against the profile's mean).
VISIT_SHARE = 1 / 30


def is_visit(cents: int, typical_cents: float) -> bool:
    """Whether a payment of `cents` at a user's binder is a purchase, not a token paid to fake
    a visit: at least `VISIT_SHARE` of what the user pays on average (`typical_cents`, the
    payment included).

    Examples
    --------
    >>> is_visit(1_500, 12_000.0), is_visit(1, 50_000.0)
    (True, False)
    """
    return cents >= VISIT_SHARE * typical_cents
