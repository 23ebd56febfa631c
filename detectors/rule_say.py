"""How much each rule says about a payment, learned from the labels of payments it fired on.

A rule's log-odds (`detectors.rules`) are the risk team's guess of how telling it is; the
labels say how often a payment it fires on is fraud. The classifier learns the rules only
through their combined score (`rule_risk`), fitted to all labels at once: a rare rule (a few
dozen payments a world) moves that fit little, however precise it is, so once the classifier
is trusted its firings are drowned (issue #21: `binding_before_big_payment` fired on most of
`binding_hijack`'s payments on held-out worlds, which kept most of their money). So each rule
keeps its own say, its precision among all the payments it fires on, learned from the f fraud
and l legitimate labels of payments it fired on (in the vector they were scored with): the
posterior mean of that precision (`detectors.precision.traffic_precision`) under

- a Beta(2 p0, 2 (1 - p0)) prior: the rule's stated score p0 = logistic(base + its
  log-odds), what it says alone, held with the weight of two labels, as the ring's say holds
  its 1/2 (Beta(1, 1));
- labels that over-represent fraud: a fraudulent payment is labelled exp(-shift) times as
  often as a legitimate one (the labels' prior shift, `detectors.prior_shift`), so of the
  labelled payments it fired on a share rho = pi e^-shift / (pi e^-shift + 1 - pi) is fraud
  when pi is its precision among all payments.

With no shift that is the ring's say's Beta mean, (f + 2 p0) / (f + l + 2). With one it is not
the ring's shortcut, which counts a legitimate label as exp(-shift) of them and so no label
as none: where legitimate payments are rarely labelled, no legitimate label among a rule's
payments is weak evidence that it fires on none. On the random profile's tuning world 2 (40k
transactions) the shortcut gave `young_account` a say of 0.95 from 33 fraud labels and none
legitimate (0.4% of legitimate payments were labelled, 9% of fraud), on payments 66% fraud:
142 legitimate payments were withheld; at those counts and a shift of -3.3 (about that
world's) the posterior says 0.61. A rule whose firings keep
turning out fraud gets the say its labels show; one that keeps firing on legitimate payments
loses it.

A rule's precision is an average over all its firings, and the risk model counts the say as a
floor under the classifier's q (risk = max(blend, say)): where the classifier already tells
its firings apart (q near 1 on the fraud among them, near 0 on the rest), a floor at the
whole precision adds fraud probability the rule's firings do not have. On the random
profile's tuning world 0 (40k) `young_account` fired on 212 payments, 34% fraud; its say
was 0.47-0.54 and the classifier's q already averaged about that over them (near 1 on
brushing and coupon farming), yet every new user's first-day payment got risk >= 0.47,
and the friction budget counted 47% of it as fraud: new customers' money was withheld and
the budget's estimate of the legitimate money below its cut fell short. So the say of a
rule is the floor that brings the mean of max(q, floor) over its recent firings (`memory`
of them, q recorded as scored: `learn_beside`) up to its precision and no further: the
precision itself where the classifier sees nothing in the rule (q small on every firing:
a rare precise rule drowned, its whole say kept), none where q's mean over its firings
already reaches the precision (the classifier has learnt it), in between otherwise. So
the risk's mean over a rule's firings is its precision, as a calibrated probability's is.

Both are in money, as the friction budget counts (it withholds rebate money and counts each
payment's money as fraud in max(q, say)): each label counts as its rebate over the mean
rebate of the rule's recent firings (`label_weight`), and q's mean over the firings is
weighed by their rebate. On tuning world 1 `young_account` fired on a referral farm's
hundreds of tiny payments and on new customers' fewer, bigger ones: 60% of its firings were
fraud, 11% of their money; a say of 0.55 under every new customer's payment withheld it and
let the budget count 55% of it as fraud. A rule with no amount in its vectors counts each
label and firing as one.

A payment's say is the largest say of the rules that fire on it (max, not noisy-OR: rules
firing together are not independent evidence). The risk model counts it beside the
classifier, not through it (`detectors.risk`, "calibrated signals").
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from detectors.base import Features, Reading
from detectors.precision import traffic_precision
from detectors.rules import RuleScore

#: The Beta prior's weight in labels: two, as Beta(1, 1)'s (the ring's say).
PRIOR_LABELS = 2.0
#: The classifier's q on a rule's firings is kept in this many bins of [0, 1] (its floor is
#: found to 1 / Q_BINS).
Q_BINS = 100
#: A rule's histogram of q stands for about its last this many firings: past twice this
#: many, every count is halved (the classifier moves as it learns).
BESIDE_MEMORY = 1_000
#: Each bin's q (its middle), as `floor` reads the histogram.
_BIN_Q = tuple((b + 0.5) / Q_BINS for b in range(Q_BINS))
#: `FiringSay`'s caches (and `RuleSay`'s): rebuilt from its counts, histograms and rules,
#: never pickled.
_CACHES = ("_says", "_says_shift", "_floors", "_stated", "_stated_of")


@dataclass(kw_only=True)
class FiringSay(ABC):
    """The say of whatever fires on a payment (a rule, a ring's kind: each a `code`), learned
    from the labels of payments it fired on, as a floor under the classifier's q (module
    docstring). A subclass says what fires (`codes`) and what a code says before its labels
    (`stated`).

    Parameters
    ----------
    prior_labels : float
        The weight of each code's stated score, in labels.
    name : str
        Its name in reason codes and reports.
    """

    prior_labels: float = PRIOR_LABELS
    #: code -> labelled fraud / legitimate payments it fired on, each weighed by its
    #: rebate against the mean rebate of the code's recent firings (`label_weight`).
    fraud: dict[str, float] = field(default_factory=dict)
    legit: dict[str, float] = field(default_factory=dict)
    #: code -> reviewed fraud / legitimate payments of the review sample it fired on, weighed
    #: alike (`learn_reviewed`): labels of a random sample of its withheld firings, not of
    #: the label process.
    reviewed_fraud: dict[str, float] = field(default_factory=dict)
    reviewed_legit: dict[str, float] = field(default_factory=dict)
    #: code -> the rebate money withheld at decision from its recent firings (`beside`'s,
    #: forgotten with them): the share of its money the reviews speak for (`learn_withheld`).
    withheld: dict[str, float] = field(default_factory=dict)
    #: code -> the rebate money of its recent firings by the classifier's calibrated q
    #: (`Q_BINS` bins), then how many firings they were: what its say adds to q (module
    #: docstring). None for a code: its whole precision.
    beside: dict[str, list[float]] = field(default_factory=dict)
    memory: int = BESIDE_MEMORY
    name: str = "firing_say"  # each subclass names itself
    #: Whether the reviews of a code's withheld firings count in its precision
    #: (`learn_reviewed`). Not for a rule: it fires on a broad population (every young
    #: account), where the withheld firings are those something else found risky and the
    #: rest, most of its money, is another population (counted, reviews raised
    #: `young_account`'s say, and 45% of the legitimate money it fired on was withheld on
    #: tuning world 22 of the random profile, 20k, against 10%).
    learns_reviews: ClassVar[bool] = False
    #: Each code's say at `_says_shift`, with the counts it was learnt from: a code's say is
    #: computed once per shift and per label of its payments, not per payment (the posterior
    #: is a sum over a grid). Not pickled.
    _says: dict[str, tuple[float, float, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _says_shift: float = field(default=0.0, init=False, repr=False, compare=False)
    #: Each code's floor, with the precision and the histogram (`beside`'s list, None before
    #: any) it was found for: dropped when the code's histogram learns (`learn_beside`), so a
    #: code's floor is found once per firing that moved it, not once per payment. Not pickled.
    _floors: dict[str, tuple[float, list[float] | None, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @abstractmethod
    def codes(self, x: Features) -> list[str]:
        """What fires on `x` (each a code with a say of its own)."""

    @abstractmethod
    def stated(self, code: str) -> float:
        """What `code` says before any label: its prior precision."""

    @abstractmethod
    def explain_one(self, x: Features) -> list[str]:
        """The reason codes of what fires on `x` (a detector's member: without it a subclass
        would drop out of the registry, untested)."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _CACHES}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint; one from before `beside` has seen no q yet: each code says
        its whole precision until it has."""
        fresh = {"beside": {}, "memory": BESIDE_MEMORY}
        reviews: dict[str, dict[str, float]] = {
            "reviewed_fraud": {},
            "reviewed_legit": {},
            "withheld": {},
        }
        self.__dict__.update({**fresh, **reviews, **state})
        self._says, self._says_shift, self._floors = {}, 0.0, {}

    def precision(self, code: str, log_odds_shift: float = 0.0) -> float:
        """P(fraud | `code` fires), among all payments when `log_odds_shift` is the labels'
        prior shift (0: among the labelled ones), in its reviews' part too
        (`with_reviews`)."""
        if log_odds_shift != self._says_shift:
            self._says, self._says_shift = {}, log_odds_shift
        fraud, legit = self.fraud.get(code, 0), self.legit.get(code, 0)
        said = self._says.get(code)
        if said is not None and said[0] == fraud and said[1] == legit:
            return self.with_reviews(code, said[2])
        say = traffic_precision(
            fraud,
            legit,
            prior_mean=self.stated(code),
            prior_labels=self.prior_labels,
            log_odds_shift=log_odds_shift,
        )
        self._says[code] = (fraud, legit, say)
        return self.with_reviews(code, say)

    def with_reviews(self, code: str, labelled: float) -> float:
        """The precision over `code`'s firings in money, w x p_w + (1 - w) x `labelled`:
        w the share of its recent firings' money withheld at decision (`withheld`), p_w the
        precision among those, from the reviews of their random sample (a Beta posterior
        mean from the code's stated score held as `prior_labels` labels, no shift: the
        sample labels fraud and legitimate alike), and `labelled` the precision its labels
        say, for the rest. The reviews speak only for what they were drawn from.

        >>> from detectors.ring_say import RingKindSay
        >>> from graph.evidence import ring_features
        >>> say = RingKindSay()
        >>> cash_out = ring_features((0.9, ["ring:cash_out"]))
        >>> for _ in range(4):  # four firings of 10 cents, three of them withheld
        ...     say.learn_beside(["cash_out"], 0.1, rebate_cents=10.0)
        >>> say.learn_withheld(["cash_out"], 1.0, rebate_cents=30.0)
        >>> for _ in range(8):
        ...     say.learn_reviewed(cash_out, True)
        >>> round(say.with_reviews("cash_out", 0.5), 3)  # 0.75 x 0.9 + 0.25 x 0.5
        0.8
        """
        if code not in self.reviewed_fraud and code not in self.reviewed_legit:
            return labelled
        seen = self.beside.get(code)
        money = sum(seen[:Q_BINS]) if seen else 0.0
        if money <= 0.0:
            return labelled
        share = min(1.0, self.withheld.get(code, 0.0) / money)
        fraud = self.reviewed_fraud.get(code, 0.0)
        legit = self.reviewed_legit.get(code, 0.0)
        reviewed = (fraud + self.prior_labels * self.stated(code)) / (
            fraud + legit + self.prior_labels
        )
        return share * reviewed + (1.0 - share) * labelled

    def floor(self, code: str, precision: float) -> float:
        """The smallest s (to 1 / `Q_BINS`, at most `precision`) with the mean of max(q, s)
        over the rule's recent firings, weighed by their rebate money, at least `precision`
        (q at its bin's middle); `precision` itself before any firing was seen with a q.

        Examples
        --------
        Half its firings at q = 0.9 (the classifier's fraud), half at q = 0.1: a precision
        of 0.5 is already q's mean, so no floor; at 0.6 a floor of 0.3 lifts the half at 0.1
        (0.5 x 0.9 + 0.5 x 0.3 = 0.6).

        >>> say = RuleSay()
        >>> say.floor("young_account", 0.6)
        0.6
        >>> for q in (0.9, 0.1) * 10:
        ...     say.learn_beside(["young_account"], q, rebate_cents=50.0)
        >>> say.floor("young_account", 0.5), say.floor("young_account", 0.6)
        (0.0, 0.3)
        """
        seen = self.beside.get(code)
        floored = self._floors.get(code)
        if floored is not None and floored[0] == precision and floored[1] is seen:
            return floored[2]
        floor = precision
        counts = seen[:Q_BINS] if seen else None
        total = sum(counts) if counts else 0.0
        if counts and total > 0.0:
            wanted = precision * total
            below, above = 0.0, sum(map(operator.mul, _BIN_Q, counts))
            for k in range(Q_BINS + 1):
                s = k / Q_BINS
                if s * below + above >= wanted - 1e-9 * total:
                    floor = min(s, precision)
                    break
                if k < Q_BINS:
                    below += counts[k]
                    above -= _BIN_Q[k] * counts[k]
        self._floors[code] = (precision, seen, floor)
        return floor

    def score(self, x: Features, log_odds_shift: float = 0.0) -> float:
        """The largest say of the codes that fire on `x` (0: none fires): each code's floor
        under q at its precision (`floor`)."""
        return self._say_of(self.codes(x), log_odds_shift)

    def _say_of(self, codes: list[str], log_odds_shift: float) -> float:
        """The largest say of `codes`: `precision` and `floor` inlined where both
        are cached, as they are for most payments (once per payment)."""
        if not codes:
            return 0.0
        if log_odds_shift != self._says_shift:
            self._says, self._says_shift = {}, log_odds_shift
        says, floors, fraud, legit = self._says, self._floors, self.fraud, self.legit
        beside = self.beside
        most = 0.0  # every say is at least 0: the largest of them
        for code in codes:
            said = says.get(code)
            if said is None or said[0] != fraud.get(code, 0) or said[1] != legit.get(code, 0):
                precision = self.precision(code, log_odds_shift)
            else:
                precision = self.with_reviews(code, said[2])
            floored = floors.get(code)
            if floored is None or floored[0] != precision or floored[1] is not beside.get(code):
                say = self.floor(code, precision)
            else:
                say = floored[2]
            if say > most:
                most = say
        return most

    def score_one(self, x: Features) -> float:
        """The payment's say among the labelled payments.

        Parameters
        ----------
        x : dict
            A feature vector (None: missing; a missing feature fires no rule).

        Returns
        -------
        float
            The largest say of the codes that fire; 0 when none does.

        Examples
        --------
        A young account on a shared device: the shared device says more.

        >>> x = {"user_account_age_s": 600.0, "device_user_count_7d": 8.0}
        >>> round(RuleSay().score_one(x), 3), round(RuleSay().precision("young_account"), 3)
        (0.378, 0.119)
        """
        return self.score(x)

    def read(self, x: Features, *, log_odds_shift: float = 0.0) -> Reading:
        """Its part in the risk model: `score` at the labels' prior shift. No reason: the
        rules' own reading names the rules that fire (kept as what `learn_beside` learns)."""
        codes = self.codes(x)
        score = self._say_of(codes, log_odds_shift)
        return Reading(score, [], (codes, rebate_cents(x)) if codes else None)

    def learn_beside(self, codes: list[str], q: float, *, rebate_cents: float | None) -> None:
        """A scored payment `codes` fired on, its rebate (None: unknown, counted
        as 1) and the classifier's calibrated q on it (the risk model calls it once q is a
        probability among all payments)."""
        b = min(Q_BINS - 1, max(0, int(q * Q_BINS)))
        money = 1.0 if rebate_cents is None else rebate_cents
        for code in codes:
            self._floors.pop(code, None)  # its histogram moves: its floor is found anew
            seen = self.beside.get(code)
            if seen is None:
                seen = self.beside[code] = [0.0] * (Q_BINS + 1)
            seen[b] += money
            seen[Q_BINS] += 1.0
            if seen[Q_BINS] > 2 * self.memory:
                seen[:] = [n / 2 for n in seen]
                if code in self.withheld:
                    self.withheld[code] /= 2

    def learn_withheld(self, codes: list[str], share: float, *, rebate_cents: float | None) -> None:
        """`share` of the rebate (None: unknown, counted as 1, as `learn_beside` counts it)
        of a payment `codes` fired on was withheld at decision: how much of a code's money
        its reviews speak for (`with_reviews`)."""
        if not self.learns_reviews:
            return
        money = share * (1.0 if rebate_cents is None else rebate_cents)
        for code in codes:
            self.withheld[code] = self.withheld.get(code, 0.0) + money

    def label_weight(self, code: str, x: Features) -> float:
        """What a label of `x` counts for the rule `code`: its rebate over the mean rebate of
        the rule's recent firings (1 when either is unknown), so that its precision is one in
        money, the share of the rebate money on its firings that is fraud: what the friction
        budget counts.

        Examples
        --------
        >>> say = RuleSay()
        >>> for cents in (10.0, 30.0):
        ...     say.learn_beside(["young_account"], 0.1, rebate_cents=cents)
        >>> young = {"user_account_age_s": 600.0, "amount_cents": 1_000.0, "rebate_rate": 0.01}
        >>> say.label_weight("young_account", young), say.label_weight("refund", young)
        (0.5, 1.0)
        """
        seen = self.beside.get(code)
        cents = rebate_cents(x)
        if seen is None or cents is None or seen[Q_BINS] <= 0.0:
            return 1.0
        mean = sum(seen[:Q_BINS]) / seen[Q_BINS]
        return cents / mean if mean > 0.0 else 1.0

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """A label of a payment counts for every rule that fired on it.

        Parameters
        ----------
        x : dict
            The vector the payment was scored with.
        y : bool, optional
            True: fraud; False: legitimate; None (no label): nothing is learnt.

        Examples
        --------
        >>> say = RuleSay()
        >>> say.learn_one({"user_account_age_s": 600.0, "is_refund": 1.0}, False)
        >>> say.learn_one({}, True)  # no rule fires: nothing to count
        >>> say.fraud, say.legit
        ({}, {'young_account': 1.0, 'refund': 1.0})
        """
        if y is not None:
            self._count(self.fraud if y else self.legit, x)

    def _count(self, counts: dict[str, float], x: Features) -> None:
        """A label of `x` in `counts`, for every code that fired on it (`label_weight`)."""
        for code in self.codes(x):
            counts[code] = counts.get(code, 0.0) + self.label_weight(code, x)

    def learn_scored(self, reading: Reading) -> None:  # noqa: B027 (a no-op, not abstract)
        """Scoring teaches it nothing: only labels do (and q, through `learn_beside`)."""

    def learn_label(self, x: Features, fraud: bool) -> None:
        self.learn_one(x, fraud)

    def learn_reviewed(self, x: Features, fraud: bool) -> None:
        """The review of a payment in the review sample, for every code that fired on it
        (`learns_reviews`): drawn at random from the withheld payments and labelled whatever
        its truth, a draw of the precision among a code's withheld firings (`with_reviews`),
        not of the label process."""
        if self.learns_reviews:
            self._count(self.reviewed_fraud if fraud else self.reviewed_legit, x)


@dataclass(kw_only=True)
class RuleSay(FiringSay):
    """Each rule's precision, learned from the labels of payments it fired on (module
    docstring).

    Parameters
    ----------
    rules : RuleScore
        The rules whose say it learns (the risk model's own, shared: the same rule set).
    prior_labels : float
        The weight of each rule's stated score, in labels.
    name : str
        Its name in reason codes and reports.

    Examples
    --------
    Before any label a firing rule says what it says alone: a shared device
    logistic(-3.5 + 3.0). Labels of the payments it fires on move its say.

    >>> say = RuleSay()
    >>> shared = {"device_user_count_7d": 8.0}
    >>> round(say.score_one(shared), 3), say.score_one({})
    (0.378, 0.0)
    >>> for _ in range(6):
    ...     say.learn_one(shared, True)
    >>> round(say.score_one(shared), 3), say.fraud
    (0.844, {'device_shared_7d': 6.0})
    """

    rules: RuleScore = field(default_factory=RuleScore)
    name: str = "rule_say"
    #: Each rule's stated score, for the rule set `_stated_of` (rules are frozen: a new set
    #: is a new tuple).
    _stated: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    _stated_of: tuple[Any, float] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._stated, self._stated_of = {}, None

    def codes(self, x: Features) -> list[str]:
        """The rules that fire on `x`."""
        return self.rules.assess(x)[1]

    def stated(self, code: str) -> float:
        """What the rule `code` says alone: logistic(base + its log-odds)."""
        rules = self.rules
        of = (rules.rules, rules.base_log_odds)
        if self._stated_of != of:  # rules compared by identity first: a tuple's way
            self._stated = {
                r.code: 1.0 / (1.0 + math.exp(-(rules.base_log_odds + r.log_odds)))
                for r in rules.rules
            }
            self._stated_of = of
        return self._stated[code]

    def explain_one(self, x: Features) -> list[str]:
        return self.rules.explain_one(x)


def rebate_cents(x: Features) -> float | None:
    """The rebate a payment's vector asks for (amount x rate; None when either is missing)."""
    amount, rate = x.get("amount_cents"), x.get("rebate_rate")
    return None if amount is None or rate is None else amount * rate
