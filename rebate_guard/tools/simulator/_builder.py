"""The generator's mutable state: id counters and the user / merchant / transaction tables.

Everything is an integer index until `world.py` turns the finished tables into frames: users,
merchants, devices, cards and phones are counters here, IPs are int64, -1 means null.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rebate_guard.tools.simulator._common import MOBILE_A, Columns, random_ips

USER_COLUMNS = ("signup_ts", "referrer", "device", "ip", "phone", "scenario", "ring", "look")
MERCHANT_COLUMNS = ("category", "rate_pct", "median", "popularity", "scenario", "ring", "look")
TX_COLUMNS = (
    "ts",
    "user",
    "merchant",
    "amount",
    "refund",
    "ref",
    "device",
    "ip",
    "card",
    "scenario",
    "ring",
    "look",
)


@dataclass
class Ring:
    index: int
    scenario: int
    users: np.ndarray
    merchants: np.ndarray  # merchants the ring owns or targets (tx add more)


@dataclass
class Builder:
    start: int
    end: int
    mobile_pool: np.ndarray
    #: No account signed up before this (`WorldConfig.history_start_ms`).
    history_start: int
    users: Columns = field(default_factory=lambda: Columns(USER_COLUMNS))
    merchants: Columns = field(default_factory=lambda: Columns(MERCHANT_COLUMNS))
    tx: Columns = field(default_factory=lambda: Columns(TX_COLUMNS))
    rings: list[Ring] = field(default_factory=list)
    n_devices: int = 0
    n_cards: int = 0
    n_phones: int = 0
    #: Public number of each merchant (its id is `m<number>`), set when the world is
    #: assembled: the flows' platform events name merchants after that.
    merchant_numbers: np.ndarray | None = None

    @classmethod
    def create(
        cls, rng: np.random.Generator, start: int, end: int, n_users: int, history_start: int
    ) -> Builder:
        pool = np.unique(random_ips(rng, max(2_000, n_users // 4), MOBILE_A))
        return cls(start=start, end=end, mobile_pool=pool, history_start=history_start)

    def new_devices(self, n: int) -> np.ndarray:
        idx = np.arange(self.n_devices, self.n_devices + n, dtype=np.int64)
        self.n_devices += n
        return idx

    def new_cards(self, n: int) -> np.ndarray:
        idx = np.arange(self.n_cards, self.n_cards + n, dtype=np.int64)
        self.n_cards += n
        return idx

    def new_phones(self, n: int) -> np.ndarray:
        idx = np.arange(self.n_phones, self.n_phones + n, dtype=np.int64)
        self.n_phones += n
        return idx

    def mobile_ips(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.mobile_pool[rng.integers(0, len(self.mobile_pool), n)]

    def new_ring(self, scenario: int, users: np.ndarray, merchants: np.ndarray) -> Ring:
        ring = Ring(len(self.rings), scenario, users, merchants)
        self.rings.append(ring)
        return ring

    def add_abuse_users(
        self,
        ring_index: int,
        scenario: int,
        signup_ts: np.ndarray,
        referrer: np.ndarray,
        device: np.ndarray,
        ip: np.ndarray,
        phone: np.ndarray,
        *,
        look: int = -1,
    ) -> np.ndarray:
        return self.users.add(
            signup_ts=signup_ts.astype(np.int64),
            referrer=referrer.astype(np.int64),
            device=device.astype(np.int64),
            ip=ip.astype(np.int64),
            phone=phone.astype(np.int64),
            scenario=scenario,
            ring=ring_index,
            look=look,
        )

    def add_lookalike_users(
        self, look: int, signup_ts: np.ndarray, device: np.ndarray, ip: np.ndarray
    ) -> np.ndarray:
        """Legit users of a look-alike group (role `look`), each with a phone of their own."""
        n = len(signup_ts)
        return self.add_abuse_users(
            -1, 0, signup_ts, np.full(n, -1), device, ip, self.new_phones(n), look=look
        )

    def add_lookalike_tx(self, look: int, *payments: np.ndarray) -> np.ndarray:
        """Legit payments of a look-alike group (tx truth: legit, group `look`): ts, user,
        merchant, amount, device, ip, card, as `add_abuse_tx`'s."""
        return self.add_abuse_tx(-1, 0, *payments, look=look)

    def add_abuse_tx(
        self,
        ring_index: int,
        scenario: int,
        ts: np.ndarray,
        user: np.ndarray,
        merchant: np.ndarray,
        amount: np.ndarray,
        device: np.ndarray,
        ip: np.ndarray,
        card: np.ndarray,
        refund_of: np.ndarray | None = None,
        *,
        look: int = -1,
    ) -> np.ndarray:
        """Payments, or refunds when refund_of (global tx indices) is given; `look`: the
        look-alike group of legit ones (ring -1, scenario 0)."""
        n = len(ts)
        ref = np.full(n, -1, dtype=np.int64) if refund_of is None else refund_of
        return self.tx.add(
            ts=ts.astype(np.int64),
            user=user.astype(np.int64),
            merchant=merchant.astype(np.int64),
            amount=amount.astype(np.int64),
            refund=np.full(n, refund_of is not None),
            ref=ref.astype(np.int64),
            device=device.astype(np.int64),
            ip=ip.astype(np.int64),
            card=card.astype(np.int64),
            scenario=scenario,
            ring=ring_index,
            look=look,
        )
