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
from math import copysign, log1p
from typing import Any, TypeVar

from river import compose, forest, linear_model, optim, preprocessing

from detectors.base import LEARNERS, Features
from detectors.encoding import Layout, encode, layout

_T = TypeVar("_T")
#: Per feature of a layout, in its order: (weight / standard deviation, mean, the term it
#: adds when missing).
_Terms = list[tuple[float, float, float]]
#: Per feature of a layout, in its order: (mean, standard deviation, weight) when present
#: (None: the model does not weigh it), and its push when missing (-inf: none).
_Pushes = list[tuple[tuple[float, float, float] | None, float]]


@dataclass
class _Fold:
    """The model as of `n_learned` labels, folded for scoring: per feature the model weighs
    (weight and variance non-zero), (weight / standard deviation, mean, standard deviation,
    weight); the terms per layout (`terms`) made on first use."""

    n_learned: int
    intercept: float
    features: dict[str, tuple[float, float, float, float]]
    terms_by_layout: dict[Layout, _Terms] = field(default_factory=dict)
    pushes_by_layout: dict[Layout, _Pushes] = field(default_factory=dict)

    def terms(self, found: Layout) -> _Terms:
        return _made(self.terms_by_layout, found, self._make_terms)

    def _make_terms(self, found: Layout) -> _Terms:
        features, terms = self.features, []
        for name, missing in zip(found.names, found.missing, strict=True):
            gain, mean = features.get(name, _UNWEIGHED)[:2]
            missing_gain, missing_mean = features.get(missing, _UNWEIGHED)[:2]
            terms.append((gain, mean, missing_gain * (1.0 - missing_mean)))
        return terms

    def logit(self, found: Layout, x: Features) -> float:
        """b + the sum, in the layout's order, of gain (signed_log(x) - mean) over the
        present features and of the missing indicators' terms over the others (None or
        NaN); `signed_log` inlined: this runs for every transaction."""
        logit = self.intercept
        for value, (gain, mean, when_missing) in zip(found.read(x), self.terms(found), strict=True):
            if value is None or value != value:
                logit += when_missing
            else:
                logit += gain * (copysign(log1p(abs(value)), value) - mean)
        return logit

    def explain(self, found: Layout, x: Features, *, top: int) -> list[str]:
        """Features whose standardised value x weight, as River's pipeline computes it,
        raised the log-odds by more than 0.5, the largest first (a missing value's
        indicator at 1 included). A feature the fold leaves out pushes nothing: River scales
        a constant one to 0, and an unweighed one weighs 0."""
        if found.clashes:  # an indicator's name is also a key: `encode` keeps one of the two
            return self._explain_encoded(encode(x, scale=True), top=top)
        pushes = []
        for value, name, missing, (present, when_missing) in zip(
            found.read(x), found.names, found.missing, self.pushes(found), strict=True
        ):
            if value is None or value != value:
                if when_missing > 0.5:
                    pushes.append((when_missing, missing))
            elif present is not None:
                mean, deviation, weight = present
                push = (copysign(log1p(abs(value)), value) - mean) / deviation * weight
                if push > 0.5:
                    pushes.append((push, name))
        return _strongest(pushes, top)

    def pushes(self, found: Layout) -> _Pushes:
        return _made(self.pushes_by_layout, found, self._make_pushes)

    def _make_pushes(self, found: Layout) -> _Pushes:
        features, pushes = self.features, []
        for name, missing in zip(found.names, found.missing, strict=True):
            weighed = features.get(name)
            present = None if weighed is None else (weighed[1], weighed[2], weighed[3])
            weighed = features.get(missing)
            when_missing = -math.inf
            if weighed is not None:
                _, mean, deviation, weight = weighed
                when_missing = (1.0 - mean) / deviation * weight
            pushes.append((present, when_missing))
        return pushes

    def _explain_encoded(self, encoded: dict[str, float], *, top: int) -> list[str]:
        features = self.features
        pushes = []
        for name, value in encoded.items():
            weighed = features.get(name)
            if weighed is not None:
                _, mean, deviation, weight = weighed
                push = (value - mean) / deviation * weight
                if push > 0.5:
                    pushes.append((push, name))
        return _strongest(pushes, top)


def _made(made: dict[Layout, _T], found: Layout, make: Callable[[Layout], _T]) -> _T:
    """What `make` makes for `found`, made once (the fold is the model as of one label)."""
    done = made.get(found)
    if done is None:
        done = made[found] = make(found)
    return done


def _strongest(pushes: list[tuple[float, str]], top: int) -> list[str]:
    return [f"model:{name}" for _, name in sorted(pushes, reverse=True)[:top]]


#: A feature the model does not weigh: it adds nothing.
_UNWEIGHED = (0.0, 0.0, 0.0, 0.0)


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
        return self._proba(self._fold().logit(layout(x), x))

    def _proba(self, logit: float) -> float:
        # River's sigmoid, clamped as River clamps it; then back to the labels' scale.
        raw = 0.0 if logit < -30 else 1.0 if logit > 30 else 1.0 / (1.0 + math.exp(-logit))
        return self._calibrated(raw)

    def _fold(self) -> _Fold:
        cached = self._fold_cache
        if cached is None or cached.n_learned != self.n_learned:
            scaler = self.model["StandardScaler"]
            regression = self.model["LogisticRegression"]
            variances, means = scaler.vars, scaler.means
            features = {}
            for name, weight in regression.weights.items():
                var = variances.get(name, 0.0)
                if var:  # River scales a constant feature to 0: it adds nothing
                    deviation = var**0.5
                    features[name] = (weight / deviation, means[name], deviation, weight)
            cached = self._fold_cache = _Fold(self.n_learned, regression.intercept, features)
        return cached

    def scale(self, encoded: dict[str, float]) -> dict[str, float]:
        """Standardised inputs: River's own path, the reference the fold is tested against."""
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
        state["_fold_cache"] = None  # derived; scoring must not change what pickles
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state.pop("_weights_cache", None)  # pickled when explaining kept its own copy
        self.__dict__.update(state)

    def explain_one(self, x: Features, *, top: int = 3) -> list[str]:
        """Features whose (standardised value x weight) raised the log-odds by more than
        0.5, the largest first."""
        return self._fold().explain(layout(x), x, top=top)


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
