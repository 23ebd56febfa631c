"""The protocols detectors follow (river style).

A detector (`Detector`) is pure (no I/O), never mutates its input, scores before it learns,
and pickles cleanly so the worker can checkpoint it. `score_one` returns a risk in [0, 1]
(higher = more likely fraud); supervised detectors learn from `learn_one(x, y)` with y True
for fraud, unsupervised ones ignore y. Each declares the parameter sets the detector contract
tests it with (`_unit_test_params`, as river's estimators do); `detectors.registry` finds them
all, so a new detector is contract-tested without being listed anywhere.

A detector that takes part in the risk model's prior (`detectors.risk`) also follows
`PriorDetector`: it reads a transaction once (score, reasons, and what it will learn from),
and learns after scoring and from labels as that model tells it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

Features = dict[str, float | None]

#: The supervised classifiers a deployment may choose (`detectors.online.make_classifier`).
#: How many users a till sign-up's phone may have carried over 7 days (`device_user_count_7d`,
#: the payer included): its own, or a couple's. A phone a few accounts signed up on is a
#: farm's, however much each one looks like a shopper who joined at the counter.
TILL_DEVICE_USERS = 2


def signed_up_at_till(x: Features) -> bool:
    """Whether `x` is the payment of a user who signed up at a merchant's till
    (`features.user`, `signed_up_at_till`) on a phone of its own: the detectors' one test of
    it (`young_account`'s excuse, the classifier's and the anomaly detector's view of age).

    Examples
    --------
    >>> signed_up_at_till({"signed_up_at_till": 1.0, "device_user_count_7d": 1.0})
    True
    >>> signed_up_at_till({"signed_up_at_till": 1.0, "device_user_count_7d": 8.0})
    False
    >>> signed_up_at_till({"signed_up_at_till": 0.0}), signed_up_at_till({})
    (False, False)
    """
    till = x.get("signed_up_at_till")
    if till is None or till <= 0.5:
        return False
    users = x.get("device_user_count_7d")
    return users is None or users <= TILL_DEVICE_USERS


def in_signup_batch(x: Features) -> bool:
    """Whether the ring `x` is scored with (its strongest: `graph.evidence`) is a signup
    batch: accounts registered together, which the graph calls evidence of intent, not of
    abuse yet (`graph.rings.SIGNUP_BATCH_MAX`); a shop's sign-up drive makes one too.

    >>> in_signup_batch({"ring_score": 0.7, "ring_signup_batch": 1.0}), in_signup_batch({})
    (True, False)
    """
    return (x.get("ring_signup_batch") or 0.0) > 0.5


#: The excuses a rule may name (`detectors.rules.Rule.unless`): tests of the whole vector.
EXCUSES = {"signed_up_at_till": signed_up_at_till, "in_signup_batch": in_signup_batch}


LEARNERS = ("logreg", "arf", "arf+logreg")


@runtime_checkable
class Detector(Protocol):
    #: Short name used in reason codes and model_version.
    name: str

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        """Keyword arguments to build it with for the contract tests, one dict per set."""
        ...

    def score_one(self, x: Features) -> float: ...

    def learn_one(self, x: Features, y: bool | None = None) -> None: ...

    def explain_one(self, x: Features) -> list[str]:
        """Reason codes for the strongest contributors to this score, strongest first."""
        ...


class Reading(NamedTuple):
    """What a `PriorDetector` makes of one transaction (`PriorDetector.read`)."""

    #: Its risk in [0, 1].
    score: float
    #: Its reason codes, strongest first.
    reasons: list[str]
    #: What it learns from once the transaction is scored (`learn_scored`), worked out while
    #: reading it so that learning does not repeat the work; None: nothing to learn.
    learnable: Any = None


class PriorDetector(Protocol):
    """A detector in `detectors.risk.RiskModel`'s prior: read once per transaction (the risk
    model's current log-odds shift given, for a detector whose say is a precision among all
    payments), then `learn_scored` with that reading, and `learn_label` when a label
    arrives for the vector it was scored with."""

    name: str

    def read(self, x: Features, *, log_odds_shift: float) -> Reading: ...

    def learn_scored(self, reading: Reading) -> None: ...

    def learn_label(self, x: Features, fraud: bool) -> None: ...
