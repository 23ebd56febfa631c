"""A brute-force reference for every feature: each value recomputed from the whole history of
processed events by its written definition (O(n^2), for small inputs only).

Shares nothing with `features/` but the definitions in docs/features.md: no windows, no
incremental state. Events are given in processing order (event time, ties as the engine's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rebate_guard.contract.records import (
    BINDING,
    COUPON_ISSUE,
    COUPON_REDEEM,
    FRAUD,
    PAYMENT,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_WITHDRAW,
    RETENTION_COMMISSION,
    Label,
    PlatformEvent,
    Signup,
    Transaction,
    requested_rebate_cents,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS

HOUR, DAY = HOUR_MS, DAY_MS
YOUNG = 7 * DAY
#: A payment at the binder this share of the user's mean payment is a visit (a token is not).
VISIT_SHARE = 1 / 30


def at_till(signup: Signup, first: Transaction) -> bool:
    """Signed up at a till: no referrer (a self-referral is none), the first payment within
    2 h after the sign-up (a payment before it is not), on its device (both known), else
    on its IP."""
    if signup.referrer_id not in (None, signup.user_id) or first.ts - signup.ts > 2 * HOUR:
        return False
    if first.ts < signup.ts:
        return False
    if first.device_id is not None and signup.device_id is not None:
        return first.device_id == signup.device_id
    return first.ip is not None and first.ip == signup.ip


@dataclass
class Paid:
    tx: Transaction
    young: bool  # the payer's account was younger than 7 days at the payment
    binder: str | None = None  # the merchant the payer was bound to at the payment


@dataclass
class History:
    utc_offset_minutes: int = 0
    signups: dict[str, Signup] = field(default_factory=dict)  # first signup per user
    signup_order: list[Signup] = field(default_factory=list)
    payments: list[Paid] = field(default_factory=list)
    refunds: list[Transaction] = field(default_factory=list)
    labels: dict[str, bool] = field(default_factory=dict)  # tx_id -> fraud, latest wins
    platform: list[PlatformEvent] = field(default_factory=list)

    def apply(self, event: Signup | Transaction | Label | PlatformEvent) -> dict[str, Any] | None:
        if isinstance(event, PlatformEvent):
            self.platform.append(event)
            return None
        if isinstance(event, Signup):
            if event.user_id not in self.signups:
                self.signups[event.user_id] = event
                self.signup_order.append(event)
            return None
        if isinstance(event, Label):
            if event.tx_id is not None and any(p.tx.tx_id == event.tx_id for p in self.payments):
                self.labels[event.tx_id] = event.label == FRAUD
            return None
        x = self.features(event)
        if event.kind == PAYMENT:
            age = self._age(event.user_id, event.ts)
            binder = self._binding(event.user_id)
            self.payments.append(
                Paid(event, age is not None and age < YOUNG, None if binder is None else binder[1])
            )
        else:
            self.refunds.append(event)
        return x

    def _age(self, user: str, t: int) -> int | None:
        s = self.signups.get(user)
        return None if s is None else t - s.ts

    def features(self, tx: Transaction) -> dict[str, Any]:
        t, u, m = tx.ts, tx.user_id, tx.merchant_id
        x: dict[str, Any] = {
            "amount_cents": tx.amount_cents,
            "rebate_rate": tx.rebate_rate,
            "is_refund": int(tx.kind != PAYMENT),
        }
        local = t + self.utc_offset_minutes * 60_000
        x["is_night"] = int(local % DAY < 6 * HOUR)
        x["is_weekend"] = int(((local // DAY) + 3) % 7 >= 5)

        mine = [p.tx for p in self.payments if p.tx.user_id == u]
        for label, width in (("30d", 30 * DAY), ("7d", 7 * DAY), ("24h", DAY), ("1h", HOUR)):
            x[f"user_tx_count_{label}"] = sum(1 for p in mine if p.ts > t - width)
        for label, width in (("30d", 30 * DAY), ("7d", 7 * DAY), ("24h", DAY), ("1h", HOUR)):
            x[f"user_amount_sum_{label}"] = sum(p.amount_cents for p in mine if p.ts > t - width)
        day = [p for p in mine if p.ts > t - DAY]
        x["user_merchant_count_24h"] = len({p.merchant_id for p in day} | {m})
        for name, attr in (("device", "device_id"), ("ip", "ip")):
            current = getattr(tx, attr)
            seen = {getattr(p, attr) for p in day} - {None}
            x[f"user_{name}_count_24h"] = None if current is None else len(seen | {current})
        x["seconds_since_prev_payment"] = (t - mine[-1].ts) / 1000 if mine else None
        amounts = [p.amount_cents for p in mine]
        if amounts:
            mean = sum(amounts) / len(amounts)
            var = sum((a - mean) ** 2 for a in amounts) / len(amounts)
            x["user_amount_zscore"] = (
                (tx.amount_cents - mean) / math.sqrt(var) if len(amounts) >= 2 and var else None
            )
            x["user_amount_to_mean"] = tx.amount_cents / mean
        else:
            x["user_amount_zscore"] = x["user_amount_to_mean"] = None
        signup = self.signups.get(u)
        x["user_account_age_s"] = None if signup is None else (t - signup.ts) / 1000
        if signup is None:
            x["signup_to_first_payment_s"] = None
        else:
            x["signup_to_first_payment_s"] = ((mine[0].ts if mine else t) - signup.ts) / 1000
        first = mine[0] if mine else tx
        x["signed_up_at_till"] = None if signup is None else float(at_till(signup, first))
        x["user_merchant_tx_count_7d"] = sum(
            1 for p in mine if p.merchant_id == m and p.ts > t - 7 * DAY
        )
        refunded = [p for p in mine if p.tx_id == tx.ref_tx_id and p.ts > t - 30 * DAY]
        x["refund_delay_s"] = (
            (t - refunded[0].ts) / 1000 if tx.kind != PAYMENT and refunded else None
        )

        at_m = [p for p in self.payments if p.tx.merchant_id == m]
        m_day = [p for p in at_m if p.tx.ts > t - DAY]
        m_hour = [p for p in at_m if p.tx.ts > t - HOUR]
        x["merchant_tx_count_24h"] = len(m_day)
        x["merchant_tx_count_1h"] = len(m_hour)
        x["merchant_amount_sum_24h"] = sum(p.tx.amount_cents for p in m_day)
        x["merchant_amount_sum_1h"] = sum(p.tx.amount_cents for p in m_hour)
        x["merchant_user_count_24h"] = len({p.tx.user_id for p in m_day} | {u})
        n = len(m_day)
        if n:
            per_user: dict[str, int] = {}
            for p in m_day:
                per_user[p.tx.user_id] = per_user.get(p.tx.user_id, 0) + 1
            a = [p.tx.amount_cents for p in m_day]
            mean = sum(a) / n
            x["merchant_top_user_share_24h"] = max(per_user.values()) / n
            x["merchant_young_account_share_24h"] = sum(p.young for p in m_day) / n
            x["merchant_amount_cv_24h"] = (
                math.sqrt(sum((v - mean) ** 2 for v in a) / n) / mean if n >= 2 else None
            )
            x["merchant_round_amount_share_24h"] = sum(v % 100 == 0 for v in a) / n
            x["merchant_repeat_amount_share_24h"] = (n - len(set(a))) / n
        else:
            for name in ("top_user", "young_account", "amount_cv", "round_amount", "repeat_amount"):
                key = (
                    f"merchant_{name}_24h" if name == "amount_cv" else f"merchant_{name}_share_24h"
                )
                x[key] = None
        m_30 = [p.tx for p in at_m if p.tx.ts > t - 30 * DAY]
        refunds = [r for r in self.refunds if r.merchant_id == m and r.ts > t - 30 * DAY]
        x["merchant_refund_rate_30d"] = len(refunds) / len(m_30) if m_30 else None
        for label, width in (("30d", 30 * DAY), ("7d", 7 * DAY)):
            known = [
                self.labels[p.tx_id] for p in m_30 if p.ts > t - width and p.tx_id in self.labels
            ]
            x[f"merchant_fraud_rate_{label}"] = sum(known) / len(known) if known else None
            x[f"merchant_labelled_count_{label}"] = len(known)

        x["rebate_rate_vs_category"] = self._vs_category(tx)

        for name, attr, widths, signup_window in (
            ("device", "device_id", (("24h", DAY), ("7d", 7 * DAY)), 7 * DAY),
            ("ip", "ip", (("24h", DAY), ("7d", 7 * DAY)), 7 * DAY),
            ("card", "card_id", (("30d", 30 * DAY),), None),
        ):
            key = getattr(tx, attr)
            seen = [(p.tx.ts, p.tx.user_id) for p in self.payments if getattr(p.tx, attr) == key]
            signups = [s for s in self.signup_order if getattr(s, attr, None) == key]
            seen += [(s.ts, s.user_id) for s in signups]
            for label, width in widths:
                x[f"{name}_user_count_{label}"] = (
                    None if key is None else len({w for ts, w in seen if ts > t - width} | {u})
                )
            if signup_window is not None:
                x[f"{name}_signup_count_7d"] = (
                    None if key is None else sum(1 for s in signups if s.ts > t - signup_window)
                )
        device = tx.device_id
        x["device_rebate_requested_24h"] = (
            None
            if device is None
            else sum(
                requested_rebate_cents(p.tx.amount_cents, p.tx.rebate_rate)
                for p in self.payments
                if p.tx.device_id == device and p.tx.ts > t - DAY
            )
        )

        x.update(self._referral(u, t))
        x.update(self._platform_user(tx))
        x.update(self._platform_entities(tx))
        return x

    def _of(self, kind: str, **fields: Any) -> list[PlatformEvent]:
        return [
            e
            for e in self.platform
            if e.kind == kind and all(getattr(e, k) == v for k, v in fields.items())
        ]

    def _binding(self, user: str) -> tuple[int, str | None, bool] | None:
        """(ts, merchant, re-bound) of the user's latest binding so far: re-bound when the
        binding before it was to the same merchant within 30 d."""
        mine = self._of(BINDING, user_id=user)
        if not mine:
            return None
        last = mine[-1]
        rebound = (
            len(mine) > 1
            and mine[-2].merchant_id == last.merchant_id
            and mine[-2].ts > last.ts - 30 * DAY
        )
        return (last.ts, last.merchant_id, rebound)

    def _transfers_to(self, user: str) -> list[PlatformEvent]:
        grants = self._of(POINTS_GRANT, user_id=user)
        return [g for g in grants if g.counterparty_id not in (None, user)]

    def _platform_user(self, tx: Transaction) -> dict[str, Any]:
        t, u, payment = tx.ts, tx.user_id, tx.kind == PAYMENT
        x: dict[str, Any] = {}
        bound = self._binding(u)
        elsewhere = bound is not None and bound[1] != tx.merchant_id and bound[0] > t - DAY
        x["bound_elsewhere_s"] = (t - bound[0]) / 1000 if elsewhere and bound else None
        lead = elsewhere and payment and bound is not None and (bound[2] or bound[0] > t - HOUR)
        if lead and bound is not None:  # not once the user made a purchase at the binder since
            mine = [p.tx for p in self.payments if p.tx.user_id == u]
            visits = [
                p.amount_cents for p in mine if p.merchant_id == bound[1] and p.ts >= bound[0]
            ]
            typical = (sum(p.amount_cents for p in mine) + tx.amount_cents) / (len(mine) + 1)
            lead = not visits or max(visits) < VISIT_SHARE * typical
        x["binding_lead_amount_cents"] = tx.amount_cents if lead else None
        issues = self._of(COUPON_ISSUE, user_id=u)
        x["user_coupons_claimed_24h"] = sum(1 for e in issues if e.ts > t - DAY)
        uses, leads, received = [], [], None
        issued: dict[str | None, int] = {}  # coupon -> its latest issue to u so far
        for e in self.platform:  # in processing order
            if e.user_id != u:
                continue
            if e.kind == COUPON_ISSUE:
                issued[e.coupon_id] = e.ts
            elif e.kind == COUPON_REDEEM and e.tx_id == tx.tx_id and e.ts > t - DAY:
                at = issued.get(e.coupon_id)
                if at is not None and at > e.ts - 30 * DAY:
                    uses.append((e.ts - at) / 1000)
            elif e.kind == POINTS_GRANT and e.counterparty_id not in (None, u):
                received = e.ts
            elif (
                e.kind in (POINTS_REDEEM, POINTS_WITHDRAW)
                and e.ts > t - 30 * DAY
                and received is not None
                and received > e.ts - 30 * DAY
            ):
                leads.append((e.ts - received) / 1000)
        x["coupon_claim_to_use_s"] = uses[-1] if payment and uses else None
        transfers = [g for g in self._transfers_to(u) if g.ts > t - 30 * DAY]
        x["points_givers_30d"] = len({g.counterparty_id for g in transfers})
        x["points_received_30d"] = sum(g.amount_cents for g in transfers)
        x["points_quick_redeem_s"] = min(leads) if leads else None
        commissions = [c for c in self._of(RETENTION_COMMISSION, user_id=u) if c.ts > t - 30 * DAY]
        total = sum(c.amount_cents for c in commissions)
        cycled = sum(c.amount_cents for c in commissions if self._cycled(c))
        x["user_commission_30d"] = total
        x["user_commission_cycle_share_30d"] = cycled / total if total else None
        return x

    def _cycled(self, commission: PlatformEvent) -> bool:
        """The commission's customer paid at the earning merchant in the 24 h before it
        (processed before it: at equal ts a payment comes after a platform event)."""
        c = commission
        return any(
            p.tx.user_id == c.user_id
            and p.tx.merchant_id == c.merchant_id
            and c.ts - DAY < p.tx.ts < c.ts
            for p in self.payments
        )

    def _young_at(self, event: PlatformEvent) -> bool:
        """The event's user had signed up (before it, in processing order) under 7 d ago."""
        signup = self.signups.get(str(event.user_id))
        return signup is not None and signup.ts <= event.ts and event.ts - signup.ts < YOUNG

    def _platform_entities(self, tx: Transaction) -> dict[str, Any]:
        t, x = tx.ts, {}
        for name, attr in (("device", "device_id"), ("ip", "ip")):
            key = getattr(tx, attr)
            for feature, kind, width in (
                (f"{name}_bound_user_count_7d", BINDING, 7 * DAY),
                (f"{name}_coupon_user_count_24h", COUPON_ISSUE, DAY),
            ):
                made = [e for e in self._of(kind) if getattr(e, attr) == key and e.ts > t - width]
                x[feature] = None if key is None else len({e.user_id for e in made}) or None
        bound = self._binding(tx.user_id)
        names = ("bindings_7d", "bindings_per_device_7d", "young_binding_share_7d")
        names += ("spend_per_binding_30d", "commission_cycle_share_30d")
        if bound is None:
            return {**x, **{f"binder_{n}": None for n in names}}
        binder = bound[1]
        bindings = self._of(BINDING, merchant_id=binder)
        week = [e for e in bindings if e.ts > t - 7 * DAY]
        on_device = [e.device_id for e in week if e.device_id is not None]
        young = [e for e in week if self._young_at(e)]
        month = [e for e in bindings if e.ts > t - 30 * DAY]
        spend = sum(
            p.tx.amount_cents
            for p in self.payments
            if p.binder == binder and p.tx.ts > t - 30 * DAY
        )
        commissions = [
            c for c in self._of(RETENTION_COMMISSION, merchant_id=binder) if c.ts > t - 30 * DAY
        ]
        total = sum(c.amount_cents for c in commissions)
        cycled = sum(c.amount_cents for c in commissions if self._cycled(c))
        x["binder_bindings_7d"] = len(week)
        x["binder_bindings_per_device_7d"] = (
            len(on_device) / len(set(on_device)) if on_device else None
        )
        x["binder_young_binding_share_7d"] = len(young) / len(week) if week else None
        x["binder_spend_per_binding_30d"] = spend / len(month) if month else None
        x["binder_commission_cycle_share_30d"] = cycled / total if total else None
        return x

    def _vs_category(self, tx: Transaction) -> float | None:
        if tx.merchant_category is None:
            return None
        latest: dict[str, float] = {}
        for p in self.payments:
            q = p.tx
            if q.merchant_category == tx.merchant_category and q.ts > tx.ts - 30 * DAY:
                latest[q.merchant_id] = q.rebate_rate
        latest.pop(tx.merchant_id, None)
        if not latest:
            return None
        return tx.rebate_rate - sum(latest.values()) / len(latest)

    def _referral(self, user: str, t: int) -> dict[str, Any]:
        none = {"referral_depth": None, "referrer_downline_size": None}
        none["referrer_signups_24h"] = None
        if user not in self.signups:
            return none
        depth: dict[str, int] = {}
        for s in self.signup_order:  # depth fixed at signup: referrer's depth then, plus one
            r = s.referrer_id
            depth[s.user_id] = 0 if r is None or r == s.user_id else depth.get(r, 0) + 1
        referrer = self.signups[user].referrer_id
        if referrer is None or referrer == user:
            return {**none, "referral_depth": depth[user]}
        downline = [
            s for s in self.signup_order if s.referrer_id == referrer and s.user_id != referrer
        ]
        return {
            "referral_depth": depth[user],
            "referrer_downline_size": len(downline),
            "referrer_signups_24h": sum(1 for s in downline if s.ts > t - DAY),
        }
