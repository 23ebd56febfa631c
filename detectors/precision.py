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

import math


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
