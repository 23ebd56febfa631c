"""A flag's precision learned from labels, on the traffic's scale: what the ring's say
(`detectors.ring_say`) and the rules' say (`detectors.rule_say`) both are.

Of the labelled payments a flag was raised on, f were fraud and l legitimate. Labels
over-represent fraud (a platform labels most of the fraud it finds and few legitimate
payments): with shift = logit(pi) - logit(pi_L), the log-odds prior shift the risk model
estimates (`detectors.prior_shift`; pi the traffic's fraud share, pi_L the labels'), a
labelled legitimate payment stands for exp(-shift) of them. With a Beta(a, b) prior (a, b:
pseudo-counts of fraud and legitimate payments) the precision among all payments is the
posterior mean

    precision = (f + a) / (f + a + l x exp(-shift) + b).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


def label_precision(
    fraud: int, legit: int, *, prior_fraud: float, prior_legit: float, log_odds_shift: float
) -> float:
    """P(fraud | flagged) among all payments (module docstring); among the labelled ones
    when `log_odds_shift` is 0.

    Examples
    --------
    Three fraud labels and one legitimate from a Beta(1, 1) prior; then with the labels'
    fraud share e^2 times the traffic's in odds, the legitimate label stands for e^2 of them.

    >>> label_precision(3, 1, prior_fraud=1.0, prior_legit=1.0, log_odds_shift=0.0)
    0.6666666666666666
    >>> round(label_precision(3, 1, prior_fraud=1.0, prior_legit=1.0, log_odds_shift=-2.0), 3)
    0.323
    """
    weighed_fraud = fraud + prior_fraud
    weighed_legit = legit * math.exp(-log_odds_shift) + prior_legit
    return weighed_fraud / (weighed_fraud + weighed_legit)


#: The posterior is integrated over the log-odds t of precision: by the trapezoid rule in
#: steps of 0.01 (far finer than any threshold on it) from -40 to 40, widened to the shift
#: +-40, and in closed form beyond. There logistic(t) and logistic(t - shift) are e^t and
#: e^(t - shift) (or 1 - those) to a relative e^-40, so the weight is one exponential whose
#: integral to infinity is exact: the prior's tail on the side of a flag with no fraud label
#: is heavy (e^(a t), a its fraud pseudo-count: 0.11 for `refund`), and cut off it overstated
#: such a flag's precision by up to 7e-4.
_STEP = 0.01
_REACH = 40.0
_LOG_ODDS = np.linspace(-_REACH, _REACH, 8_001)
_LOG_P, _LOG_NOT_P = -np.logaddexp(0.0, -_LOG_ODDS), -np.logaddexp(0.0, _LOG_ODDS)


@functools.lru_cache(maxsize=4_096)
def traffic_precision(
    fraud: float, legit: float, *, prior_mean: float, prior_labels: float, log_odds_shift: float
) -> float:
    """The posterior mean of P(fraud | flagged) among all payments, under the labelling
    model itself rather than `label_precision`'s shortcut.

    A flagged fraudulent payment is labelled with probability alpha and a legitimate one
    with beta, alpha / beta = exp(-shift). With pi the precision among all flagged payments, a
    labelled one is fraud with probability rho(pi) = pi e^-shift / (pi e^-shift + 1 - pi), so

        posterior(pi)  ~  Beta(pi; m p0, m (1 - p0)) x rho(pi)^f x (1 - rho(pi))^l

    (p0 = `prior_mean`, m = `prior_labels`), whose mean is integrated over the log-odds of
    pi (where the Beta density has no pole): on a fine grid, and in closed form in the tails.
    Where legitimate payments are rarely labelled, no legitimate label among a flag's
    payments is weak evidence that it flags none: the shortcut, which counts a legitimate
    label as exp(-shift) of them and no label as none, takes it as strong.

    Examples
    --------
    33 fraud labels and no legitimate one, legitimate payments labelled e^3.3 times less
    often than fraud: the shortcut says 0.95, the posterior 0.61 (a rule whose payments were
    66% fraud in that world).

    >>> shortcut = label_precision(33, 0, prior_fraud=0.24, prior_legit=1.76, log_odds_shift=-3.3)
    >>> exact = traffic_precision(33, 0, prior_mean=0.12, prior_labels=2.0, log_odds_shift=-3.3)
    >>> round(shortcut, 2), round(exact, 2)
    (0.95, 0.61)

    With no label it is the prior's mean, exactly.

    >>> traffic_precision(0, 0, prior_mean=0.27, prior_labels=2.0, log_odds_shift=-3.0)
    0.27
    """
    if fraud == 0 and legit == 0:
        return prior_mean  # the Beta prior's mean
    grid = _grid(log_odds_shift)
    prior_fraud, prior_legit = prior_labels * prior_mean, prior_labels * (1.0 - prior_mean)
    log_weight = (
        prior_fraud * grid.log_p
        + prior_legit * grid.log_not_p
        + fraud * grid.log_rho
        + legit * grid.log_not_rho
    )
    # The tails beyond the grid: below it the weight is e^(a t - f shift), above it
    # e^(-b t + l shift), with a and b the posterior's fraud and legitimate pseudo-counts.
    a, b = prior_fraud + fraud, prior_legit + legit
    log_below = a * grid.low - fraud * log_odds_shift
    log_above = -b * grid.high + legit * log_odds_shift
    top = max(float(log_weight.max()), log_below, log_above)
    weight = np.exp(log_weight - top)
    below, above = math.exp(log_below - top), math.exp(log_above - top)
    # In the tails pi is e^t (below) and 1 (above), to a relative e^-40; there the weight's
    # slope is a (b) times itself, what the trapezoid rule's end correction needs.
    below_p = below * math.exp(grid.low)
    step = grid.step
    mass = _trapezoid(weight, step, a * below, -b * above) + below / a + above / b
    mean = _trapezoid(weight * grid.p, step, (a + 1.0) * below_p, -b * above)
    return (mean + below_p / (a + 1.0) + above / b) / mass


@dataclass(frozen=True)
class _Grid:
    """The log-odds t the posterior is summed over at one shift, and what the weight is
    made of there: log pi, log(1 - pi), log rho, log(1 - rho), and pi."""

    low: float
    high: float
    step: float
    log_p: np.ndarray
    log_not_p: np.ndarray
    log_rho: np.ndarray
    log_not_rho: np.ndarray
    p: np.ndarray


@functools.lru_cache(maxsize=8)
def _grid(shift: float) -> _Grid:
    """The grid at `shift`, built once per shift (the risk model refits it every thousand
    payments; every rule's precision at it is then computed anew)."""
    if shift - _REACH >= -_REACH and shift + _REACH <= _REACH:
        t, log_p, log_not_p = _LOG_ODDS, _LOG_P, _LOG_NOT_P
    else:
        low, high = min(-_REACH, shift - _REACH), max(_REACH, shift + _REACH)
        t = np.linspace(low, high, round((high - low) / _STEP) + 1)
        log_p, log_not_p = -np.logaddexp(0.0, -t), -np.logaddexp(0.0, t)
    # logit(rho) = t - shift.
    log_rho = -np.logaddexp(0.0, -(t - shift))
    log_not_rho = -np.logaddexp(0.0, t - shift)
    step = float(t[1] - t[0])
    return _Grid(
        float(t[0]), float(t[-1]), step, log_p, log_not_p, log_rho, log_not_rho, np.exp(log_p)
    )


def _trapezoid(values: np.ndarray, step: float, slope_low: float, slope_high: float) -> float:
    """The integral of `values` sampled every `step`, by the trapezoid rule with its end
    correction (Euler-Maclaurin's first term: error O(step^4)), given the slopes at the ends."""
    ends = (float(values[0]) + float(values[-1])) / 2.0
    return step * (float(values.sum()) - ends) - step**2 / 12.0 * (slope_high - slope_low)
