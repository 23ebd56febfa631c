"""The rebate ledger: what happens to each rebate after its decision, in exact cents.

Every payment's rebate starts as its decision left it: `requested` split into `granted`
(paid now), `held` (escrowed) and `voided` (scaled away or blocked). Then:

- a **fraud label** (on the transaction, or on its user) voids a held rebate and claws back
  a granted one (within `clawback_within_days` of the payment);
- a **legit label** releases a held rebate (it is paid);
- a **refund** within `refund_voids_within_hours` of its payment voids the rebate: held is
  voided, granted is clawed back (pay, take the rebate, refund: the cash-out pattern);
- a hold no label resolved within `hold_timeout_hours` is released or voided, as the
  policy says (`hold_timeout_action`), when event time passes it.

Each change is a `RebateAdjustment` with the balances after it, so for every transaction
granted + held + voided = requested at every step, and the ledger can be rebuilt from the
decisions and the adjustments alone. A hold is resolved at most once (`<tx_id>:hold`) and a
grant clawed back at most once (`<tx_id>:clawback`): those ids make adjustments idempotent
downstream, as tx_ids make decisions.

`(state, event) -> (state, adjustments)`, pure: the user shard that decided a transaction
keeps its entry (labels and refunds reach it there), and replay runs the same code.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from rebate_guard.contract.records import (
    CLAWBACK,
    FRAUD,
    HOLD,
    PAYMENT,
    RELEASE,
    VOID,
    Decision,
    Label,
    RebateAdjustment,
    Transaction,
    build,
)
from rebate_guard.core.policy import LedgerTerms
from rebate_guard.core.solvency import Movement

HOLD_SLOT, CLAWBACK_SLOT = "hold", "clawback"
#: A rebate's balances: (requested, granted, held, voided), granted + held + voided = requested.
Balances = tuple[int, int, int, int]


def opening_balances(decision: Decision) -> Balances:
    """How a decision leaves its rebate, before any adjustment: a hold escrows all of it,
    and what is not granted otherwise is voided (scaled away or blocked)."""
    requested, granted = decision.rebate_requested_cents, decision.rebate_granted_cents
    held = requested if decision.action == HOLD else 0
    return requested, granted, held, requested - granted - held


TIMEOUT = "hold_timeout"


class Entry:
    """One payment's rebate, as it stands."""

    __slots__ = (
        "granted",
        "held",
        "hold_until",
        "merchant_id",
        "policy_version",
        "requested",
        "ts",
        "user_id",
        "voided",
    )

    def __init__(self, decision: Decision, hold_until: int | None) -> None:
        self.user_id = decision.user_id
        self.merchant_id: str | None = decision.merchant_id
        self.ts = decision.ts
        self.requested, self.granted, self.held, self.voided = opening_balances(decision)
        self.hold_until = hold_until
        self.policy_version = decision.policy_version

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        names: tuple[str, ...] = self.__slots__
        if len(state) == len(_SLOTS_BEFORE_MERCHANT):  # a checkpoint from before issue #21
            names = _SLOTS_BEFORE_MERCHANT
            self.merchant_id = None  # its movements count in the platform's books alone
        for name, value in zip(names, state, strict=True):
            setattr(self, name, value)


_SLOTS_BEFORE_MERCHANT = tuple(name for name in Entry.__slots__ if name != "merchant_id")


@dataclass
class Ledger:
    #: tx_id -> its entry, in decision order (event time), while it can still change.
    entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    #: user -> their tx_ids with an entry (user-level labels reach all of them).
    by_user: dict[str, list[str]] = field(default_factory=dict)
    #: (hold_until, tx_id) of open holds, soonest first.
    holds: list[tuple[int, str]] = field(default_factory=list)
    #: What the adjustments made and not yet taken moved in the platform's books
    #: (`take_movements`): a release adds to the liability, a clawback takes from it.
    movements: list[Movement] = field(default_factory=list)

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if "movements" not in state:  # a checkpoint from before issue #21
            self.movements = []

    def take_movements(self) -> list[Movement]:
        out, self.movements = self.movements, []
        return out

    def record(self, decision: Decision, terms: LedgerTerms) -> None:
        """A payment's decision (the standing one, after a restart)."""
        if decision.rebate_requested_cents <= 0 or decision.tx_id in self.entries:
            return
        hold_until = None
        if decision.action == HOLD:
            hold_until = decision.ts + terms.hold_timeout_ms
            heapq.heappush(self.holds, (hold_until, decision.tx_id))
        self.entries[decision.tx_id] = Entry(decision, hold_until)
        self.by_user.setdefault(decision.user_id, []).append(decision.tx_id)

    def due(self, now: int, terms: LedgerTerms, *, decided_at: int) -> list[RebateAdjustment]:
        """Event time has reached `now`: holds past their timeout are resolved, and
        entries past the clawback window are settled (forgotten)."""
        out = []
        holds = self.holds
        while holds and holds[0][0] <= now:
            until, tx_id = heapq.heappop(holds)
            entry = self.entries.get(tx_id)
            if entry is None or entry.hold_until != until or not entry.held:
                continue  # resolved since (a label or refund came first)
            kind = RELEASE if terms.hold_timeout_action == RELEASE else VOID
            out.append(self._resolve(tx_id, entry, kind, until, TIMEOUT, decided_at))
        self._settle(now - terms.settled_after_ms)
        return out

    def label(self, label: Label, terms: LedgerTerms, *, decided_at: int) -> list[RebateAdjustment]:
        """A label on a transaction decided here, or on a user whose payments are here."""
        if label.tx_id is not None:
            tx_ids = [label.tx_id] if label.tx_id in self.entries else []
        else:
            tx_ids = list(self.by_user.get(label.user_id or "", ()))
        fraud = label.label == FRAUD
        cause = f"label:{label.label}"
        out = []
        for tx_id in tx_ids:
            entry = self.entries[tx_id]
            if entry.held:
                kind = VOID if fraud else RELEASE
                out.append(self._resolve(tx_id, entry, kind, label.ts, cause, decided_at))
            if fraud and entry.granted and label.ts - entry.ts <= terms.settled_after_ms:
                out.append(self._claw_back(tx_id, entry, label.ts, cause, decided_at))
        return out

    def refund(
        self, tx: Transaction, terms: LedgerTerms, *, decided_at: int
    ) -> list[RebateAdjustment]:
        """A refund: within the window, its payment's rebate is voided."""
        if tx.kind == PAYMENT or tx.ref_tx_id is None:
            return []
        entry = self.entries.get(tx.ref_tx_id)
        if entry is None or tx.ts - entry.ts > terms.refund_window_ms:
            return []
        cause = f"refund:{tx.tx_id}"
        out = []
        if entry.held:
            out.append(self._resolve(tx.ref_tx_id, entry, VOID, tx.ts, cause, decided_at))
        if entry.granted:
            out.append(self._claw_back(tx.ref_tx_id, entry, tx.ts, cause, decided_at))
        return out

    def follow(self, adjustment: RebateAdjustment) -> None:
        """Take the balances of an adjustment that was published before (it stands, as a
        standing decision does): after a restart a re-run may have reached another."""
        entry = self.entries.get(adjustment.tx_id)
        if entry is not None:
            entry.granted = adjustment.granted_cents
            entry.held = adjustment.held_cents
            entry.voided = adjustment.voided_cents

    # --- moves ----------------------------------------------------------------------------
    def _resolve(
        self, tx_id: str, entry: Entry, kind: str, ts: int, cause: str, decided_at: int
    ) -> RebateAdjustment:
        cents = entry.held
        entry.held = 0
        if kind == RELEASE:
            entry.granted += cents
            self._moved(f"{tx_id}:{HOLD_SLOT}", entry, ts, cents)
        else:
            entry.voided += cents
        return _adjustment(tx_id, HOLD_SLOT, entry, kind, cents, ts, cause, decided_at)

    def _claw_back(
        self, tx_id: str, entry: Entry, ts: int, cause: str, decided_at: int
    ) -> RebateAdjustment:
        cents = entry.granted
        entry.granted = 0
        entry.voided += cents
        self._moved(f"{tx_id}:{CLAWBACK_SLOT}", entry, ts, -cents)
        return _adjustment(tx_id, CLAWBACK_SLOT, entry, CLAWBACK, cents, ts, cause, decided_at)

    def _moved(self, adjustment_id: str, entry: Entry, ts: int, liability: int) -> None:
        if liability:
            self.movements.append(
                Movement(adjustment_id, ts, entry.merchant_id, None, liability_cents=liability)
            )

    def _settle(self, before: int) -> None:
        """Forget entries paid before `before` with nothing left open (decision order is
        event-time order: the old ones lead)."""
        entries = self.entries
        while entries:
            tx_id, entry = next(iter(entries.items()))
            if entry.ts >= before or entry.held:
                return
            del entries[tx_id]
            mine = self.by_user[entry.user_id]
            mine.remove(tx_id)  # the oldest of the user's: at the front
            if not mine:
                del self.by_user[entry.user_id]


def _adjustment(
    tx_id: str,
    slot: str,
    entry: Entry,
    kind: str,
    cents: int,
    ts: int,
    cause: str,
    decided_at: int,
) -> RebateAdjustment:
    return build(
        RebateAdjustment,
        adjustment_id=f"{tx_id}:{slot}",
        tx_id=tx_id,
        user_id=entry.user_id,
        ts=ts,
        kind=kind,
        cents=cents,
        cause=cause,
        requested_cents=entry.requested,
        granted_cents=entry.granted,
        held_cents=entry.held,
        voided_cents=entry.voided,
        policy_version=entry.policy_version,
        decided_at=decided_at,
    )


def reconcile(
    decisions: Iterable[Decision], adjustments: Iterable[RebateAdjustment]
) -> dict[str, Balances]:
    """Rebuild every transaction's rebate from its decision and its adjustments (in the
    order they were made) and check each step: an adjustment moves exactly what it says,
    from where it says, and its balances are what the moves give. Returns tx_id ->
    (requested, granted, held, voided); `LedgerMismatch` names the first step that is off."""
    books = {d.tx_id: list(opening_balances(d)) for d in decisions}
    slots: set[str] = set()
    for a in adjustments:
        book = books.get(a.tx_id)
        if book is None:
            raise LedgerMismatch(f"{a.adjustment_id}: no decision for {a.tx_id}")
        if a.adjustment_id in slots:
            raise LedgerMismatch(f"{a.adjustment_id}: applied twice")
        slots.add(a.adjustment_id)
        source = 1 if a.kind == CLAWBACK else 2  # granted, or held
        target = 1 if a.kind == RELEASE else 3  # granted, or voided
        if book[source] != a.cents:
            raise LedgerMismatch(f"{a.adjustment_id}: moves {a.cents} of {book[source]}")
        book[source] -= a.cents
        book[target] += a.cents
        after = [a.requested_cents, a.granted_cents, a.held_cents, a.voided_cents]
        if book != after:
            raise LedgerMismatch(f"{a.adjustment_id}: balances {after}, the moves give {book}")
    for tx_id, (requested, granted, held, voided) in books.items():
        if granted + held + voided != requested or min(granted, held, voided) < 0:
            raise LedgerMismatch(f"{tx_id}: {granted} + {held} + {voided} != {requested}")
    return {t: (b[0], b[1], b[2], b[3]) for t, b in books.items()}


class LedgerMismatch(AssertionError):
    """Decisions and adjustments that do not add up."""
