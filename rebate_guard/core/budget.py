"""The friction budget: the weight below which rebates are withheld, from the share of
legitimate rebate money the risk team accepts to withhold (`[budget]` in the policy).

Every payment the policy's thresholds decide is recorded at its trust weight, its requested
cents added to a money-weighted histogram of weights (bins of 1e-3), one per update epoch
(event time floored to `update_minutes`) and merchant category, over a sliding window of
`window_days`: an epoch that leaves the window is subtracted, so memory depends on the
window, not on the history. Fraud labels add the labelled payment's cents, at its weight, to
a second histogram (once per payment; only while its epoch is in the window).

At the start of each epoch the cut c of each group (a category with a budget of its own, or
the shared group of all the others) is the largest weight with

    expected legitimate money below c  <=  legit_friction x expected legitimate money

over the window's payments decided before the epoch began. Each payment's money counts as
legitimate in 1 - q, with q the classifier's fraud probability calibrated on the labels and
moved to the traffic's prior (`detectors.prior_shift`), and never more than the money not
yet labelled fraud. Until that calibration has been fitted (q = 0) all money counts as
legitimate: the label-free bound, the cut withholds at most `legit_friction` of all money
(fraud being a minority, at most about that share of the legitimate money) if the next
epoch's weights are distributed like the window's. Once it is fitted, the money gathered
at the lowest weights, mostly unlabelled fraud, stops using up the budget, and every fraud
label can only loosen the cut. How far the estimate holds on worlds the model was never tuned on
is measured by benchmarks/generalization.py. `block_share` of that budget, the
lowest weights, is blocked rather than held (once the model is trusted; see policy.py).

Pure and deterministic: the cut for an epoch depends only on the payments and labels applied
before the epoch began (labels that arrive during an epoch wait in `pending` until the next),
so replay and a worker that sees the same events decide alike. `cut` reads (payment-time
decisions use it on the live state); `advance` and `record` change the state. No I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import accumulate
from math import isqrt
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from rebate_guard.core.policy import Budget

PPM = 1_000_000
#: Bin width of the weight histograms, in millionths of weight (1e-3).
BIN_PPM = 1_000
#: Bins 0..999 hold [k/1000, (k+1)/1000); bin 1000 holds w = 1.
BINS = PPM // BIN_PPM + 1
#: The group of payments whose category has no budget of its own.
SHARED = "*"


def sampled_for_review(tx_id: str, share: float) -> bool:
    """Whether a withheld payment is in the risk team's review sample (`[budget]
    review_share`): drawn by a stable hash of its id, so the sample is random with respect
    to its risk and weight (which is what makes the reviewed share of legitimate money an
    unbiased estimate) and the same in replay and in every worker.

    >>> sampled_for_review("tx-1", 0.0), sampled_for_review("tx-1", 1.0)
    (False, True)
    """
    if share <= 0:
        return False
    digest = hashlib.blake2b(tx_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < round(share * 2**64)


def weight_bin(weight: float) -> int:
    """The histogram bin of a weight (kept to six decimals, as decisions record it)."""
    return min(BINS - 1, max(0, round(weight * PPM) // BIN_PPM))


@dataclass(frozen=True)
class Cut:
    """The cut that decides a group's payments during one epoch: a payment with weight w is
    withheld when w < `hold_below` / 1000 and blocked (once the model is trusted) when
    w < `block_below` / 1000."""

    group: str
    #: Start of the epoch (event time, ms) it was computed for.
    epoch: int
    hold_below: int
    block_below: int
    #: The window's whole budget (its share of the window's expected legitimate money, in
    #: cents) and its largest payment (cents): what bounds the cut's withholding from a
    #: payment larger than any in the window (`withheld_of`). None: no bound.
    allowance: int | None = None
    largest: int = 0

    @property
    def at(self) -> float:
        return self.hold_below / (PPM // BIN_PPM)

    @property
    def block_at(self) -> float:
        return self.block_below / (PPM // BIN_PPM)

    @property
    def version(self) -> str:
        """What decisions record in `threshold_version`:
        `budget:<group>:<epoch start ms>:<cut>:<block cut>`."""
        return f"budget:{self.group}:{self.epoch}:{self.at:.3f}:{self.block_at:.3f}"

    def withholds(self, weight: float) -> bool:
        return weight_bin(weight) < self.hold_below

    def blocks(self, weight: float) -> bool:
        return weight_bin(weight) < self.block_below

    def withheld_of(self, requested_cents: int, legit_share: float) -> int:
        """The cents the cut withholds from a payment below it: all of them, unless the
        payment is larger than any in the window and its expected legitimate rebate
        (`legit_share` x cents) exceeds the window's whole budget (`allowance`); then what
        keeps within both. The cut's margin reads the next payments as a sample like the
        window's; a payment beyond the window's largest (a heavy-tailed legitimate
        purchase) is outside that sample, and alone would spend weeks of the budget.

        >>> cut = Cut("*", 0, hold_below=500, block_below=200, allowance=10_000, largest=8_000)
        >>> cut.withheld_of(5_000, 0.9), cut.withheld_of(100_000, 0.5), cut.withheld_of(10**6, 0.0)
        (5000, 20000, 1000000)
        """
        if self.allowance is None or legit_share <= 0 or requested_cents <= self.largest:
            return requested_cents
        return min(requested_cents, max(self.largest, int(self.allowance / legit_share)))


class Mark(NamedTuple):
    """One recorded payment: enough to add it to the fraud histogram if it is labelled."""

    epoch: int
    category: str
    bin: int
    cents: int
    withheld: int
    #: The cents expected to be legitimate, in millionths of a cent.
    legit: int
    #: What the payment added to `Tally.legit_sq` (cents²): E[X²] of its legitimate cents
    #: X, which are its cents with probability 1 - q and none with q: cents² x (1 - q).
    #: 0 in marks pickled before this field: a fraud label on one takes no square out. Right
    #: for a checkpoint from before the squares (its payments added none); one from session
    #: 21 (47164ab..c754b5a) added (legit cents)², which then stays in the window until its
    #: epoch leaves it: a larger margin, a lower cut, for at most `window_days`.
    squared: int = 0
    #: In the review sample (held, `decider.in_review_sample`): its first label
    #: counts in the window's review tally. False in marks pickled before the sample.
    sampled: bool = False

    @property
    def legit_share_ppm(self) -> int:
        """The model's probability that it is legitimate, in millionths (1 - q)."""
        return self.legit // self.cents if self.cents else 0


Bins = dict[int, int]  # weight bin -> cents (sparse: an epoch uses few bins)

#: The review ratio's prior, in payments: as if one payment the model expected to be
#: legitimate had been reviewed and found so (a ratio of 1, weakly held), so that a few
#: reviews move it only a little.
REVIEW_PRIOR = 1


@dataclass
class ReviewTally:
    """The review sample's labels: how many sampled withheld payments were labelled, how
    many of them legitimate, and how many the model expected to be (the sum of their
    1 - q, in millionths)."""

    reviewed: int = 0
    legit: int = 0
    expected_ppm: int = 0

    def merge(self, other: ReviewTally, sign: int = 1) -> None:
        self.reviewed += sign * other.reviewed
        self.legit += sign * other.legit
        self.expected_ppm += sign * other.expected_ppm

    def scale(self) -> tuple[int, int]:
        """How far the model's legitimate money among withheld payments is to be scaled,
        and that factor's standard error, both in millionths: the ratio of legitimate
        payments found to those the model expected, (k + a) / (e + a), with a Gamma-Poisson
        posterior (prior `REVIEW_PRIOR` = a), whose sd is sqrt(k + a) / (e + a). The review
        sample is random, so the ratio measures the model's bias where it withholds; the
        payments are counted, not their money, so one big payment does not swing it (the
        money's spread is the margin's other part).

        >>> ReviewTally(reviewed=40, legit=0, expected_ppm=9_000_000).scale()
        (100000, 100000)
        >>> ReviewTally().scale()
        (1000000, 0)
        """
        if self.reviewed <= 0:
            return PPM, 0
        found = self.legit + REVIEW_PRIOR
        expected = self.expected_ppm + REVIEW_PRIOR * PPM
        return found * PPM * PPM // expected, isqrt(found * PPM * PPM) * PPM // expected


@dataclass
class Tally:
    """Sums of payments by category: money (and labelled fraud money) per weight bin,
    payments, and the cents withheld at decision (of all, and of the labelled fraud)."""

    money: dict[str, Bins] = field(default_factory=dict)
    fraud: dict[str, Bins] = field(default_factory=dict)
    #: Expected legitimate money per weight bin, in millionths of a cent.
    legit: dict[str, Bins] = field(default_factory=dict)
    payments: dict[str, int] = field(default_factory=dict)
    withheld: dict[str, int] = field(default_factory=dict)
    fraud_withheld: dict[str, int] = field(default_factory=dict)
    #: Sum of the payments' expected squared legitimate cents per weight bin (`Mark.squared`,
    #: cents²): how uncertain the money below a cut is (`largest_cuts`).
    legit_sq: dict[str, Bins] = field(default_factory=dict)
    #: The part of `legit` and `legit_sq` that payments withheld at decision added: the money
    #: the review sample speaks for (`ReviewTally.scale`).
    held_legit: dict[str, Bins] = field(default_factory=dict)
    held_sq: dict[str, Bins] = field(default_factory=dict)
    #: The review sample's labels by category.
    reviews: dict[str, ReviewTally] = field(default_factory=dict)
    #: The largest payment (cents) by category, of an epoch's tally (a window's is read
    #: from its epochs: a maximum cannot be subtracted).
    largest: dict[str, int] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A checkpoint from before `legit_sq`: its epochs count as certain until they leave
        # the window. One from before the review sample has none in its epochs.
        for name in ("legit_sq", "held_legit", "held_sq", "reviews", "largest"):
            state.setdefault(name, {})
        self.__dict__.update(state)

    def add_payment(self, mark: Mark, sign: int = 1) -> None:
        _bump(self.money.setdefault(mark.category, {}), mark.bin, sign * mark.cents)
        _bump(self.legit.setdefault(mark.category, {}), mark.bin, sign * mark.legit)
        _bump(self.legit_sq.setdefault(mark.category, {}), mark.bin, sign * mark.squared)
        _bump(self.payments, mark.category, sign)
        _bump(self.withheld, mark.category, sign * mark.withheld)
        if sign > 0 and mark.cents > self.largest.get(mark.category, 0):
            self.largest[mark.category] = mark.cents
        if mark.withheld == mark.cents:  # held or blocked, as the sample's payments
            _bump(self.held_legit.setdefault(mark.category, {}), mark.bin, sign * mark.legit)
            _bump(self.held_sq.setdefault(mark.category, {}), mark.bin, sign * mark.squared)

    def add_fraud(self, mark: Mark, sign: int = 1) -> None:
        _bump(self.fraud.setdefault(mark.category, {}), mark.bin, sign * mark.cents)
        _bump(self.fraud_withheld, mark.category, sign * mark.withheld)
        # Labelled fraud is no longer legitimate money that may or may not be there.
        _bump(self.legit_sq.setdefault(mark.category, {}), mark.bin, -sign * mark.squared)
        if mark.withheld == mark.cents:
            _bump(self.held_sq.setdefault(mark.category, {}), mark.bin, -sign * mark.squared)

    def add_review(self, mark: Mark, *, legit: bool, sign: int = 1) -> None:
        """The review sample's label on a sampled payment."""
        review = ReviewTally(1, int(legit), mark.legit_share_ppm)
        self.add(Tally(reviews={mark.category: review}), sign)

    def add(self, other: Tally, sign: int = 1) -> None:
        """Adds (sign -1: subtracts) `other`."""
        pairs = (
            (self.money, other.money),
            (self.fraud, other.fraud),
            (self.legit, other.legit),
            (self.legit_sq, other.legit_sq),
            (self.held_legit, other.held_legit),
            (self.held_sq, other.held_sq),
        )
        for mine, theirs in pairs:
            for category, bins in theirs.items():
                target = mine.setdefault(category, {})
                for b, cents in bins.items():
                    value = target.get(b, 0) + sign * cents
                    if value:
                        target[b] = value
                    else:
                        del target[b]
        for mine_n, theirs_n in (
            (self.payments, other.payments),
            (self.withheld, other.withheld),
            (self.fraud_withheld, other.fraud_withheld),
        ):
            for category, n in theirs_n.items():
                _bump(mine_n, category, sign * n)
        for category, review in other.reviews.items():
            mine_r = self.reviews.setdefault(category, ReviewTally())
            mine_r.merge(review, sign)
            if not mine_r.reviewed:
                del self.reviews[category]

    def copy(self) -> Tally:
        return Tally(
            {c: dict(b) for c, b in self.money.items()},
            {c: dict(b) for c, b in self.fraud.items()},
            {c: dict(b) for c, b in self.legit.items()},
            dict(self.payments),
            dict(self.withheld),
            dict(self.fraud_withheld),
            {c: dict(b) for c, b in self.legit_sq.items()},
            {c: dict(b) for c, b in self.held_legit.items()},
            {c: dict(b) for c, b in self.held_sq.items()},
            {c: replace(r) for c, r in self.reviews.items()},
        )

    def prune(self) -> None:
        """Categories with no payment left are forgotten (memory stays bounded)."""
        for category in [c for c in self.money if c not in self.payments]:
            del self.money[category]
            self.fraud.pop(category, None)
            self.legit.pop(category, None)
            self.legit_sq.pop(category, None)
            self.held_legit.pop(category, None)
            self.held_sq.pop(category, None)
            self.reviews.pop(category, None)

    def of(self, categories: list[str]) -> Tally:
        """The categories' sums as one (category `SHARED`); of one category, a view."""
        if len(categories) == 1:
            return self._view(categories[0])
        out = Tally()
        for category in categories:
            out.add(self._view(category))
        return out

    def _view(self, category: str) -> Tally:
        """One category's sums as category `SHARED` (not a copy: to read)."""
        return Tally(
            {SHARED: self.money.get(category, {})},
            {SHARED: self.fraud.get(category, {})},
            {SHARED: self.legit.get(category, {})},
            {SHARED: self.payments.get(category, 0)},
            {SHARED: self.withheld.get(category, 0)},
            {SHARED: self.fraud_withheld.get(category, 0)},
            {SHARED: self.legit_sq.get(category, {})},
            {SHARED: self.held_legit.get(category, {})},
            {SHARED: self.held_sq.get(category, {})},
            {SHARED: self.reviews[category]} if category in self.reviews else {},
        )


def _bump(table: dict[Any, int], key: Any, by: int) -> None:
    value = table.get(key, 0) + by
    if value:
        table[key] = value
    else:
        table.pop(key, None)


def legit_money(money: Bins, fraud: Bins, *, legit: Bins) -> Bins:
    """The expected legitimate cents per bin, in millionths of a cent: what the payments
    recorded (each payment's cents x (1 - the calibrated part of its risk)), never more than
    the bin's money not labelled fraud."""
    return {k: min(legit.get(k, 0), (cents - fraud.get(k, 0)) * PPM) for k, cents in money.items()}


def largest_cut(
    money: Bins,
    fraud: Bins,
    *,
    legit: Bins,
    share_ppm: int,
    legit_sq: Bins | None = None,
    z_milli: int = 0,
) -> int:
    """The largest k (0..BINS) with the expected legitimate money in bins < k at most share x
    the expected legitimate money of all bins (`legit_money`), in integers (share in
    millionths); with `legit_sq` and `z_milli` (z x 1000), that money plus z standard
    errors (`confident_z`)."""
    return largest_cuts(
        money, fraud, legit=legit, shares_ppm=(share_ppm,), legit_sq=legit_sq, z_milli=z_milli
    )[0]


def largest_cuts(
    money: Bins,
    fraud: Bins,
    *,
    legit: Bins,
    shares_ppm: Sequence[int],
    legit_sq: Bins | None = None,
    z_milli: int = 0,
    unsure: Bins | None = None,
) -> list[int]:
    """`largest_cut` for each share, the histograms read once (a group's hold and block
    cuts are computed together at each epoch).

    The money below a cut is a sum over a sample of payments; when a few big payments make
    it, the next epoch's (unseen) payments below the same cut vary as much, and a cut right
    under the budget overspends it whenever one more big one falls below. So the cut keeps
    the money below plus `z_milli`/1000 of its standard error (the root of the sum of the
    payments' expected squared legitimate cents, `Tally.legit_sq`) within the budget: money spread
    over many small payments is nearly certain, one big payment's is not. `unsure`: per bin,
    expected legitimate money (millionths of a cent) known only up to a common factor, one
    standard error of it; its sum below the cut adds to the variance (`_cut`: the review
    ratio's uncertainty)."""
    expected = legit_money(money, fraud, legit=legit)
    total = sum(expected.values())
    bins = sorted(expected)
    up_to = list(accumulate(expected[k] for k in bins))  # in bins <= k
    # The margin in the units of `allowed` (share ppm x ppm-cents): z x sd x PPM².
    margin = [0] * len(bins)
    if z_milli and legit_sq:
        sq_up_to = list(accumulate(max(0, legit_sq.get(k, 0)) for k in bins))
        if unsure:
            unsure_up_to = accumulate(unsure.get(k, 0) for k in bins)
            sq_up_to = [v + (u // PPM) ** 2 for v, u in zip(sq_up_to, unsure_up_to, strict=True)]
        margin = [z_milli * isqrt(v) * PPM * PPM // 1000 for v in sq_up_to]
    cuts = []
    for share in shares_ppm:
        allowed = share * total
        found = (
            k
            for k, below, sd in zip(bins, up_to, margin, strict=True)
            if below * PPM + sd > allowed
        )
        cuts.append(next(found, BINS))
    return cuts


def confident_z(confidence: float) -> int:
    """The normal quantile of `confidence`, x 1000 and rounded (integer arithmetic keeps the
    cut the same in replay and the worker): 0.5 -> 0 (the expected money alone), 0.95 ->
    1645.

    >>> confident_z(0.5), confident_z(0.95)
    (0, 1645)
    """
    return round(NormalDist().inv_cdf(confidence) * 1000)


@dataclass
class FrictionBudget:
    """The friction budget's state (one per `Decider`): the window's histograms and the
    cuts of the current epoch. Picklable; bounded by the window and `recorded`'s limit."""

    #: Start of the epoch being decided (event time, ms); None before the first event.
    epoch: int | None = None
    #: The payments of the current epoch (not yet in `window`).
    current: Tally = field(default_factory=Tally)
    #: Earlier epochs still in the window, oldest first, and their sum.
    epochs: OrderedDict[int, Tally] = field(default_factory=OrderedDict)
    window: Tally = field(default_factory=Tally)
    #: Fraud labels taken in during the current epoch: they count from the next one.
    pending: list[Mark] = field(default_factory=list)
    #: tx_id -> its mark, for payments a fraud label may still find, oldest first.
    recorded: OrderedDict[str, Mark] = field(default_factory=OrderedDict)
    #: The current epoch's cuts by group (None: too few payments: the fixed thresholds),
    #: and the budget terms they were computed with.
    cuts: dict[str, Cut | None] = field(default_factory=dict)
    cuts_for: Budget | None = None
    #: The review sample's labels taken in during the current epoch (the payment's mark,
    #: and whether it was found legitimate): they count from the next one, as fraud labels.
    pending_reviews: list[tuple[Mark, bool]] = field(default_factory=list)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("pending_reviews", [])  # a checkpoint from before the sample
        self.__dict__.update(state)

    # --- reading --------------------------------------------------------------------------
    def epoch_of(self, ts: int, terms: Budget) -> int:
        start = ts - ts % terms.update_ms
        return start if self.epoch is None else max(start, self.epoch)

    def cut(self, ts: int, group: str, *, terms: Budget) -> Cut | None:
        """The cut deciding a payment at `ts` in `group`, changing nothing: the current
        epoch's (memoised by `advance`), or the one `advance` would compute."""
        start = self.epoch_of(ts, terms)
        same = terms is self.cuts_for or terms == self.cuts_for
        if start == self.epoch and same and group in self.cuts:
            return self.cuts[group]
        return _cut(
            self._window_at(start, terms), group, start, terms, self._largest_at(start, terms)
        )

    def _largest_at(self, start: int, terms: Budget) -> dict[str, int]:
        """The largest payment by category over the window as of epoch `start`."""
        horizon = start - terms.window_ms
        tallies = [t for begun, t in self.epochs.items() if begun >= horizon]
        if self.epoch is not None and start != self.epoch and self.epoch >= horizon:
            tallies.append(self.current)
        out: dict[str, int] = {}
        for tally in tallies:
            for category, cents in tally.largest.items():
                if cents > out.get(category, 0):
                    out[category] = cents
        return out

    def _window_at(self, start: int, terms: Budget) -> Tally:
        """The window's sums as of the start of epoch `start` (>= the current one)."""
        if start == self.epoch or self.epoch is None:
            return self.window
        horizon = start - terms.window_ms
        out = self.window.copy()
        if self.epoch >= horizon:
            out.add(self.current)
        for mark in self.pending:
            if mark.epoch >= horizon:
                out.add_fraud(mark)
        for mark, legit in self.pending_reviews:
            if mark.epoch >= horizon:
                out.add_review(mark, legit=legit)
        for begun, tally in self.epochs.items():
            if begun >= horizon:
                break
            out.add(tally, -1)
        out.prune()
        return out

    # --- changing -------------------------------------------------------------------------
    def advance(self, ts: int, terms: Budget) -> None:
        """Moves to the epoch of `ts` (if later): the current epoch joins the window, the
        labels taken in during it count, epochs past the window leave, and the cuts are
        computed; also recomputes them when the terms changed (a new policy)."""
        start = self.epoch_of(ts, terms)
        if start != self.epoch:
            self.window = self._window_at(start, terms)
            if self.epoch is not None:
                self.epochs[self.epoch] = self.current
            for mark in self.pending:
                tally = self.epochs.get(mark.epoch)
                if tally is not None:
                    tally.add_fraud(mark)
            for mark, legit in self.pending_reviews:
                tally = self.epochs.get(mark.epoch)
                if tally is not None:
                    tally.add_review(mark, legit=legit)
            horizon = start - terms.window_ms
            while self.epochs and next(iter(self.epochs)) < horizon:
                self.epochs.popitem(last=False)
            while self.recorded and next(iter(self.recorded.values())).epoch < horizon:
                self.recorded.popitem(last=False)
            self.epoch, self.current, self.pending = start, Tally(), []
            self.pending_reviews = []
            self.cuts_for = None
        if terms is not self.cuts_for and terms != self.cuts_for:
            groups = [SHARED, *terms.categories]
            largest = self._largest_at(start, terms)
            self.cuts = {g: _cut(self.window, g, start, terms, largest) for g in groups}
            self.cuts_for = terms

    def record(
        self,
        tx_id: str,
        category: str | None,
        *,
        weight: float,
        cents: int,
        withheld: int,
        keep: int,
        legit_share: float = 1.0,
        sampled: bool = False,
    ) -> None:
        """A payment decided in the current epoch (after `advance`): its requested cents at
        its weight, and the cents withheld at decision. `keep`: how many payments to
        remember for fraud labels (the oldest are forgotten first). `legit_share`: the
        probability that it is legitimate as far as a calibrated model can say (1: no
        calibrated model yet, so its money counts as legitimate: the label-free bound).
        `sampled`: a withheld payment in the review sample (`sampled_for_review`)."""
        assert self.epoch is not None, "advance() before record()"
        legit = round(cents * min(1.0, max(0.0, legit_share)) * PPM)
        squared = cents * legit // PPM
        sampled = sampled and withheld == cents > 0  # held (the policy holds what it samples)
        mark = Mark(
            self.epoch, category or "", weight_bin(weight), cents, withheld, legit, squared, sampled
        )
        self.current.add_payment(mark)
        self.recorded[tx_id] = mark
        while len(self.recorded) > keep:
            self.recorded.popitem(last=False)

    def fraud(self, tx_id: str) -> None:
        """A fraud label on a recorded payment: counted once, from the next epoch on (and,
        on a payment in the review sample, as its review)."""
        mark = self.recorded.pop(tx_id, None)
        if mark is None:
            return
        if mark.epoch == self.epoch:
            self.current.add_fraud(mark)  # joins the window with its epoch
        else:
            self.pending.append(mark)
        if mark.sampled:
            self._reviewed(mark, legit=False)

    def in_sample(self, tx_id: str | None) -> bool:
        """Whether `tx_id` is a recorded payment of the review sample not yet labelled."""
        mark = None if tx_id is None else self.recorded.get(tx_id)
        return mark is not None and mark.sampled

    def legit(self, tx_id: str) -> None:
        """A legitimate label: on a payment in the review sample, its review (the first
        label counts); on others, nothing (the model's share stands)."""
        mark = self.recorded.get(tx_id)
        if mark is None or not mark.sampled:
            return
        # Reviewed: out of the sample, but a later fraud label (a chargeback on a payment a
        # review cleared) still counts as fraud.
        self.recorded[tx_id] = mark._replace(sampled=False)
        self._reviewed(mark, legit=True)

    def _reviewed(self, mark: Mark, *, legit: bool) -> None:
        if mark.epoch == self.epoch:
            self.current.add_review(mark, legit=legit)
        else:
            self.pending_reviews.append((mark, legit))

    # --- reporting ------------------------------------------------------------------------
    def report(self, terms: Budget) -> dict[str, Any]:
        """The cuts in force and what they achieved over the window they were computed
        from: per group, its budget, cut, payments and money, labelled fraud money, money
        withheld at decision, and the estimated legitimate friction (withheld money not
        labelled fraud / money not labelled fraud: an upper bound, as unlabelled fraud
        counts as legitimate; caps and expected-loss holds are in it too) beside the
        expected legitimate friction of the cut (`legit_money` below it / in all: what the
        cut was chosen by; holds by caps and expected loss not in it)."""
        groups: dict[str, Any] = {}
        for group in [SHARED, *terms.categories]:
            tally = _of_group(self.window, group, terms)
            money = sum(tally.money.get(SHARED, {}).values())
            fraud = sum(tally.fraud.get(SHARED, {}).values())
            withheld = tally.withheld.get(SHARED, 0)
            fraud_withheld = tally.fraud_withheld.get(SHARED, 0)
            cut = self.cuts.get(group) if terms == self.cuts_for else None
            legit = legit_money(
                tally.money.get(SHARED, {}),
                tally.fraud.get(SHARED, {}),
                legit=reviewed_legit(tally)[0],  # as the cut reads it
            )
            legit_total = sum(legit.values())
            expected = None
            if cut is not None and legit_total:
                expected = sum(v for k, v in legit.items() if k < cut.hold_below) / legit_total
            review = tally.reviews.get(SHARED, ReviewTally())
            groups[group] = {
                "legit_friction": terms.share_of(group),
                "cut": None if cut is None else cut.at,
                "block_cut": None if cut is None else cut.block_at,
                # What bounds the cut's withholding from one payment (`Cut.withheld_of`).
                "payment_allowance_cents": None if cut is None else cut.allowance,
                "window_largest_cents": None if cut is None else cut.largest,
                "payments": tally.payments.get(SHARED, 0),
                "money_cents": money,
                "fraud_labelled_cents": fraud,
                "withheld_cents": withheld,
                "fraud_labelled_withheld_cents": fraud_withheld,
                "achieved_legit_friction": (
                    (withheld - fraud_withheld) / (money - fraud) if money > fraud else None
                ),
                "expected_legit_friction": expected,
                "review_sample": {
                    "reviewed": review.reviewed,
                    "legit": review.legit,
                    "expected_legit": review.expected_ppm / PPM,
                    "scale": review.scale()[0] / PPM,
                },
            }
        epoch = None
        if self.epoch is not None:
            epoch = datetime.fromtimestamp(self.epoch / 1000, UTC).isoformat()
        return {"mode": "budget", "epoch": epoch, "groups": groups}


def _of_group(window: Tally, group: str, terms: Budget) -> Tally:
    if group != SHARED:
        return window.of([group])
    return window.of([c for c in window.payments if c not in terms.categories])


def _cut(
    window: Tally, group: str, epoch: int, terms: Budget, largest: dict[str, int]
) -> Cut | None:
    tally = _of_group(window, group, terms)
    if tally.payments.get(SHARED, 0) < max(1, terms.min_payments):
        return None
    money, fraud = tally.money.get(SHARED, {}), tally.fraud.get(SHARED, {})
    legit, legit_sq, unsure = reviewed_legit(tally)
    share = terms.share_of(group)
    shares = (round(share * PPM), round(share * terms.block_share * PPM))
    hold, block = largest_cuts(
        money,
        fraud,
        legit=legit,
        shares_ppm=shares,
        legit_sq=legit_sq,
        z_milli=confident_z(terms.confidence),
        unsure=unsure,
    )
    total = sum(legit_money(money, fraud, legit=legit).values())  # millionths of a cent
    allowance = shares[0] * total // PPM // PPM
    if group == SHARED:
        biggest = max((v for c, v in largest.items() if c not in terms.categories), default=0)
    else:
        biggest = largest.get(group, 0)
    return Cut(group, epoch, hold, min(block, hold), allowance, biggest)


def reviewed_legit(tally: Tally) -> tuple[Bins, Bins, Bins]:
    """A group's expected legitimate money and its squares per bin (category `SHARED`),
    the withheld payments' part scaled by the review sample's ratio (`ReviewTally.scale`),
    and per bin that part's standard error from the ratio's: the model's legitimate share
    where it is least sure, corrected by what the team found there. Without reviews, the
    model's alone."""
    legit, legit_sq = tally.legit.get(SHARED, {}), tally.legit_sq.get(SHARED, {})
    review = tally.reviews.get(SHARED)
    if review is None or review.reviewed <= 0:
        return legit, legit_sq, {}
    scale, sd = review.scale()
    held, held_sq = tally.held_legit.get(SHARED, {}), tally.held_sq.get(SHARED, {})
    scaled = dict(legit)
    for k, part in held.items():
        scaled[k] = scaled.get(k, 0) - part + part * scale // PPM
    scaled_sq = dict(legit_sq)
    for k, part in held_sq.items():
        scaled_sq[k] = scaled_sq.get(k, 0) - part + part * scale // PPM
    return scaled, scaled_sq, {k: part * sd // PPM for k, part in held.items()}
