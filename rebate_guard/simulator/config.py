"""`WorldConfig`: every knob of the simulated world, with defaults that give a realistic mix."""

from __future__ import annotations

from dataclasses import dataclass

#: Abusers' aged accounts may predate the legit history by up to this many days.
AGED_ACCOUNT_EXTRA_DAYS = 35


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 7
    n_users: int = 20_000  # legit users (abusive accounts come on top)
    n_merchants: int = 800  # legit merchants (abuse-owned merchants come on top)
    days: int = 28
    start_ts_ms: int = 1_767_225_600_000  # 2026-01-01T00:00Z
    target_transactions: int | None = None  # if set, scale legit activity so the total is ~this
    id_prefix: str = ""  # prefixed to every generated id (lets callers chain worlds)
    fraud_scale: float = 1.0  # multiplies the number of injected abuse groups (0: no abuse)
    label_fraction: float = 0.4  # share of fraud transactions that ever receive a fraud label

    # Legit population.
    payments_per_user_day: float = 0.3  # mean legit payments per user-day before scaling
    new_user_fraction: float = 0.2  # legit users who sign up inside the window
    history_days: int = 365  # the others signed up up to this many days before the start
    referral_fraction: float = 0.25  # legit users who signed up through a referrer
    refund_rate: float = 0.015  # share of legit payments refunded (hours to days later)
    family_fraction: float = 0.04  # legit users living in families sharing a device/home IP
    office_fraction: float = 0.04  # legit users working in offices sharing one IP
    loyal_fraction: float = 0.015  # legit users buying daily at the same merchant
    influencers: int | None = None  # viral referrers; default one per 20k users (at least 1)
    lunch_rush_fraction: float = 0.04  # share of restaurants with weekday lunch rushes

    # Abuse volume: groups per 100k expected legit transactions, times fraud_scale.
    brushing_per_100k: float = 2.5
    referral_farm_per_100k: float = 3.5
    collusion_ring_per_100k: float = 3.0
    cash_out_per_100k: float = 3.5
    pyramid_per_100k: float = 1.5

    # Labels.
    user_label_share: float = 0.1  # share of abusive accounts labelled at the user level
    legit_review_rate: float = 0.002  # legit tx reviewed and labelled "legit" (x6 look-alikes)

    def __post_init__(self) -> None:
        problems = []
        if self.n_users < 200:
            problems.append("n_users must be >= 200")
        if self.n_merchants < 20:
            problems.append("n_merchants must be >= 20")
        if self.days < 3:
            problems.append("days must be >= 3")
        if self.target_transactions is not None and self.target_transactions < 1_000:
            problems.append("target_transactions must be >= 1000 (or None)")
        if self.fraud_scale < 0:
            problems.append("fraud_scale must be >= 0")
        if self.payments_per_user_day <= 0:
            problems.append("payments_per_user_day must be > 0")
        if self.history_days < 1:
            problems.append("history_days must be >= 1")
        if self.influencers is not None and self.influencers < 0:
            problems.append("influencers must be >= 0")
        for name in (
            "label_fraction",
            "new_user_fraction",
            "referral_fraction",
            "refund_rate",
            "family_fraction",
            "office_fraction",
            "loyal_fraction",
            "lunch_rush_fraction",
            "user_label_share",
            "legit_review_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within 0..1")
        if self.family_fraction + self.office_fraction + self.loyal_fraction > 0.5:
            problems.append("family + office + loyal fractions must stay <= 0.5")
        for name in (
            "brushing_per_100k",
            "referral_farm_per_100k",
            "collusion_ring_per_100k",
            "cash_out_per_100k",
            "pyramid_per_100k",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if problems:
            raise ValueError("invalid WorldConfig: " + "; ".join(problems))

    @property
    def history_start_ms(self) -> int:
        """No account signed up before this: the legit history, and aged accounts bought
        by abusers up to `AGED_ACCOUNT_EXTRA_DAYS` older."""
        return self.start_ts_ms - (self.history_days + AGED_ACCOUNT_EXTRA_DAYS) * 86_400_000

    @property
    def end_ts_ms(self) -> int:
        return self.start_ts_ms + self.days * 86_400_000
