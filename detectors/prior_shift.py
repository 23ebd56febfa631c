"""How far the labels' fraud share is from the traffic's, estimated from the traffic itself.

The classifier learns from labels, and labels over-represent fraud (a platform labels most of
the fraud it finds and few legitimate payments), so its probability is P(fraud | x) among
*labelled* payments, whose fraud share is pi_L. If labelling depends on the class and not
otherwise on x (the prior-shift assumption), the probability among *all* payments, with
their fraud share pi, is the labelled one with its log-odds moved by

    shift = logit(pi) - logit(pi_L).

pi is not observed; it is estimated as Alexandari, Kundaje & Shrikumar (ICML 2020,
"Maximum likelihood with bias-corrected calibration is hard-to-beat at label shift
adaptation") recommend, in two steps, both refitted every `refit_every` scored transactions:

1. Calibration on the labels. Each label is scored by the classifier *before* it learns it
   (prequential: an out-of-sample log-odds l), and the last `label_window` (l, y) pairs fit
   Platt scaling, P(fraud | l, labelled) = logistic(a l + b), by maximum likelihood with
   Platt's (1999) smoothed targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2), which keep the fit
   finite when the labels are separable. pi_L is the fraud share of those labels. The
   classifier alone is under-confident (its regularised weights grow slowly) and the EM
   below needs calibrated probabilities: on a simulated world the uncalibrated EM reached a
   fraud share 60 times too small.
2. The EM of Saerens, Latinne & Decaestecker (2002) over the calibrated log-odds of the last
   `window` scored transactions (unlabelled: what the system sees):

       pi_0 = pi_L;   pi_{k+1} = mean_i logistic(a l_i + b + logit(pi_k) - logit(pi_L))

   until the shift moves by less than `tolerance` (or `max_iterations`): the
   maximum-likelihood traffic prior under the calibrated class-conditional model.

The adjusted probability of a transaction is then logistic(a l + b + shift) (`adjusted`).
Before the first fit a = 1, b = 0 and shift = 0: the classifier as learnt. A calibration that
would reverse the classifier's order (a <= 0) is not used.

No fit until the labels hold `min_class_labels` (20) of each class: Platt's fit is a logistic
regression of two parameters, and the usual floor for one is ten events of the rarer class per
parameter (Peduzzi et al., 1996). Below it the fit is noise, and the EM over noise runs to a
bound: on the random profile's tuning world 0 (20k) one mistaken fraud label of a review on
day 5 (a loyal customer's payment; no fraud until day 20) and some twenty legitimate ones gave
an uninformative classifier, whose log-odds are about equal on every payment, and the EM,
whose every step then adds the labels' log-odds prior, ran to the legit labels' ceiling,
0.99: every payment's q was 0.88-0.999 for two weeks, so the friction budget counted the
legitimate money as fraud and withheld 3.8% of it in days 10-15. The floor holds at every
refit: where the last labels fall under it later, the last fit stands until they come back.

Parameters, all generic statistical choices rather than fits to a world: `window` (10,000
transactions: a fraud share of 3% then has a standard error of about 6% of itself),
`label_window` (the last 1,000 labels: the classifier learns from every label, so its
out-of-sample scores on much older labels are a different model's; on a synthetic stream
where the prior-shift assumption holds exactly, calibrating on 5,000 labels of a classifier
still learning doubled the estimated prior, on 1,000 it was within 20%),
`refit_every` (a tenth of the window: each estimate uses mostly new traffic), `tolerance`
(0.001 in log-odds, far below anything a threshold can tell) and `max_iterations` (a bound on
the work). pi is kept between two shares the labels make observable (`label_bounds`): the
traffic holds at least as much fraud as has been labelled fraud in it, and at most what has
not been labelled legitimate. Labels arrive for earlier payments, so in a steady stream the
share of the window's transactions that fraud labels arrived with is the fraud share times
the share of fraud that gets labelled: a lower bound; likewise 1 - the legit labels' share is
an upper one. They bind only where the EM is wrong, and it is, at both ends. While the
classifier has few labels its calibrated scores barely separate the classes, and the EM over
them drifts to a prior far below the truth (on a tuning world, 0.01-0.05% against 6% for the
first nine fits, so every payment's fraud probability stayed near 0). Where nearly every
payment is labelled and the last 1,000 labels hold two or three frauds, Platt's slope is
near 0 and the EM can run to a prior near 1 (on a card-fraud world, 0.99995 on day 16: all
traffic scored fraud until the next fit); there the legit labels' share caps it near the true
1%. Outside the bounds pi is kept within half a transaction of 0 and 1 (a share of the
window cannot be more extreme). Updates happen in scoring order (event time): replay and a
worker with one partition see the same windows and reach the same estimate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(kw_only=True)
class PriorShift:
    """The labels' prior shift, refitted every `refit_every` scored transactions (module
    docstring).

    Parameters
    ----------
    window : int
        The scored transactions the EM runs over (the latest).
    label_window : int
        The labels Platt scaling is fitted on (the latest).
    refit_every : int
        Scored transactions between fits.
    tolerance : float
        The EM stops when the shift moves less than this (log-odds).
    max_iterations : int
        And at the latest after this many iterations.
    min_class_labels : int
        No fit before the labels hold this many of each class.

    Examples
    --------
    Half the labels are fraud; the traffic holds 3.5% (71 of the last 2,000). The
    classifier's log-odds are the exact posteriors at the labels' prior, so Platt's fit is
    about the identity, and the EM finds the traffic's prior from the scores alone.

    >>> import random
    >>> rng = random.Random(2)
    >>> shift = PriorShift(window=2_000, refit_every=4_000)
    >>> for _ in range(400):
    ...     fraud = rng.random() < 0.5
    ...     shift.labelled(3.0 * rng.gauss(1.5 if fraud else -1.5, 1.0), fraud)
    >>> for _ in range(4_000):
    ...     fraud = rng.random() < 0.04
    ...     shift.observe(3.0 * rng.gauss(1.5 if fraud else -1.5, 1.0))
    >>> shift.fits, round(shift.labelled_prior, 2), round(shift.prior, 3), round(shift.shift, 2)
    (1, 0.51, 0.038, -3.28)
    """

    window: int = 10_000
    label_window: int = 1_000
    refit_every: int = 1_000
    tolerance: float = 1e-3
    max_iterations: int = 200
    min_class_labels: int = 20
    #: The classifier's log-odds on the latest scored transactions, oldest first.
    log_odds: deque[float] = field(init=False)
    #: (log-odds before learning it, fraud) of the latest labels, oldest first.
    labels: deque[tuple[float, bool]] = field(init=False)
    #: Scored transactions observed since the last fit.
    since_fit: int = 0
    #: Platt scaling of the classifier's log-odds on the labels: a l + b.
    slope: float = 1.0
    intercept: float = 0.0
    #: The labels' fraud share and the estimated traffic's, as of the last fit.
    labelled_prior: float | None = None
    prior: float | None = None
    #: The log-odds shift from the labels' scale to the traffic's (0 before any fit).
    shift: float = 0.0
    fits: int = 0
    #: Scored transactions observed so far, and that count as each label arrived, per class.
    observed: int = 0
    fraud_label_marks: deque[int] = field(init=False)
    legit_label_marks: deque[int] = field(init=False)

    def __post_init__(self) -> None:
        self.log_odds = deque(maxlen=self.window)
        self.labels = deque(maxlen=self.label_window)
        self.fraud_label_marks = deque()
        self.legit_label_marks = deque()

    def __setstate__(self, state: dict[str, object]) -> None:
        # State pickled before the label bounds existed goes on without them.
        state.setdefault("observed", 0)
        state.setdefault("fraud_label_marks", deque())
        state.setdefault("legit_label_marks", deque())
        # One from before the floor fitted from a label of each class on, and goes on so.
        state.setdefault("min_class_labels", 1)
        self.__dict__.update(state)

    def adjusted(self, log_odds: float) -> float:
        """The log-odds of fraud among all payments, from the classifier's.

        Parameters
        ----------
        log_odds : float
            The classifier's log-odds (the labels' scale).

        Returns
        -------
        float
            slope x log_odds + intercept + shift; `log_odds` itself before the first fit.

        Examples
        --------
        >>> PriorShift().adjusted(1.5)
        1.5
        """
        return self.slope * log_odds + self.intercept + self.shift

    def labelled(self, log_odds: float, fraud: bool) -> None:
        """A label, with the classifier's log-odds on its vector before it learns it."""
        self.labels.append((log_odds, fraud))
        (self.fraud_label_marks if fraud else self.legit_label_marks).append(self.observed)

    def observe(self, log_odds: float) -> None:
        """One more scored transaction (the classifier's log-odds on it); every
        `refit_every` of them the calibration and the estimate are refitted."""
        self.log_odds.append(log_odds)
        self.observed += 1
        self.since_fit += 1
        if self.since_fit >= self.refit_every:
            self.fit()

    def fit(self) -> None:
        """Platt scaling on the labels, then the EM over the scored window."""
        self.since_fit = 0
        n, frauds = len(self.log_odds), sum(y for _, y in self.labels)
        if not n or min(frauds, len(self.labels) - frauds) < max(1, self.min_class_labels):
            return  # too few labels of a class: the fit would be noise (module docstring)
        labelled_prior = frauds / len(self.labels)
        slope, intercept = _platt(self.labels)
        if not slope > 0.0:  # reverses (or ignores) the classifier's order: not used
            slope, intercept = 1.0, 0.0
        scores = slope * np.fromiter(self.log_odds, dtype=np.float64, count=n) + intercept
        edge = 0.5 / n
        fraud_share, legit_share = self.label_bounds()
        floor = max(edge, fraud_share)
        ceiling = max(floor, 1.0 - max(edge, legit_share))
        base = logit(labelled_prior)
        prior, shift = labelled_prior, 0.0
        for _ in range(self.max_iterations):
            posterior = float(np.mean(_logistic(scores + shift)))
            prior = min(ceiling, max(floor, posterior))
            moved = logit(prior) - base - shift
            shift += moved
            if abs(moved) < self.tolerance:
                break
        self.slope, self.intercept = slope, intercept
        self.labelled_prior, self.prior, self.shift = labelled_prior, prior, shift
        self.fits += 1

    def label_bounds(self) -> tuple[float, float]:
        """The shares of the scored window's transactions that fraud labels and legit labels
        arrived with (module docstring)."""
        n, start = len(self.log_odds), self.observed - len(self.log_odds)
        shares = []
        for marks in (self.fraud_label_marks, self.legit_label_marks):
            while marks and marks[0] < start:
                marks.popleft()
            shares.append(len(marks) / n if n else 0.0)
        return shares[0], shares[1]


def _logistic(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), without overflow for any z."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _platt(labels: deque[tuple[float, bool]], iterations: int = 50) -> tuple[float, float]:
    """(a, b) maximising the likelihood of logistic(a l + b) for Platt's smoothed targets
    (Newton's method, each step halved until it does not lower the likelihood: from (1, 0)
    a full step overshoots where the classifier's log-odds are far from the labels' scale,
    e.g. all near -10 once it learns the matured payments, and Newton alone ran off to
    non-finite values); (1, 0) when the problem is degenerate (one distinct log-odds)."""
    scores = np.array([score for score, _ in labels], dtype=np.float64)
    fraud = np.array([y for _, y in labels], dtype=bool)
    positives = int(fraud.sum())
    negatives = len(fraud) - positives
    target = np.where(fraud, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(a: float, b: float) -> float:
        z = a * scores + b
        # -sum(t log p + (1 - t) log(1 - p)) = sum(log(1 + e^z) - t z), without overflow.
        return float(np.sum(np.logaddexp(0.0, z) - target * z))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = _logistic(a * scores + b)
        w = p * (1.0 - p)
        gradient = np.array([np.dot(p - target, scores), np.sum(p - target)])
        hessian = np.array(
            [[np.dot(w, scores * scores), np.dot(w, scores)], [np.dot(w, scores), np.sum(w)]]
        )
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return 1.0, 0.0
        if not np.all(np.isfinite(step)):
            return 1.0, 0.0
        for _ in range(60):
            trial = loss(a - float(step[0]), b - float(step[1]))
            if trial <= current:
                break
            step = step / 2.0
        else:
            break  # no step lowers it: as good as it gets
        a, b, current = a - float(step[0]), b - float(step[1]), trial
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return a, b
