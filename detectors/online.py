"""A supervised online classifier that learns from delayed labels, with calibrated output.

River's logistic regression on standardised features, each first put on the signed log
scale (`detectors.encoding.signed_log`: heavy-tailed money and counts must not extrapolate).
Fraud is a few percent of transactions and the labelled fraud fewer still, so each fraud
example is learned with weight `fraud_weight`. Weighting multiplies the odds the model learns
by that weight, so
the raw probability p is mapped back with the prior-shift correction

    p_calibrated = p / (p + fraud_weight * (1 - p)),

which makes the output a probability again (checked for calibration in the tests).
`explain_one` names the features that pushed this score up the most.

Scoring runs on every transaction and learning only on labels, so scoring uses the model
folded into one pass: with the scaler's means m and standard deviations s and the weights w
as of the last label, the logit is b + sum over present features of (w/s)(signed_log(x) - m), the
same number River's pipeline computes (tested to 1e-9) without building the encoded and the
scaled vectors or River's per-call overhead; the fold is recomputed after each label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from river import compose, forest, linear_model, optim, preprocessing

from detectors.base import LEARNERS, Features
from detectors.encoding import encode, signed_log

#: Per feature, in sorted order: (weight / standard deviation, mean, the term it adds when
#: missing), and what reads the features' values in that order.
_Plan = tuple[Callable[[Features], tuple[Any, ...]], list[tuple[float, float, float]]]


@dataclass
class _Fold:
    """The model as of `n_learned` labels, folded for scoring; plans per key set."""

    n_learned: int
    means: dict[str, float]
    gains: dict[str, float]
    intercept: float
    plans: dict[tuple[str, ...], _Plan] = field(default_factory=dict)

    def plan(self, x: Features) -> _Plan:
        keys = tuple(x)
        plan = self.plans.get(keys)
        if plan is None:
            gains, means = self.gains, self.means
            names = sorted(keys)
            terms = []
            for name in names:
                missing = f"{name}_missing"
                when_missing = gains.get(missing, 0.0) * (1.0 - means.get(missing, 0.0))
                terms.append((gains.get(name, 0.0), means.get(name, 0.0), when_missing))
            getter = itemgetter(*names) if len(names) > 1 else lambda x: (x[names[0]],)
            plan = self.plans[keys] = (getter, terms)
        return plan


@dataclass(kw_only=True)
class OnlineClassifier:
    """River's logistic regression on standardised signed-log features, learning fraud with
    weight `fraud_weight`, its probability mapped back to the labels' scale (module
    docstring).

    Parameters
    ----------
    fraud_weight : float
        The weight each fraud label is learnt with (legitimate ones: 1).
    learning_rate : float
        SGD's step.
    l2 : float
        The weights' L2 penalty.
    name : str
        Its name in reason codes and reports.

    Examples
    --------
    Untrained, every payment gets the same probability; after 300 labels in which fraud came
    from devices shared by five or more users, a shared device is risky and the reason
    names it.

    >>> import random
    >>> model = OnlineClassifier()
    >>> shared, alone = {"device_user_count_7d": 8.0}, {"device_user_count_7d": 1.0}
    >>> round(model.predict_proba_one(shared), 3), round(model.predict_proba_one(alone), 3)
    (0.167, 0.167)
    >>> rng = random.Random(0)
    >>> for _ in range(300):
    ...     fraud = rng.random() < 0.2
    ...     users = rng.randint(5, 9) if fraud else rng.randint(1, 2)
    ...     model.learn_one({"device_user_count_7d": float(users)}, fraud)
    >>> round(model.predict_proba_one(shared), 3), round(model.predict_proba_one(alone), 3)
    (0.761, 0.044)
    >>> model.explain_one(shared)
    ['model:device_user_count_7d']
    """

    fraud_weight: float = 5.0
    learning_rate: float = 0.01
    l2: float = 1e-4
    name: str = "logreg"
    model: Any = field(init=False, repr=False)
    n_learned: int = 0
    n_fraud: int = 0
    _weights_cache: tuple[int, dict[str, float]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _fold_cache: _Fold | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regression = linear_model.LogisticRegression(optim.SGD(self.learning_rate), l2=self.l2)
        self.model = compose.Pipeline(preprocessing.StandardScaler(), regression)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    def predict_proba_one(self, x: Features) -> float:
        """P(fraud | x) among labelled payments, from the model as of the last label.

        Parameters
        ----------
        x : dict
            Feature name -> value (None or NaN: missing, which is itself a feature).

        Returns
        -------
        float
            The weighted regression's probability mapped back by the prior-shift correction
            p / (p + fraud_weight (1 - p)); 1 / (1 + fraud_weight) before any label.

        Examples
        --------
        >>> model = OnlineClassifier(fraud_weight=3.0)
        >>> model.predict_proba_one({"amount_cents": 1_200.0})
        0.25
        """
        if not x:
            return self._calibrated(self._sigmoid(self._fold().intercept))
        fold = self._fold()
        getter, terms = fold.plan(x)
        logit = fold.intercept
        # `encode`, the scaling and the dot in one pass, in sorted feature order.
        for value, (gain, mean, when_missing) in zip(getter(x), terms, strict=True):
            if value is None or value != value:  # missing, or NaN
                logit += when_missing
            else:
                logit += gain * (signed_log(value) - mean)
        return self._calibrated(self._sigmoid(logit))

    @staticmethod
    def _sigmoid(logit: float) -> float:
        # River's sigmoid, clamped as River clamps it.
        return 0.0 if logit < -30 else 1.0 if logit > 30 else 1.0 / (1.0 + math.exp(-logit))

    def _fold(self) -> _Fold:
        cached = self._fold_cache
        if cached is None or cached.n_learned != self.n_learned:
            scaler = self.model["StandardScaler"]
            regression = self.model["LogisticRegression"]
            gains = {}
            for name, weight in regression.weights.items():
                var = scaler.vars.get(name, 0.0)
                if var:  # River scales a constant feature to 0: it adds nothing
                    gains[name] = weight / var**0.5
            means = {name: scaler.means[name] for name in gains}
            cached = self._fold_cache = _Fold(self.n_learned, means, gains, regression.intercept)
        return cached

    def scale(self, encoded: dict[str, float]) -> dict[str, float]:
        """Standardised inputs (`predict_proba_one` in two steps, to reuse them)."""
        scaled: dict[str, float] = self.model["StandardScaler"].transform_one(encoded)
        return scaled

    def proba(self, scaled: dict[str, float]) -> float:
        """River's own path (scaled inputs): the reference `predict_proba_one` folds."""
        return self._calibrated(
            self.model["LogisticRegression"].predict_proba_one(scaled).get(True, 0.0)
        )

    def _calibrated(self, raw: float) -> float:
        return raw / (raw + self.fraud_weight * (1.0 - raw)) if raw < 1.0 else 1.0

    def score_one(self, x: Features) -> float:
        return self.predict_proba_one(x)

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Learns one label (a fraud one with weight `fraud_weight`).

        Parameters
        ----------
        x : dict
            The vector the transaction was scored with.
        y : bool, optional
            True: fraud; False: legitimate; None (unlabelled): nothing is learnt.

        Examples
        --------
        >>> model = OnlineClassifier()
        >>> before = model.predict_proba_one({"user_tx_count_24h": 30.0})
        >>> for _ in range(20):
        ...     model.learn_one({"user_tx_count_24h": 30.0}, True)
        ...     model.learn_one({"user_tx_count_24h": 2.0}, False)
        >>> model.learn_one({"user_tx_count_24h": 30.0}, None)  # no label: nothing learnt
        >>> model.predict_proba_one({"user_tx_count_24h": 30.0}) > before, model.n_fraud
        (True, 20)
        """
        if y is None:
            return  # unlabelled: nothing to learn for a supervised model
        self.model.learn_one(encode(x, scale=True), bool(y), w=self.fraud_weight if y else 1.0)
        self.n_learned += 1
        self.n_fraud += bool(y)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_weights_cache"] = None  # derived; scoring must not change what pickles
        state["_fold_cache"] = None
        return state

    def _weights(self) -> dict[str, float]:
        # River hands out a copy of the weights; they change only when a label is learned.
        cached = self._weights_cache
        if cached is None or cached[0] != self.n_learned:
            cached = self._weights_cache = (
                self.n_learned,
                dict(self.model["LogisticRegression"].weights),
            )
        return cached[1]

    def explain_one(self, x: Features, *, top: int = 3) -> list[str]:
        return self.explain_scaled(self.scale(encode(x, scale=True)), top=top)

    def explain_scaled(self, scaled: dict[str, float], *, top: int = 3) -> list[str]:
        """Features whose (standardised value x weight) raised the log-odds by more than
        0.5, the largest first."""
        weights = self._weights()
        pushes = []
        for name, value in scaled.items():
            push = value * weights.get(name, 0.0)
            if push > 0.5:
                pushes.append((push, name))
        pushes.sort(reverse=True)
        return [f"model:{name}" for _, name in pushes[:top]]


@dataclass(kw_only=True)
class ForestClassifier:
    """River's adaptive random forest (`forest.ARFClassifier`: Hoeffding trees on bootstrap
    weights, each replaced when its drift detector fires) on the same labels as the
    logistic regression, with the logistic regression alongside.

    Trees split on thresholds, so the features go in on their own scale (`encode`, missing
    values as `<name>_missing` indicators; a split on an absent feature follows its most
    travelled branch). Labels over-represent fraud already (`detectors.risk`) and a tree's
    leaf counts need no class weight, so its vote is the probability among labelled
    payments, as the weighted regression's is once mapped back; `detectors.risk` calibrates
    either on the labels. `blend`: score with the mean of the two models' log-odds instead of
    the forest's alone. The reasons are the regression's (`explain_one`): a forest's vote
    has no per-feature push to name. Scoring an untrained forest changes it (River builds
    the trees on first sight), so until the first label it answers the regression's prior.

    Parameters
    ----------
    n_models, seed
        River's `forest.ARFClassifier` parameters.
    blend : bool
        Score with the mean of the forest's and the regression's log-odds.
    name : str
        Its name in reason codes and reports.

    Examples
    --------
    After 300 labels in which fraud came from devices shared by five or more users:

    >>> import random
    >>> model = ForestClassifier()
    >>> rng = random.Random(0)
    >>> for _ in range(300):
    ...     fraud = rng.random() < 0.2
    ...     users = rng.randint(5, 9) if fraud else rng.randint(1, 2)
    ...     model.learn_one({"device_user_count_7d": float(users)}, fraud)
    >>> model.predict_proba_one({"device_user_count_7d": 8.0})
    1.0
    >>> model.predict_proba_one({"device_user_count_7d": 1.0})
    0.0
    """

    n_models: int = 10
    seed: int = 42
    blend: bool = False
    name: str = "arf"
    forest: Any = field(init=False, repr=False)
    linear: OnlineClassifier = field(default_factory=OnlineClassifier)
    n_learned: int = 0
    n_fraud: int = 0

    def __post_init__(self) -> None:
        self.forest = forest.ARFClassifier(n_models=self.n_models, seed=self.seed)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"blend": True}

    def predict_proba_one(self, x: Features) -> float:
        """P(fraud | x) among labelled payments: the forest's vote (or its blend with the
        regression); the regression's alone before the first label.

        Parameters
        ----------
        x : dict
            Feature name -> value (None or NaN: missing).

        Returns
        -------
        float
            A probability on the labels' scale.

        Examples
        --------
        >>> ForestClassifier().predict_proba_one({"amount_cents": 1_200.0})  # no label yet
        0.16666666666666666
        """
        linear = self.linear.predict_proba_one(x)
        if not self.n_learned:
            return linear
        p = self.forest.predict_proba_one(encode(x)).get(True, 0.0)
        if not self.blend:
            return p
        logit = (_logit(p) + _logit(linear)) / 2.0
        return 1.0 / (1.0 + math.exp(-logit))

    def score_one(self, x: Features) -> float:
        return self.predict_proba_one(x)

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Both models learn one label (`OnlineClassifier.learn_one`); None: nothing.

        Parameters
        ----------
        x : dict
            The vector the transaction was scored with.
        y : bool, optional
            True: fraud; False: legitimate; None (unlabelled): nothing is learnt.
        """
        if y is None:
            return
        self.forest.learn_one(encode(x), bool(y))
        self.linear.learn_one(x, y)
        self.n_learned += 1
        self.n_fraud += bool(y)

    def explain_one(self, x: Features, *, top: int = 3) -> list[str]:
        return self.linear.explain_one(x, top=top)


#: Probabilities are kept this far from 0 and 1 before taking log-odds.
_EDGE = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, _EDGE), 1.0 - _EDGE)
    return math.log(p / (1.0 - p))


Classifier = OnlineClassifier | ForestClassifier


def make_classifier(learner: str) -> Classifier:
    """The classifier `learner` names.

    Parameters
    ----------
    learner : str
        One of `LEARNERS`: "logreg", "arf" or "arf+logreg".

    Returns
    -------
    OnlineClassifier or ForestClassifier
        A new, untrained classifier.

    Examples
    --------
    >>> classifier = make_classifier("arf+logreg")
    >>> type(classifier).__name__, classifier.blend, classifier.name
    ('ForestClassifier', True, 'arf+logreg')
    >>> make_classifier("svm")
    Traceback (most recent call last):
    ...
    ValueError: unknown learner 'svm': one of logreg, arf, arf+logreg
    """
    if learner == "logreg":
        return OnlineClassifier()
    if learner == "arf":
        return ForestClassifier()
    if learner == "arf+logreg":
        return ForestClassifier(blend=True, name="arf+logreg")
    raise ValueError(f"unknown learner {learner!r}: one of {', '.join(LEARNERS)}")
