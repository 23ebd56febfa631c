"""One contract, every detector (river style): whatever a detector does inside, it must

- return a score in [0, 1] for any vector, including missing (None, NaN) and unseen features;
- never mutate its input;
- score before it learns: scoring changes no state;
- give the same score whatever the order of the vector's keys (bitwise, not just close);
- be deterministic for a seed: two instances fed the same stream score identically;
- pickle and come back scoring identically, and go on learning identically.

Every detector is the registry's (`detectors.registry.all_detectors`), each built with every
parameter set it declares (`_unit_test_params`); the first tests below keep the registry
whole.
"""

from __future__ import annotations

import ast
import copy
import math
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import detectors
from detectors.base import Detector, Features
from detectors.registry import all_detectors
from detectors.risk import RiskModel
from detectors.rules import RuleScore
from graph.evidence import ring_features


def _describe(params: dict[str, Any]) -> str:
    """A parameter set for a test id: plain values as they are, objects by their type."""
    return ",".join(
        f"{k}={v!r}" if isinstance(v, int | float | str) else f"{k}={type(v).__name__}"
        for k, v in params.items()
    )


def _cases() -> list[Any]:
    """Each registered detector with each parameter set it declares (`_unit_test_params`)."""
    cases = []
    for cls in all_detectors():
        declared = getattr(cls, "_unit_test_params", None)  # its absence fails a test below
        for i, params in enumerate(declared() if declared else ()):
            cases.append(pytest.param((cls, i), id=f"{cls.__name__}({_describe(params)})"))
    return cases


def _maker(cls: type[Detector], i: int) -> Callable[[], Detector]:
    """Builds the detector with its i-th parameter set, asked for anew each time, so that
    parameters that are objects (a classifier, a prior-shift estimate) are never shared."""

    def make() -> Detector:
        return cls(**list(cls._unit_test_params())[i])

    return make


def _stream(seed: int, n: int = 400) -> list[tuple[Features, bool]]:
    """Vectors with a learnable signal, gaps, the odd missing value and ring evidence."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        fraud = rng.random() < 0.1
        x: Features = {
            "user_tx_count_24h": rng.randint(0, 30) + (15 if fraud else 0),
            "device_user_count_7d": rng.choice([1, 1, 2, None]) if not fraud else rng.randint(4, 9),
            "seconds_since_prev_payment": None if rng.random() < 0.2 else rng.expovariate(1e-4),
            "amount_cents": float(rng.randint(100, 50_000)),
            "is_refund": 0,
        }
        # The ring a transaction was scored with: one kind mostly right, one mostly not.
        if rng.random() < (0.5 if fraud else 0.05):
            kind = "cash_out" if fraud and rng.random() < 0.8 else "collusion"
            x.update(ring_features((rng.uniform(0.5, 1.0), [f"ring:{kind}"])))
        out.append((x, fraud))
    return out


def _trained(make: Callable[[], Detector], seed: int = 1) -> Detector:
    detector = make()
    for x, y in _stream(seed):
        detector.score_one(x)
        detector.learn_one(x, None)  # scored (the unsupervised update), then labelled
        detector.learn_one(x, y)
    return detector


@pytest.fixture(params=_cases())
def make(request: pytest.FixtureRequest) -> Callable[[], Detector]:
    cls, i = request.param
    return _maker(cls, i)


def test_every_detector_declares_the_parameters_it_is_tested_with() -> None:
    for cls in all_detectors():
        assert hasattr(cls, "_unit_test_params"), f"{cls.__name__}: no _unit_test_params"
        declared = list(cls._unit_test_params())
        assert declared and all(isinstance(params, dict) for params in declared), cls
        for params in declared:
            assert isinstance(cls(**params), Detector)


def _scoring_classes() -> set[str]:
    """The classes in detectors/*.py that define `score_one`, read from the source (the
    protocols that declare it and the abstract bases that share it aside): a check on the
    registry that does not go through it."""
    found = set()
    for path in Path(detectors.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            base = any(isinstance(b, ast.Name) and b.id in ("Protocol", "ABC") for b in node.bases)
            methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            if "score_one" in methods and not base:
                found.add(f"detectors.{path.stem}.{node.name}")
    return found


def test_every_detector_in_the_package_is_registered() -> None:
    """A class that scores but is not a whole `Detector` (say, without `explain_one` or a
    `name`) would be missed by the registry and go untested: it fails here instead."""
    registered = {f"{cls.__module__}.{cls.__qualname__}" for cls in all_detectors()}
    scoring = _scoring_classes()
    assert "detectors.risk.RiskModel" in scoring and scoring <= registered


def test_scores_are_in_the_unit_interval_even_for_odd_vectors(make) -> None:
    for detector in (make(), _trained(make)):
        odd: list[Features] = [
            {},
            {"user_tx_count_24h": None, "amount_cents": math.nan},
            {"never_seen_before": 3.0, "user_tx_count_24h": 2},
            {"user_tx_count_24h": 10**9, "device_user_count_7d": -5},
        ]
        for x in odd:
            score = detector.score_one(x)
            assert 0.0 <= score <= 1.0 and not math.isnan(score), (x, score)
            assert isinstance(detector.explain_one(x), list)


def test_input_is_never_mutated(make) -> None:
    detector = _trained(make)
    for x, y in _stream(2, 50):
        before = copy.deepcopy(x)
        detector.score_one(x)
        detector.explain_one(x)
        detector.learn_one(x, y)
        assert x == before or all(  # NaN != NaN: compare by representation
            repr(x[k]) == repr(before[k]) for k in before
        )


def test_scoring_changes_no_state(make) -> None:
    detector = _trained(make)
    x = _stream(3, 1)[0][0]
    state = pickle.dumps(detector)
    first = detector.score_one(x)
    detector.explain_one(x)
    assert detector.score_one(x) == first
    assert pickle.loads(state).score_one(x) == first
    assert pickle.dumps(detector) == state


def test_key_order_does_not_change_the_score(make) -> None:
    detector = _trained(make)
    for x, _ in _stream(4, 50):
        reversed_x = dict(reversed(list(x.items())))
        assert detector.score_one(reversed_x) == detector.score_one(x)


def test_same_seed_same_stream_same_scores(make) -> None:
    a, b = _trained(make, seed=5), _trained(make, seed=5)
    probes = [x for x, _ in _stream(6, 30)]
    assert [a.score_one(x) for x in probes] == [b.score_one(x) for x in probes]


def test_pickle_round_trip_scores_and_learns_identically(make) -> None:
    original = _trained(make)
    clone = pickle.loads(pickle.dumps(original))
    more = _stream(7, 100)
    for x, y in more:
        assert clone.score_one(x) == original.score_one(x)
        clone.learn_one(x, y)
        original.learn_one(x, y)


def test_the_refitted_prior_shift_moved() -> None:
    """One of the risk model's parameter sets refits the prior shift within the stream."""
    (i,) = (i for i, p in enumerate(RiskModel._unit_test_params()) if "prior_shift" in p)
    model = _trained(_maker(RiskModel, i))
    assert isinstance(model, RiskModel) and model.prior_shift.fits > 0
    assert model.prior_shift.shift != 0.0


def test_learners_learn_something(make) -> None:
    """A detector that learns must score differently after a stream than before it (rules
    do not learn, by design)."""
    fresh, trained = make(), _trained(make)
    probes = [x for x, _ in _stream(8, 30)]
    changed = [fresh.score_one(x) != trained.score_one(x) for x in probes]
    assert any(changed) == (not isinstance(fresh, RuleScore))
