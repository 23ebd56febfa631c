"""How much a ring of each kind says about a payment, learned from its members' labels.

A ring detector's score says how well a group fits a kind's shape, not how often such
groups are fraud: on simulated worlds some kinds flag mostly real rings and others mostly
look-alikes. So each kind's say is its precision, estimated from the labels of payments that
were scored with a ring of that kind (`ring_<kind>` = 1 in the vector they were scored with):

    say(kind) = (f + 1) / (f + 1 + l x exp(-shift) + 1)

(`detectors.precision`), a Beta(1, 1) posterior mean over f fraud and l legitimate labels.
Beta(1, 1) (every precision equally likely) is the uninformative prior, not a tuned number:
with no label a kind's say is 1/2, "a flag of this kind is as likely right as wrong", so ring
scores count from the first minute at half their strength, and the first labels move it. Labels
over-represent fraud, so a labelled legitimate payment stands for exp(-shift) of them, with
shift the log-odds prior shift the risk model estimates (`detectors.prior_shift`; 0 before
it has an estimate): the same correction the classifier gets, so the say is a precision
among all payments of the kind, not among the labelled ones. A kind that keeps flagging
legitimate users loses its say; one whose members keep turning out fraud keeps it.

The ring's contribution to risk is its score times its kind's say (`score`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from detectors.base import Features, Reading
from detectors.precision import label_precision
from detectors.rule_say import FiringSay
from graph.evidence import RING_REASON, RING_SCORE, kind_feature
from graph.rings import KINDS, SIGNUP_BATCH

#: (kind, its indicator feature), in the graph's order of precedence.
_KIND_FEATURES = tuple((kind, kind_feature(kind)) for kind in KINDS)


@dataclass(kw_only=True)
class RingSay:
    """Each ring kind's precision, learned from the labels of payments scored with it.

    Parameters
    ----------
    prior_fraud, prior_legit : float
        The Beta prior's pseudo-counts (Beta(1, 1): uniform).
    name : str
        Its name in reason codes and reports.

    Examples
    --------
    Before any label a ring counts at half its score; labels of payments scored with a
    kind move that kind's say.

    >>> from graph.evidence import ring_features
    >>> say = RingSay()
    >>> cash_out = ring_features((0.9, ["ring:cash_out"]))
    >>> collusion = ring_features((0.9, ["ring:collusion"]))
    >>> say.score_one(cash_out), say.score_one(collusion)
    (0.45, 0.45)
    >>> for fraud in (True, True, True, False):
    ...     say.learn_one(cash_out, fraud)
    ...     say.learn_one(collusion, not fraud)
    >>> round(say.score_one(cash_out), 3), round(say.score_one(collusion), 3)
    (0.6, 0.3)
    """

    #: The Beta prior's pseudo-counts (Beta(1, 1): uniform).
    prior_fraud: float = 1.0
    prior_legit: float = 1.0
    #: kind -> labelled fraud / legitimate payments scored with a ring of that kind.
    fraud: dict[str, int] = field(default_factory=dict)
    legit: dict[str, int] = field(default_factory=dict)
    name: str = "ring_say"

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    @staticmethod
    def kind(x: Features) -> str | None:
        """The kind of the ring `x` was scored with (None: no ring)."""
        for kind, feature in _KIND_FEATURES:
            if x.get(feature) == 1.0:
                return kind
        return None

    @staticmethod
    def ring_score(x: Features) -> float:
        value = x.get(RING_SCORE)
        if value is None or value != value:  # missing, or NaN
            return 0.0
        return min(1.0, max(0.0, value))

    def precision(self, kind: str, log_odds_shift: float = 0.0) -> float:
        """P(fraud | a payment scored with a ring of `kind`), among all payments when
        `log_odds_shift` is the labels' prior shift (0: among the labelled ones)."""
        return label_precision(
            self.fraud.get(kind, 0),
            self.legit.get(kind, 0),
            prior_fraud=self.prior_fraud,
            prior_legit=self.prior_legit,
            log_odds_shift=log_odds_shift,
        )

    def score(self, x: Features, log_odds_shift: float = 0.0) -> float:
        """The ring's contribution to risk: its score x its kind's say."""
        kind = self.kind(x)
        if kind is None:
            return 0.0
        return self.ring_score(x) * self.precision(kind, log_odds_shift)

    def score_one(self, x: Features) -> float:
        """The ring's contribution to risk, its kind's say among the labelled payments.

        Parameters
        ----------
        x : dict
            A feature vector with the ring evidence it was scored with (`graph.evidence`).

        Returns
        -------
        float
            The ring's score times its kind's precision; 0 without a ring.

        Examples
        --------
        >>> from graph.evidence import ring_features
        >>> RingSay().score_one(ring_features((0.8, ["ring:cash_out"])))
        0.4
        >>> RingSay().score_one(ring_features(None))
        0.0
        """
        return self.score(x)

    def read(self, x: Features, *, log_odds_shift: float = 0.0) -> Reading:
        """Its part in the risk model's prior: `score` at the labels' prior shift. No reason:
        the decision names the ring from the graph's evidence (`rebate_guard.core.decider`)."""
        return Reading(self.score(x, log_odds_shift), [])

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """A label of a payment scored with a ring counts for its kind.

        Parameters
        ----------
        x : dict
            The vector the payment was scored with (its ring evidence).
        y : bool, optional
            True: fraud; False: legitimate; None (no label): nothing is learnt.

        Examples
        --------
        >>> from graph.evidence import ring_features
        >>> say = RingSay()
        >>> say.learn_one(ring_features((0.9, ["ring:collusion"])), False)
        >>> say.learn_one(ring_features(None), True)  # no ring: nothing to count
        >>> say.fraud, say.legit
        ({}, {'collusion': 1})
        """
        kind = self.kind(x)
        if y is None or kind is None:
            return
        counts = self.fraud if y else self.legit
        counts[kind] = counts.get(kind, 0) + 1

    def learn_scored(self, reading: Reading) -> None:
        """Scoring teaches it nothing: only labels do."""

    def learn_label(self, x: Features, fraud: bool) -> None:
        self.learn_one(x, fraud)

    def explain_one(self, x: Features) -> list[str]:
        kind = self.kind(x)
        return [] if kind is None or not self.ring_score(x) else [f"{RING_REASON}{kind}"]


#: What a ring kind's say under q (`RingKindSay`) states before its labels: the mean of the
#: ring's say's Beta(1, 1), "a flag of this kind is as likely right as wrong".
KIND_STATED = 0.5


@dataclass(kw_only=True)
class RingKindSay(FiringSay):
    """Each ring kind's precision as a floor under the classifier's q (`FiringSay`, as the
    rules' say is: `detectors.rule_say`), counted beside it once it is trusted.

    The ring's say (`RingSay`) speaks in the prior, which the trusted classifier replaces:
    from then on a ring counts only through the ring features the classifier learns, and
    a kind it has seen few labels of (a cash-out ring found a week in) is drowned, as a rare
    rule was. Its members' payments kept the low weight their risk got before trust, and
    the friction budget, counting each payment as fraud only in its calibrated probability,
    counted them legitimate in 1 - q: on the random profile's tuning world 1 (20k, session
    22), payments scored with a ring were 1.94 M cents of rebate, all fraud; the budget
    counted them legitimate in 1 - 0.49 on average, so its cut fell under them for days
    (withheld: 30%). A kind whose payments' labels say fraud now says so under q, in money,
    and a kind that flags legitimate users (a signup batch of a shop's sign-up drive) fades
    to its precision.

    Examples
    --------
    A kind with no label says `KIND_STATED`; fraud labels of its payments raise it.

    >>> from graph.evidence import ring_features
    >>> say = RingKindSay()
    >>> cash_out = ring_features((0.9, ["ring:cash_out"]))
    >>> say.score_one(cash_out), say.score_one(ring_features(None))
    (0.5, 0.0)
    >>> for _ in range(6):
    ...     say.learn_one(cash_out, True)
    >>> round(say.score_one(cash_out), 3)
    0.875
    """

    name: str = "ring_kind_say"
    #: The reviews of a kind's withheld payments say its precision there: a kind fires on
    #: the members of the rings of that kind the graph found, and the rings whose payments
    #: are withheld are proved fraud (or not) by the review sample sooner than by the label
    #: process, which labels the legitimate e^shift times less often (on tuning worlds
    #: 0-59 of the random profile, 20k, the payments scored with a pyramid, collusion or
    #: cash-out ring were mostly fraud and half their money let through under kinds' says
    #: near 0.5-0.6). They speak only for the withheld share of the kind's money
    #: (`with_reviews`): a kind's other rings may be look-alikes.
    learns_reviews: ClassVar[bool] = True

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    def codes(self, x: Features) -> list[str]:
        """The kind of the ring `x` was scored with, unless a signup batch: accounts made
        together, which the graph calls evidence of intent, not of abuse yet
        (`detectors.base.in_signup_batch`; a shop's sign-up drive makes one), so its 1/2
        before labels would hold every new customer of such a drive until legitimate
        labels, which are rare, taught it otherwise."""
        kind = RingSay.kind(x)
        return [] if kind is None or kind == SIGNUP_BATCH else [kind]

    def stated(self, code: str) -> float:
        return KIND_STATED

    def explain_one(self, x: Features) -> list[str]:
        return [f"{RING_REASON}{kind}" for kind in self.codes(x)]
