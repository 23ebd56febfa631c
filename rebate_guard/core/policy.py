"""Trust weight and rebate policy: from risk signals to an action and exact granted money.

**Trust weight** w = (1 - model risk) x (1 - ring score), in [0, 1]: non-increasing in each
risk signal, 1 only when nothing is suspicious. Model risk already combines the rules, the
anomaly score and the online classifier (`detectors.risk`); the ring score is the strongest
ring the user or merchant is in (`graph.layer`).

**Policy**: a versioned document (TOML or JSON; the default,
`rebate_guard/core/policies/default.toml`, documents every key) that maps w to an action, per
merchant category and per campaign:

    w >= allow_at  -> allow  (full rebate)
    w >= scale_at  -> scale  (rebate x w, rounded down to whole cents)
    w >= hold_at   -> hold   (nothing granted now; escrowed until a label or timeout)
    otherwise      -> block  (nothing)

Money-aware: an action that pays also needs its *expected loss*, (1 - w) x the cents it
pays, within `max_expected_loss_cents`; otherwise the next stricter action is taken, so
the larger the rebate, the more trust it needs. Block and allow lists (users, devices,
cards, merchants) come before the weight: a block list entry blocks, an allow list entry
(and no block entry) allows in full.

A document is validated as a whole before use (`PolicyError` names the offending key and
value); the worker keeps the policy it has when a new one is rejected. Every decision
records the version of the policy that made it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from rebate_guard.contract.records import (
    ALLOW,
    BLOCK,
    HOLD,
    RELEASE,
    SCALE,
    VOID,
    Transaction,
    scale_cents,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.core.budget import SHARED, Cut, sampled_for_review

PPM = 1_000_000
#: Reason codes of the policy's own rules.
EXPECTED_LOSS = "expected_loss_over_limit"
#: Budget mode: withheld below the epoch's cut (held), or below its block cut (blocked).
BELOW_CUT = "budget:below_cut"
BELOW_BLOCK_CUT = "budget:below_block_cut"
#: Budget mode, before the classifier is trusted: held where the weight alone would block.
COLD_START = "cold_start:hold"
#: A payment in the review sample (`[budget] review_share`): held (where the weight would
#: block, held instead), as the team reviews what it holds (the console's queue, which
#: lists these first), and a label then releases or voids it.
REVIEW_SAMPLE = "review_sample:hold"
#: A payment below the cut that would alone withhold more expected legitimate rebate than
#: the window's budget: scaled, withholding only that much (`Cut.withheld_of`).
PAYMENT_ALLOWANCE = "budget:payment_allowance"
#: What a decision's `threshold_version` says when no cut decided it: the fixed thresholds
#: (of the policy or its category), a block or allow list, a campaign (`campaign:<name>`).
FIXED = "fixed"
LISTS = "lists"
#: ... and of a decision that failed closed (a part was unavailable: no threshold decided).
FAILED_CLOSED = "fail_closed"
LIST_KINDS = ("users", "devices", "cards", "merchants")
#: Reason code and threshold version of a payment allowed by a false-positive suppression.
SUPPRESSED = "suppressed"


def in_review_sample(action: str, reasons: Sequence[str]) -> bool:
    """Whether a decided payment is in the friction budget's review sample: a hold whose
    reasons say so (`REVIEW_SAMPLE`, which `Policy.rule` adds to the budget's own holds,
    by the thresholds or the cut, that are drawn; a campaign's, a list's or a fail-closed
    hold never carry it, and a daily cap never touches a hold, which grants nothing)."""
    return action == HOLD and REVIEW_SAMPLE in reasons


class PolicyError(ValueError):
    """A policy that cannot be used; the message says which key is wrong and why."""


@dataclass(frozen=True)
class Thresholds:
    """Where the trust weight w turns one action into the next, and the money limit.

    Parameters
    ----------
    allow_at, scale_at, hold_at : float
        w >= `allow_at`: allow (in full); >= `scale_at`: scale (rebate x w); >= `hold_at`:
        hold; below: block. Within [0, 1], with ``hold_at <= scale_at <= allow_at``.
    max_expected_loss_cents : int or None
        The most expected loss, (1 - w) x cents paid, an allow or a scale may carry; None:
        any.
    """

    allow_at: float = 0.85
    scale_at: float = 0.8
    hold_at: float = 0.5
    #: The most expected loss, (1 - w) x cents paid, an allow or scale may carry; None: any.
    max_expected_loss_cents: int | None = None

    def check(self, where: str) -> None:
        """Raises `PolicyError`, naming the key under `where`, if a value is out of range."""
        for name in ("allow_at", "scale_at", "hold_at"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise PolicyError(f"{where}.{name}: expected a number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise PolicyError(f"{where}.{name}: must be within [0, 1], got {value}")
        if not self.hold_at <= self.scale_at <= self.allow_at:
            raise PolicyError(
                f"{where}: thresholds must satisfy hold_at <= scale_at <= allow_at, got "
                f"hold_at={self.hold_at}, scale_at={self.scale_at}, allow_at={self.allow_at}"
            )
        limit = self.max_expected_loss_cents
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise PolicyError(
                f"{where}.max_expected_loss_cents: expected whole cents >= 0, got {limit!r}"
            )

    def decide(self, weight: float, requested_cents: int) -> tuple[str, int, list[str]]:
        """The action for trust weight `weight` on a rebate of `requested_cents`.

        Parameters
        ----------
        weight : float
            The trust weight, in [0, 1] (`trust_weight`).
        requested_cents : int
            The rebate requested.

        Returns
        -------
        tuple of (str, int, list of str)
            The action, the cents granted now (rounded down to whole cents) and the
            policy's reason codes (`EXPECTED_LOSS` when it stepped down for the money at
            stake).

        Examples
        --------
        >>> thresholds = Thresholds(max_expected_loss_cents=100)
        >>> thresholds.decide(0.9, 500)
        ('allow', 500, [])
        >>> thresholds.decide(0.82, 500)
        ('scale', 410, [])

        The same weight on a larger rebate carries more expected loss, so needs more trust:

        >>> thresholds.decide(0.9, 1200)
        ('hold', 0, ['expected_loss_over_limit'])
        """
        w_ppm = round(weight * PPM)
        stepped = False
        if weight >= self.allow_at:
            if self._affordable(w_ppm, requested_cents):
                return ALLOW, requested_cents, []
            stepped = True
        if weight >= self.scale_at:
            scaled = scale_cents(requested_cents, weight)
            if self._affordable(w_ppm, scaled):
                return SCALE, scaled, [EXPECTED_LOSS] if stepped else []
            stepped = True
        reasons = [EXPECTED_LOSS] if stepped else []
        return (HOLD if weight >= self.hold_at else BLOCK), 0, reasons

    def _affordable(self, w_ppm: int, cents: int) -> bool:
        limit = self.max_expected_loss_cents
        # (1 - w) x cents <= limit, in integers (w to six decimals, as the weight is kept).
        return limit is None or (PPM - w_ppm) * cents <= limit * PPM


def _by_cut(
    cut: Cut, limit: Thresholds, weight: float, requested_cents: int, *, legit_share: float
) -> tuple[str, int, list[str]]:
    """Budget mode: withheld below the cut (blocked below the block cut), else allowed in
    full if the expected loss is within `limit`'s `max_expected_loss_cents` (else held).
    Below the cut, a payment whose expected legitimate rebate exceeds the window's budget
    is scaled instead: only what the budget allows is withheld (`Cut.withheld_of`)."""
    if cut.withholds(weight):  # the block cut is never above it (`budget._cut`)
        withheld = cut.withheld_of(requested_cents, legit_share)
        if withheld < requested_cents:
            return SCALE, requested_cents - withheld, [PAYMENT_ALLOWANCE]
        if cut.blocks(weight):
            return BLOCK, 0, [BELOW_BLOCK_CUT]
        return HOLD, 0, [BELOW_CUT]
    if limit._affordable(round(weight * PPM), requested_cents):
        return ALLOW, requested_cents, []
    return HOLD, 0, [EXPECTED_LOSS]


@dataclass(frozen=True)
class Campaign:
    """Thresholds for payments at `merchants` between `starts_ms` and `ends_ms` (event time;
    either end open when None)."""

    name: str
    merchants: frozenset[str]
    thresholds: Thresholds
    starts_ms: int | None = None
    ends_ms: int | None = None

    def covers(self, tx: Transaction) -> bool:
        return (
            tx.merchant_id in self.merchants
            and (self.starts_ms is None or tx.ts >= self.starts_ms)
            and (self.ends_ms is None or tx.ts < self.ends_ms)
        )


@dataclass(frozen=True)
class Lists:
    block_users: frozenset[str] = frozenset()
    block_devices: frozenset[str] = frozenset()
    block_cards: frozenset[str] = frozenset()
    block_merchants: frozenset[str] = frozenset()
    allow_users: frozenset[str] = frozenset()
    allow_devices: frozenset[str] = frozenset()
    allow_cards: frozenset[str] = frozenset()
    allow_merchants: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # Per transaction only the lists in use are looked at (usually none): (reason code,
        # the transaction's field, the ids) for each non-empty list, by "block"/"allow".
        fields_of = {"users": "user_id", "devices": "device_id", "cards": "card_id"}
        in_use = {
            which: tuple(
                (f"{which}list:{kind[:-1]}", fields_of.get(kind, "merchant_id"), ids)
                for kind in LIST_KINDS
                if (ids := getattr(self, f"{which}_{kind}"))
            )
            for which in ("block", "allow")
        }
        object.__setattr__(self, "_in_use", in_use)

    def hits(self, tx: Transaction, which: str) -> list[str]:
        """Reason codes (`blocklist:device`, ...) of the `which` ("block"/"allow") lists
        that name the transaction's user, device, card or merchant."""
        in_use: dict[str, tuple[tuple[str, str, frozenset[str]], ...]] = self._in_use  # type: ignore[attr-defined]
        return [code for code, name, ids in in_use[which] if getattr(tx, name) in ids]


@dataclass(frozen=True)
class Suppression:
    """A reviewer's ruling that a user was a false positive: until `until_ms` (event time)
    their payments are allowed in full (a block list still blocks them)."""

    user_id: str
    until_ms: int
    reason: str = ""
    by: str = ""

    def covers(self, tx: Transaction) -> bool:
        return tx.user_id == self.user_id and tx.ts < self.until_ms


@dataclass(frozen=True)
class LedgerTerms:
    """What happens to a rebate after its decision (`rebate_guard.core.ledger`)."""

    #: A held rebate with no label this long after its payment is resolved...
    hold_timeout_hours: float = 72.0
    #: ...by RELEASE (paid: doubt is not proof) or VOID (dropped).
    hold_timeout_action: str = RELEASE
    #: A refund this soon after its payment voids the payment's rebate (held: voided,
    #: granted: clawed back); later refunds leave it.
    refund_voids_within_hours: float = 72.0
    #: A fraud label this soon after the payment claws back a granted rebate; past it the
    #: transaction is settled (and forgotten).
    clawback_within_days: float = 30.0

    def check(self) -> None:
        for name in ("hold_timeout_hours", "refund_voids_within_hours", "clawback_within_days"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise PolicyError(f"ledger.{name}: expected a positive number, got {value!r}")
        if self.hold_timeout_action not in (RELEASE, VOID):
            raise PolicyError(
                f"ledger.hold_timeout_action: expected {RELEASE!r} or {VOID!r}, got "
                f"{self.hold_timeout_action!r}"
            )
        if self.hold_timeout_hours > self.clawback_within_days * 24:
            raise PolicyError(
                "ledger: hold_timeout_hours must not exceed clawback_within_days (a hold is "
                "kept until it is resolved)"
            )

    @property
    def hold_timeout_ms(self) -> int:
        return round(self.hold_timeout_hours * HOUR_MS)

    @property
    def refund_window_ms(self) -> int:
        return round(self.refund_voids_within_hours * HOUR_MS)

    @property
    def settled_after_ms(self) -> int:
        return round(self.clawback_within_days * 24 * HOUR_MS)


#: Referral commissions are paid at most this many tiers up, whatever a policy says.
MAX_COMMISSION_TIERS = 3


@dataclass(frozen=True)
class Limits:
    """Money limits beside the weight: caps per rolling 24 h, commission depth."""

    #: Rebate granted to one user in 24 h (at decision time); None: no cap.
    user_daily_rebate_cents: int | None = None
    #: Rebate requested by one device's payments in 24 h, whoever paid; None: no cap.
    device_daily_rebate_cents: int | None = None
    #: Upline tiers a payment may pay referral commissions to (0..3).
    max_commission_tiers: int = MAX_COMMISSION_TIERS

    def check(self) -> None:
        for name in ("user_daily_rebate_cents", "device_daily_rebate_cents"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise PolicyError(f"limits.{name}: expected whole cents >= 0, got {value!r}")
        tiers = self.max_commission_tiers
        if not isinstance(tiers, int) or isinstance(tiers, bool):
            raise PolicyError(f"limits.max_commission_tiers: expected 0..3, got {tiers!r}")
        if not 0 <= tiers <= MAX_COMMISSION_TIERS:
            raise PolicyError(
                f"limits.max_commission_tiers: commissions are never paid more than "
                f"{MAX_COMMISSION_TIERS} tiers deep, got {tiers}"
            )


def _exact(value: float) -> Fraction:
    """A policy number as the exact decimal it was written as (3.5 -> 7/2, 0.1 -> 1/10)."""
    return Fraction(str(value))


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class SolvencyTerms:
    """The solvency monitor's period and lines (`[solvency]`, docs/economics.md): the
    risk team's settings, like the thresholds; not fitted to any world."""

    #: The period of event time each reading closes (aligned to the epoch).
    period_minutes: float = 60.0
    #: Liability : distributable at or past which a scope is `warning` (the survivor's 3:1)...
    warning_ratio: float = 3.0
    #: ...and `critical` (the industry's warning line, 5:1).
    critical_ratio: float = 5.0
    #: Alert on merchants' scopes too. Off by default: a merchant's own funding rarely
    #: covers the points its customers hold (settlements lag, new money is the platform's),
    #: so thousands of merchants would alert at once; their readings are on `solvency`.
    alert_merchants: bool = False

    def check(self) -> None:
        if not isinstance(self.alert_merchants, bool):
            raise PolicyError(
                f"solvency.alert_merchants: expected true or false, got {self.alert_merchants!r}"
            )
        for name in ("period_minutes", "warning_ratio", "critical_ratio"):
            value = getattr(self, name)
            if not _positive_number(value):
                raise PolicyError(f"solvency.{name}: expected a positive number, got {value!r}")
        if self.period_ms <= 0:
            raise PolicyError(f"solvency.period_minutes: too short, got {self.period_minutes}")
        if not self.critical_ratio > self.warning_ratio:
            raise PolicyError(
                "solvency: critical_ratio must be above warning_ratio, got "
                f"warning_ratio={self.warning_ratio}, critical_ratio={self.critical_ratio}"
            )

    @property
    def period_ms(self) -> int:
        return round(self.period_minutes * MINUTE_MS)

    @property
    def warning_line(self) -> Fraction:
        return _exact(self.warning_ratio)

    @property
    def critical_line(self) -> Fraction:
        return _exact(self.critical_ratio)


@dataclass(frozen=True)
class PointsTerms:
    """The points policy (`[points]`, docs/economics.md): of what a user earns, only this
    share becomes redeemable (the seeds' "40% of new performance as vouchers")."""

    redeemable_share: float = 0.4

    def check(self) -> None:
        share = self.redeemable_share
        if not _positive_number(share) or share > 1:
            raise PolicyError(f"points.redeemable_share: expected a share in (0, 1], got {share!r}")

    @property
    def share(self) -> Fraction:
        return _exact(self.redeemable_share)


@dataclass(frozen=True)
class Budget:
    """The friction budget (`[budget]`): the cut below which rebates are withheld follows
    the weights of recent payments, so that about `legit_friction` of legitimate rebate
    money is withheld at decision (`rebate_guard.core.budget`)."""

    #: Share of legitimate rebate money the team accepts to withhold at decision.
    legit_friction: float = 0.01
    #: The recent payments the cut is computed from.
    window_days: float = 7.0
    #: Event time between recomputations of the cut.
    update_minutes: float = 60.0
    #: Until the window holds this many payments (of the group), the fixed thresholds apply.
    min_payments: int = 2000
    #: Within the withheld band, the lowest-weight part (this share of the budget) is
    #: blocked rather than held, once the model is trusted.
    block_share: float = 0.5
    #: The cut keeps the budget with this confidence, the window's payments read as a
    #: sample of the next epoch's (0.5: the expected money alone): a few big payments below
    #: a cut are far less certain than many small ones.
    confidence: float = 0.95
    #: Share of withheld payments the risk team reviews, a random sample by transaction id
    #: (`budget.sampled_for_review`); their labels measure how much of the withheld money
    #: is legitimate, where the model's estimate is least certain. 0: no review sample.
    review_share: float = 0.0
    #: merchant_category -> its own legit_friction (its own distribution and cut).
    categories: Mapping[str, float] = field(default_factory=dict)

    def check(self) -> None:
        _share(self.legit_friction, "budget.legit_friction")
        for name, share in self.categories.items():
            _share(share, f"budget.categories.{name}")
        for name in ("window_days", "update_minutes"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise PolicyError(f"budget.{name}: expected a positive number, got {value!r}")
        if self.update_ms > self.window_ms:
            raise PolicyError("budget.update_minutes: must not exceed window_days")
        n = self.min_payments
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise PolicyError(f"budget.min_payments: expected a count >= 0, got {n!r}")
        share = self.block_share
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise PolicyError(f"budget.block_share: expected a number in [0, 1], got {share!r}")
        level = self.confidence
        if not isinstance(level, int | float) or isinstance(level, bool) or not 0.5 <= level < 1:
            raise PolicyError(f"budget.confidence: expected a number in [0.5, 1), got {level!r}")
        share = self.review_share
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise PolicyError(f"budget.review_share: expected a number in [0, 1], got {share!r}")

    @property
    def window_ms(self) -> int:
        return round(self.window_days * DAY_MS)

    @property
    def update_ms(self) -> int:
        return max(1, round(self.update_minutes * MINUTE_MS))

    def group_of(self, category: str | None) -> str:
        """The group whose cut decides a payment: its category if it has its own budget."""
        return category if category is not None and category in self.categories else SHARED

    def share_of(self, group: str) -> float:
        return self.categories.get(group, self.legit_friction)


def _share(value: Any, where: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 0.5:
        raise PolicyError(f"{where}: expected a share in (0, 0.5], got {value!r}")


@dataclass(frozen=True)
class Policy:
    """A versioned rebate policy, checked as a whole when it is made.

    Usually read from a document (`load`, `from_text`, `from_document`);
    `rebate_guard/core/policies/default.toml` documents every key.

    Parameters
    ----------
    version : str
        Recorded in every decision the policy makes (`Decision.policy_version`).
    thresholds : Thresholds
        The fixed thresholds, for transactions no category or campaign covers.
    categories : mapping of str to Thresholds
        merchant_category -> thresholds for its transactions.
    campaigns : tuple of Campaign
        The first campaign covering a transaction sets its thresholds (before its category).
    lists : Lists
        Block and allow lists, applied before the weight.
    ledger : LedgerTerms
        What happens to a rebate after its decision.
    limits : Limits
        Daily caps and the referral commission depth.
    budget : Budget or None
        The friction budget; None: the fixed thresholds decide.
    suppressions : mapping of str to Suppression
        user_id -> a reviewer's false-positive ruling.
    solvency : SolvencyTerms
        The solvency monitor's period and lines.
    points : PointsTerms
        The points policy (the redeemable share).

    Raises
    ------
    PolicyError
        A value is out of range; the message names its key.

    Examples
    --------
    Read a document (keys it leaves out take their defaults) and compare it with the
    policy shipped with RebateGuard, key by key:

    >>> spring = Policy.from_text('''
    ... version = "spring-1"
    ... [thresholds]
    ... allow_at = 0.9
    ... ''', "toml")
    >>> spring.thresholds
    Thresholds(allow_at=0.9, scale_at=0.8, hold_at=0.5, max_expected_loss_cents=None)
    >>> before, after = default_policy().document(), spring.document()
    >>> sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    ['budget', 'thresholds', 'version']
    >>> before["thresholds"]["allow_at"], after["thresholds"]["allow_at"]
    (0.85, 0.9)

    A document that breaks a rule is refused as a whole, naming the key:

    >>> Policy.from_document({"version": "v2", "thresholds": {"hold_at": 0.9}})
    Traceback (most recent call last):
    ...
    rebate_guard.core.policy.PolicyError: thresholds: thresholds must satisfy hold_at <= ...
    """

    version: str = "default-1"
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: merchant_category -> thresholds for its transactions.
    categories: Mapping[str, Thresholds] = field(default_factory=dict)
    #: The first campaign covering a transaction sets its thresholds (before its category).
    campaigns: tuple[Campaign, ...] = ()
    lists: Lists = field(default_factory=Lists)
    ledger: LedgerTerms = field(default_factory=LedgerTerms)
    limits: Limits = field(default_factory=Limits)
    #: The friction budget; None: the fixed thresholds decide (no budget mode).
    budget: Budget | None = None
    #: user_id -> a false-positive suppression (the console's review queue adds them).
    suppressions: Mapping[str, Suppression] = field(default_factory=dict)
    solvency: SolvencyTerms = field(default_factory=SolvencyTerms)
    points: PointsTerms = field(default_factory=PointsTerms)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (checkpoints): a policy pickled before a section existed takes the
        section's defaults."""
        for name, default in (("solvency", SolvencyTerms), ("points", PointsTerms)):
            if name not in state:
                state = {**state, name: default()}
        self.__dict__.update(state)

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version.strip():
            raise PolicyError(f"version: expected a non-empty string, got {self.version!r}")
        self.thresholds.check("thresholds")
        for name, thresholds in self.categories.items():
            thresholds.check(f"categories.{name}")
        for i, campaign in enumerate(self.campaigns):
            campaign.thresholds.check(f"campaigns[{i}] ({campaign.name})")
        self.ledger.check()
        self.limits.check()
        self.solvency.check()
        self.points.check()
        if self.budget is not None:
            self.budget.check()

    def campaign_for(self, tx: Transaction) -> Campaign | None:
        """The first campaign covering `tx`, if any."""
        for campaign in self.campaigns:
            if campaign.covers(tx):
                return campaign
        return None

    def thresholds_for(self, tx: Transaction) -> Thresholds:
        """The fixed thresholds for `tx`: its campaign's, else its category's, else the
        policy's."""
        campaign = self.campaign_for(tx)
        if campaign is not None:
            return campaign.thresholds
        if tx.merchant_category is not None:
            return self.categories.get(tx.merchant_category, self.thresholds)
        return self.thresholds

    def decide(
        self, tx: Transaction, weight: float, *, requested_cents: int
    ) -> tuple[str, int, list[str]]:
        """The action on `tx` for trust weight `weight`, by the fixed thresholds.

        Lists come first, then a suppression, then the thresholds of the transaction's
        campaign, category or the policy (`rule`, with a cut: budget mode).

        Parameters
        ----------
        tx : Transaction
            The payment.
        weight : float
            Its trust weight (`trust_weight`).
        requested_cents : int
            The rebate it requests.

        Returns
        -------
        tuple of (str, int, list of str)
            The action, the cents granted now and the policy's own reason codes.

        Examples
        --------
        >>> from rebate_guard.contract.records import Transaction
        >>> tx = Transaction("t-1", 1_700_000_000_000, "u-1", "m-1", amount_cents=10_000,
        ...                  rebate_rate=0.05, kind="payment", device_id="d-9")
        >>> policy = Policy(version="v1")
        >>> for risk in (0.05, 0.18, 0.3, 0.7):
        ...     print(risk, policy.decide(tx, trust_weight(risk), requested_cents=500))
        0.05 ('allow', 500, [])
        0.18 ('scale', 410, [])
        0.3 ('hold', 0, [])
        0.7 ('block', 0, [])

        A block list entry blocks whatever the weight:

        >>> listed = Policy(version="v2", lists=Lists(block_devices=frozenset({"d-9"})))
        >>> listed.decide(tx, 1.0, requested_cents=500)
        ('block', 0, ['blocklist:device'])
        """
        return self.rule(tx, weight, requested_cents=requested_cents)[:3]

    def rule(
        self,
        tx: Transaction,
        weight: float,
        *,
        requested_cents: int,
        cut: Cut | None = None,
        trusted: bool = True,
        legit_share: float = 1.0,
    ) -> tuple[str, int, list[str], str]:
        """`decide`, and which thresholds decided.

        Precedence: lists, then a suppression, then a campaign covering the payment (its
        fixed thresholds, in budget mode too), then the cut (budget mode, once the group's
        window holds `min_payments`), else the fixed thresholds of the category or policy.

        Parameters
        ----------
        tx : Transaction
            The payment.
        weight : float
            Its trust weight.
        requested_cents : int
            The rebate it requests.
        cut : Cut or None
            Budget mode: the cut of the payment's group for the epoch
            (`rebate_guard.core.budget`); None: the fixed thresholds.
        trusted : bool, default True
            The classifier is trusted (its confidence is 1); in budget mode, before that, a
            weight that would block holds instead (`COLD_START`), as it does after it for a
            payment in the review sample; every hold in the sample says so
            (`REVIEW_SAMPLE`: the console's queue lists those first).
        legit_share : float, default 1.0
            Budget mode: the probability that the payment is legitimate as far as the
            calibrated model can say (1 - its calibrated risk); bounds what the cut
            withholds from one payment (`Cut.withheld_of`).

        Returns
        -------
        tuple of (str, int, list of str, str)
            `decide`'s action, granted cents and reasons, and the decision's
            `threshold_version`: `cut.version`, `FIXED`, `LISTS`, `SUPPRESSED` or
            ``campaign:<name>``.

        Examples
        --------
        In budget mode, a cut at 0.6 (blocking below 0.3) decides instead of the thresholds:

        >>> from rebate_guard.contract.records import Transaction
        >>> from rebate_guard.core.budget import Cut
        >>> tx = Transaction("t-1", 1_700_000_000_000, "u-1", "m-1", amount_cents=10_000,
        ...                  rebate_rate=0.05, kind="payment")
        >>> policy = Policy(version="v1", budget=Budget())
        >>> cut = Cut("*", epoch=1_699_999_200_000, hold_below=600, block_below=300)
        >>> policy.rule(tx, 0.7, requested_cents=500, cut=cut)
        ('allow', 500, [], 'budget:*:1699999200000:0.600:0.300')
        >>> policy.rule(tx, 0.55, requested_cents=500, cut=cut)[:3]
        ('hold', 0, ['budget:below_cut'])
        >>> policy.rule(tx, 0.2, requested_cents=500, cut=cut, trusted=False)[:3]
        ('hold', 0, ['budget:below_block_cut', 'cold_start:hold'])
        """
        blocked = self.lists.hits(tx, "block")
        if blocked:
            return BLOCK, 0, blocked, LISTS
        allowed = self.lists.hits(tx, "allow")
        if allowed:
            return ALLOW, requested_cents, allowed, LISTS
        suppressed = self.suppressions.get(tx.user_id) if self.suppressions else None
        if suppressed is not None and suppressed.covers(tx):
            return ALLOW, requested_cents, [SUPPRESSED], SUPPRESSED
        campaign = self.campaign_for(tx)
        if campaign is not None:
            action, granted, reasons = campaign.thresholds.decide(weight, requested_cents)
            version = f"campaign:{campaign.name}"
        elif cut is not None and self.budget is not None:
            limit = self.thresholds_for(tx)
            action, granted, reasons = _by_cut(
                cut, limit, weight, requested_cents, legit_share=legit_share
            )
            version = cut.version
        else:
            action, granted, reasons = self.thresholds_for(tx).decide(weight, requested_cents)
            version = FIXED
        if self.budget is None:
            return action, granted, reasons, version
        drawn = (
            action in (BLOCK, HOLD)
            and campaign is None
            and sampled_for_review(tx.tx_id, self.budget.review_share)
        )
        if action == BLOCK and not trusted:
            action, reasons = HOLD, [*reasons, COLD_START]
        elif action == BLOCK and drawn:
            action = HOLD
        if action == HOLD and drawn:  # the budget's own hold, in the sample: it says so
            reasons = [*reasons, REVIEW_SAMPLE]
        return action, granted, reasons, version

    # --- documents ------------------------------------------------------------------------
    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Policy:
        """A policy from its document (parsed TOML or JSON).

        Parameters
        ----------
        doc : mapping
            The document's tables; `version` is required, other keys default.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            An unknown key, a missing version or a value out of range, named.

        Examples
        --------
        >>> policy = Policy.from_document({"version": "v1", "limits": {"max_commission_tiers": 1}})
        >>> policy.limits.max_commission_tiers
        1
        >>> Policy.from_document({"version": "v1", "limits": {"max_commission_tier": 1}})
        Traceback (most recent call last):
        ...
        rebate_guard.core.policy.PolicyError: limits: unknown key 'max_commission_tier' ...
        """
        if not isinstance(doc, Mapping):
            raise PolicyError(f"a policy is a table of keys, got {type(doc).__name__}")
        _known(
            doc,
            "policy",
            (
                "version",
                "thresholds",
                "categories",
                "campaigns",
                "lists",
                "ledger",
                "limits",
                "budget",
                "suppressions",
                "solvency",
                "points",
            ),
        )
        if "version" not in doc:
            raise PolicyError("version: missing (every policy names its version)")
        default = _thresholds(doc.get("thresholds", {}), "thresholds", Thresholds())
        categories = {
            str(name): _thresholds(table, f"categories.{name}", default)
            for name, table in _table(doc.get("categories", {}), "categories").items()
        }
        raw_campaigns = doc.get("campaigns", [])
        if not isinstance(raw_campaigns, list):
            raise PolicyError("campaigns: expected a list of tables ([[campaigns]])")
        campaigns = tuple(
            _campaign(c, f"campaigns[{i}]", default) for i, c in enumerate(raw_campaigns)
        )
        return cls(
            version=doc["version"],
            thresholds=default,
            categories=categories,
            campaigns=campaigns,
            lists=_lists(doc.get("lists", {})),
            ledger=_section(doc.get("ledger", {}), "ledger", LedgerTerms),
            limits=_section(doc.get("limits", {}), "limits", Limits),
            budget=_budget(doc["budget"]) if "budget" in doc else None,
            suppressions=_suppressions(doc.get("suppressions", [])),
            solvency=_section(doc.get("solvency", {}), "solvency", SolvencyTerms),
            points=_section(doc.get("points", {}), "points", PointsTerms),
        )

    @classmethod
    def from_text(cls, text: str | bytes, fmt: str = "json") -> Policy:
        """A policy from a document's text.

        Parameters
        ----------
        text : str or bytes
            The document (bytes are read as UTF-8).
        fmt : {"json", "toml"}
            Its format.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            The text does not parse, or the document is invalid (`from_document`).

        Examples
        --------
        >>> Policy.from_text('{"version": "v1"}').version
        'v1'
        >>> Policy.from_text('version = ', "toml")
        Traceback (most recent call last):
        ...
        rebate_guard.core.policy.PolicyError: not valid TOML: ...
        """
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        try:
            doc = tomllib.loads(text) if fmt == "toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise PolicyError(f"not valid {fmt.upper()}: {err}") from None
        return cls.from_document(doc)

    @classmethod
    def load(cls, path: Path) -> Policy:
        """A policy from a file.

        Parameters
        ----------
        path : Path
            A ``.toml`` file, or JSON otherwise.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            The file cannot be read or holds no valid policy; the message starts with the
            path.

        Examples
        --------
        >>> Policy.load(DEFAULT_POLICY).version
        'default-...'
        >>> Policy.load(Path("no-such-policy.toml"))
        Traceback (most recent call last):
        ...
        rebate_guard.core.policy.PolicyError: cannot read no-such-policy.toml: No such file ...
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise PolicyError(f"cannot read {path}: {err.strerror}") from None
        try:
            return cls.from_text(text, "toml" if path.suffix == ".toml" else "json")
        except PolicyError as err:
            raise PolicyError(f"{path}: {err}") from None

    def document(self) -> dict[str, Any]:
        """The policy as a JSON-ready document, keys sorted: what the console shows and diffs.

        Returns
        -------
        dict
            The document; `from_document` reads it back to an equal policy.

        Examples
        --------
        >>> policy = Policy(version="v1", thresholds=Thresholds(allow_at=0.9))
        >>> policy.document()["thresholds"]
        {'allow_at': 0.9, 'scale_at': 0.8, 'hold_at': 0.5}
        >>> Policy.from_document(policy.document()) == policy
        True
        """

        def thresholds(t: Thresholds) -> dict[str, Any]:
            return {k: v for k, v in asdict(t).items() if v is not None}

        return {
            "version": self.version,
            "thresholds": thresholds(self.thresholds),
            "categories": {name: thresholds(t) for name, t in sorted(self.categories.items())},
            "campaigns": [
                {
                    "name": c.name,
                    "merchants": sorted(c.merchants),
                    **({"starts_ms": c.starts_ms} if c.starts_ms is not None else {}),
                    **({"ends_ms": c.ends_ms} if c.ends_ms is not None else {}),
                    **thresholds(c.thresholds),
                }
                for c in self.campaigns
            ],
            "lists": {f.name: sorted(getattr(self.lists, f.name)) for f in fields(Lists)},
            "ledger": asdict(self.ledger),
            "limits": {k: v for k, v in asdict(self.limits).items() if v is not None},
            "solvency": asdict(self.solvency),
            "points": asdict(self.points),
            **({"budget": _budget_document(self.budget)} if self.budget is not None else {}),
            **(
                {"suppressions": [asdict(x) for _, x in sorted(self.suppressions.items())]}
                if self.suppressions
                else {}
            ),
        }

    def to_json(self) -> str:
        """The document (`document`) as compact JSON with sorted keys: what Redis holds."""
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":"))


THRESHOLD_KEYS = tuple(f.name for f in fields(Thresholds))


def _known(table: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise PolicyError(
            f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(keys)})"
        )


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _thresholds(value: Any, where: str, base: Thresholds) -> Thresholds:
    """Thresholds from a table; keys it leaves out are `base`'s."""
    table = _table(value, where)
    _known(table, where, THRESHOLD_KEYS)
    merged = {**asdict(base), **{k: table[k] for k in THRESHOLD_KEYS if k in table}}
    thresholds = Thresholds(**merged)
    thresholds.check(where)
    return thresholds


def _campaign(value: Any, where: str, base: Thresholds) -> Campaign:
    table = _table(value, where)
    _known(
        table,
        where,
        ("name", "merchants", "starts", "ends", "starts_ms", "ends_ms", *THRESHOLD_KEYS),
    )
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}.name: expected a non-empty string, got {name!r}")
    where = f"campaigns.{name}"
    merchants = _ids(table.get("merchants"), f"{where}.merchants")
    if not merchants:
        raise PolicyError(f"{where}.merchants: a campaign names at least one merchant")
    starts = _instant(table, "starts", where)
    ends = _instant(table, "ends", where)
    if starts is not None and ends is not None and ends <= starts:
        raise PolicyError(f"{where}: ends must be after starts")
    thresholds = _thresholds({k: table[k] for k in THRESHOLD_KEYS if k in table}, where, base)
    return Campaign(name, merchants, thresholds, starts, ends)


def _instant(table: Mapping[str, Any], key: str, where: str) -> int | None:
    """Epoch ms from `key` (an ISO-8601 time with zone, or a TOML datetime) or `key_ms`."""
    if f"{key}_ms" in table:
        value = table[f"{key}_ms"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise PolicyError(f"{where}.{key}_ms: expected epoch milliseconds, got {value!r}")
        return value
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PolicyError(f"{where}.{key}: not an ISO-8601 time: {value!r}") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise PolicyError(
            f"{where}.{key}: expected a time with its zone (e.g. ...Z), got {value!r}"
        )
    return int(value.timestamp() * 1000)


def _ids(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: expected a list of ids (strings), got {value!r}")
    return frozenset(value)


def _lists(value: Any) -> Lists:
    table = _table(value, "lists")
    names = tuple(f.name for f in fields(Lists))
    _known(table, "lists", names)
    return Lists(**{name: _ids(table[name], f"lists.{name}") for name in names if name in table})


def _suppressions(value: Any) -> dict[str, Suppression]:
    if not isinstance(value, list):
        raise PolicyError("suppressions: expected a list of tables ([[suppressions]])")
    found: dict[str, Suppression] = {}
    for i, item in enumerate(value):
        where = f"suppressions[{i}]"
        table = _table(item, where)
        _known(table, where, ("user_id", "until", "until_ms", "reason", "by"))
        user_id, until = table.get("user_id"), _instant(table, "until", where)
        if not isinstance(user_id, str) or not user_id:
            raise PolicyError(f"{where}.user_id: expected a user id, got {user_id!r}")
        if until is None:
            raise PolicyError(f"{where}: needs `until` (a time) or `until_ms`")
        texts = {k: table.get(k, "") for k in ("reason", "by")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise PolicyError(f"{where}: reason and by are strings")
        if user_id in found:
            raise PolicyError(f"{where}.user_id: {user_id!r} is suppressed twice")
        found[user_id] = Suppression(user_id, until, **texts)
    return found


def _budget(value: Any) -> Budget:
    table = _table(value, "budget")
    names = tuple(f.name for f in fields(Budget))
    _known(table, "budget", names)
    categories = {
        str(name): share
        for name, share in _table(table.get("categories", {}), "budget.categories").items()
    }
    budget = Budget(
        **{name: table[name] for name in names if name in table and name != "categories"},
        categories=categories,
    )
    budget.check()
    return budget


def _budget_document(budget: Budget) -> dict[str, Any]:
    return {**asdict(budget), "categories": dict(sorted(budget.categories.items()))}


DEFAULT_POLICY = Path(__file__).with_name("policies") / "default.toml"


def default_policy() -> Policy:
    """The policy shipped with RebateGuard (`rebate_guard/core/policies/default.toml`).

    Examples
    --------
    >>> policy = default_policy()
    >>> policy.thresholds.allow_at, policy.budget is not None
    (0.85, True)
    """
    return Policy.load(DEFAULT_POLICY)


Section = TypeVar("Section", Limits, LedgerTerms, SolvencyTerms, PointsTerms)


def _section(value: Any, where: str, cls: type[Section]) -> Section:
    """A table of plain keys (`[limits]`, `[ledger]`, `[solvency]`, `[points]`) as its
    dataclass, checked."""
    table = _table(value, where)
    names = tuple(f.name for f in fields(cls))
    _known(table, where, names)
    section = cls(**{name: table[name] for name in names if name in table})
    section.check()
    return section


def trust_weight(risk: float) -> float:
    """The trust weight w = 1 - risk, clamped to [0, 1] and kept to six decimals.

    Every signal, the rings' included, is in `risk` (`detectors.risk`); the weight is
    recorded in decisions and used for money, so it is kept exact.

    Parameters
    ----------
    risk : float
        The combined model risk.

    Returns
    -------
    float

    Examples
    --------
    >>> trust_weight(0.1234567)
    0.876543
    >>> trust_weight(1.5), trust_weight(-0.2)
    (0.0, 1.0)
    """
    w = 1.0 - _clamp(risk)
    # Six decimals: the weight is recorded in decisions and used for money, so keep it exact.
    return round(w, 6)


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))
