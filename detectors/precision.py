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


#: The log-odds of precision the posterior is integrated over (`traffic_precision`): steps of
#: 0.01 from -40 to 40, far finer than any threshold on it. The cut-off tail below holds
#: about e^(-40 a) of the prior's mass (a its fraud pseudo-count), which a rule's fraud labels
#: make vanish; with no label the weakest default rule (`refund`, a = 0.11) states 0.0580
#: for 0.0573: every precision is within 1e-3.
_LOG_ODDS = np.linspace(-40.0, 40.0, 8_001)
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

    (p0 = `prior_mean`, m = `prior_labels`), whose mean is a sum over a fine grid of the
    log-odds of pi (where the Beta density has no pole).
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

    With no label it is the prior's mean.

    >>> round(traffic_precision(0, 0, prior_mean=0.27, prior_labels=2.0, log_odds_shift=-3.0), 3)
    0.27
    """
    # On t = logit(pi): d pi = pi (1 - pi) dt, so the Beta's exponents lose their -1; and
    # logit(rho) = t - shift.
    log_rho = -np.logaddexp(0.0, -(_LOG_ODDS - log_odds_shift))
    log_not_rho = -np.logaddexp(0.0, _LOG_ODDS - log_odds_shift)
    log_weight = (
        prior_labels * prior_mean * _LOG_P
        + prior_labels * (1.0 - prior_mean) * _LOG_NOT_P
        + fraud * log_rho
        + legit * log_not_rho
    )
    weight = np.exp(log_weight - log_weight.max())
    return float((weight * np.exp(_LOG_P)).sum() / weight.sum())
