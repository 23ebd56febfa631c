"""The scoring path shared by the live worker, replay and (later) the HTTP API.

features -> detectors -> graph -> trust weight -> policy, for one event at a time, in the
order the caller establishes (event time: `rebate_guard.contract.order`). Pure and synchronous:
no I/O, so both paths give the same decision for the same event sequence.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from detectors.base import Features
from detectors.drift import DriftWatch
from detectors.risk import Assessment, RiskModel
from detectors.rules import RuleScore, request_rule_score
from features.engine import FEATURE_NAMES, FeatureEngine
from features.user import REFUND_LOOKBACK_MS
from features.windows import PaymentLog
from graph.evidence import RING_FEATURES, ring_features
from graph.layer import GraphLayer, RingEvent, merchant_ring_counts
from rebate_guard.contract.order import Event
from rebate_guard.contract.records import (
    BLOCK,
    CLAWBACK,
    FRAUD,
    HOLD,
    PAYMENT,
    POINTS_REQUESTS,
    RELEASE,
    REVIEW_SOURCE,
    SCALE,
    Decision,
    Label,
    PlatformEvent,
    RebateAdjustment,
    Signup,
    Transaction,
    decision_on,
    requested_rebate_cents,
)
from rebate_guard.contract.time import DAY_MS
from rebate_guard.core.budget import Cut, FrictionBudget
from rebate_guard.core.ledger import Ledger
from rebate_guard.core.points import PointsBooks
from rebate_guard.core.policy import (
    FAILED_CLOSED,
    FIXED,
    Budget,
    Limits,
    Policy,
    default_policy,
    in_review_sample,
    trust_weight,
)
from rebate_guard.core.remembered import RememberedVectors
from rebate_guard.core.solvency import Movement, Output, SolvencyMonitor, platform_movement

log = logging.getLogger(__name__)


# --- failing closed: what a transaction gets when what deciding it needs cannot be had ---
def fail_closed_reason(part: str) -> str:
    """The reason code of a decision that failed closed because `part` could not be had:
    the model or the graph here; at payment time also Redis, the broker, the time allowed
    or the worker's capacity (`fail_closed_decision`)."""
    return f"fail_closed:{part}"


#: The reason codes of a decision the model could not score, or made while the graph
#: shard was not running.
FAIL_CLOSED_MODEL = fail_closed_reason("model")
FAIL_CLOSED_GRAPH = fail_closed_reason("graph")


def failing_closed(action: str) -> tuple[str, int, list[str], str]:
    """What the policy gives a payment that fails closed (as `apply_policy` returns it):
    `action` (the deployment's `fail_closed_action`), nothing granted, no policy reasons,
    the `FAILED_CLOSED` thresholds."""
    return action, 0, [], FAILED_CLOSED


def requested_cents(tx: Transaction) -> int:
    """The rebate `tx` asks for: a refund earns none (its decision records its risk)."""
    return requested_rebate_cents(tx.amount_cents, tx.rebate_rate) if tx.kind == PAYMENT else 0


def fail_closed_decision(
    tx: Transaction, part: str, *, action: str, policy_version: str, decided_at: int
) -> Decision:
    """The decision on `tx` when it could not be decided at all because `part` failed (a
    worker answering `POST /score` without Redis, the broker, time or capacity): the
    highest risk, no trust, `action`, nothing granted, no model, the `FAILED_CLOSED`
    thresholds. Provisional: the stream decides `tx` properly later."""
    action, granted, _, thresholds = failing_closed(action)
    return decision_on(
        tx,
        risk=1.0,
        trust_weight=0.0,
        action=action,
        rebate_requested_cents=requested_cents(tx),
        rebate_granted_cents=granted,
        reasons=[fail_closed_reason(part)],
        model_version="",
        decided_at=decided_at,
        policy_version=policy_version,
        commission_tiers=0,
        threshold_version=thresholds,
    )


# Feature vectors kept for joining delayed labels; bounded so memory stays flat.
MAX_REMEMBERED_FEATURES = 200_000

# Features of the decision context, added by the scorer: they depend on earlier *decisions*
# and on the labels the decider has taken in, which the feature engine does not see. The
# label counts are the user's labelled history as known when the payment is decided (the
# label delay is in them by construction: a label counts from its own ts on).
USER_FRAUD_LABELS = "user_fraud_labels"
USER_LEGIT_LABELS = "user_legit_labels"
DECISION_FEATURES = ("refund_of_granted_rebate", USER_FRAUD_LABELS, USER_LEGIT_LABELS)
#: Users whose label counts are kept (least recently labelled forgotten first).
MAX_LABELLED_USERS = 200_000
#: Every feature the detectors see, in order: the engine's, the decision context, then the
#: ring the transaction is scored with (`graph.evidence`).
ALL_FEATURE_NAMES = FEATURE_NAMES + DECISION_FEATURES + RING_FEATURES
#: Where the user's previous payments at this merchant (7 d) sit in an engine vector.
REPEAT_AT_MERCHANT = FEATURE_NAMES.index("user_merchant_tx_count_7d")


class PolicyInputs(TypedDict):
    """What `Decider.decide` fed the policy for a transaction beyond the transaction and its
    trust weight: enough to re-apply any policy to it (`rebate_guard.core.backtest`)."""

    #: The classifier was trusted (confidence 1): budget mode may block on the weight.
    trusted: bool
    #: The calibrated fraud probability the friction budget counted the payment with.
    calibrated_risk: float
    #: Rebate granted to the user in the 24 h up to the payment, before it (the daily cap).
    user_granted_24h: int
    #: Rebate requested on the payment's device in 24 h (the device cap; None: no device).
    device_rebate_requested_24h: int | None
    #: What a decision that could not be scored gets (`Decider.fail_closed_action`).
    fail_closed_action: str


def apply_policy(
    policy: Policy,
    tx: Transaction,
    *,
    weight: float,
    requested: int,
    cut: Cut | None,
    trusted: bool,
    failed: bool,
    fail_closed_action: str,
    user_granted_24h: int,
    device_rebate_requested_24h: int | None,
    reasons: list[str] | None = None,
    calibrated_risk: float = 0.0,
) -> tuple[str, int, list[str], str]:
    """The action, cents granted, the policy's reasons and `threshold_version` of a payment:
    `Policy.rule`, then failing closed (`failed`: the model or the graph could not score it;
    a block list still blocks), then the daily caps (`cap`). `calibrated_risk`: the
    payment's fraud probability as the budget counts it (`Assessment.calibrated_risk`),
    which bounds what the cut withholds from a payment beyond its window's sizes
    (`Cut.withheld_of`). Pure: the live path (`Decider.assess`) and the backtest
    (`rebate_guard.core.backtest`) both decide by it."""
    action, granted, policy_reasons, thresholds = policy.rule(
        tx,
        weight,
        requested_cents=requested,
        cut=cut,
        trusted=trusted,
        legit_share=1.0 - calibrated_risk,
    )
    if failed and not policy.lists.hits(tx, "block"):
        return failing_closed(fail_closed_action)
    if granted:
        action, granted = cap(
            policy.limits,
            action,
            granted=granted,
            reasons=policy_reasons,
            user_granted_24h=user_granted_24h,
            device_rebate_requested_24h=device_rebate_requested_24h,
        )
    return action, granted, policy_reasons, thresholds


def cap(
    limits: Limits,
    action: str,
    *,
    granted: int,
    reasons: list[str],
    user_granted_24h: int,
    device_rebate_requested_24h: int | None,
) -> tuple[str, int]:
    """The policy's daily caps: what is left of the user's (granted) and the device's
    (requested) rebate money in the last 24 h bounds what this payment gets; the cap's
    reason goes first in `reasons`."""
    room = granted
    if limits.user_daily_rebate_cents is not None:
        left = max(0, limits.user_daily_rebate_cents - user_granted_24h)
        if left < room:
            room = left
            reasons.insert(0, "cap:user_day")
    device_used = device_rebate_requested_24h
    if limits.device_daily_rebate_cents is not None and device_used is not None:
        left = max(0, limits.device_daily_rebate_cents - device_used)
        if left < room:
            room = left
            reasons.insert(0, "cap:device_day")
    if room == granted:
        return action, granted
    return (SCALE, room) if room else (BLOCK, 0)


def budgeted(threshold_version: str) -> bool:
    """Whether a payment so decided joins the friction budget's histograms: the fixed
    thresholds or a cut decided it (lists, campaigns and fail-closed decisions stay out)."""
    return threshold_version == FIXED or threshold_version.startswith("budget:")


def record_in_budget(
    budget: FrictionBudget,
    terms: Budget | None,
    *,
    tx: Transaction,
    weight: float,
    action: str,
    requested: int,
    granted: int,
    reasons: Sequence[str],
    threshold_version: str,
    calibrated_risk: float,
    keep: int,
) -> None:
    """Budget mode (`terms`): a payment the thresholds or the cut decided joins the
    histograms, its money counted as legitimate in 1 - its calibrated fraud probability."""
    if terms is None or not budgeted(threshold_version):
        return
    budget.record(
        tx.tx_id,
        tx.merchant_category,
        weight=weight,
        cents=requested,
        withheld=requested - granted,
        keep=keep,
        legit_share=1.0 - calibrated_risk,
        sampled=in_review_sample(action, reasons),
    )


@dataclass(frozen=True)
class Example:
    """A labelled transaction to learn from: the enriched vector and risk it was scored with,
    the label's verdict, and the label's ts (when the verdict became known)."""

    tx_id: str
    x: Features
    fraud: bool
    risk: float
    ts: int
    #: The review of a payment in the review sample (`Decider.label`): the classifier learns
    #: it, and nothing else does.
    sampled: bool = False


@dataclass
class Decider:
    """Everything after the features: detectors, trust weight, policy, and the decision
    context. Lives where a user's transactions are decided (the user-stage partition)."""

    model: RiskModel = field(default_factory=RiskModel)
    policy: Policy = field(default_factory=default_policy)
    drift: DriftWatch = field(default_factory=DriftWatch)
    #: tx_id -> (user, the enriched vector it was scored with, its risk), oldest first,
    #: packed (~0.8 KB a vector, not ~5 KB), with each user's tx_ids (user-level labels).
    remembered: RememberedVectors = field(default_factory=RememberedVectors)
    #: payment tx_id -> (ts, whether a rebate was granted), for refunds within the lookback,
    #: oldest first. Ordered: `_forget_old_payments` peeks at the oldest on every decision,
    #: and a plain dict's first item is found past every slot deleted at its front (up to
    #: the whole lookback's payments until the dict resizes: about a third of replay's CPU on
    #: a 280-day world, benchmarks/replay_growth.py).
    granted: OrderedDict[str, tuple[int, bool]] = field(default_factory=OrderedDict)
    #: How many feature vectors to keep for delayed labels (a worker's partitions share
    #: `MAX_REMEMBERED_FEATURES`).
    remember_limit: int = MAX_REMEMBERED_FEATURES
    #: What happens to each rebate after its decision (labels, refunds, hold timeouts).
    ledger: Ledger = field(default_factory=Ledger)
    #: What a transaction the model cannot score gets (HOLD or BLOCK; never an allow).
    fail_closed_action: str = HOLD
    #: Transactions the model could not score (each decided `fail_closed_action`).
    model_failures: int = 0
    #: Transactions decided while the graph's ring scores were unavailable (likewise).
    graph_failures: int = 0
    #: user -> rebate granted to them in the last 24 h, for the daily cap (latest last).
    granted_24h: OrderedDict[str, PaymentLog] = field(default_factory=OrderedDict)
    #: Ledger adjustments made and not yet taken by the caller (`take_adjustments`).
    adjustments: list[RebateAdjustment] = field(default_factory=list)
    #: The friction budget's histograms and cuts (budget mode: the policy's `[budget]`).
    budget: FrictionBudget = field(default_factory=FrictionBudget)
    #: user -> [fraud labels, legitimate labels] taken in so far (label events, tx- or
    #: user-level), least recently labelled first.
    user_labels: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)
    #: What the last `decide` fed the policy (`policy_inputs`); None before the first.
    last_inputs: PolicyInputs | None = None
    #: The points books of the users decided here (docs/economics.md, "Points policy").
    points: PointsBooks = field(default_factory=PointsBooks)
    #: What the decisions, adjustments and platform events moved in the platform's books,
    #: not yet taken by the caller (`take_movements`).
    movements: list[Movement] = field(default_factory=list)
    #: The rules a points request is scored with (`detectors.rules.REQUEST_RULES`).
    points_rules: RuleScore = field(default_factory=request_rule_score)

    def __setstate__(self, state: dict[str, object]) -> None:
        """Restores a checkpoint; one written before the friction budget existed starts
        with an empty one (the fixed thresholds decide until it holds `min_payments`)."""
        self.__dict__.update(state)
        if "budget" not in state:
            self.budget = FrictionBudget()
        if "user_labels" not in state:
            self.user_labels = OrderedDict()
        if "points" not in state:  # before issue #21: the books start empty
            self.points = PointsBooks()
            self.movements = []
        if "points_rules" not in state:  # points requests were decided by the policy alone
            self.points_rules = request_rule_score()
        if not isinstance(self.granted, OrderedDict):  # a checkpoint from before it was
            self.granted = OrderedDict(self.granted)
        if not isinstance(self.remembered, RememberedVectors):  # vectors kept as dicts
            by_user: dict[str, deque[str]] = self.__dict__.pop("by_user", {})
            self.remembered = RememberedVectors.of(self.remembered, by_user)

    def take_adjustments(self) -> list[RebateAdjustment]:
        out, self.adjustments = self.adjustments, []
        return out

    def take_movements(self) -> list[Movement]:
        """What the decisions, adjustments and platform events since the last take moved in
        the platform's books, in the order they were made (`rebate_guard.core.solvency`)."""
        out, self.movements = self.movements, []
        return out

    def advance(self, now: int, *, decided_at: int) -> None:
        """Event time has reached `now` with nothing before it left to decide here: holds
        past their timeout by then resolve now, as they would first on the next event (a
        worker's books need every movement up to `now` before it says event time is there:
        streams/shards/solvency.py). Changes nothing the next event would not."""
        self._due(now, decided_at)

    def platform_event(
        self,
        event: PlatformEvent,
        *,
        decided_at: int,
        features: Features | None = None,
        ring: tuple[float, list[str]] | None = None,
    ) -> Decision | None:
        """A platform event (docs/economics.md): the users' points books follow it, and a
        points request (redeem, transfer, withdraw) is decided (a decision keyed by its
        event_id; None for the facts): the policy's blocks first, then its rules' risk
        (`points_rules` on `features`, the request's `features.engine.request_vector`, None:
        nothing known; and on what the graph concluded about its requester: `ring`, the
        score and reason of its strongest ring, None: in none, or no graph) through the
        policy's fixed thresholds. Holds past their timeout are resolved first, as on any
        event that reaches the ledger."""
        self._due(event.ts, decided_at)
        requested = event.kind in POINTS_REQUESTS
        risk, codes = self._request_risk(features, ring) if requested else (0.0, [])
        decision, points_moved = self.points.take(
            event, self.policy, decided_at=decided_at, risk=risk, codes=codes
        )
        movement = platform_movement(event, points_moved=points_moved)
        if movement is not None:
            self.movements.append(movement)
        return decision

    def _request_risk(
        self, features: Features | None, ring: tuple[float, list[str]] | None
    ) -> tuple[float, list[str]]:
        """A points request's risk and the codes of the rules that fired (`points_rules`): on
        its features and its requester's ring's (`graph.evidence.ring_features`, as a
        payment's user ring)."""
        return self.points_rules.assess({**(features or {}), **ring_features(ring)})

    def _due(self, now: int, decided_at: int) -> None:
        """Event time has reached `now`: the rebates and points requests held past their
        timeout are resolved (in that order)."""
        terms = self.policy.ledger
        self._adjusted(self.ledger.due(now, terms, decided_at=decided_at))
        self._points_resolved(self.points.due(now, terms, decided_at=decided_at))

    def _points_resolved(self, adjustments: list[RebateAdjustment]) -> None:
        """Held points requests resolved: for the caller, and what they moved."""
        if adjustments:
            self.adjustments += adjustments
            self.movements += self.points.settle(adjustments)

    def _adjusted(self, adjustments: list[RebateAdjustment]) -> None:
        """The ledger's adjustments: for the caller, in the users' points (a release adds
        to what they earned, a clawback takes it back), and in the movements."""
        if not adjustments:
            return
        self.adjustments += adjustments
        for adjustment in adjustments:
            if adjustment.kind == RELEASE:
                self.points.earn(adjustment.user_id, adjustment.cents)
            elif adjustment.kind == CLAWBACK:
                self.points.earn(adjustment.user_id, -adjustment.cents)
        self.movements += self.ledger.take_movements()

    @property
    def model_version(self) -> str:
        return self.model.version

    def examples(self, event: Label, *, sampled: bool = False) -> list[Example]:
        """What a label teaches, joined to the vectors its transactions were scored with: a
        tx-level label's transaction, or each of a user-level label's user's remembered ones.
        Empty where none of them is remembered here (decided elsewhere, or forgotten).
        `sampled`: the label is the review of a payment in the review sample."""
        if event.tx_id is not None:
            tx_ids: Iterable[str] = (event.tx_id,)
        elif event.user_id is not None:
            tx_ids = self.remembered.of_user(event.user_id)
        else:
            return []
        fraud = event.label == FRAUD
        found = []
        for tx_id in tx_ids:
            kept = self.remembered.get(tx_id)
            if kept is not None:
                found.append(Example(tx_id, kept[1], fraud, kept[2], event.ts, sampled))
        return found

    def learn(self, example: Example) -> None:
        """The classifier learns one labelled transaction (this decider's or another's); a
        review of the sample teaches the classifier alone (`RiskModel.learn_reviewed`)."""
        if example.sampled:
            self.model.learn_reviewed(example.x, example.fraud)
            return
        self.drift.labelled(example.risk, example.fraud, ts=example.ts)
        self.model.learn_one(example.x, example.fraud)

    def label(self, event: Label, decided_at: int = 0) -> list[Example]:
        """Learns a label from the vectors its transactions were scored with; returns the
        examples learned (for other deciders to learn too). The ledger releases, voids or
        claws back what the label settles among the payments decided here, and a fraud
        label's payments count as labelled fraud in the friction budget (from the next
        epoch on); on payments in the review sample, any label counts as their review."""
        terms = self.policy.ledger
        self._due(event.ts, decided_at)
        self._adjusted(self.ledger.label(event, terms, decided_at=decided_at))
        self._points_resolved(self.points.label(event, terms, decided_at=decided_at))
        if self.policy.budget is not None:
            self.budget.advance(event.ts, self.policy.budget)
        self._count_label(event)
        sampled = event.source == REVIEW_SOURCE and self.budget.in_sample(event.tx_id)
        found = self.examples(event, sampled=sampled)
        for example in found:
            self.learn(example)
            if example.fraud:
                self.budget.fraud(example.tx_id)
            else:
                self.budget.legit(example.tx_id)
        return found

    def cut(self, tx: Transaction) -> Cut | None:
        """The friction budget's cut that decides `tx` (None: not in budget mode, or its
        group's window does not hold `min_payments` yet); changes nothing."""
        terms = self.policy.budget
        if terms is None:
            return None
        return self.budget.cut(tx.ts, terms.group_of(tx.merchant_category), terms=terms)

    def budget_report(self) -> dict[str, object]:
        """The friction budget in force: mode, cuts, and what they achieved in the window."""
        terms = self.policy.budget
        if terms is None:
            return {"mode": FIXED}
        return self.budget.report(terms)

    def decide(
        self,
        tx: Transaction,
        vector: list[float | None],
        *,
        decided_at: int,
        standing: Decision | None = None,
        ring: tuple[float, list[str]] | None = None,
        graph_down: bool = False,
    ) -> tuple[Decision, Features]:
        """The decision on `tx` from its engine features (`FEATURE_NAMES` order), and the
        full feature vector it was made from; then the decision context learns it.
        `standing`: an earlier decision on `tx` that stands (a re-run after a restart, or
        a decision made at payment time); the decision context and the ledger then follow
        it, as the rebate engine did. `ring`: the score and reason of the strongest ring
        the user or merchant is in (`graph.layer`), if known. `graph_down`: the ring
        scores could not be had (the graph shard is not running): fail closed."""
        terms = self.policy.ledger
        self._due(tx.ts, decided_at)
        self._forget_old_payments(tx.ts)
        if self.policy.budget is not None:
            self.budget.advance(tx.ts, self.policy.budget)
        decision, x, assessment, inputs = self._assess(tx, vector, decided_at, ring, graph_down)
        if assessment is None:
            self.model_failures += 1
        else:
            self.model.learn_scored(assessment)  # unsupervised, after scoring
            requested = decision.rebate_requested_cents
            if requested > 0:  # the review sample draws from what is withheld
                self.model.learn_withheld(
                    assessment, (requested - decision.rebate_granted_cents) / requested
                )
            self.drift.scored(assessment.risk, tx.ts)
            # A label can teach only what was scored.
            self.remembered.add(
                tx.tx_id,
                assessment.enriched,
                user_id=tx.user_id,
                risk=assessment.risk,
                limit=self.remember_limit,
            )
        if graph_down:
            self.graph_failures += 1
        stands = decision if standing is None else standing
        if tx.kind == PAYMENT:
            self.granted[tx.tx_id] = (tx.ts, stands.rebate_granted_cents > 0)
            self.ledger.record(stands, terms)
            if stands.rebate_granted_cents:
                self._granted_today(tx.user_id, tx.ts).add(tx.ts, stands.rebate_granted_cents)
                self._granted_points(stands)
            self._budgeted(tx, stands, inputs["calibrated_risk"])
        else:
            self._adjusted(self.ledger.refund(tx, terms, decided_at=decided_at))
        self.last_inputs = inputs
        return decision, x

    def policy_inputs(self) -> PolicyInputs:
        """What the last `decide` fed the policy beyond the transaction and its weight
        (read right after it: `rebate_guard.core.backtest.history_row(tx, decision,
        **decider.policy_inputs())`). Changes nothing."""
        if self.last_inputs is None:
            raise LookupError("nothing decided yet")
        return self.last_inputs

    def assess(
        self,
        tx: Transaction,
        vector: list[float | None],
        *,
        decided_at: int,
        ring: tuple[float, list[str]] | None = None,
        graph_down: bool = False,
        pending: Sequence[Decision] = (),
    ) -> tuple[Decision, Features, Assessment | None]:
        """What `decide` decides, changing nothing (the decision at payment time uses it
        alone): the decision, the full feature vector, and the model's assessment (None:
        the model could not score, and the decision fails closed). `pending`: decisions
        made before `tx` that this decider has not taken in yet (made at payment time,
        still in flight): they count in the daily cap and for refunds as if it had."""
        decision, x, assessment, _ = self._assess(tx, vector, decided_at, ring, graph_down, pending)
        return decision, x, assessment

    def _assess(
        self,
        tx: Transaction,
        vector: list[float | None],
        decided_at: int,
        ring: tuple[float, list[str]] | None = None,
        graph_down: bool = False,
        pending: Sequence[Decision] = (),
    ) -> tuple[Decision, Features, Assessment | None, PolicyInputs]:
        """`assess`, and what it fed the policy beyond `tx` and the weight."""
        x = dict(zip(FEATURE_NAMES, vector, strict=True))
        x["refund_of_granted_rebate"] = self._refund_of_granted(tx, pending)
        fraud_labels, legit_labels = self.user_labels.get(tx.user_id, (0, 0))
        x[USER_FRAUD_LABELS], x[USER_LEGIT_LABELS] = fraud_labels, legit_labels
        x.update(ring_features(ring))  # evidence the models weigh, and a label trains on
        version = self.model.version  # the state that scores, before it learns this one
        try:
            assessment: Assessment | None = self.model.assess(x)
        except Exception:  # scoring is pure: nothing was changed; this one cannot be trusted
            log.exception("the model could not score %s: %s it", tx.tx_id, self.fail_closed_action)
            assessment = None
        if assessment is None:
            risk, reasons = 1.0, [FAIL_CLOSED_MODEL]
        else:
            risk, reasons = assessment.risk, assessment.reasons
        ring_reasons = ring[1] if ring is not None and ring[0] > 0.0 else []
        weight = trust_weight(risk)
        requested = requested_cents(tx)
        device_used = x["device_rebate_requested_24h"]
        inputs = PolicyInputs(
            trusted=self.model.confidence() >= 1.0,
            calibrated_risk=0.0 if assessment is None else assessment.calibrated_risk,
            user_granted_24h=self._granted_in_day(tx.user_id, tx.ts)
            + sum(
                d.rebate_granted_cents
                for d in pending
                if d.user_id == tx.user_id and d.ts > tx.ts - DAY_MS
            ),
            device_rebate_requested_24h=None if device_used is None else int(device_used),
            fail_closed_action=self.fail_closed_action,
        )
        if graph_down:
            reasons = [FAIL_CLOSED_GRAPH, *reasons]
        action, granted, policy_reasons, thresholds = apply_policy(
            self.policy,
            tx,
            weight=weight,
            requested=requested,
            cut=self.cut(tx),
            trusted=inputs["trusted"],
            failed=assessment is None or graph_down,
            fail_closed_action=self.fail_closed_action,
            user_granted_24h=inputs["user_granted_24h"],
            device_rebate_requested_24h=inputs["device_rebate_requested_24h"],
            calibrated_risk=inputs["calibrated_risk"],
        )
        depth = x["referral_depth"]
        tiers = self.policy.limits.max_commission_tiers
        commission_tiers = min(int(depth), tiers) if granted and depth else 0
        decision = decision_on(
            tx,
            risk=round(risk, 6),
            trust_weight=weight,
            action=action,
            rebate_requested_cents=requested,
            rebate_granted_cents=granted,
            reasons=policy_reasons + ring_reasons + reasons,
            model_version=version,
            decided_at=decided_at,
            policy_version=self.policy.version,
            commission_tiers=commission_tiers,
            threshold_version=thresholds,
        )
        return decision, x, assessment, inputs

    def _granted_points(self, stands: Decision) -> None:
        """A rebate granted now: the user's points, and the platform's liability."""
        granted = stands.rebate_granted_cents
        self.points.earn(stands.user_id, granted)
        self.movements.append(
            Movement(stands.tx_id, stands.ts, stands.merchant_id, None, liability_cents=granted)
        )

    def _budgeted(self, tx: Transaction, stands: Decision, calibrated_risk: float) -> None:
        """Budget mode: a payment the thresholds or the cut decided joins the histograms
        (lists, campaigns and fail-closed decisions are outside the budget), its money
        counted as legitimate in 1 - its calibrated fraud probability (`Assessment`)."""
        record_in_budget(
            self.budget,
            self.policy.budget,
            tx=tx,
            weight=stands.trust_weight,
            action=stands.action,
            requested=stands.rebate_requested_cents,
            granted=stands.rebate_granted_cents,
            reasons=stands.reasons,
            threshold_version=stands.threshold_version,
            calibrated_risk=calibrated_risk,
            keep=self.remember_limit,
        )

    def _granted_today(self, user_id: str, now: int) -> PaymentLog:
        """The user's rebate granted in the 24 h before `now`. Users are kept in order of
        their latest grant, so those with nothing left in the window leave from the front."""
        today = self.granted_24h
        while today:
            oldest, stale = next(iter(today.items()))
            if stale.ts and stale.ts[-1] > now - DAY_MS:
                break
            del today[oldest]
        log = today.get(user_id)
        if log is None:
            log = PaymentLog((DAY_MS,))
            today[user_id] = log
        else:
            today.move_to_end(user_id)
        log.expire(now)
        return log

    def _granted_in_day(self, user_id: str, now: int) -> int:
        """The user's rebate granted in the 24 h before `now` (reads; `_granted_today`
        keeps the window)."""
        log = self.granted_24h.get(user_id)
        return 0 if log is None else log.total_at(now)

    def _forget_old_payments(self, now: int) -> None:
        """Payments older than the refund lookback leave `granted` (insertion order is
        event-time order: the stale ones lead)."""
        granted, horizon = self.granted, now - REFUND_LOOKBACK_MS
        while granted and next(iter(granted.values()))[0] <= horizon:
            granted.popitem(last=False)

    def _refund_of_granted(self, tx: Transaction, pending: Sequence[Decision] = ()) -> float | None:
        """For a refund: 1 if the refunded payment's rebate was granted (cash-out pays only
        then), 0 if it was not, None when that payment is unknown or older than 30 d
        (`_forget_old_payments` runs first)."""
        if tx.kind == PAYMENT or tx.ref_tx_id is None:
            return None
        known = self.granted.get(tx.ref_tx_id)
        if known is None:
            for d in pending:
                if d.tx_id == tx.ref_tx_id:
                    return float(d.rebate_granted_cents > 0)
            return None
        return float(known[1])

    def _count_label(self, event: Label) -> None:
        """The labelled user's counts (a tx-level label finds its user among the payments
        remembered here; one decided elsewhere is that decider's to count)."""
        user = event.user_id
        if user is None and event.tx_id is not None:
            user = self.remembered.user_of(event.tx_id)
        if user is None:
            return
        counts = self.user_labels.pop(user, None) or [0, 0]
        counts[0 if event.label == FRAUD else 1] += 1
        self.user_labels[user] = counts
        if len(self.user_labels) > MAX_LABELLED_USERS:
            self.user_labels.popitem(last=False)


@dataclass
class Scorer:
    """Features and decisions in one process: replay, and the reference for the worker."""

    features: FeatureEngine = field(default_factory=FeatureEngine)
    decider: Decider = field(default_factory=Decider)
    #: The graph layer (ring detection), when this scorer runs it; its ring events collect
    #: in `ring_events` for the caller to take.
    graph: GraphLayer | None = None
    ring_events: list[RingEvent] = field(default_factory=list)
    #: The ledger's adjustments, in order, for the caller to take.
    adjustments: list[RebateAdjustment] = field(default_factory=list)
    #: The solvency monitor, when this scorer runs it: it takes the decider's movements in
    #: the order they are made, and its readings and alerts collect in `solvency_outputs`.
    solvency: SolvencyMonitor | None = None
    solvency_outputs: list[Output] = field(default_factory=list)

    def apply(self, event: Event, decided_at: int) -> Decision | None:
        decision = None
        if isinstance(event, Transaction):
            return self.decide(event, decided_at)[0]
        if isinstance(event, Signup):
            self.features.signup(event)
            if self.graph is not None:
                self.ring_events += self.graph.signup(event)
        elif isinstance(event, PlatformEvent):
            request, ring = None, None
            if event.kind in POINTS_REQUESTS:  # weighed on what was known before it is learned
                request = self.features.request_features(event)
                ring = self.requester_ring(event)
            self.features.platform_event(event)
            decision = self.decider.platform_event(
                event, decided_at=decided_at, features=request, ring=ring
            )
            self._taken()
            if self.graph is not None:
                self.ring_events += self.graph.platform_event(event)
        else:
            self.features.label(event)
            self.decider.label(event, decided_at)
            self._taken()
        return decision

    def decide(self, tx: Transaction, decided_at: int) -> tuple[Decision, Features]:
        """The decision on `tx` and the feature vector it was made from. With a graph
        layer, the transaction is scored with the rings known before it, then joins the
        graph (as the features: score first, then learn)."""
        graph, decider = self.graph, self.decider
        if graph is None:
            out = decider.decide(tx, self.features.vector(tx), decided_at=decided_at)
        else:
            self.ring_events += graph.due(tx.ts)
            vector = self.features.vector(tx)
            regular = merchant_ring_counts(vector[REPEAT_AT_MERCHANT])
            ring = graph.ring_score(tx.user_id, tx.merchant_id if regular else None)
            out = decider.decide(tx, vector, decided_at=decided_at, ring=ring)
            self.ring_events += graph.transaction(tx)
        self._taken()
        return out

    def requester_ring(self, event: PlatformEvent) -> tuple[float, list[str]] | None:
        """The ring a points request's requester is weighed with, in the ring book as it
        stands (the rings the last scan found: a request moves no scan's clock, see
        `GraphLayer.platform_event`): its strongest that is not a signup batch
        (`GraphLayer.requester_ring`); None without a graph layer or a user. The worker reads
        the one the graph shard published (`streams.shards.requester_ring`)."""
        if self.graph is None or event.user_id is None:
            return None
        return self.graph.requester_ring(event.user_id)

    def _taken(self) -> None:
        """Takes the decider's adjustments, and its movements into the solvency monitor
        (dropped without one: nothing to read them)."""
        decider = self.decider
        self.adjustments += decider.take_adjustments()
        movements = decider.take_movements()
        if self.solvency is not None:
            for movement in movements:
                self.solvency_outputs += self.solvency.apply(movement)
