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

A payment's say is the largest say of the rules that fire on it (max, not noisy-OR: rules
firing together are not independent evidence). The risk model counts it beside the
classifier, not through it (`detectors.risk`, "calibrated signals").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from detectors.base import Features, Reading
from detectors.precision import traffic_precision
from detectors.rules import RuleScore

#: The Beta prior's weight in labels: two, as Beta(1, 1)'s (the ring's say).
PRIOR_LABELS = 2.0
#: `RuleSay`'s caches: rebuilt from its counts and rules, never pickled.
_CACHES = ("_says", "_says_shift", "_stated", "_stated_of")


@dataclass(kw_only=True)
class RuleSay:
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
    (0.844, {'device_shared_7d': 6})
    """

    rules: RuleScore = field(default_factory=RuleScore)
    prior_labels: float = PRIOR_LABELS
    #: rule code -> labelled fraud / legitimate payments it fired on.
    fraud: dict[str, int] = field(default_factory=dict)
    legit: dict[str, int] = field(default_factory=dict)
    name: str = "rule_say"
    #: Each rule's say at `_says_shift`, with the counts it was learnt from: a rule's say is
    #: computed once per shift and per label of its payments, not per payment (the posterior
    #: is a sum over a grid). Not pickled.
    _says: dict[str, tuple[int, int, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _says_shift: float = field(default=0.0, init=False, repr=False, compare=False)
    #: Each rule's stated score, for the rule set `_stated_of` (rules are frozen: a new set
    #: is a new tuple).
    _stated: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    _stated_of: tuple[Any, float] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _CACHES}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._says, self._says_shift, self._stated, self._stated_of = {}, 0.0, {}, None

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

    def precision(self, code: str, log_odds_shift: float = 0.0) -> float:
        """P(fraud | the rule `code` fires), among all payments when `log_odds_shift` is the
        labels' prior shift (0: among the labelled ones)."""
        if log_odds_shift != self._says_shift:
            self._says, self._says_shift = {}, log_odds_shift
        fraud, legit = self.fraud.get(code, 0), self.legit.get(code, 0)
        said = self._says.get(code)
        if said is not None and said[0] == fraud and said[1] == legit:
            return said[2]
        say = traffic_precision(
            fraud,
            legit,
            prior_mean=self.stated(code),
            prior_labels=self.prior_labels,
            log_odds_shift=log_odds_shift,
        )
        self._says[code] = (fraud, legit, say)
        return say

    def score(self, x: Features, log_odds_shift: float = 0.0) -> float:
        """The largest say of the rules that fire on `x` (0: none fires)."""
        codes = self.rules.assess(x)[1]
        if not codes:
            return 0.0
        if log_odds_shift != self._says_shift:
            self._says, self._says_shift = {}, log_odds_shift
        says, fraud, legit = self._says, self.fraud, self.legit
        most = 0.0  # every say is above 0: the largest of them
        for code in codes:  # `precision`, inlined where the say is cached: once per payment
            said = says.get(code)
            if said is None or said[0] != fraud.get(code, 0) or said[1] != legit.get(code, 0):
                say = self.precision(code, log_odds_shift)
            else:
                say = said[2]
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
            The largest precision of the rules that fire; 0 when none does.

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
        rules' own reading names the rules that fire."""
        return Reading(self.score(x, log_odds_shift), [])

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
        ({}, {'young_account': 1, 'refund': 1})
        """
        if y is None:
            return
        counts = self.fraud if y else self.legit
        for code in self.rules.assess(x)[1]:
            counts[code] = counts.get(code, 0) + 1

    def learn_scored(self, reading: Reading) -> None:
        """Scoring teaches it nothing: only labels do."""

    def learn_label(self, x: Features, fraud: bool) -> None:
        self.learn_one(x, fraud)

    def explain_one(self, x: Features) -> list[str]:
        return self.rules.explain_one(x)
