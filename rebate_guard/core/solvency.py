"""The solvency monitor: the platform's books as a stream (docs/economics.md).

Every movement of money or points (`Movement`: a rebate granted, released or clawed back, a
points flow, a settlement, a top-up, a commission) counts in the `platform` scope, and in its
merchant's and that merchant's region's scopes when it names a merchant, or in the region's
alone when it names a region and no merchant (a depositor's top-up). The monitor closes
periods of event time (`SolvencyTerms.period_ms`, aligned to the epoch) and reads each scope
at the end: a `SolvencyReading` per scope, and a `PlatformAlert` where a scope's level differs
from its previous reading's.

`(state, movement) -> (state, outputs)`, pure and picklable: replay and the stream feed it
the same movements in the same event-time order and get the same readings, byte for byte.
Within a period the order does not matter at all (the books are sums, and a merchant's region
is the one of its latest movement by (ts, movement_id)), so any order that respects the
periods gives the same outputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from rebate_guard.contract.records import (
    CRITICAL,
    MERCHANT_SETTLEMENT,
    POINTS_REDEEM,
    POINTS_TRANSFER,
    POOL_TOPUP,
    RETENTION_COMMISSION,
    SOLVENCY_LEVELS,
    SOLVENT,
    WARNING,
    PlatformAlert,
    PlatformEvent,
    Record,
    SolvencyReading,
    build,
    record,
)
from rebate_guard.core.policy import SolvencyTerms

__all__ = [
    "PLATFORM",
    "UNKNOWN_REGION",
    "Movement",
    "SolvencyMonitor",
    "SolvencyTerms",
    "level_of",
    "merchant_scope",
    "platform_movement",
    "region_scope",
]

PLATFORM = "platform"
#: The region of a merchant no movement has named a region for yet.
UNKNOWN_REGION = "unknown"


def region_scope(region: str) -> str:
    return f"region:{region}"


MERCHANT_PREFIX = "merchant:"


def merchant_scope(merchant_id: str) -> str:
    return f"{MERCHANT_PREFIX}{merchant_id}"


@record
class Movement(Record):
    """What one decision, adjustment or platform event moved in the books, in cents (points
    in the unit they redeem for); signed: a clawback or a redemption lowers the liability.
    `movement_id` is its cause's id (tx_id, adjustment_id, event_id)."""

    movement_id: str
    ts: int
    #: The merchant whose scope (and region's) it counts in; None: the platform's, and the
    #: region's if it names one.
    merchant_id: str | None
    #: With a merchant: the merchant's region, when the cause carried it (the monitor learns
    #: it). Without: the region whose books it counts in (a depositor's), None: none.
    region: str | None
    liability_cents: int = 0
    merchant_funding_cents: int = 0
    new_money_cents: int = 0
    payouts_cents: int = 0

    def moves_money(self) -> bool:
        return bool(
            self.liability_cents
            or self.merchant_funding_cents
            or self.new_money_cents
            or self.payouts_cents
        )


def platform_movement(event: PlatformEvent, *, points_moved: int) -> Movement | None:
    """What a platform event moves in the books (docs/economics.md, the table), given how
    much it moved its user's points (`PointsBooks.take`: + granted, - redeemed, transferred
    or expired as allowed). None when it moves nothing and teaches no merchant's region.

    Examples
    --------
    >>> redeem = PlatformEvent("e-1", 1_700_000_000_000, "points_redeem", 300, user_id="u-1",
    ...                        merchant_id="m-2", region="east")
    >>> platform_movement(redeem, points_moved=-300)
    Movement(movement_id='e-1', ts=1700000000000, merchant_id='m-2', region='east',
             liability_cents=-300, merchant_funding_cents=0, new_money_cents=0,
             payouts_cents=300)
    """
    kind, amount = event.kind, event.amount_cents
    # A transfer's receiving side is the platform's points_grant to the receiver: no
    # merchant, and no region either (the platform's books alone, as the grant's).
    transfer = kind == POINTS_TRANSFER
    merchant = None if transfer else event.merchant_id
    movement = Movement(
        event.event_id,
        event.ts,
        merchant,
        None if transfer else event.region,
        liability_cents=points_moved,
        merchant_funding_cents=amount if kind == MERCHANT_SETTLEMENT else 0,
        new_money_cents=amount if kind == POOL_TOPUP else 0,
        payouts_cents=(
            -points_moved
            if kind == POINTS_REDEEM
            else amount
            if kind == RETENTION_COMMISSION
            else 0
        ),
    )
    if movement.moves_money() or (merchant is not None and event.region is not None):
        return movement
    return None


class Books:
    """One scope's figures: so far, and moved in the open period (money in and out)."""

    __slots__ = (
        "funding",
        "liability",
        "new_money",
        "payouts",
        "period_funding",
        "period_new_money",
        "period_payouts",
    )

    def __init__(self) -> None:
        self.liability = self.funding = self.new_money = self.payouts = 0
        self.period_funding = self.period_new_money = self.period_payouts = 0

    def take(self, movement: Movement) -> None:
        self.liability += movement.liability_cents
        self.funding += movement.merchant_funding_cents
        self.new_money += movement.new_money_cents
        self.payouts += movement.payouts_cents
        self.period_funding += movement.merchant_funding_cents
        self.period_new_money += movement.new_money_cents
        self.period_payouts += movement.payouts_cents

    def add(self, other: Books, sign: int) -> None:
        """Adds (sign 1) or removes (sign -1) `other`'s figures: a merchant changing region
        takes its books along."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))

    def new_period(self) -> None:
        self.period_funding = self.period_new_money = self.period_payouts = 0

    @property
    def distributable(self) -> int:
        return self.funding + self.new_money - self.payouts


def level_of(liability: int, distributable: int, *, terms: SolvencyTerms) -> str:
    """`critical` at or past the critical line, `warning` at or past the warning line, else
    `ok`, compared in integers; with nothing distributable, critical if anything is owed.

    Examples
    --------
    >>> terms = SolvencyTerms()
    >>> [level_of(owed, 100, terms=terms) for owed in (299, 300, 500)]
    ['ok', 'warning', 'critical']
    >>> level_of(1, 0, terms=terms), level_of(0, -5, terms=terms)
    ('critical', 'ok')
    """
    if distributable <= 0:
        return CRITICAL if liability > 0 else SOLVENT
    for level, line in ((CRITICAL, terms.critical_line), (WARNING, terms.warning_line)):
        if liability * line.denominator >= line.numerator * distributable:
            return level
    return SOLVENT


def reading_of(
    scope: str, books: Books, *, start: int, end: int, terms: SolvencyTerms
) -> SolvencyReading:
    """The reading of `books` for the period [start, end) (docs/economics.md)."""
    liability, distributable = books.liability, books.distributable
    level = level_of(liability, distributable, terms=terms)
    paid = books.period_payouts
    uncovered = max(0, paid - books.period_funding)
    money_in = books.period_funding + books.period_new_money
    if money_in > 0:
        line = terms.warning_line
        short = max(0, liability * line.denominator - distributable * line.numerator)
        growth: float | None = _rounded(Fraction(short, line.numerator * money_in))
    else:  # no growth of nothing brings it back; nothing is needed if it holds
        growth = None if level != SOLVENT else 0.0
    return build(
        SolvencyReading,
        scope=scope,
        period_start=start,
        period_end=end,
        liability_cents=liability,
        merchant_funding_cents=books.funding,
        new_money_cents=books.new_money,
        payouts_cents=books.payouts,
        distributable_cents=distributable,
        ratio=_rounded(Fraction(liability, distributable)) if distributable > 0 else None,
        level=level,
        new_money_share=_rounded(Fraction(uncovered, paid)) if paid else 0.0,
        growth_needed=growth,
    )


def _rounded(value: Fraction) -> float:
    """Six decimals, as the decisions' weights: readable, and the same on every path."""
    return round(float(value), 6)


def alert_of(reading: SolvencyReading, *, previous: str, terms: SolvencyTerms) -> PlatformAlert:
    """The alert for `reading`, whose level differs from the scope's `previous` one."""
    level, scope = reading.level, reading.scope
    warning, critical = float(terms.warning_line), float(terms.critical_line)
    line = critical if level == CRITICAL else warning
    if reading.ratio is not None:
        standing = f"liability {reading.ratio:.2f}x distributable"
    else:
        standing = f"liability {reading.liability_cents} cents, nothing distributable"
    if level == SOLVENT:
        message = f"{scope}: {standing}, back under the warning line {warning:g}:1"
    elif SOLVENCY_LEVELS.index(level) > SOLVENCY_LEVELS.index(previous):
        message = f"{scope}: {standing}, past the {level} line {line:g}:1"
    else:
        message = f"{scope}: {standing}, back under the critical line {critical:g}:1"
    return build(
        PlatformAlert,
        alert_id=f"{scope}:{level}:{reading.period_start}",
        ts=reading.period_end,
        scope=scope,
        level=level,
        previous_level=previous,
        ratio=reading.ratio,
        line=line,
        liability_cents=reading.liability_cents,
        distributable_cents=reading.distributable_cents,
        new_money_share=reading.new_money_share,
        growth_needed=reading.growth_needed,
        message=message,
    )


Output = SolvencyReading | PlatformAlert


@dataclass
class SolvencyMonitor:
    """The books per scope, the open period, and each scope's level at its last reading."""

    terms: SolvencyTerms = field(default_factory=SolvencyTerms)
    #: Start of the period movements go into now (None: none open).
    open_start: int | None = None
    #: End of the last period closed: no movement reopens it.
    closed_until: int | None = None
    #: The readings of the last period closed (what `current` gives when none is open).
    last_readings: dict[str, SolvencyReading] = field(default_factory=dict)
    platform: Books = field(default_factory=Books)
    regions: dict[str, Books] = field(default_factory=dict)
    merchants: dict[str, Books] = field(default_factory=dict)
    #: merchant -> (ts, movement_id, region) of the latest movement that named its region.
    merchant_regions: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    #: region -> how many merchants are in it now: a region is read while it has any (a
    #: merchant's first movements may name no region: it is `unknown` until one does).
    members: Counter[str] = field(default_factory=Counter)
    #: Merchants with a movement in the open period (their scopes are read at its end).
    moved: set[str] = field(default_factory=set)
    #: scope -> its level at its last reading.
    levels: dict[str, str] = field(default_factory=dict)
    #: Regions a movement without a merchant named (a depositor's top-up): their books hold
    #: money of their own, which stays when merchants leave, so they are read from then on.
    funded_regions: set[str] = field(default_factory=set)

    def __setstate__(self, state: dict[str, object]) -> None:
        """Restores a checkpoint; one written before regions held money of their own has
        none."""
        self.__dict__.update(state)
        if "funded_regions" not in state:
            self.funded_regions = set()

    def apply(self, movement: Movement) -> list[Output]:
        """Takes `movement` into the books, after closing the period if it ends at or
        before the movement's ts. A movement older than the open period, or than the last
        period closed (it should not come: the callers feed event-time order), counts in
        the open period, or the next one."""
        out = self.advance(movement.ts)
        if self.open_start is None:
            ts = movement.ts if self.closed_until is None else max(movement.ts, self.closed_until)
            self.open_start = ts - ts % self.terms.period_ms
        merchant = movement.merchant_id
        self.platform.take(movement)
        if merchant is not None:
            books = self.merchants.get(merchant)
            if books is None:
                books = self.merchants[merchant] = Books()
                self.members[UNKNOWN_REGION] += 1
            if movement.region is not None:
                self._locate(merchant, books, movement)
            books.take(movement)
            self._region_books(self.region_of(merchant)).take(movement)
            self.moved.add(merchant)
        elif movement.region is not None:  # the region's own: no merchant takes it along
            self._region_books(movement.region).take(movement)
            self.funded_regions.add(movement.region)
        return out

    def advance(self, now_ms: int) -> list[Output]:
        """Event time has reached `now_ms`: the open period, if it ends at or before it, is
        closed and read."""
        start = self.open_start
        if start is None or start + self.terms.period_ms > now_ms:
            return []
        out = self._read(start, closing=True)
        self.last_readings = {r.scope: r for r in out if isinstance(r, SolvencyReading)}
        self.platform.new_period()
        for books in self.regions.values():
            books.new_period()
        for merchant in self.moved:
            self.merchants[merchant].new_period()
        self.moved = set()
        self.open_start, self.closed_until = None, start + self.terms.period_ms
        return out

    def current(self, *, merchants: bool = True) -> dict[str, SolvencyReading]:
        """Every scope's running figures (the open period's so far, else the last period's
        as closed): for dashboards; changes nothing. Without `merchants`, the platform's and
        the regions' alone (the merchants' are a reading per merchant moved in the period)."""
        start = self.open_start
        if start is None:
            if merchants:
                return dict(self.last_readings)
            return {
                s: r for s, r in self.last_readings.items() if not s.startswith(MERCHANT_PREFIX)
            }
        readings = self._read(start, closing=False, merchants=merchants)
        return {r.scope: r for r in readings if isinstance(r, SolvencyReading)}

    def region_of(self, merchant_id: str) -> str:
        known = self.merchant_regions.get(merchant_id)
        return UNKNOWN_REGION if known is None else known[2]

    def _locate(self, merchant: str, books: Books, movement: Movement) -> None:
        """A movement naming the merchant's region: the latest by (ts, movement_id) sets it,
        whatever order they come in; a merchant that moves takes its books along."""
        region = movement.region
        assert region is not None
        known = self.merchant_regions.get(merchant)
        if known is not None and (known[0], known[1]) >= (movement.ts, movement.movement_id):
            return
        old = UNKNOWN_REGION if known is None else known[2]
        self.merchant_regions[merchant] = (movement.ts, movement.movement_id, region)
        if old != region:
            # Its books are in its old region's (none yet: a merchant new to the monitor).
            left = self.regions.get(old)
            if left is not None:
                left.add(books, -1)
            self._region_books(region).add(books, 1)
            self.members[old] -= 1
            self.members[region] += 1

    def _region_books(self, region: str) -> Books:
        books = self.regions.get(region)
        if books is None:
            books = self.regions[region] = Books()
        return books

    def _read(self, start: int, *, closing: bool, merchants: bool = True) -> list[Output]:
        """The readings of the period from `start`: platform, regions, the merchants that
        moved in it (if `merchants`); closing, with the alerts of the scopes whose level
        changed."""
        terms, end = self.terms, start + self.terms.period_ms
        scopes = [(PLATFORM, self.platform)]
        regions = sorted(r for r in self.regions if self.members[r] > 0 or r in self.funded_regions)
        scopes += [(region_scope(r), self.regions[r]) for r in regions]
        if merchants:
            scopes += [(merchant_scope(m), self.merchants[m]) for m in sorted(self.moved)]
        out: list[Output] = []
        for scope, books in scopes:
            reading = reading_of(scope, books, start=start, end=end, terms=terms)
            out.append(reading)
            if closing:
                previous = self.levels.get(scope, SOLVENT)
                alerting = terms.alert_merchants or not scope.startswith(MERCHANT_PREFIX)
                if reading.level != previous and alerting:
                    out.append(alert_of(reading, previous=previous, terms=terms))
                self.levels[scope] = reading.level
        return out
