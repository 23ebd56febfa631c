"""A seeded, vectorised rebate-platform world: contract streams plus the ground truth.

`simulate_world(WorldConfig(...))` returns a `World` with the contract frames
(transactions, signups, labels, platform_events) and the truth frames (tx_truth, user_truth,
rings_truth, merchant_truth, platform_truth). `write_world` / `read_world` move it to and
from files, `event_stream` replays the contract frames as one event-time ordered stream.
docs/simulator.md describes the population, every abuse scenario, the look-alikes and the
labels.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rebate_guard.contract.records import (
    BINDING,
    COUPON_ISSUE,
    LABELS,
    PLATFORM_EVENTS,
    POINTS_REQUESTS,
    SIGNUPS,
    TRANSACTIONS,
    PlatformEvent,
    Signup,
    Transaction,
)
from rebate_guard.tools.io import record_schema
from rebate_guard.tools.simulator import (
    _abuse,
    _abuse_economics,
    _economics,
    _flow_lookalikes,
    _legit,
)
from rebate_guard.tools.simulator._abuse_economics import PLATFORM_TRUTH_SCHEMA
from rebate_guard.tools.simulator._builder import Builder
from rebate_guard.tools.simulator._common import (
    ABUSE_SCENARIOS,
    BIG_PURCHASE,
    BRUSHING,
    CASH_OUT,
    CATEGORIES,
    COLLUSION_RING,
    LOOKALIKES,
    LUNCH_RUSH,
    NAT_POOL,
    NO_LOOK,
    ORDINARY_REFUND,
    PYRAMID,
    QUICK_REFUND,
    REFERRAL_FARM,
    RING_MERCHANT_CUSTOMER,
    SCENARIOS,
)
from rebate_guard.tools.simulator._labels import SOURCES, make_labels
from rebate_guard.tools.simulator.config import WorldConfig

# The inputs' columns are the records' fields (`tools.io.record_schema`); the labels file keeps
# its own order (time first) and has no `reviewer`: the simulator's labels are never a review.
TRANSACTION_SCHEMA: dict[str, Any] = record_schema(Transaction)
SIGNUP_SCHEMA: dict[str, Any] = record_schema(Signup)
#: The platform's money and points flows besides payments (docs/events.md, "platform-events"):
#: every field of `PlatformEvent`, null where the kind has none.
PLATFORM_EVENT_SCHEMA: dict[str, Any] = record_schema(PlatformEvent)
LABEL_SCHEMA: dict[str, Any] = {
    "ts": pl.Int64,
    "tx_id": pl.String,
    "user_id": pl.String,
    "label": pl.String,
    "source": pl.String,
}
TX_TRUTH_SCHEMA: dict[str, Any] = {
    "tx_id": pl.String,
    "is_fraud": pl.Boolean,
    "scenario": pl.String,
    "group": pl.String,
}
USER_TRUTH_SCHEMA: dict[str, Any] = {"user_id": pl.String, "role": pl.String, "ring_id": pl.String}
RINGS_TRUTH_SCHEMA: dict[str, Any] = {
    "ring_id": pl.String,
    "kind": pl.String,
    "users": pl.List(pl.String),
    "merchants": pl.List(pl.String),
    "devices": pl.List(pl.String),
    "fifth_member_joined_ts": pl.Int64,
}
MERCHANT_TRUTH_SCHEMA: dict[str, Any] = {
    "merchant_id": pl.String,
    "category": pl.String,
    "rebate_rate": pl.Float64,
    "role": pl.String,
    "ring_id": pl.String,
    "region": pl.String,  # with the economics (else null)
    "settlement": pl.String,  # on_time, late or partial (with the economics, else null)
}
CONTRACT_SCHEMAS = {
    "transactions": TRANSACTION_SCHEMA,
    "signups": SIGNUP_SCHEMA,
    "labels": LABEL_SCHEMA,
    "platform_events": PLATFORM_EVENT_SCHEMA,
}
TRUTH_SCHEMAS = {
    "tx_truth": TX_TRUTH_SCHEMA,
    "user_truth": USER_TRUTH_SCHEMA,
    "rings_truth": RINGS_TRUTH_SCHEMA,
    "merchant_truth": MERCHANT_TRUTH_SCHEMA,
    "platform_truth": PLATFORM_TRUTH_SCHEMA,
}
FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
#: Frames a world directory may lack (written before they existed): read as empty.
OPTIONAL_FRAMES = ("merchant_truth", "platform_events", "platform_truth")
LIST_SEPARATOR = "|"


def _empty(schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


@dataclass(frozen=True)
class World:
    transactions: pl.DataFrame  # sorted by ts
    signups: pl.DataFrame  # sorted by ts
    labels: pl.DataFrame  # sorted by ts
    tx_truth: pl.DataFrame  # tx_id, is_fraud, scenario, group
    user_truth: pl.DataFrame  # user_id, role, ring_id
    rings_truth: pl.DataFrame  # ring_id, kind, users, merchants, devices, fifth_member_joined_ts
    # merchant_id, category, rebate_rate, role ("legit" or the abuse scenario), ring_id
    merchant_truth: pl.DataFrame = field(default_factory=lambda: _empty(MERCHANT_TRUTH_SCHEMA))
    # The platform's economics (PlatformEvent columns), sorted by ts; empty for a world
    # simulated or written before them.
    platform_events: pl.DataFrame = field(default_factory=lambda: _empty(PLATFORM_EVENT_SCHEMA))
    # event_id, is_fraud, scenario ("" for legit), group (look-alike, or ""): one row per
    # platform event, in its order; empty without them.
    platform_truth: pl.DataFrame = field(default_factory=lambda: _empty(PLATFORM_TRUTH_SCHEMA))

    def frames(self) -> dict[str, pl.DataFrame]:
        return {
            "transactions": self.transactions,
            "signups": self.signups,
            "labels": self.labels,
            "platform_events": self.platform_events,
            "tx_truth": self.tx_truth,
            "user_truth": self.user_truth,
            "rings_truth": self.rings_truth,
            "merchant_truth": self.merchant_truth,
            "platform_truth": self.platform_truth,
        }


# --------------------------------------------------------------------------------------
# Simulation


def _group_counts(cfg: WorldConfig, expected_legit: float) -> dict[int, int]:
    expected = {
        scenario: cfg.fraud_scale * rate * expected_legit / 100_000
        for scenario, rate in _per_100k(cfg).items()
    }
    counts = {
        s: 0 if x <= 0 else max(cfg.min_groups_per_scenario, round(x)) for s, x in expected.items()
    }
    if not any(counts.values()) and any(x > 0 for x in expected.values()):
        counts[max(expected, key=lambda s: expected[s])] = 1  # abuse on: at least one group
    return counts


def _per_100k(cfg: WorldConfig) -> dict[int, float]:
    return {
        BRUSHING: cfg.brushing_per_100k,
        REFERRAL_FARM: cfg.referral_farm_per_100k,
        COLLUSION_RING: cfg.collusion_ring_per_100k,
        CASH_OUT: cfg.cash_out_per_100k,
        PYRAMID: cfg.pyramid_per_100k,
    }


def simulate_world(config: WorldConfig) -> World:
    """Generate the world described by `config`; the same config gives identical frames."""
    cfg = config
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(8)]
    start, end = cfg.start_ts_ms, cfg.end_ts_ms
    b = Builder.create(rngs[0], start, end, cfg.n_users, cfg.history_start_ms)
    _legit.build_merchants(rngs[1], b, cfg)
    pop = _legit.build_population(rngs[2], b, cfg)
    a, c = _legit.expected_legit(pop, start, end, cfg.refund_rate)
    scale = 1.0
    if cfg.target_transactions is not None:
        mean_tx = _abuse.mean_tx_per_group(cfg)
        fraud_ratio = cfg.fraud_scale * sum(
            rate * mean_tx[s] / 100_000 for s, rate in _per_100k(cfg).items()
        )
        scale = max(0.01, (cfg.target_transactions / (1.0 + fraud_ratio) - c) / a)
    groups = _group_counts(cfg, a * scale + c)
    _abuse.inject(rngs[3], b, groups, cfg)
    # The commission, coupon and points abuse, then its legit look-alikes: their own
    # stream, so the rest draws as before.
    flows_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(10)[9])
    expected = a * scale + c
    flows = _abuse_economics.inject(
        flows_rng,
        b,
        _abuse_economics.group_counts(cfg, expected),
        cfg,
        activity=cfg.payments_per_user_day * scale,
    )
    _flow_lookalikes.inject(flows_rng, b, _flow_lookalikes.group_counts(cfg, expected), cfg, flows)
    _legit.legit_transactions(rngs[4], b, pop, cfg, scale)
    world = _assemble(rngs[5], rngs[6], b, pop, cfg)
    if not cfg.economics:
        return world
    # Its own stream (the 9th child): the contract frames stay what they were without it.
    economics_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(9)[8])
    # The users an abuse group or a look-alike binds (its own `binding` events), by their
    # row in the world's signups (numbered in signup order): the economics binds them no
    # second time.
    planned = flows.frame()
    signup_row = np.empty(b.users.n, dtype=np.int64)
    signup_row[np.argsort(b.users.col("signup_ts"), kind="stable")] = np.arange(b.users.n)
    bound = planned["user"][(planned["kind"] == BINDING) & (planned["user"] >= 0)]
    events, merchants = _economics.simulate_economics(
        economics_rng, cfg, world, PLATFORM_EVENT_SCHEMA, bound_by_groups=signup_row[bound]
    )
    merchant_truth = world.merchant_truth.drop("region", "settlement").join(
        merchants, on="merchant_id", how="left", maintain_order="left"
    )
    world = replace(world, merchant_truth=_cast(merchant_truth, MERCHANT_TRUTH_SCHEMA))
    made, truth = _abuse_economics.platform_events(
        flows,
        b,
        world,
        cfg=cfg,
        schema=PLATFORM_EVENT_SCHEMA,
        first_coupon=events.filter(pl.col("kind") == COUPON_ISSUE).height,
    )
    events, platform_truth = _numbered(events, made, truth, cfg.id_prefix, world.user_truth)
    return replace(world, platform_events=events, platform_truth=platform_truth)


def _numbered(
    economics: pl.DataFrame,
    groups: pl.DataFrame,
    truth: pl.DataFrame,
    prefix: str,
    user_truth: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The economics' events and the groups' in one ts order (the economics' first at equal
    ts), numbered `pe<n>` in that order (so an id says nothing of what made the event), and
    their truth row for row: the economics' events are legit, of no group, but for the
    points requests of an abusive account (`user_truth`'s role an abuse scenario): a ring
    member's vouchers and gifts spend the points its scheme earned, so they are fraud of
    its scenario (the detector withholding them, or the rebates behind them, is no
    friction of a legitimate user)."""
    role = economics.select("user_id").join(
        user_truth.select("user_id", "role"), on="user_id", how="left", maintain_order="left"
    )["role"]
    abusive = role.is_in(list(ABUSE_SCENARIOS)).fill_null(False) & economics["kind"].is_in(
        list(POINTS_REQUESTS)
    )
    legit = economics.with_columns(
        abusive.alias("is_fraud"),
        pl.when(abusive).then(role).otherwise(pl.lit("")).alias("scenario"),
        pl.lit("").alias("group"),
    )
    if groups.is_empty():  # numbered already (the default world's millions of events)
        return economics, legit.select(list(PLATFORM_TRUTH_SCHEMA))
    both = pl.concat([legit, pl.concat([groups, truth], how="horizontal")]).sort(
        "ts", maintain_order=True
    )
    both = both.with_columns(
        pl.concat_str([pl.lit(prefix + "pe"), pl.int_range(pl.len()).cast(pl.String)]).alias(
            "event_id"
        )
    )
    return both.select(list(PLATFORM_EVENT_SCHEMA)), both.select(list(PLATFORM_TRUTH_SCHEMA))


def _perm(rng: np.random.Generator, n: int) -> np.ndarray:
    """Public number of each internal index (so ids carry no hint of how they were made)."""
    return rng.permutation(n).astype(np.int64)


def _mapped(numbers: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.where(idx >= 0, numbers[np.maximum(idx, 0)], -1)


def _id(col: str, prefix: str) -> pl.Expr:
    c = pl.col(col)
    return pl.when(c >= 0).then(pl.concat_str([pl.lit(prefix), c.cast(pl.String)]))


def _ip(col: str) -> pl.Expr:
    c = pl.col(col)
    octets = [((c // (1 << s)) % 256).cast(pl.String) for s in (24, 16, 8, 0)]
    return pl.when(c >= 0).then(pl.concat_str(octets, separator="."))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _phone_hashes(phone: np.ndarray, salt: int) -> pl.Series:
    """16 hex digits per phone (null where phone < 0), vectorised."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.maximum(phone, 0).astype(np.uint64) ^ np.uint64(salt))
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((h[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    text = np.ascontiguousarray(chars).view("S16").ravel().astype("U16")
    series = pl.Series("phone_hash", text, dtype=pl.String)
    return series.scatter(np.flatnonzero(phone < 0), None) if (phone < 0).any() else series


def _lookup(names: list[str], codes: np.ndarray) -> pl.Series:
    """names[code], null where code < 0."""
    idx = pl.DataFrame({"c": codes.astype(np.int64)}).select(
        pl.when(pl.col("c") >= 0).then(pl.col("c"))
    )
    return pl.Series(names, dtype=pl.String).gather(idx.to_series())


def _names(codes: np.ndarray, names: tuple[str, ...]) -> pl.Series:
    return pl.Series(codes, dtype=pl.Int64).replace_strict(
        list(range(len(names))), list(names), return_dtype=pl.String
    )


def _assemble(
    id_rng: np.random.Generator,
    label_rng: np.random.Generator,
    b: Builder,
    pop: _legit.Population,
    cfg: WorldConfig,
) -> World:
    p = cfg.id_prefix
    start, end = b.start, b.end
    tx = {name: b.tx.col(name) for name in b.tx.names}
    users = {name: b.users.col(name) for name in b.users.names}
    merchants = {name: b.merchants.col(name) for name in b.merchants.names}
    n_tx, n_users, n_merch = b.tx.n, b.users.n, b.merchants.n

    # Public numbering: tx and users in time order (like database sequences); merchants,
    # devices and cards shuffled.
    order = np.argsort(tx["ts"], kind="stable")
    rank = np.empty(n_tx, dtype=np.int64)
    rank[order] = np.arange(n_tx)
    s = {name: col[order] for name, col in tx.items()}
    s["ref"] = _mapped(rank, s["ref"])
    u_order = np.argsort(users["signup_ts"], kind="stable")
    u_num = np.empty(n_users, dtype=np.int64)
    u_num[u_order] = np.arange(n_users)
    m_num = _perm(id_rng, n_merch)
    b.merchant_numbers = m_num  # the flows' platform events name merchants after this
    d_num = _perm(id_rng, b.n_devices)
    c_num = _perm(id_rng, b.n_cards)

    numeric = pl.DataFrame(
        {
            "n": np.arange(n_tx, dtype=np.int64),
            "ts": s["ts"],
            "user": u_num[s["user"]],
            "merchant": m_num[s["merchant"]],
            "amount_cents": s["amount"],
            "rate_pct": merchants["rate_pct"][s["merchant"]].astype(np.int64),
            "refund": s["refund"].astype(bool),
            "ref": s["ref"],
            "device": _mapped(d_num, s["device"]),
            "ip": s["ip"],
            "card": _mapped(c_num, s["card"]),
            "category": _names(merchants["category"][s["merchant"]].astype(np.int64), CATEGORIES),
        }
    )
    transactions = numeric.select(
        _id("n", p + "t").alias("tx_id"),
        pl.col("ts"),
        _id("user", p + "u").alias("user_id"),
        _id("merchant", p + "m").alias("merchant_id"),
        pl.col("amount_cents"),
        (pl.col("rate_pct") / 100).alias("rebate_rate"),
        pl.when(pl.col("refund")).then(pl.lit("refund")).otherwise(pl.lit("payment")).alias("kind"),
        _id("ref", p + "t").alias("ref_tx_id"),
        _id("device", p + "d").alias("device_id"),
        _ip("ip"),
        _id("card", p + "c").alias("card_id"),
        pl.col("category").alias("merchant_category"),
    )

    ring_ids = [f"{p}ring{r.index}" for r in b.rings]
    group_code = np.where(
        s["scenario"] > 0, s["ring"], np.where(s["look"] >= 0, len(ring_ids) + s["look"], -1)
    )
    tx_truth = pl.DataFrame(
        {
            "tx_id": transactions["tx_id"],
            "is_fraud": s["scenario"] > 0,
            "scenario": _names(s["scenario"], SCENARIOS),
            "group": _lookup(ring_ids + list(LOOKALIKES), group_code),
        }
    )

    # Signups, in signup order.
    salt = zlib.crc32(f"{cfg.seed}:{p}".encode()) * 2_654_435_761 % (1 << 63)
    su = {name: col[u_order] for name, col in users.items()}
    signups = pl.DataFrame(
        {
            "user": np.arange(n_users, dtype=np.int64),
            "ts": su["signup_ts"],
            "referrer": _mapped(u_num, su["referrer"]),
            "device": _mapped(d_num, su["device"]),
            "ip": su["ip"],
        }
    ).select(
        _id("user", p + "u").alias("user_id"),
        pl.col("ts"),
        _id("referrer", p + "u").alias("referrer_id"),
        _id("device", p + "d").alias("device_id"),
        _ip("ip"),
        _phone_hashes(su["phone"], salt),
    )

    # Roles: abuse scenario, else the user's look-alike, else tx-level look-alikes in order.
    role = users["look"].copy()
    legit_tx = s["scenario"] == 0
    at_ring_merchant = merchants["scenario"][s["merchant"]] > 0
    for code, their_tx in (
        (LUNCH_RUSH, s["look"] == LUNCH_RUSH),
        (QUICK_REFUND, s["look"] == QUICK_REFUND),
        (ORDINARY_REFUND, s["refund"]),
        (BIG_PURCHASE, s["look"] == BIG_PURCHASE),
        (RING_MERCHANT_CUSTOMER, at_ring_merchant),
        (NAT_POOL, s["look"] == NAT_POOL),
    ):
        no_role = role == NO_LOOK
        members = np.unique(s["user"][legit_tx & their_tx])
        role[members[no_role[members]]] = code
    role_code = np.where(
        users["scenario"] > 0, users["scenario"], np.where(role >= 0, len(SCENARIOS) + role, 0)
    )
    ring_of = users["ring"]
    user_truth = pl.DataFrame(
        {
            "user_id": signups["user_id"],
            "role": _names(role_code[u_order], SCENARIOS + LOOKALIKES),
            "ring_id": _lookup(ring_ids, ring_of[u_order]),
        }
    )

    rings_truth = _rings_truth(b, s, users, u_num, m_num, d_num, ring_ids, p, start)

    m_order = np.argsort(m_num, kind="stable")
    merchant_truth = pl.DataFrame(
        {
            "m": m_num[m_order],
            "category": _names(merchants["category"][m_order].astype(np.int64), CATEGORIES),
            "rate_pct": merchants["rate_pct"][m_order].astype(np.int64),
            "role": _names(merchants["scenario"][m_order].astype(np.int64), SCENARIOS),
            "ring": merchants["ring"][m_order].astype(np.int64),
        }
    ).select(
        _id("m", p + "m").alias("merchant_id"),
        pl.col("category"),
        (pl.col("rate_pct") / 100).alias("rebate_rate"),
        pl.col("role"),
        pl.when(pl.col("ring") >= 0)
        .then(pl.concat_str([pl.lit(p + "ring"), pl.col("ring").cast(pl.String)]))
        .alias("ring_id"),
        pl.lit(None, dtype=pl.String).alias("region"),
        pl.lit(None, dtype=pl.String).alias("settlement"),
    )

    lab = make_labels(label_rng, cfg, end, s["ts"], s["user"], s["scenario"], s["look"], s["card"])
    labels = pl.DataFrame(
        {
            "ts": lab.ts,
            "tx": lab.tx,
            "user": u_num[lab.user],
            "label": np.where(lab.label == 0, "fraud", "legit"),
            "source": np.array(SOURCES)[lab.source] if len(lab.source) else np.array([], str),
        },
        schema_overrides={"label": pl.String, "source": pl.String},
    ).select(
        pl.col("ts"),
        _id("tx", p + "t").alias("tx_id"),
        _id("user", p + "u").alias("user_id"),
        pl.col("label"),
        pl.col("source"),
    )
    return World(
        transactions=_cast(transactions, TRANSACTION_SCHEMA),
        signups=_cast(signups, SIGNUP_SCHEMA),
        labels=_cast(labels, LABEL_SCHEMA),
        tx_truth=_cast(tx_truth, TX_TRUTH_SCHEMA),
        user_truth=_cast(user_truth, USER_TRUTH_SCHEMA),
        rings_truth=_cast(rings_truth, RINGS_TRUTH_SCHEMA),
        merchant_truth=_cast(merchant_truth, MERCHANT_TRUTH_SCHEMA),
    )


def _cast(df: pl.DataFrame, schema: dict[str, Any]) -> pl.DataFrame:
    """`schema`'s columns; one a file written before it existed reads as nulls."""
    return df.select(
        [
            pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )


def _rings_truth(
    b: Builder,
    s: dict[str, np.ndarray],
    users: dict[str, np.ndarray],
    u_num: np.ndarray,
    m_num: np.ndarray,
    d_num: np.ndarray,
    ring_ids: list[str],
    p: str,
    start: int,
) -> pl.DataFrame:
    fraud = np.flatnonzero(s["scenario"] > 0)
    f_ring = s["ring"][fraud]
    by_ring = np.argsort(f_ring, kind="stable")
    bounds = np.searchsorted(f_ring[by_ring], np.arange(len(b.rings) + 1))
    first_tx = np.full(len(u_num), np.iinfo(np.int64).max)
    np.minimum.at(first_tx, s["user"][fraud], s["ts"][fraud])
    rows: dict[str, list[Any]] = {name: [] for name in RINGS_TRUTH_SCHEMA}
    for ring in b.rings:
        idx = fraud[by_ring[bounds[ring.index] : bounds[ring.index + 1]]]
        members = ring.users
        merch = np.union1d(ring.merchants, s["merchant"][idx])
        devs = np.union1d(s["device"][idx], users["device"][members])
        devs = devs[devs >= 0]
        signup = users["signup_ts"][members]
        joined = np.where(signup >= start, signup, first_tx[members])
        joined = np.sort(joined[joined < np.iinfo(np.int64).max])
        rows["ring_id"].append(ring_ids[ring.index])
        rows["kind"].append(SCENARIOS[ring.scenario])
        rows["users"].append(sorted(f"{p}u{n}" for n in u_num[members]))
        rows["merchants"].append(sorted(f"{p}m{n}" for n in m_num[merch]))
        rows["devices"].append(sorted(f"{p}d{n}" for n in d_num[devs]))
        rows["fifth_member_joined_ts"].append(int(joined[4]) if len(joined) >= 5 else None)
    return pl.DataFrame(rows, schema=RINGS_TRUTH_SCHEMA)


# --------------------------------------------------------------------------------------
# Files


def _ext(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _write(df: pl.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        df.write_parquet(path)
    elif fmt == "csv":
        lists = [n for n, t in df.schema.items() if isinstance(t, pl.List)]
        df.with_columns(pl.col(n).list.join(LIST_SEPARATOR) for n in lists).write_csv(path)
    else:
        df.write_ndjson(path)


def _read(path: Path, fmt: str, schema: dict[str, Any]) -> pl.DataFrame:
    if fmt == "parquet":
        df = pl.read_parquet(path)
    elif fmt == "jsonl":
        df = pl.read_ndjson(path, schema=schema)
    else:
        flat = {n: (pl.String if isinstance(t, pl.List) else t) for n, t in schema.items()}
        df = pl.read_csv(path, schema=flat)
        lists = [n for n, t in schema.items() if isinstance(t, pl.List)]
        df = df.with_columns(
            pl.when(pl.col(n).is_null() | (pl.col(n) == ""))
            .then(pl.lit([], dtype=pl.List(pl.String)))
            .otherwise(pl.col(n).str.split(LIST_SEPARATOR))
            .alias(n)
            for n in lists
        )
    return _cast(df, schema)


def write_world(world: World, out_dir: Path, fmt: str = "parquet") -> dict[str, Path]:
    """Contract files into out_dir, ground truth into out_dir/truth/; returns name -> path.

    fmt is "parquet", "csv" or "jsonl". CSV has no list type: rings_truth's list columns are
    joined with "|" there (`read_world` splits them again).
    """
    ext = _ext(fmt)
    out_dir = Path(out_dir)
    truth_dir = out_dir / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, df in world.frames().items():
        path = (out_dir if name in CONTRACT_SCHEMAS else truth_dir) / f"{name}.{ext}"
        _write(df, path, fmt)
        paths[name] = path
    return paths


def read_world(out_dir: Path, fmt: str = "parquet") -> World:
    """Read back what `write_world` wrote, with the exact schemas."""
    ext = _ext(fmt)
    out_dir = Path(out_dir)
    frames: dict[str, pl.DataFrame] = {}
    for name, schema in {**CONTRACT_SCHEMAS, **TRUTH_SCHEMAS}.items():
        path = (out_dir if name in CONTRACT_SCHEMAS else out_dir / "truth") / f"{name}.{ext}"
        if name in OPTIONAL_FRAMES and not path.exists():  # a world written before them
            frames[name] = _empty(schema)
            continue
        frames[name] = _read(path, fmt, schema)
    return World(**frames)


# --------------------------------------------------------------------------------------
# Streaming

#: (frame, topic) in their tie order at equal ts: an account exists before anything of it; a
#: binding or settlement stamped t has happened by a payment at t (contract/order.py puts
#: labels between signups and platform events; here labels stay last, as they always were).
TOPIC_ORDER = (
    ("signups", SIGNUPS),
    ("platform_events", PLATFORM_EVENTS),
    ("transactions", TRANSACTIONS),
    ("labels", LABELS),
)


def _key(frame: str, row: dict[str, Any]) -> str:
    """The message key: the user (co-partitioned with the user's payments), for a label its
    tx_id first, for a platform event without a user its merchant, else its own id."""
    if frame == "labels":
        key = row["tx_id"] if row["tx_id"] is not None else row["user_id"]
    elif frame == "platform_events":
        key = row["user_id"] or row["merchant_id"] or row["event_id"]
    else:
        key = row["user_id"]
    return str(key)


def _topic_events(
    world: World, frame: str, topic: str
) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    df: pl.DataFrame = getattr(world, frame)
    for row in df.iter_rows(named=True):
        yield row["ts"], topic, _key(frame, row), row


def event_stream(world: World) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every contract event in event-time order as (topic, key, payload).

    key is the user_id for transactions and signups, the tx_id (or the user_id when tx_id is
    null) for labels, and the user_id, else merchant_id, else event_id for platform events;
    payload has exactly the contract columns, None for nulls. At equal ts signups come first,
    then platform events, then transactions, then labels; within a topic, frame order.
    """
    streams = [_topic_events(world, frame, topic) for frame, topic in TOPIC_ORDER]
    # heapq.merge breaks key ties by iterable position: the tie order above.
    for _, topic, key, payload in heapq.merge(*streams, key=lambda e: e[0]):
        yield topic, key, payload
