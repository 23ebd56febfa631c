"""`WorldConfig`: every knob of the simulated world, with defaults that give a realistic mix."""

from __future__ import annotations

from dataclasses import dataclass

from rebate_guard.contract.time import DAY_MS

#: Abusers' aged accounts may predate the legit history by up to this many days.
AGED_ACCOUNT_EXTRA_DAYS = 35

#: Allowed values of the tactic knobs that are choices rather than numbers.
BRUSHING_HOURS = ("any", "night", "day")
COLLUSION_PATTERNS = ("steady", "rounds")
FARM_DEVICES = ("few", "rotating")
#: What a payment's consumption points are a share of: its bill, or the merchant's discount
#: on it (its requested rebate, which the merchant settles): points the discount funds.
POINTS_BASES = ("bill", "discount")


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
    # Of those not referred by another user, the share who sign up at a merchant's till (its
    # QR code, to pay): their first payment is there, minutes later (0: nobody does).
    signup_at_checkout_share: float = 0.0
    history_days: int = 365  # the others signed up up to this many days before the start
    referral_fraction: float = 0.25  # legit users who signed up through a referrer
    # Propensity to refer of a user who was referred, relative to one who was not (0.1:
    # shallow trees; >= 1 with attachment: chains 5-9 deep).
    referred_referrer_weight: float = 0.1
    # Preferential attachment: a referrer's weight grows by this x the referees it already has.
    referral_attachment: float = 0.0
    refund_rate: float = 0.015  # share of legit payments refunded (hours to days later)
    quick_refund_share: float = 0.15  # of those, refunded 8 min-2 h later (cancelled orders)
    refund_delay_median_hours: float = 30.0  # median delay of the other refunds
    big_purchase_rate: float = 0.0  # legit payments 5-50x the usual price (heavy-tailed)
    family_fraction: float = 0.04  # legit users living in families sharing a device/home IP
    family_card_share: float = 0.4  # families whose members also pay with the head's card
    office_fraction: float = 0.04  # legit users working in offices sharing one IP
    office_max_size: int = 300  # offices have 30..this members (campuses: thousands)
    nat_pool_share: float = 0.0  # share of legit mobile traffic leaving via carrier NAT IPs
    nat_pool_users: int = 1_000  # users behind one carrier-NAT public IP
    high_rate_merchant_fraction: float = 0.0  # legit merchants at 20-30 % rebate rates
    loyal_fraction: float = 0.015  # legit users buying daily at the same merchant
    influencers: int | None = None  # viral referrers; default one per 20k users (at least 1)
    lunch_rush_fraction: float = 0.04  # share of restaurants with weekday lunch rushes

    # Abuse volume: groups per 100k expected legit transactions, times fraud_scale.
    brushing_per_100k: float = 2.5
    referral_farm_per_100k: float = 3.5
    collusion_ring_per_100k: float = 3.0
    cash_out_per_100k: float = 3.5
    pyramid_per_100k: float = 1.5
    # The commission, coupon and points flows (`_abuse_economics`): off in a bare config, so
    # it generates the worlds it did; the profiles switch them on (`profiles.FLOW_ABUSE`).
    binding_hijack_per_100k: float = 0.0
    coupon_farm_per_100k: float = 0.0
    points_collector_per_100k: float = 0.0
    binding_farm_per_100k: float = 0.0
    commission_cycle_per_100k: float = 0.0
    # Their legit look-alikes (`_flow_lookalikes`), groups per 100k expected legit
    # transactions (not times fraud_scale: they are legit); off in a bare config too.
    family_binding_per_100k: float = 0.0
    shop_binding_burst_per_100k: float = 0.0
    family_points_per_100k: float = 0.0
    coupon_hunters_per_100k: float = 0.0
    bound_regulars_per_100k: float = 0.0
    rescan_regulars_per_100k: float = 0.0
    min_groups_per_scenario: int = 1  # 0 lets a rare scenario round away (low fraud shares)
    # Legit pull of abuse-run merchants: their popularity is this x a log-normal(0, 0.5)
    # (legit merchants: log-normal(0, 1.1), mean ~1.8), so they get a little legit traffic.
    ring_merchant_popularity: float = 0.2

    # Abuse tactics.
    brushing_hours: str = "any"  # bursts start at any hour, at "night" (00-03) or by "day"
    brushing_round_share: float = 0.6  # brushing purchases at round amounts (rest jittered)
    collusion_pattern: str = "steady"  # or "rounds": all members pay within minutes, pause
    cash_out_lone_share: float = 0.0  # cash-out groups that are one account on its own card
    farm_devices: str = "few"  # or "rotating": a new device per 1-3 farm accounts
    # ... of the flows' abuse (the defaults are the tactics `_abuse_economics` always had).
    flow_group_size: float = 1.0  # multiplies the accounts of a flow-abuse group
    farm_phones: int = 3  # coupon, binding and points farms make their accounts on 1..this
    hijack_lead_minutes: float = 45.0  # a hijacking binding comes 3 min..this before its payment
    # Of a hijack's big payments, the share whose accomplice first pays a token at the binder
    # (after the binding): hijackers who learnt that a visit to the binder ends the lead.
    hijack_token_share: float = 0.0
    farm_spend_days: float = 4.0  # farmed accounts pay 1 h..this after signing up
    points_transfer_units: int = 7  # a points giver passes 2..this whole units
    coupon_use_minutes: float = 20.0  # a farmed coupon is used 1 min..this after its claim
    cycle_visit_days: float = 2.0  # colluders pay at their earner about every this many days
    # ... and of their look-alikes: of a bound regular's re-scans of its shop's QR code, the
    # share it then pays at the shop (the others claim an offer, look at the menu).
    rescan_pay_share: float = 0.8

    # Labels.
    user_label_share: float = 0.1  # share of abusive accounts labelled at the user level
    legit_review_rate: float = 0.002  # legit tx reviewed and labelled "legit" (x6 look-alikes)
    review_delay_min_days: float = 2.0  # reviews land this many days after the tx ...
    review_delay_max_days: float = 9.0  # ... up to this many
    legit_mislabel_rate: float = 0.0  # reviews of legit tx that wrongly say "fraud"
    fraud_mislabel_rate: float = 0.0  # reviews of fraud tx that wrongly say "legit"
    # The risk team reviewing the sample of withheld payments (`review_desk.ReviewDesk`,
    # the policy's `[budget] review_share`) decides a held payment within its hold: this
    # many hours after the payment, up to this many (holds time out after 72 h by default).
    hold_review_delay_min_hours: float = 4.0
    hold_review_delay_max_hours: float = 48.0

    # Growth: from `stall_day` (days after the start) new signups fall to `stall_signup_share`
    # of the growth curve's (the others had joined before the window: existing users, who keep
    # paying and redeeming); so do merchants' joining fees, and the capital that follows them.
    stall_day: float | None = None
    stall_signup_share: float = 0.1
    # After the stall users use their vouchers at (nearly) every payment: a run on the points.
    stall_redeem_propensity: float = 0.95

    # Platform economics (`platform_events`, docs/simulator.md "Platform economics"). Amounts
    # in "user-days": the platform's mean spending per user and day, so they keep their weight
    # in worlds of any activity.
    economics: bool = True
    regions: int = 4  # merchants' regions (north, east, south, west, ...), uneven sizes
    late_settlement_share: float = 0.04  # merchants settling their daily batches days late
    partial_settlement_share: float = 0.03  # merchants paying in only part (50-90 %) of each
    consumption_points_share: float = 0.5  # points granted on a payment, share of ...
    consumption_points_basis: str = "bill"  # ... its bill, or its "discount" (POINTS_BASES)
    signup_bonus_user_days: float = 1.0  # a new user's sign-up bonus in points
    bonus_expiry_days: float = 7.0  # the bonus's unredeemable part lapses after this
    redeemable_share: float = 0.4  # of what a user earned, the share that may be redeemed
    redeem_propensity: float = 0.8  # mean share of a user's payments paid partly in points
    transfer_share: float = 0.01  # of those, given to the user's referrer instead
    bound_user_share: float = 0.5  # users bound to the merchant of their first payment
    qr_binding_share: float = 0.3  # of bound new users, bound by a merchant's QR at signup
    retention_commission_min: float = 0.002  # binding merchants' commission rates: ...
    retention_commission_max: float = 0.01  # ... uniform per merchant in this range
    coupon_push_rate: float = 0.05  # payments after which another merchant's coupon is pushed
    coupon_valid_days: float = 7.0
    coupon_targeting: float = 0.5  # pushed for a merchant the user is about to visit anyway
    membership_share: float = 0.5  # new users who pay a membership deposit
    membership_user_days: float = 50.0  # the mean deposit (tiers 0.5x, 1x, 2x)
    merchant_joining_user_days: float = 100.0  # a new merchant's joining fee
    opening_capital_days: float = 2.0  # capital at the start: days of the rebates granted
    capital_round_days: int = 7  # every this many days the platform raises capital ...
    capital_round_share: float = 0.2  # ... this share of the new money of the days before

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
        if self.referred_referrer_weight < 0 or self.referral_attachment < 0:
            problems.append("referred_referrer_weight and referral_attachment must be >= 0")
        if self.ring_merchant_popularity <= 0 or self.refund_delay_median_hours <= 0:
            problems.append("ring_merchant_popularity and refund_delay_median_hours must be > 0")
        if self.office_max_size < 30:
            problems.append("office_max_size must be >= 30")
        if self.min_groups_per_scenario < 0:
            problems.append("min_groups_per_scenario must be >= 0")
        if self.nat_pool_users < 2:
            problems.append("nat_pool_users must be >= 2")
        if not 0 < self.review_delay_min_days <= self.review_delay_max_days:
            problems.append("review delays need 0 < min <= max days")
        if not 0 < self.hold_review_delay_min_hours <= self.hold_review_delay_max_hours:
            problems.append("hold review delays need 0 < min <= max hours")
        for name, allowed in (
            ("brushing_hours", BRUSHING_HOURS),
            ("collusion_pattern", COLLUSION_PATTERNS),
            ("farm_devices", FARM_DEVICES),
            ("consumption_points_basis", POINTS_BASES),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}")
        for name in (
            "label_fraction",
            "new_user_fraction",
            "signup_at_checkout_share",
            "referral_fraction",
            "refund_rate",
            "family_fraction",
            "office_fraction",
            "loyal_fraction",
            "lunch_rush_fraction",
            "user_label_share",
            "legit_review_rate",
            "quick_refund_share",
            "big_purchase_rate",
            "family_card_share",
            "nat_pool_share",
            "high_rate_merchant_fraction",
            "brushing_round_share",
            "cash_out_lone_share",
            "legit_mislabel_rate",
            "fraud_mislabel_rate",
            "stall_signup_share",
            "stall_redeem_propensity",
            "late_settlement_share",
            "partial_settlement_share",
            "redeemable_share",
            "redeem_propensity",
            "transfer_share",
            "bound_user_share",
            "qr_binding_share",
            "coupon_push_rate",
            "coupon_targeting",
            "membership_share",
            "capital_round_share",
            "rescan_pay_share",
            "hijack_token_share",
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
            "binding_hijack_per_100k",
            "coupon_farm_per_100k",
            "points_collector_per_100k",
            "binding_farm_per_100k",
            "commission_cycle_per_100k",
            "family_binding_per_100k",
            "shop_binding_burst_per_100k",
            "family_points_per_100k",
            "coupon_hunters_per_100k",
            "bound_regulars_per_100k",
            "rescan_regulars_per_100k",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not 0.25 <= self.flow_group_size <= 4 or not 1 <= self.farm_phones <= 20:
            problems.append("flow_group_size must be within 0.25..4 and farm_phones 1..20")
        if self.hijack_lead_minutes <= 3 or self.coupon_use_minutes <= 1:
            problems.append("hijack_lead_minutes must be > 3 and coupon_use_minutes > 1")
        if self.farm_spend_days < 0.1 or self.cycle_visit_days <= 0:
            problems.append("farm_spend_days must be >= 0.1 and cycle_visit_days > 0")
        if self.points_transfer_units < 3:
            problems.append("points_transfer_units must be >= 3")
        if self.stall_day is not None and not 0 <= self.stall_day <= self.days:
            problems.append("stall_day must be within 0..days (or None)")
        if not 1 <= self.regions <= 8:
            problems.append("regions must be within 1..8")
        if not 0 <= self.retention_commission_min <= self.retention_commission_max <= 0.05:
            problems.append("retention commission rates need 0 <= min <= max <= 0.05")
        if self.capital_round_days < 1 or self.coupon_valid_days <= 0:
            problems.append("capital_round_days must be >= 1 and coupon_valid_days > 0")
        for name in (
            "signup_bonus_user_days",
            "bonus_expiry_days",
            "membership_user_days",
            "merchant_joining_user_days",
            "opening_capital_days",
            "consumption_points_share",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if problems:
            raise ValueError("invalid WorldConfig: " + "; ".join(problems))

    @property
    def history_start_ms(self) -> int:
        """No account signed up before this: the legit history, and aged accounts bought
        by abusers up to `AGED_ACCOUNT_EXTRA_DAYS` older."""
        return self.start_ts_ms - (self.history_days + AGED_ACCOUNT_EXTRA_DAYS) * DAY_MS

    @property
    def end_ts_ms(self) -> int:
        return self.start_ts_ms + self.days * DAY_MS

    @property
    def stall_ts_ms(self) -> int | None:
        """When growth stalls (None: it does not)."""
        if self.stall_day is None:
            return None
        return self.start_ts_ms + round(self.stall_day * DAY_MS)
