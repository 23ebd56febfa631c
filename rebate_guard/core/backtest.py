"""Backtesting a policy draft against the live policy on stored decisions (issue #18).

Per payment decision the worker stores a `HistoryRow`: the payment, what the `Decider` fed
the policy (the trust weight and `decider.PolicyInputs`: whether the classifier was trusted,
the calibrated risk the friction budget counted, the daily caps' inputs, failing closed), the
stored decision, and the payment's label once one arrives. `backtest` re-decides every row
under the live policy and under the draft with the live path's own code
(`decider.apply_policy`: `Policy.rule`, failing closed, the daily caps; in budget mode a
`FrictionBudget` per user partition, fed payments and labels in the contract's event order,
as `Decider.decide` and `Decider.label` feed it), and reports the money each withholds from
fraud and legitimate payments, by merchant category and by action, which decisions change,
and which users the draft newly hits.

What is re-decided and what is not: the weight, the model's trust and the features are the
stored ones (a policy does not change them); the friction budget's cuts and the user's daily
cap are recomputed from the rows under each policy; state that is not in the rows (payments
and labels before the first row, other shards' grants, decisions made at payment time with
payments still in flight, earlier policy versions) is not, and `agreement` (re-deciding under
the live policy gives the stored action) measures how much that matters. docs/policy.md,
"Backtesting a draft".

Pure: no I/O; rows in, a report out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Unpack

from features.windows import PaymentLog
from rebate_guard.contract.order import KIND_RANK
from rebate_guard.contract.records import (
    ACTIONS,
    FRAUD,
    LABEL_VALUES,
    LEGIT,
    PAYMENT,
    Decision,
    Label,
    Transaction,
    build,
)
from rebate_guard.contract.time import DAY_MS
from rebate_guard.core.budget import FrictionBudget
from rebate_guard.core.decider import (
    FAIL_CLOSED_GRAPH,
    FAIL_CLOSED_MODEL,
    MAX_REMEMBERED_FEATURES,
    PolicyInputs,
    apply_policy,
    record_in_budget,
)
from rebate_guard.core.policy import Policy

#: The key of payments with no merchant category in `by_category`.
NO_CATEGORY = "(none)"
UNLABELLED = "unlabelled"
LABEL_KINDS = (FRAUD, LEGIT, UNLABELLED)
#: How many newly hit users (and disagreeing rows) a report names.
TOP = 20
#: The first element of a row's JSON: its layout. Fields are only ever appended (with a
#: default), so a row written by an older worker still reads.
ROW_FORMAT = 1


@dataclass(frozen=True)
class HistoryRow:
    """One payment decision as stored for backtests: enough to re-apply any policy."""

    # The payment (what lists, campaigns and categories look at).
    tx_id: str
    ts: int
    user_id: str
    merchant_id: str
    amount_cents: int
    rebate_rate: float
    merchant_category: str | None
    device_id: str | None
    card_id: str | None
    ip: str | None
    # What the Decider fed the policy.
    trust_weight: float
    trusted: bool
    calibrated_risk: float
    user_granted_24h: int
    device_rebate_requested_24h: int | None
    #: The model or the graph could not score it (the decision failed closed unless a block
    #: list blocked it).
    failed: bool
    fail_closed_action: str
    #: The user partition (shard) that decided it: each has its own friction budget.
    partition: int
    # The stored decision.
    action: str
    requested_cents: int
    granted_cents: int
    threshold_version: str
    policy_version: str
    # The label, once one arrived (`labelled`).
    label: str | None = None
    label_ts: int | None = None

    def to_json(self) -> bytes:
        """Compact JSON: `[ROW_FORMAT, value, ...]` in field order."""
        values = [ROW_FORMAT, *(getattr(self, name) for name in _ROW_FIELDS)]
        return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> HistoryRow:
        values = json.loads(data)
        if not isinstance(values, list) or not values or values[0] != ROW_FORMAT:
            raise ValueError(f"not a history row of format {ROW_FORMAT}: {str(data)[:80]}")
        if len(values) - 1 > len(_ROW_FIELDS):
            raise ValueError(f"a history row with {len(values) - 1} values: a newer format?")
        try:
            return cls(*values[1:])
        except TypeError:
            raise ValueError(f"a history row with too few values: {str(data)[:80]}") from None

    def labelled(self, label: str, ts: int) -> HistoryRow:
        """This row with `label` (at `ts`) if it says more than the one it has: a fraud label
        replaces a legitimate one (the friction budget counts fraud from the fraud label on);
        of two alike, the earlier stands."""
        if label not in LABEL_VALUES:
            raise ValueError(f"label: expected one of {LABEL_VALUES}, got {label!r}")
        if (
            self.label is None
            or self.label_ts is None
            or (label == FRAUD and self.label != FRAUD)
            or (label == self.label and ts < self.label_ts)
        ):
            return replace(self, label=label, label_ts=ts)
        return self

    def transaction(self) -> Transaction:
        """The payment as the policy sees it."""
        payment = {name: getattr(self, name) for name in PAYMENT_FIELDS}
        return build(Transaction, kind=PAYMENT, ref_tx_id=None, **payment)


_ROW_FIELDS = tuple(f.name for f in fields(HistoryRow))
#: The fields a row copies from its payment (all of a payment's but `kind` and `ref_tx_id`).
PAYMENT_FIELDS = _ROW_FIELDS[: _ROW_FIELDS.index("ip") + 1]


def history_row(
    tx: Transaction,
    decision: Decision,
    *,
    partition: int = 0,
    label: str | None = None,
    label_ts: int | None = None,
    **inputs: Unpack[PolicyInputs],
) -> HistoryRow:
    """The row of a payment's decision: `decision` is the one that stands (stored), `inputs`
    what the decider fed the policy (`Decider.policy_inputs()`, read right after
    `Decider.decide`) and `partition` the user partition that decided it. Payments only: a
    refund requests no rebate (`ValueError`)."""
    return HistoryRow(*_row_array(tx, decision, inputs, partition, label, label_ts)[1:])


def history_row_json(
    tx: Transaction, decision: Decision, *, partition: int = 0, **inputs: Unpack[PolicyInputs]
) -> bytes:
    """`history_row(...).to_json()`, byte for byte (tests hold it to that), without building
    the dataclass: the worker makes one per payment, so this is on its hot path."""
    return _ROW_ENCODER.encode(_row_array(tx, decision, inputs, partition, None, None)).encode()


_ROW_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _row_array(
    tx: Transaction,
    decision: Decision,
    inputs: PolicyInputs,
    partition: int,
    label: str | None,
    label_ts: int | None,
) -> list[Any]:
    """A row as its JSON array (`HistoryRow.to_json`): `ROW_FORMAT`, then its values in
    field order."""
    if tx.kind != PAYMENT:
        raise ValueError(f"{tx.tx_id}: only payments have history rows, not a {tx.kind}")
    if decision.tx_id != tx.tx_id:
        raise ValueError(f"decision {decision.tx_id} is not on transaction {tx.tx_id}")
    reasons = decision.reasons
    return [
        ROW_FORMAT, tx.tx_id, tx.ts, tx.user_id, tx.merchant_id, tx.amount_cents, tx.rebate_rate,
        tx.merchant_category, tx.device_id, tx.card_id, tx.ip,
        decision.trust_weight, inputs["trusted"], inputs["calibrated_risk"],
        inputs["user_granted_24h"], inputs["device_rebate_requested_24h"],
        FAIL_CLOSED_MODEL in reasons or FAIL_CLOSED_GRAPH in reasons,
        inputs["fail_closed_action"], partition, decision.action,
        decision.rebate_requested_cents, decision.rebate_granted_cents,
        decision.threshold_version, decision.policy_version, label, label_ts,
    ]  # fmt: skip


def label_rows(rows: Iterable[HistoryRow], labels: Iterable[Label]) -> list[HistoryRow]:
    """`rows` with `labels` joined as the decider joins them: a transaction-level label to
    its row, a user-level one to each of the user's rows decided before it (ts earlier than
    the label's: at equal ts a label comes first); `HistoryRow.labelled` keeps the one that
    says most."""
    out = list(rows)
    index = {row.tx_id: i for i, row in enumerate(out)}
    by_user: dict[str, list[int]] = {}
    for i, row in enumerate(out):
        by_user.setdefault(row.user_id, []).append(i)
    for event in labels:
        if event.tx_id is not None:
            found: Iterable[int] = [index[event.tx_id]] if event.tx_id in index else []
        elif event.user_id is not None:
            found = (i for i in by_user.get(event.user_id, ()) if out[i].ts < event.ts)
        else:
            continue
        for i in found:
            out[i] = out[i].labelled(event.label, event.ts)
    return out


# --- the report -------------------------------------------------------------------------------
def _by_label() -> dict[str, int]:
    return dict.fromkeys(LABEL_KINDS, 0)


@dataclass
class Money:
    """Payments and their rebate money (integer cents), requested and withheld split by label
    (`fraud`, `legit`, `unlabelled`); withheld = requested - granted at decision."""

    payments: int = 0
    requested_cents: int = 0
    granted_cents: int = 0
    requested_by_label: dict[str, int] = field(default_factory=_by_label)
    withheld_by_label: dict[str, int] = field(default_factory=_by_label)

    @property
    def withheld_cents(self) -> int:
        return self.requested_cents - self.granted_cents

    @property
    def legit_friction(self) -> float | None:
        """Legitimate money withheld / legitimate money requested (labelled legit only)."""
        return _share(self.withheld_by_label[LEGIT], self.requested_by_label[LEGIT])

    @property
    def fraud_withheld_share(self) -> float | None:
        """Fraud money withheld / fraud money requested (labelled fraud only)."""
        return _share(self.withheld_by_label[FRAUD], self.requested_by_label[FRAUD])

    def add(self, requested: int, granted: int, *, label: str) -> None:
        self.payments += 1
        self.requested_cents += requested
        self.granted_cents += granted
        self.requested_by_label[label] += requested
        self.withheld_by_label[label] += requested - granted

    def to_json(self) -> dict[str, Any]:
        return {
            "payments": self.payments,
            "requested_cents": self.requested_cents,
            "granted_cents": self.granted_cents,
            "withheld_cents": self.withheld_cents,
            "requested_by_label": dict(self.requested_by_label),
            "withheld_by_label": dict(self.withheld_by_label),
            "legit_friction": self.legit_friction,
            "fraud_withheld_share": self.fraud_withheld_share,
        }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class PolicyOutcome:
    """What one policy decides on the rows: decisions per action, and money in all, per
    merchant category (`NO_CATEGORY` for none) and per action."""

    policy_version: str
    actions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    money: Money = field(default_factory=Money)
    by_category: dict[str, Money] = field(default_factory=dict)
    by_action: dict[str, Money] = field(default_factory=lambda: {a: Money() for a in ACTIONS})

    def add(self, row: HistoryRow, action: str, *, granted: int) -> None:
        label = row.label or UNLABELLED
        self.actions[action] += 1
        self.money.add(row.requested_cents, granted, label=label)
        category = row.merchant_category if row.merchant_category is not None else NO_CATEGORY
        self.by_category.setdefault(category, Money()).add(
            row.requested_cents, granted, label=label
        )
        self.by_action[action].add(row.requested_cents, granted, label=label)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "actions": dict(self.actions),
            "money": self.money.to_json(),
            "by_category": {k: m.to_json() for k, m in sorted(self.by_category.items())},
            "by_action": {k: m.to_json() for k, m in self.by_action.items()},
        }


@dataclass(frozen=True)
class UserHit:
    """A user the draft withholds money from and the live policy does not."""

    user_id: str
    #: Their payments with money withheld under the draft, and that money (by label).
    payments: int
    withheld_cents: int
    fraud_withheld_cents: int
    legit_withheld_cents: int


@dataclass
class Diff:
    """Draft against live on the same rows."""

    #: Rows whose action changes, and how many per (live action, draft action).
    changed: int = 0
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Rows whose granted cents change (a changed action, or a scale by another amount).
    granted_changed: int = 0
    #: Draft granted - live granted, in cents (negative: the draft withholds more).
    granted_delta_cents: int = 0
    #: Users with money withheld under the draft and none under live; the top by cents.
    users_newly_hit: int = 0
    top_newly_hit: list[UserHit] = field(default_factory=list)
    #: Users with money withheld under live and none under the draft.
    users_no_longer_hit: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "transitions": {f"{a}->{b}": n for (a, b), n in sorted(self.transitions.items())},
            "granted_changed": self.granted_changed,
            "granted_delta_cents": self.granted_delta_cents,
            "users_newly_hit": self.users_newly_hit,
            "top_newly_hit": [vars(u) for u in self.top_newly_hit],
            "users_no_longer_hit": self.users_no_longer_hit,
        }


@dataclass
class BacktestReport:
    """The backtest of `draft` against `live` on the rows since `since_ms`."""

    since_ms: int | None
    #: Rows reported on (ts >= since_ms), rows before it (they only warm up the friction
    #: budget and the daily caps), and repeated tx_ids left out (the first stands).
    rows: int
    warmup_rows: int
    duplicates: int
    labelled: dict[str, int]
    live: PolicyOutcome
    draft: PolicyOutcome
    diff: Diff
    #: Share of the reported rows where re-deciding under `live` gives the stored action
    #: (None: no rows); also with the stored granted cents.
    agreement: float | None
    granted_agreement: float | None
    #: Rows where it does not, per (stored action, re-decided action), and the first few.
    disagreements: dict[tuple[str, str], int]
    disagreeing_tx_ids: list[str]
    #: Rows stored under another policy version than live's (they may well disagree).
    other_policy_versions: int

    def to_json(self) -> dict[str, Any]:
        return {
            "since_ms": self.since_ms,
            "rows": self.rows,
            "warmup_rows": self.warmup_rows,
            "duplicates": self.duplicates,
            "labelled": dict(self.labelled),
            "live": self.live.to_json(),
            "draft": self.draft.to_json(),
            "diff": self.diff.to_json(),
            "agreement": self.agreement,
            "granted_agreement": self.granted_agreement,
            "disagreements": {f"{a}->{b}": n for (a, b), n in sorted(self.disagreements.items())},
            "disagreeing_tx_ids": list(self.disagreeing_tx_ids),
            "other_policy_versions": self.other_policy_versions,
        }


# --- re-deciding ------------------------------------------------------------------------------
@dataclass
class _Redecider:
    """One policy's decision state over the rows: a friction budget per user partition, and
    per user the rebate it granted in 24 h beyond what was stored (the daily cap's input is
    the stored one plus that)."""

    policy: Policy
    keep: int
    budgets: dict[int, FrictionBudget] = field(default_factory=dict)
    regranted: dict[str, PaymentLog] = field(default_factory=dict)

    def label(self, row: HistoryRow, ts: int) -> None:
        """`Decider.label`'s part in the budget: event time moves on; fraud counts, and
        the review sample's labels."""
        terms = self.policy.budget
        if terms is None:
            return
        budget = self.budgets.setdefault(row.partition, FrictionBudget())
        budget.advance(ts, terms)
        if row.label == FRAUD:
            budget.fraud(row.tx_id)
        else:
            budget.legit(row.tx_id)

    def decide(self, row: HistoryRow, tx: Transaction) -> tuple[str, int]:
        terms, budget, cut = self.policy.budget, None, None
        if terms is not None:
            budget = self.budgets.setdefault(row.partition, FrictionBudget())
            budget.advance(row.ts, terms)
            cut = budget.cut(row.ts, terms.group_of(row.merchant_category), terms=terms)
        log = self.regranted.get(row.user_id)
        more = 0 if log is None else log.total_at(row.ts)
        action, granted, reasons, version = apply_policy(
            self.policy,
            tx,
            weight=row.trust_weight,
            requested=row.requested_cents,
            cut=cut,
            trusted=row.trusted,
            failed=row.failed,
            fail_closed_action=row.fail_closed_action,
            user_granted_24h=row.user_granted_24h + more,
            device_rebate_requested_24h=row.device_rebate_requested_24h,
            calibrated_risk=row.calibrated_risk,
        )
        if granted != row.granted_cents:
            if log is None:
                log = self.regranted[row.user_id] = PaymentLog((DAY_MS,))
            log.expire(row.ts)
            log.add(row.ts, granted - row.granted_cents)
        if budget is not None:
            record_in_budget(
                budget,
                terms,
                tx=tx,
                weight=row.trust_weight,
                action=action,
                requested=row.requested_cents,
                granted=granted,
                reasons=reasons,
                threshold_version=version,
                calibrated_risk=row.calibrated_risk,
                keep=self.keep,
            )
        return action, granted


def _unique(rows: Iterable[HistoryRow]) -> tuple[list[HistoryRow], int]:
    """One row per tx_id (of repeats, the earliest; ties broken by content, so the input
    order never matters), and how many were left out."""
    kept: dict[str, HistoryRow] = {}
    repeats = 0
    for row in rows:
        other = kept.get(row.tx_id)
        if other is None:
            kept[row.tx_id] = row
            continue
        repeats += 1
        if (row.ts, row.to_json()) < (other.ts, other.to_json()):
            kept[row.tx_id] = row
    return list(kept.values()), repeats


_PAYMENT_RANK, _LABEL_RANK = KIND_RANK[Transaction], KIND_RANK[Label]


def backtest(
    rows: Iterable[HistoryRow],
    *,
    live: Policy,
    draft: Policy,
    since_ms: int | None = None,
    remember_limit: int = MAX_REMEMBERED_FEATURES,
) -> BacktestReport:
    """Re-decides every row under `live` and `draft` in the contract's event order (each row
    at its ts, its label at its label_ts, a label before a payment at equal ts; then by
    tx_id), and reports on the rows with ts >= `since_ms` (the earlier ones, if given, feed
    the friction budget and the daily caps only). Rows may come in any order.
    `remember_limit`: how many payments a fraud label may still find (`Decider`'s)."""
    unique, repeats = _unique(rows)
    events: list[tuple[int, int, str, HistoryRow]] = [
        (row.ts, _PAYMENT_RANK, row.tx_id, row) for row in unique
    ]
    events += [
        (row.label_ts, _LABEL_RANK, row.tx_id, row)
        for row in unique
        if row.label is not None and row.label_ts is not None
    ]
    events.sort(key=lambda e: e[:3])
    redeciders = (_Redecider(live, remember_limit), _Redecider(draft, remember_limit))
    outcomes = (PolicyOutcome(live.version), PolicyOutcome(draft.version))
    diff = Diff()
    disagreements: dict[tuple[str, str], int] = {}
    disagreeing: list[str] = []
    reproduced = reproduced_granted = counted = warmup = other_versions = 0
    labelled = _by_label()
    withheld: tuple[dict[str, UserHit], dict[str, UserHit]] = ({}, {})
    for ts, rank, _, row in events:
        if rank == _LABEL_RANK:
            for redecider in redeciders:
                redecider.label(row, ts)
            continue
        tx = row.transaction()
        (live_action, live_granted), (draft_action, draft_granted) = (
            r.decide(row, tx) for r in redeciders
        )
        if since_ms is not None and row.ts < since_ms:
            warmup += 1
            continue
        counted += 1
        labelled[row.label or UNLABELLED] += 1
        outcomes[0].add(row, live_action, granted=live_granted)
        outcomes[1].add(row, draft_action, granted=draft_granted)
        if live_action == row.action:
            reproduced += 1
            reproduced_granted += live_granted == row.granted_cents
        else:
            pair = (row.action, live_action)
            disagreements[pair] = disagreements.get(pair, 0) + 1
            if len(disagreeing) < TOP:
                disagreeing.append(row.tx_id)
        other_versions += row.policy_version != live.version
        if draft_action != live_action:
            diff.changed += 1
            pair = (live_action, draft_action)
            diff.transitions[pair] = diff.transitions.get(pair, 0) + 1
        diff.granted_changed += draft_granted != live_granted
        diff.granted_delta_cents += draft_granted - live_granted
        for hits, granted in zip(withheld, (live_granted, draft_granted), strict=True):
            _hit(hits, row, row.requested_cents - granted)
    newly = [hit for user, hit in withheld[1].items() if user not in withheld[0]]
    newly.sort(key=lambda h: (-h.withheld_cents, h.user_id))
    diff.users_newly_hit, diff.top_newly_hit = len(newly), newly[:TOP]
    diff.users_no_longer_hit = sum(1 for user in withheld[0] if user not in withheld[1])
    return BacktestReport(
        since_ms=since_ms,
        rows=counted,
        warmup_rows=warmup,
        duplicates=repeats,
        labelled=labelled,
        live=outcomes[0],
        draft=outcomes[1],
        diff=diff,
        agreement=_share(reproduced, counted),
        granted_agreement=_share(reproduced_granted, counted),
        disagreements=disagreements,
        disagreeing_tx_ids=disagreeing,
        other_policy_versions=other_versions,
    )


def _hit(hits: dict[str, UserHit], row: HistoryRow, cents: int) -> None:
    """Adds a payment's withheld money to its user's (only when some is withheld)."""
    if cents <= 0:
        return
    was = hits.get(row.user_id) or UserHit(row.user_id, 0, 0, 0, 0)
    hits[row.user_id] = UserHit(
        row.user_id,
        was.payments + 1,
        was.withheld_cents + cents,
        was.fraud_withheld_cents + (cents if row.label == FRAUD else 0),
        was.legit_withheld_cents + (cents if row.label == LEGIT else 0),
    )
