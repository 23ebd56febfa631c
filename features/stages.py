"""The feature engine's two keyed stages, so that N workers can share the work exactly.

A transaction's features come from state under several keys: its user, merchant, category,
device, IP, card and referrer. No one partitioning of the input puts all of them together, so
the engine runs as two stages (the README's "Partitioning" section says why this shape):

- the **user stage**, keyed by user_id (the key of the input topics): the transaction's own
  features, the user family, and the context the other families need from the user
  (`TxContext`: account age, signup time, referrer);
- the **entity stage**, keyed by entity: the merchant, category, device, IP, card and referral
  families. Each family reads and writes only the state under its own key, so a partition of
  the entity stage may hold any subset of the keys. A transaction goes to the partition of
  each of its keys with the families whose key lives there (`transaction_routes`); a first
  signup to its device, IP and referrer; a label to every partition (it names only a tx_id,
  and each partition knows its own merchants' payments).

`families` masks say which families a call computes; the values come back in `FAMILIES`
order, so the caller splices the parts into `FEATURE_NAMES` order. In one process (replay,
the oracle, the tests) one `EntityStage` computes every family, and `FeatureEngine` is just
the two stages side by side. Both layouts run the same family code on the same per-key event
sequence, so they give the same numbers (tests/unit/test_stages.py).
"""

from __future__ import annotations

import copy
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from features.changes import ChangedKeys, MarksChanges
from features.identity import card_family, device_family, ip_family
from features.merchant import CategoryFamily, MerchantFamily
from features.platform import (
    CYCLE_MS,
    PLATFORM_NOTHING_KNOWN,
    BinderFamily,
    PlatformContext,
    UserPlatformFamily,
    device_claims_family,
    ip_claims_family,
)
from features.referral import ReferralFamily
from features.rows import FeatureRow, Value, feature_row
from features.user import TxContext, UserFamily
from rebate_guard.contract.records import (
    PAYMENT,
    RETENTION_COMMISSION,
    Label,
    PlatformEvent,
    Signup,
    Transaction,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS

F = TypeVar("F")
# 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday = 0).
_EPOCH_WEEKDAY = 3


@feature_row
class TransactionFeatures(FeatureRow):
    """The transaction's own features."""

    amount_cents: Value
    rebate_rate: Value
    is_refund: Value
    #: In the platform's local time: 00:00-06:00, and Saturday or Sunday.
    is_night: Value
    is_weekend: Value


#: The entity-stage families, in vector order, and the bit of each in a `families` mask.
FAMILIES = (
    "merchant",
    "category",
    "device",
    "ip",
    "card",
    "referral",
    "binder",
    "device_claims",
    "ip_claims",
)
MERCHANT, CATEGORY, DEVICE, IP, CARD, REFERRAL, BINDER, DEVICE_CLAIMS, IP_CLAIMS = (
    1 << i for i in range(len(FAMILIES))
)
ALL_FAMILIES = (1 << len(FAMILIES)) - 1
#: Families a first signup feeds (the referral family: the referrer's downline).
SIGNUP_FAMILIES = DEVICE | IP | REFERRAL
#: Families a platform event feeds (bindings and coupon claims: the device and IP they were
#: made on; bindings and commissions: the binder).
PLATFORM_FAMILIES = DEVICE_CLAIMS | IP_CLAIMS | BINDER
#: A claims family's keys live where its identity family's do (the same device or IP), so a
#: transaction reaches both in one message.
_HASHED_AS = {DEVICE_CLAIMS: DEVICE, IP_CLAIMS: IP}


def family_names() -> tuple[tuple[str, ...], ...]:
    """The feature names of each entity-stage family, in `FAMILIES` order."""
    return (
        MerchantFamily.names,
        CategoryFamily.names,
        device_family().names,
        ip_family().names,
        card_family().names,
        ReferralFamily.names,
        BinderFamily.names,
        device_claims_family().names,
        ip_claims_family().names,
    )


FAMILY_WIDTHS = tuple(len(names) for names in family_names())
#: How many values the user stage gives: the transaction's own, the user's, its platform's.
_USER_STAGE_WIDTH = (
    len(TransactionFeatures.names) + len(UserFamily.names) + len(UserPlatformFamily.names)
)
#: Where the user family's account age and `signed_up_at_till` sit in the user stage's values.
_ACCOUNT_AGE_AT = len(TransactionFeatures.names) + UserFamily.names.index("user_account_age_s")
_TILL_AT = len(TransactionFeatures.names) + UserFamily.names.index("signed_up_at_till")
#: Families added after checkpoints were written, with their values for a transaction without
#: their key. A transaction routed before such a family existed (in flight in a checkpoint
#: from then) gets no part for it; it had no key for it either (nothing fed the family then),
#: so `splice` fills in those values.
ADDED_FAMILIES: dict[int, tuple[float | None, ...]] = {
    BINDER: BinderFamily.unbound,
    DEVICE_CLAIMS: (None, None),
    IP_CLAIMS: (None, None),
}


class UserStage(MarksChanges):
    """The user-keyed stage: the transaction's own features and the user family."""

    def __init__(self, utc_offset_minutes: int, user_ttl_ms: int) -> None:
        self.user = UserFamily(user_ttl_ms)
        self.platform = UserPlatformFamily(user_ttl_ms)
        self._offset_ms = utc_offset_minutes * 60_000
        #: The users touched since a checkpoint last asked (None: not tracked).
        self.changes: ChangedKeys | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint; one from before platform events starts with none."""
        super().__setstate__(state)
        if "platform" not in state:
            self.platform = UserPlatformFamily(self.user.ttl_ms)

    def signup(self, event: Signup) -> bool:
        """True for the user's first signup, which the other families then see; a repeated
        or redelivered one changes nothing."""
        if self.changes is not None:
            self.changes.users.add(event.user_id)
        return self.user.signup(event)

    def transaction(self, tx: Transaction) -> tuple[list[Value], TxContext]:
        """The transaction and user features of `tx` (learning it), and its user context."""
        own = TransactionFeatures()
        own.amount_cents = tx.amount_cents
        own.rebate_rate = tx.rebate_rate
        own.is_refund = 0 if tx.kind == PAYMENT else 1
        local = tx.ts + self._offset_ms
        own.is_night = 1 if local % DAY_MS < 6 * HOUR_MS else 0
        own.is_weekend = 1 if (local // DAY_MS + _EPOCH_WEEKDAY) % 7 >= 5 else 0
        if self.changes is not None:
            self.changes.users.add(tx.user_id)
        platform = self.platform
        user, context = self.user.transaction(tx)
        context.binder = platform.binder(tx.user_id, tx.ts)
        profile = self.user.profiles[tx.user_id]  # the user's, with `tx` learnt
        typical = profile.mean if profile.n else None
        values = platform.transaction(tx, typical_cents=typical)
        return [*own.values(), *user.values(), *values], context

    def platform_event(self, event: PlatformEvent) -> PlatformContext | None:
        """Learns a platform event of the user's; the context its entity families need,
        or None when no feature reads it (no user, or a kind none learns)."""
        user_id = event.user_id
        if user_id is None:
            return None
        ts = event.ts
        paid_at = None
        if event.kind == RETENTION_COMMISSION and event.merchant_id is not None:
            paid_at = self.user.last_paid_at(user_id, event.merchant_id)
        signup = self.referral(user_id, ts)[1]
        context = PlatformContext(
            account_age_ms=None if signup is None else ts - signup,
            cycled=paid_at is not None and paid_at > ts - CYCLE_MS,
        )
        if not self.platform.platform_event(event, context):
            return None
        if self.changes is not None:
            self.changes.users.add(user_id)
        return context

    def referral(self, user_id: str, ts: int) -> tuple[str | None, int | None]:
        """The user's (referrer, signup ts) as `transaction` at `ts` would see them (a
        profile idle past the TTL restarts empty), changing nothing."""
        profile = self.user.profiles.get(user_id)
        if profile is None or profile.last_ts <= ts - self.user.ttl_ms:
            return None, None
        return profile.referrer, profile.signup_ts

    def peek(
        self, tx: Transaction, earlier: Sequence[Transaction] = ()
    ) -> tuple[list[float | None], TxContext]:
        """What `transaction` returns for `tx` now, changing nothing (see `detached`), had
        the user's `earlier` transactions (not in the state yet) been applied first."""
        scratch = copy.copy(self)
        scratch.user = detached(self.user, tx.user_id, states=("profiles", "activity"))
        scratch.platform = detached(self.platform, tx.user_id)
        for other in earlier:
            scratch.transaction(other)
        return scratch.transaction(tx)

    def sweep(self, now_ms: int) -> int:
        return self.user.sweep(now_ms) + self.platform.sweep(now_ms)


class EntityStage(MarksChanges):
    """The entity-keyed families, for whichever keys this partition holds."""

    def __init__(self, user_ttl_ms: int) -> None:
        self.merchant = MerchantFamily()
        self.category = CategoryFamily()
        self.device = device_family()
        self.ip = ip_family()
        self.card = card_family()
        self.referral = ReferralFamily(user_ttl_ms)
        self.binder = BinderFamily()
        self.device_claims = device_claims_family()
        self.ip_claims = ip_claims_family()
        #: The keys touched since a checkpoint last asked (None: not tracked).
        self.changes: ChangedKeys | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint; one from before platform events has none of their state."""
        super().__setstate__(state)
        if "binder" not in state:
            self.binder = BinderFamily()
            self.device_claims = device_claims_family()
            self.ip_claims = ip_claims_family()

    def signup(self, event: Signup, families: int = SIGNUP_FAMILIES) -> None:
        """A user's first signup (the user stage filters repeats)."""
        if self.changes is not None:
            self._mark_signup(self.changes, event, families)
        if families & DEVICE:
            self.device.signup(event)
        if families & IP:
            self.ip.signup(event)
        if families & REFERRAL:
            self.referral.signup(event)

    def _mark_signup(self, changes: ChangedKeys, event: Signup, families: int) -> None:
        if families & DEVICE and event.device_id is not None:
            changes.devices.add(event.device_id)
        if families & IP and event.ip is not None:
            changes.ips.add(event.ip)
        if families & REFERRAL and event.referrer_id is not None:
            changes.referrers.add(event.referrer_id)

    def platform_event(
        self, event: PlatformEvent, context: PlatformContext, *, families: int = PLATFORM_FAMILIES
    ) -> None:
        """A platform event the user stage learned (`UserStage.platform_event`), for the
        device, IP and binder families among `families`."""
        if families & DEVICE_CLAIMS:
            self.device_claims.platform_event(event)
        if families & IP_CLAIMS:
            self.ip_claims.platform_event(event)
        if families & BINDER:
            self.binder.platform_event(event, context)

    def label(self, event: Label) -> None:
        if self.changes is not None and event.tx_id is not None:
            merchant = self.merchant.payment_merchant.get(event.tx_id)
            if merchant is not None:
                self.changes.merchants.add(merchant)
        self.merchant.label(event)

    def transaction(
        self,
        tx: Transaction,
        context: TxContext,
        *,
        out: list[float | None],
        families: int = ALL_FAMILIES,
    ) -> None:
        """Appends the features of the `families` of `tx`, in `FAMILIES` order, then learns
        it. `context.depth` must be filled in first when `families` has `REFERRAL`."""
        if self.changes is not None:
            self._mark(self.changes, tx, context, families)
        if families & MERCHANT:
            out += self.merchant.transaction(tx, context.account_age_ms).values()
        if families & CATEGORY:
            out += self.category.transaction(tx).values()
        if families & DEVICE:
            out += self.device.transaction(tx)
        if families & IP:
            out += self.ip.transaction(tx)
        if families & CARD:
            out += self.card.transaction(tx)
        if families & REFERRAL:
            out += self.referral.transaction(tx, context).values()
        if families & BINDER:
            out += self.binder.transaction(tx, context.binder)
        if families & DEVICE_CLAIMS:
            out += self.device_claims.transaction(tx)
        if families & IP_CLAIMS:
            out += self.ip_claims.transaction(tx)

    def _mark(
        self, changes: ChangedKeys, tx: Transaction, context: TxContext, families: int
    ) -> None:
        """Marks the keys `transaction` reads or writes (a read expires windows in place)."""
        if families & MERCHANT:
            changes.merchants.add(tx.merchant_id)
        if families & DEVICE and tx.device_id is not None:
            changes.devices.add(tx.device_id)
        if families & IP and tx.ip is not None:
            changes.ips.add(tx.ip)
        if families & CARD and tx.card_id is not None:
            changes.cards.add(tx.card_id)
        if families & REFERRAL and context.referrer is not None:
            changes.referrers.add(context.referrer)

    def peek(
        self,
        tx: Transaction,
        context: TxContext,
        *,
        families: int = ALL_FAMILIES,
        earlier: Sequence[tuple[Transaction, TxContext]] = (),
    ) -> list[float | None]:
        """What `transaction` appends for `tx` now, changing nothing (see `detached`), had
        the `earlier` transactions (not in the state yet; with their user contexts) been
        applied first (each to the families whose key it shares with `tx`)."""
        scratch = copy.copy(self)
        scratch.merchant = detached(self.merchant, tx.merchant_id)
        scratch.merchant.payment_merchant = {}  # what labels look up: not read by a payment
        scratch.category = detached(self.category, tx.merchant_category)
        scratch.device = detached(self.device, self.device.read(tx))
        scratch.ip = detached(self.ip, self.ip.read(tx))
        scratch.card = detached(self.card, self.card.read(tx))
        scratch.referral = detached(self.referral, context.referrer)
        scratch.binder = detached(self.binder, context.binder)
        scratch.device_claims = detached(self.device_claims, tx.device_id)
        scratch.ip_claims = detached(self.ip_claims, tx.ip)
        for other, its_context in earlier:
            shared = families & self._shared(tx, context, other, its_context)
            if shared:
                scratch.transaction(other, its_context, out=[], families=shared)
        out: list[float | None] = []
        scratch.transaction(tx, context, out=out, families=families)
        return out

    def _shared(
        self, tx: Transaction, context: TxContext, other: Transaction, its: TxContext
    ) -> int:
        """The families (mask) in which `other` has the same key as `tx`."""
        mask = MERCHANT if other.merchant_id == tx.merchant_id else 0
        category = tx.merchant_category
        if category is not None and other.merchant_category == category:
            mask |= CATEGORY
        for bit, family in ((DEVICE, self.device), (IP, self.ip), (CARD, self.card)):
            key = family.read(tx)
            if key is not None and family.read(other) == key:
                mask |= bit
        if mask & DEVICE:
            mask |= DEVICE_CLAIMS
        if mask & IP:
            mask |= IP_CLAIMS
        if context.referrer is not None and its.referrer == context.referrer:
            mask |= REFERRAL
        if context.binder is not None and its.binder == context.binder:
            mask |= BINDER
        return mask

    def sweep(self, now_ms: int) -> int:
        """Forget keys whose windows have all expired (referrers: past the user TTL)."""
        return (
            self.merchant.sweep(now_ms)
            + self.category.sweep(now_ms)
            + self.device.sweep(now_ms)
            + self.ip.sweep(now_ms)
            + self.card.sweep(now_ms)
            + self.referral.sweep(now_ms)
            + self.binder.sweep(now_ms)
            + self.device_claims.sweep(now_ms)
            + self.ip_claims.sweep(now_ms)
        )


def detached(family: F, key: str | None, *, states: tuple[str, ...] = ("state",)) -> F:
    """A copy of `family` holding copies of `key`'s state only, for a `peek`: the same
    family code then computes a transaction's features without changing the real state.
    Reading changes state too (windows expire up to the transaction's ts, which an event
    still in flight with an earlier ts must not find done), hence copies, not views.
    Costs the size of the key's state (see `_clone`)."""
    scratch = copy.copy(family)
    for name in states:
        held: dict[str, Any] = getattr(family, name)
        found = None if key is None else held.get(key)
        mine = {} if found is None else {key: _clone(found)}
        setattr(scratch, name, mine)
    return scratch


_ATOMS = frozenset({int, float, str, bool, bytes, type(None)})
_SLOTS: dict[type, tuple[str, ...]] = {}


def _clone(value: Any) -> Any:
    """A deep copy of feature state, several times faster than pickle or `copy.deepcopy`
    on it (the copy is most of a decision at payment time): containers whose first item
    is immutable (a number, a string, a tuple of those) are copied by the C-level copy of
    the container; the state's containers are uniform, so the first item tells for all.
    Objects are rebuilt slot by slot. tests/unit/test_stages.py checks a peek on clones
    leaves the state byte for byte as it was."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is list or kind is set:
        return value.copy() if _flat(value) else kind(_clone(v) for v in value)
    if kind is dict:
        if _flat(value.values()):
            return value.copy()
        return {k: _clone(v) for k, v in value.items()}
    if kind is deque:
        if _flat(value):
            return deque(value, value.maxlen)
        return deque((_clone(v) for v in value), value.maxlen)
    if kind is tuple:
        if all(type(v) in _ATOMS for v in value):
            return value
        return tuple(_clone(v) for v in value)
    copy_ = object.__new__(kind)
    slots = _SLOTS.get(kind)
    if slots is None:
        slots = _SLOTS[kind] = tuple(
            name for cls in kind.__mro__ for name in getattr(cls, "__slots__", ())
        )
    for name in slots:
        if hasattr(value, name):
            setattr(copy_, name, _clone(getattr(value, name)))
    own = getattr(value, "__dict__", None)
    if own is not None:
        copy_.__dict__.update({k: _clone(v) for k, v in own.items()})
    return copy_


def _flat(items: Iterable[Any]) -> bool:
    """Whether the (uniform) container's items are immutable, judged by its first."""
    for first in items:
        kind = type(first)
        return kind in _ATOMS or (kind is tuple and all(type(v) in _ATOMS for v in first))
    return True


class SweepClock:
    """When a partition sweeps idle keys: every `every_ms` of its own event time. Sweeps
    change no feature (expiry is also checked on read), so partitions need not agree."""

    __slots__ = ("every_ms", "next_ms")

    def __init__(self, every_ms: int) -> None:
        self.every_ms = every_ms
        self.next_ms: int | None = None

    def due(self, ts: int) -> bool:
        if self.next_ms is None:
            self.next_ms = ts + self.every_ms
            return False
        if ts < self.next_ms:
            return False
        self.next_ms = ts + self.every_ms
        return True


def partition_of(family: int, key: str, *, n_partitions: int) -> int:
    """The entity-stage partition of a key: stable across processes and restarts (CRC-32,
    not Python's salted `hash`), and kind-prefixed so that, say, a device and an IP with the
    same string land independently."""
    return zlib.crc32(f"{family}:{key}".encode()) % n_partitions


def transaction_routes(
    tx: Transaction, context: TxContext, *, n_partitions: int
) -> Iterator[tuple[int, int]]:
    """(partition, families) pairs that together cover every family of `tx` once.

    A family whose key is missing (no device, say) reads no state: it goes with the
    merchant's partition, which every transaction visits, so its null values come from the
    same code as everywhere else."""
    home = partition_of(MERCHANT, tx.merchant_id, n_partitions=n_partitions)
    keys = (
        (MERCHANT, tx.merchant_id),
        (CATEGORY, tx.merchant_category),
        (DEVICE, tx.device_id),
        (IP, tx.ip),
        (CARD, tx.card_id),
        (REFERRAL, context.referrer),
        (BINDER, context.binder),
        (DEVICE_CLAIMS, tx.device_id),
        (IP_CLAIMS, tx.ip),
    )
    return _routes(keys, n_partitions=n_partitions, home=home)


def signup_routes(event: Signup, n_partitions: int) -> Iterator[tuple[int, int]]:
    """(partition, families) pairs for a first signup: its device, IP and referrer."""
    referrer = event.referrer_id
    keys = (
        (DEVICE, event.device_id),
        (IP, event.ip),
        (REFERRAL, None if referrer == event.user_id else referrer),
    )
    return _routes(keys, n_partitions=n_partitions)


def platform_routes(event: PlatformEvent, n_partitions: int) -> Iterator[tuple[int, int]]:
    """(partition, families) pairs for a platform event the user stage learned: the device
    and IP it was made on, and the merchant it binds to or pays commission to (families
    a kind does not feed ignore it)."""
    keys = ((DEVICE_CLAIMS, event.device_id), (IP_CLAIMS, event.ip), (BINDER, event.merchant_id))
    return _routes(keys, n_partitions=n_partitions)


def _routes(
    keys: Iterable[tuple[int, str | None]], *, n_partitions: int, home: int | None = None
) -> Iterator[tuple[int, int]]:
    """(partition, families) pairs: each family on its key's partition (the device's and
    IP's claims hashed as the device and IP: they land together), a family without a key on
    `home` (none: nowhere), in the order first reached."""
    routes: dict[int, int] = {}
    for family, key in keys:
        if key is not None:
            partition = partition_of(_HASHED_AS.get(family, family), key, n_partitions=n_partitions)
        elif home is not None:
            partition = home
        else:
            continue
        routes[partition] = routes.get(partition, 0) | family
    return iter(routes.items())


def splice(parts: dict[int, list[float | None]], out: list[float | None]) -> None:
    """Appends partial results (families mask -> values in `FAMILIES` order) to `out` (the
    user stage's values) in vector order. A user stage's values from before the platform
    family (a transaction in flight in a checkpoint from then) are completed with that
    family's values for a user without platform events, as none existed then; and values
    from before `signed_up_at_till` get it: not at a till (0) where the account age is
    known, as the user's restored profile says (`UserProfile.__setstate__`: the payment in
    flight was learnt), else none."""
    if len(out) in (_USER_STAGE_WIDTH - 1, _USER_STAGE_WIDTH - 1 - len(PLATFORM_NOTHING_KNOWN)):
        age = out[_ACCOUNT_AGE_AT]
        out.insert(_TILL_AT, None if age is None else 0.0)
    if len(out) == _USER_STAGE_WIDTH - len(PLATFORM_NOTHING_KNOWN):
        out.extend(PLATFORM_NOTHING_KNOWN)
    pending: list[list[float | None] | None] = [None] * len(FAMILIES)
    for families, values in parts.items():
        at = 0
        for index, width in enumerate(FAMILY_WIDTHS):
            if families & (1 << index):
                pending[index] = values[at : at + width]
                at += width
    for index, part in enumerate(pending):
        if part is not None:
            out.extend(part)
            continue
        added = ADDED_FAMILIES.get(1 << index)
        if added is None:
            raise ValueError(f"no values for the {FAMILIES[index]} family")
        out.extend(added)
