"""An unsupervised anomaly detector: useful from the first minute, before any label arrives.

River's Half-Space Trees over min-max-scaled features (`detectors.encoding`): a transaction
whose features fall where few recent ones did scores high. It learns from every transaction
it scores (after scoring it), so it follows the traffic as it drifts. Scores are in [0, 1] but
not probabilities; `detectors.risk` decides how much they count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from river import anomaly, compose, preprocessing

from detectors.base import Features, Reading, signed_up_at_till
from detectors.encoding import encode, signed_logs


@dataclass(kw_only=True)
class AnomalyScore:
    """River's Half-Space Trees over min-max-scaled features (module docstring).

    Parameters
    ----------
    n_trees, height, window_size, seed
        River's `anomaly.HalfSpaceTrees` parameters.
    features : tuple of str, optional
        The features it looks at (None: all).
    name : str
        Its name in reason codes and reports.

    Examples
    --------
    After a thousand payments of about 30 EUR, one of 90 EUR scores higher. The scores crowd
    near 1 and only their order says anything, one reason `GaussianAnomaly` is the default.

    >>> import random
    >>> rng = random.Random(0)
    >>> detector = AnomalyScore(seed=1)
    >>> for _ in range(1_000):
    ...     detector.learn_one(
    ...         {"amount_cents": rng.gauss(3_000, 500), "user_tx_count_24h": rng.randint(0, 3)}
    ...     )
    >>> usual = detector.score_one({"amount_cents": 3_000.0, "user_tx_count_24h": 1})
    >>> unusual = detector.score_one({"amount_cents": 9_000.0, "user_tx_count_24h": 3})
    >>> round(usual, 3), round(unusual, 3)
    (0.916, 0.995)
    """

    n_trees: int = 10
    height: int = 8
    window_size: int = 250
    seed: int = 42
    #: The features it looks at (None: all). A few telling ones beat all of them: each tree
    #: splits on random features, so fewer and stronger ones make better splits, and cheaper.
    features: tuple[str, ...] | None = None
    name: str = "hst"
    model: Any = field(init=False, repr=False)
    n_learned: int = 0

    def __post_init__(self) -> None:
        trees = anomaly.HalfSpaceTrees(
            n_trees=self.n_trees,
            height=self.height,
            window_size=self.window_size,
            seed=self.seed,
        )
        self.model = compose.Pipeline(preprocessing.MinMaxScaler(), trees)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"seed": 7}

    def _view(self, x: Features) -> dict[str, float]:
        if self.features is None:
            return encode(x)
        return encode({name: x.get(name) for name in self.features})

    def score_one(self, x: Features) -> float:
        """How unusual `x` is among the recent transactions, in [0, 1] (not a probability).

        Parameters
        ----------
        x : dict
            Feature name -> value (None or NaN: missing).

        Returns
        -------
        float
            Half-Space Trees' anomaly score: higher where few recent transactions were.
        """
        return float(self.model.score_one(self._view(x)))

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Learns the transaction's features; the label, if any, is not used.

        Parameters
        ----------
        x : dict
            Feature name -> value.
        y : bool, optional
            Ignored: the detector is unsupervised.
        """
        self.model.learn_one(self._view(x))
        self.n_learned += 1

    def explain_one(self, x: Features) -> list[str]:
        return ["anomaly"] if self.score_one(x) > 0.8 else []


#: What the Gaussian detector watches by default: the features that describe how a payment,
#: its user and its identifiers usually behave (velocity, sharing, account age, referral
#: shape, merchant mix). docs/detectors.md says why each is there.
TELLING_FEATURES = (
    "amount_cents",
    "is_refund",
    "user_tx_count_24h",
    "seconds_since_prev_payment",
    "user_account_age_s",
    "device_user_count_7d",
    "ip_user_count_24h",
    "card_user_count_30d",
    "merchant_top_user_share_24h",
    "merchant_young_account_share_24h",
    "merchant_round_amount_share_24h",
    "merchant_repeat_amount_share_24h",
    "merchant_refund_rate_30d",
    "rebate_rate_vs_category",
    "referral_depth",
    "referrer_signups_24h",
)


#: A payer who signed up at a merchant's till (`features.user`): its account is minutes old
#: by the way it joined, so on a platform that grows through its merchants its age is not
#: unusual however few payers are that young, and the detector leaves the age features out
#: of its view of those payments (it neither scores nor learns them there).
TILL_SIGNUP_EXCUSES = frozenset({"user_account_age_s"})


#: The score above which the Gaussian detector names the features that made it unusual (in
#: the risk model's reasons): below, the transaction is not far out on several at once.
EXPLAIN_ABOVE = 0.5

#: A transaction as the Gaussian detector sees it: each watched feature on its signed log
#: scale, in `features` order; None where missing.
View = list[float | None]


@dataclass(kw_only=True)
class GaussianAnomaly:
    """How far a transaction sits from the usual, in standard deviations.

    Each watched feature is put on a signed log scale (counts and amounts are heavy-tailed)
    and standardised with its running mean and variance. With m the mean squared z over
    the features present (about 1 for a typical transaction), the score is
    1 - exp(-max(0, m - 1) / 2): 0 for the typical, 0.63 at m = 3, -> 1 for a transaction
    many deviations out on several features at once. A diagonal
    Gaussian is crude next to Half-Space Trees, but on these features it ranked fraud better
    (AUC 0.98 against 0.87 on the simulated world) at a fifth of the cost (benchmarks/
    README.md), so it is the default.

    The running statistics are River's `StandardScaler` update (Welford's), kept in lists
    in feature order rather than in River's dicts: the same arithmetic in the same order, so
    the same numbers bit for bit (tests/unit/test_detectors.py), at half the cost on a path
    that runs for every transaction.

    Parameters
    ----------
    features : tuple of str
        The features it watches (`TELLING_FEATURES`).
    name : str
        Its name in reason codes and reports.

    Examples
    --------
    Five hundred payments of 10 to 50 EUR by users with up to three payments a day; then
    9,000 EUR by a user with forty: far out on both features.

    >>> import random
    >>> rng = random.Random(0)
    >>> detector = GaussianAnomaly(features=("amount_cents", "user_tx_count_24h"))
    >>> for _ in range(500):
    ...     detector.learn_one(
    ...         {"amount_cents": rng.uniform(1_000, 5_000), "user_tx_count_24h": rng.randint(0, 3)}
    ...     )
    >>> detector.score_one({"amount_cents": 2_500.0, "user_tx_count_24h": 1})
    0.0
    >>> odd = {"amount_cents": 900_000.0, "user_tx_count_24h": 40}
    >>> round(detector.score_one(odd), 3), detector.explain_one(odd)
    (1.0, ['unusual:amount_cents', 'unusual:user_tx_count_24h'])
    """

    features: tuple[str, ...] = TELLING_FEATURES
    name: str = "gaussian"
    n_learned: int = 0
    #: Per watched feature: how many values it has had, their running mean and variance.
    counts: list[int] = field(init=False, repr=False)
    means: list[float] = field(init=False, repr=False)
    variances: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.features)
        self.counts, self.means, self.variances = [0] * n, [0.0] * n, [0.0] * n

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}

    def view(self, x: Features) -> View:
        """The watched features on their signed log scale (compute once, score and learn);
        the account age left out (missing) for a user who signed up at a merchant's till
        (`detectors.base.signed_up_at_till`)."""
        view = signed_logs(map(x.get, self.features))
        if signed_up_at_till(x):
            for index in self._excused_indices():
                view[index] = None
        return view

    def _excused_indices(self) -> tuple[int, ...]:
        return tuple(i for i, name in enumerate(self.features) if name in TILL_SIGNUP_EXCUSES)

    def score_one(self, x: Features) -> float:
        """How far `x` sits from the usual (class docstring).

        Parameters
        ----------
        x : dict
            Feature name -> value (None or NaN: missing, left out of the mean).

        Returns
        -------
        float
            1 - exp(-max(0, m - 1) / 2), m the mean squared z of the features present; 0
            before it has learnt two transactions.

        Examples
        --------
        >>> detector = GaussianAnomaly(features=("amount_cents",))
        >>> for cents in (1_000, 1_200, 900, 1_100):
        ...     detector.learn_one({"amount_cents": cents})
        >>> detector.score_one({"amount_cents": 1_050}), detector.score_one({"amount_cents": None})
        (0.0, 0.0)
        >>> round(detector.score_one({"amount_cents": 5_000}), 3)
        1.0
        """
        return self.score_view(self.view(x))[0]

    def read(self, x: Features, *, log_odds_shift: float = 0.0) -> Reading:
        """Its part in the risk model's prior: the score, the features that made it unusual
        where it is above `EXPLAIN_ABOVE`, and the view it learns once `x` is scored."""
        view = self.view(x)
        score, z = self.score_view(view)
        return Reading(score, self.explain_z(z) if score > EXPLAIN_ABOVE else [], view)

    def score_view(self, view: View) -> tuple[float, View]:
        """The score, and the z values behind it (for `explain_z`)."""
        z: View = []
        squares, present = 0.0, 0
        for value, mean, var in zip(view, self.means, self.variances, strict=True):
            if value is None:
                z.append(None)
                continue
            zi = (value - mean) / var**0.5 if var else 0.0  # River scales a constant to 0
            z.append(zi)
            squares += zi * zi
            present += 1
        if not present or self.n_learned < 2:
            return 0.0, z
        excess = squares / present - 1.0
        return (1.0 - math.exp(-excess / 2.0) if excess > 0.0 else 0.0), z

    def learn_one(self, x: Features, y: bool | None = None) -> None:
        """Learns the transaction's features; the label, if any, is not used.

        Parameters
        ----------
        x : dict
            Feature name -> value.
        y : bool, optional
            Ignored: the detector is unsupervised.

        Examples
        --------
        >>> detector = GaussianAnomaly(features=("amount_cents",))
        >>> for cents in (1_000, 1_200, 900, 1_100):
        ...     detector.learn_one({"amount_cents": cents})
        >>> detector.n_learned, detector.counts
        (4, [4])
        """
        self.learn_view(self.view(x))

    def learn_scored(self, reading: Reading) -> None:
        """Learns the transaction `reading` was read from (the risk model's prior)."""
        self.learn_view(reading.learnable)

    def learn_label(self, x: Features, fraud: bool) -> None:
        """Labels teach it nothing: it learnt the transaction when it was scored."""

    def learn_view(self, view: View) -> None:
        counts, means, variances = self.counts, self.means, self.variances
        for i, value in enumerate(view):
            if value is None:
                continue
            count = counts[i] = counts[i] + 1
            old = means[i]
            means[i] += (value - old) / count
            variances[i] += ((value - old) * (value - means[i]) - variances[i]) / count
        self.n_learned += 1

    def explain_one(self, x: Features, *, top: int = 2) -> list[str]:
        return self.explain_z(self.score_view(self.view(x))[1], top=top)

    def explain_z(self, z: View, *, top: int = 2) -> list[str]:
        """The `top` features more than three standard deviations out, the farthest first."""
        far = sorted(
            (
                (abs(zi), name)
                for name, zi in zip(self.features, z, strict=True)
                if zi is not None and abs(zi) > 3.0
            ),
            reverse=True,
        )
        return [f"unusual:{name}" for _, name in far[:top]]
