"""The feature engine: everything known about a transaction's context, at its ts.

Pure and synchronous: the same object serves the live worker and replay, so the models see
identical features on both paths. Each family (user, the user's platform events, merchant,
category, device, IP, card, referral, binder) keeps its own state keyed by one entity, which
is what lets the stream split the families across partitions. `transaction()` returns the
features *before* the transaction itself is added to state (score before learn).

Events must arrive in event-time order (`rebate_guard.contract.order`); a repeated signup
for a user already signed up is ignored, so redelivery is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.merchant import MerchantFamily
from features.platform import UserPlatformFamily
from features.referral import ReferralTree
from features.rows import Value
from features.stages import (
    EntityStage,
    SweepClock,
    TransactionFeatures,
    UserStage,
    detached,
    family_names,
)
from features.user import UserFamily
from rebate_guard.contract.records import (
    POINTS_TRANSFER,
    Label,
    PlatformEvent,
    Signup,
    Transaction,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS

Features = dict[str, float | None]


@dataclass(frozen=True)
class EngineConfig:
    """What the risk team may tune; defaults match `rebate_guard.settings`."""

    #: Offset of the platform's local time from UTC, for the night and weekend flags.
    utc_offset_minutes: int = 0
    #: Users idle longer than this are forgotten (their lifetime facts, such as the account
    #: age, restart). Windowed state goes as soon as its windows have expired.
    user_ttl_ms: int = 730 * DAY_MS
    #: How often (in event time) idle keys are swept out of memory.
    sweep_every_ms: int = HOUR_MS


class FeatureEngine:
    """Both stages in one process (see `features.stages`), with the referral tree in a dict."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.users = UserStage(config.utc_offset_minutes, config.user_ttl_ms)
        self.entities = EntityStage(config.user_ttl_ms)
        self.tree = ReferralTree()
        self.sweeps = SweepClock(config.sweep_every_ms)
        self.swept = 0

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def signup(self, event: Signup) -> None:
        self._maybe_sweep(event.ts)
        if not self.users.signup(event):
            return  # redelivered or repeated: the first signup stands
        self.tree.signup(event)
        self.entities.signup(event)

    def label(self, event: Label) -> None:
        self._maybe_sweep(event.ts)
        self.entities.label(event)

    def platform_event(self, event: PlatformEvent) -> None:
        """A platform event (`features.platform`): the user's, then its entity families'."""
        self._maybe_sweep(event.ts)
        context = self.users.platform_event(event)
        if context is not None:
            self.entities.platform_event(event, context)

    def request_features(self, event: PlatformEvent) -> Features:
        """The features of a points request (`event`, before it is learned), changing
        nothing: what a points decision weighs (`request_vector`). Empty for an event
        without a user."""
        if event.user_id is None:
            return {}
        return dict(zip(REQUEST_FEATURE_NAMES, request_vector(self.users, event), strict=True))

    def vector(self, tx: Transaction) -> list[float | None]:
        """The feature values of `tx` in `FEATURE_NAMES` order; then learns `tx`."""
        self._maybe_sweep(tx.ts)
        out, context = self.users.transaction(tx)
        context.depth = self.tree.depth(tx.user_id, context)
        self.entities.transaction(tx, context, out=out)
        return out

    def transaction(self, tx: Transaction) -> Features:
        return dict(zip(FEATURE_NAMES, self.vector(tx), strict=True))

    def _maybe_sweep(self, ts: int) -> None:
        if self.sweeps.due(ts):
            self.sweep(ts)

    def sweep(self, now_ms: int) -> int:
        """Forget keys whose windows have all expired (and users past their TTL)."""
        gone = self.users.sweep(now_ms) + self.entities.sweep(now_ms)
        self.swept += gone
        return gone

    # The families, for tests and the state benchmark.
    @property
    def user(self) -> UserFamily:
        return self.users.user

    @property
    def merchant(self) -> MerchantFamily:
        return self.entities.merchant

    def key_counts(self) -> dict[str, int]:
        entities = self.entities
        return {
            "user_profiles": len(self.user.profiles),
            "user_activity": len(self.user.activity),
            "merchants": len(entities.merchant.state),
            "categories": len(entities.category.state),
            "devices": len(entities.device.state),
            "ips": len(entities.ip.state),
            "cards": len(entities.card.state),
            "referrers": len(entities.referral.state),
            "referral_tree": len(self.tree.entries),
            "user_platform": len(self.users.platform.state),
            "binders": len(entities.binder.state),
        }


def _names() -> tuple[str, ...]:
    families = (UserFamily.names, UserPlatformFamily.names, *family_names())
    return TransactionFeatures.names + tuple(name for names in families for name in names)


#: Every feature the detectors see, in the order of `FeatureEngine.vector`.
FEATURE_NAMES = _names()

#: The features of a points request (`request_vector`), in order: the user's platform
#: features, the account's age, and whether the request gives points to someone else.
REQUEST_FEATURE_NAMES = (*UserPlatformFamily.names, "user_account_age_s", "is_points_transfer")


def request_vector(users: UserStage, event: PlatformEvent) -> list[Value]:
    """The features of a points request of `event`'s user, in `REQUEST_FEATURE_NAMES`
    order, from the user stage as it stands before the request is learned, changing
    nothing: replay (`FeatureEngine.request_features`) and the worker's user shard (at the
    request's release) read them from the same state. What the rules of a request weigh
    (`detectors.rules.REQUEST_RULES`): who gave the user points (`points_givers_30d`), how
    old the account is (as a payment's `user_account_age_s`), and whether the points leave
    for another user (a transfer: the way points reach a buyer). The requester's ring is
    not the feature engine's: the decider adds it (`rebate_guard.core.decider.Decider.
    platform_event`, as a payment's)."""
    user_id, ts = event.user_id or "", event.ts
    scratch = detached(users.platform, user_id)
    platform = scratch.features_at(user_id, ts, merchant_id=event.merchant_id)
    signup = users.referral(user_id, ts)[1]
    age = None if signup is None else (ts - signup) / 1000
    return [*platform, age, float(event.kind == POINTS_TRANSFER)]
