"""A card-fraud world of the Fraud Detection Handbook's kind, RebateGuard against its baseline.

The world is reimplemented from the algorithm documented in Le Borgne, Siblini, Lebichot,
Bontempi, "Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook"
(chapter 3, "Transaction data simulator"), with numpy's seeded generator instead of the
notebook's global seeds:

- customers: x, y uniform on the grid; mean amount uniform(5, 100), std = mean / 2; mean
  transactions per day uniform(0, 4);
- terminals: x, y uniform on the grid; a customer pays only at terminals within radius r = 5;
- each day each customer makes Poisson(mean per day) transactions, at a time of day normal
  around noon (std 20,000 s; times outside the day are dropped), amount normal(mean, std)
  (a negative draw is redrawn uniform(0, 2 x mean)), at a terminal drawn uniformly from theirs;
- fraud: (1) every amount > 220 is fraud; (2) each day some terminals are compromised for the
  next 28 days: all their transactions are fraud; (3) each day some customers are compromised
  for the next 14 days: a third of their transactions in the window get amount x 5 and are
  fraud.

Scale. The handbook's world is 5,000 customers and 10,000 terminals on a 100 x 100 grid,
183 days, 2 terminals and 3 customers compromised a day (1.75M transactions, ~0.8% fraud).
Here the grid side is scaled with sqrt(customers / 5,000), so each customer sees as many
terminals within r = 5, and each terminal as many customers, as in the handbook; the
compromised terminals and customers a day are scaled with the numbers of terminals and
customers (2 x terminals / 10,000, 3 x customers / 5,000, spread evenly over the days), so
the share of compromised cards and terminals, and the fraud rate, are the handbook's.

Adapter to RebateGuard's event contract: customers are users (signed up the day before the
first day), terminals are merchants (one category "card", rebate rate 5%), amounts in integer
cents, the customer's card as `card_id`, no device or IP. Labels: as the handbook assumes,
every transaction's label is known 7 days after it (a tx-level label, source "review", ts =
transaction ts + 7 days; those after the world's end are dropped).

Baseline: the handbook's features (TX_AMOUNT, TX_DURING_WEEKEND, TX_DURING_NIGHT, customer
count and mean amount over 1/7/30 days, terminal count and fraud rate over 1/7/30 days after a
7-day delay) and its logistic regression (scikit-learn, standardised features), retrained for
each test week on the 7 days ending 7 days before it (delta_train = delta_delay = delta_test =
7); the test week drops the customers whose fraud is already known (the handbook's
get_train_test_set). RebateGuard: `replay` of the whole world with the shipped default
policy; each transaction scored by its decision's `risk` (what `evaluate` ranks by).

Metrics per test week and over all test weeks: ROC AUC, average precision and card precision
in the top k per day (the handbook's: per day, each customer's highest score, the k highest
customers, the share of them compromised; cards found on earlier days of the week are left
out; the mean over the test days), for k = 100 and for k = 100 scaled to the world's size
(the handbook's 100 of 5,000 customers: 20 of 1,000). AUC and AP of "all test weeks" pool
the weeks' transactions; the mean of the weekly figures is printed too (a score whose scale
drifts from week to week ranks worse pooled than week by week). `--rg-features` adds the same
weekly logistic regression on RebateGuard's own features (`rebate-guard features`): features
or learner?

    PYTHONPATH=. .venv/bin/python benchmarks/card_world.py --out /tmp/card-world --rg-features
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rebate_guard.contract.time import DAY_MS  # noqa: E402

DAY_S = 86_400
LABEL_DELAY_DAYS = 7
START = dt.datetime(2018, 4, 1, tzinfo=dt.UTC)
#: The handbook's test week (2018-08-08..14), as a day of the world.
HANDBOOK_TEST_DAY = (dt.datetime(2018, 8, 8, tzinfo=dt.UTC) - START).days
#: The handbook's world, which the scaled one keeps the densities and fraud shares of.
HANDBOOK_CUSTOMERS, HANDBOOK_TERMINALS, HANDBOOK_GRID = 5_000, 10_000, 100.0
AMOUNT_FRAUD = 220.0
TERMINAL_DAYS, CUSTOMER_DAYS = 28, 14
REBATE_RATE = 0.05
WINDOWS = (1, 7, 30)
SCENARIOS = {1: "amount_over_220", 2: "compromised_terminal", 3: "compromised_card"}
FEATURES = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    *(f"CUSTOMER_ID_{what}_{w}DAY_WINDOW" for w in WINDOWS for what in ("NB_TX", "AVG_AMOUNT")),
    *(f"TERMINAL_ID_{what}_{w}DAY_WINDOW" for w in WINDOWS for what in ("NB_TX", "RISK")),
)
TOP_K = 100


@dataclass(frozen=True)
class CardWorldConfig:
    customers: int = 1_000
    terminals: int = 2_000
    days: int = 150
    seed: int = 0
    radius: float = 5.0
    #: Compromised a day; None: the handbook's share (2 per 10,000 terminals, 3 per 5,000
    #: customers).
    terminals_per_day: float | None = None
    customers_per_day: float | None = None

    @property
    def grid(self) -> float:
        return HANDBOOK_GRID * float(np.sqrt(self.customers / HANDBOOK_CUSTOMERS))

    @property
    def terminal_rate(self) -> float:
        if self.terminals_per_day is not None:
            return self.terminals_per_day
        return 2.0 * self.terminals / HANDBOOK_TERMINALS

    @property
    def customer_rate(self) -> float:
        if self.customers_per_day is not None:
            return self.customers_per_day
        return 3.0 * self.customers / HANDBOOK_CUSTOMERS


def per_day(rate: float, day: int) -> int:
    """How many are compromised on `day` at `rate` a day, spread evenly (2.0 -> 2 every day,
    0.4 -> one every 2.5 days)."""
    return int(np.floor(rate * (day + 1)) - np.floor(rate * day))


def compromised(config: CardWorldConfig, what: str, days: int) -> list[np.ndarray]:
    """The terminals (`what` "terminals") or customers ("customers") compromised on each of
    the first `days` days (the handbook compromises from day 0 to the day before the last),
    drawn from their own seeded stream."""
    stream, size, rate = {
        "terminals": (1, config.terminals, config.terminal_rate),
        "customers": (2, config.customers, config.customer_rate),
    }[what]
    rng = np.random.default_rng([config.seed, stream])
    return [rng.choice(size, per_day(rate, d), replace=False) for d in range(days)]


def generate(config: CardWorldConfig) -> pl.DataFrame:
    """The labelled transactions, sorted by time: tx (0..n-1), seconds (since the first day's
    midnight), day, customer, terminal, amount, fraud, scenario (0 legit, else 1-3 as above).
    Deterministic in the config."""
    rng = np.random.default_rng(config.seed)
    n_c, n_t, grid = config.customers, config.terminals, config.grid
    cx, cy = rng.uniform(0, grid, n_c), rng.uniform(0, grid, n_c)
    mean_amount = rng.uniform(5, 100, n_c)
    std_amount = mean_amount / 2
    mean_tx = rng.uniform(0, 4, n_c)
    tx_, ty = rng.uniform(0, grid, n_t), rng.uniform(0, grid, n_t)
    near = np.hypot(cx[:, None] - tx_[None, :], cy[:, None] - ty[None, :]) < config.radius
    available = [np.flatnonzero(row) for row in near]
    counts = rng.poisson(np.repeat(mean_tx[:, None], config.days, axis=1))
    counts[np.array([len(a) == 0 for a in available])] = 0  # nowhere to pay
    customer = np.repeat(np.repeat(np.arange(n_c), config.days), counts.ravel())
    day = np.repeat(np.tile(np.arange(config.days), n_c), counts.ravel())
    n = len(customer)
    time_of_day = rng.normal(DAY_S / 2, 20_000, n).astype(np.int64)
    amount = rng.normal(mean_amount[customer], std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    amount = np.round(amount, 2)
    pick = rng.random(n)
    sizes = np.array([len(a) for a in available])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(available) if available else np.zeros(0, np.int64)
    terminal = flat[offsets[customer] + (pick * sizes[customer]).astype(np.int64)]
    keep = (time_of_day > 0) & (time_of_day < DAY_S)
    seconds = day * DAY_S + time_of_day
    order = np.argsort(seconds[keep], kind="stable")
    seconds, day = seconds[keep][order], day[keep][order]
    customer, terminal, amount = customer[keep][order], terminal[keep][order], amount[keep][order]
    n = len(seconds)

    scenario = np.where(amount > AMOUNT_FRAUD, 1, 0)
    last_day = int(day.max()) if n else 0
    for d, bad in enumerate(compromised(config, "terminals", last_day)):
        hit = (day >= d) & (day < d + TERMINAL_DAYS) & np.isin(terminal, bad)
        scenario[hit] = 2
    pick_rng = np.random.default_rng([config.seed, 3])
    for d, bad in enumerate(compromised(config, "customers", last_day)):
        pool = np.flatnonzero((day >= d) & (day < d + CUSTOMER_DAYS) & np.isin(customer, bad))
        chosen = pick_rng.choice(pool, len(pool) // 3, replace=False)
        amount[chosen] = np.round(amount[chosen] * 5, 2)
        scenario[chosen] = 3
    return pl.DataFrame(
        {
            "tx": np.arange(n),
            "seconds": seconds,
            "day": day,
            "customer": customer,
            "terminal": terminal,
            "amount": amount,
            "fraud": scenario > 0,
            "scenario": scenario,
        }
    )


def write_events(world: pl.DataFrame, out: Path) -> dict[str, Path]:
    """The world as RebateGuard contract files (see the module's docstring) and its truth."""
    (out / "truth").mkdir(parents=True, exist_ok=True)
    start_ms = int(START.timestamp() * 1000)
    end_ms = start_ms + (int(world["day"].to_numpy().max()) + 1) * DAY_MS
    tx = world.select(
        tx_id=pl.format("t{}", pl.col("tx").cast(pl.String).str.zfill(8)),
        ts=start_ms + pl.col("seconds") * 1000,
        user_id=pl.format("u{}", "customer"),
        merchant_id=pl.format("m{}", "terminal"),
        amount_cents=pl.max_horizontal((pl.col("amount") * 100).round().cast(pl.Int64), 1),
        rebate_rate=pl.lit(REBATE_RATE),
        kind=pl.lit("payment"),
        ref_tx_id=pl.lit(None, pl.String),
        device_id=pl.lit(None, pl.String),
        ip=pl.lit(None, pl.String),
        card_id=pl.format("c{}", "customer"),
        merchant_category=pl.lit("card"),
    )
    users = world["customer"].unique().sort()
    signups = pl.DataFrame(
        {
            "user_id": [f"u{c}" for c in users],
            "ts": [start_ms - DAY_MS + int(c) for c in users],
        }
    ).with_columns(
        referrer_id=pl.lit(None, pl.String),
        device_id=pl.lit(None, pl.String),
        ip=pl.lit(None, pl.String),
        phone_hash=pl.lit(None, pl.String),
    )
    labels = (
        tx.select(
            ts=pl.col("ts") + LABEL_DELAY_DAYS * DAY_MS,
            tx_id="tx_id",
            user_id=pl.lit(None, pl.String),
            label=pl.when(world["fraud"]).then(pl.lit("fraud")).otherwise(pl.lit("legit")),
            source=pl.lit("review"),
        )
        .filter(pl.col("ts") < end_ms)
        .sort("ts", "tx_id")
    )
    truth = tx.select("tx_id").with_columns(
        is_fraud=world["fraud"],
        scenario=world["scenario"].replace_strict(SCENARIOS, default="", return_dtype=pl.String),
        group=pl.lit(""),
    )
    paths = {
        "transactions": out / "transactions.parquet",
        "signups": out / "signups.parquet",
        "labels": out / "labels.parquet",
        "tx_truth": out / "truth" / "tx_truth.parquet",
    }
    for name, frame in (
        ("transactions", tx),
        ("signups", signups),
        ("labels", labels),
        ("tx_truth", truth),
    ):
        frame.write_parquet(paths[name])
    return paths


def handbook_features(world: pl.DataFrame) -> pl.DataFrame:
    """The handbook's baseline features per transaction (chapter 3, "Baseline feature
    transformation"): windows end at the transaction and include it; the terminal's risk over
    w days is its fraud share in (t - 7 - w days, t - 7 days]."""
    frame = world.with_columns(
        at=pl.lit(START.replace(tzinfo=None)) + pl.duration(seconds=pl.col("seconds")),
        one=pl.lit(1.0),
        f=pl.col("fraud").cast(pl.Float64),
    )
    weekday = (pl.col("day") + START.weekday()) % 7
    hour = (pl.col("seconds") % DAY_S) // 3600
    columns: list[pl.Expr] = [
        pl.col("amount").alias("TX_AMOUNT"),
        (weekday >= 5).cast(pl.Float64).alias("TX_DURING_WEEKEND"),
        (hour <= 6).cast(pl.Float64).alias("TX_DURING_NIGHT"),
    ]

    def rolling(column: str, days: int, over: str) -> pl.Expr:
        return pl.col(column).rolling_sum_by("at", f"{days}d").over(over)

    for w in WINDOWS:
        count, total = rolling("one", w, "customer"), rolling("amount", w, "customer")
        columns += [
            count.alias(f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"),
            (total / count).alias(f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"),
        ]
    d = LABEL_DELAY_DAYS
    for w in WINDOWS:
        count = rolling("one", d + w, "terminal") - rolling("one", d, "terminal")
        frauds = rolling("f", d + w, "terminal") - rolling("f", d, "terminal")
        columns += [
            count.alias(f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"),
            pl.when(count > 0)
            .then(frauds / count)
            .otherwise(0.0)
            .alias(f"TERMINAL_ID_RISK_{w}DAY_WINDOW"),
        ]
    return frame.select("tx", "day", "customer", "fraud", "scenario", *columns)


def handbook_test_set(frame: pl.DataFrame, test_day: int) -> pl.DataFrame:
    """The handbook's test week starting at `test_day` (delta_train = delta_delay = delta_test
    = 7): its transactions minus those of customers whose fraud is known by then (in the
    training week, or on a day of the delay period, one more each test day)."""
    train_start = test_day - 2 * LABEL_DELAY_DAYS
    known = set(
        frame.filter(
            pl.col("fraud") & (pl.col("day") >= train_start) & (pl.col("day") < test_day - 7)
        )["customer"].to_list()
    )
    days = []
    for i in range(7):
        delay_day = train_start + 7 + i - 1
        known |= set(
            frame.filter(pl.col("fraud") & (pl.col("day") == delay_day))["customer"].to_list()
        )
        today = frame.filter(pl.col("day") == test_day + i)
        days.append(today.filter(~pl.col("customer").is_in(list(known))))
    return pl.concat(days)


def card_precision_top_k(frame: pl.DataFrame, score: str, k: int = TOP_K) -> float:
    """The handbook's card precision top-k: per day, each customer's highest score and whether
    any of their transactions that day is fraud; the share of compromised among the k highest;
    cards found in an earlier day's top k are left out; the mean over the days."""
    found: set[int] = set()
    precisions = []
    for day in sorted(set(frame["day"].to_list())):
        cards = (
            frame.filter((pl.col("day") == day) & ~pl.col("customer").is_in(list(found)))
            .group_by("customer")
            .agg(pl.col(score).max(), pl.col("fraud").any())
            .sort([score, "customer"], descending=[True, False])
            .head(k)
        )
        hits = cards.filter(pl.col("fraud"))["customer"].to_list()
        precisions.append(len(hits) / k)
        found |= set(hits)
    return float(np.mean(precisions)) if precisions else float("nan")


def metrics(frame: pl.DataFrame, score: str, ks: tuple[int, ...] = (TOP_K,)) -> tuple[float, ...]:
    """ROC AUC, average precision and card precision top-k per day of `score`, for each k."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = frame["fraud"].to_numpy(), frame[score].to_numpy()
    cps = tuple(card_precision_top_k(frame, score, k) for k in ks)
    if y.all() or not y.any():
        return (float("nan"), float("nan"), *cps)
    return (float(roc_auc_score(y, s)), float(average_precision_score(y, s)), *cps)


def baseline_scores(
    features: pl.DataFrame, test_day: int, names: tuple[str, ...] = FEATURES, max_iter: int = 100
) -> pl.DataFrame:
    """The handbook's logistic regression (scikit-learn's defaults, standardised inputs)
    trained on `names` for the week at `test_day`, scoring its test set (column `lr`).
    Missing values (RebateGuard's features have some) are imputed by the training median,
    with an indicator."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_start = test_day - 2 * LABEL_DELAY_DAYS
    train = features.filter((pl.col("day") >= train_start) & (pl.col("day") < train_start + 7))
    test = handbook_test_set(features, test_day)
    model = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(random_state=0, max_iter=max_iter),
    )
    model.fit(train.select(names).to_numpy(), train["fraud"].to_numpy())
    lr = model.predict_proba(test.select(names).to_numpy())[:, 1]
    return test.select("tx", "day", "customer", "fraud", "scenario").with_columns(lr=pl.Series(lr))


def rg_features(paths: dict[str, Path], out: Path) -> pl.DataFrame:
    """RebateGuard's own feature vectors (`rebate-guard features`), cached in `out`."""
    from rebate_guard.tools.replay import compute_features

    if not out.exists():
        compute_features(paths["transactions"], out, paths["signups"], paths["labels"])
    frame = pl.read_parquet(out)
    return frame.select(
        pl.col("tx_id").str.slice(1).cast(pl.Int64).alias("tx"), pl.exclude("tx_id")
    )


def test_weeks(days: int) -> list[int]:
    """Test weeks' first days: the handbook's (2018-08-08) and every week before and after it
    with 30 days of history before its training week and inside the world."""
    first = HANDBOOK_TEST_DAY % 7
    while first < 14 + max(WINDOWS):
        first += 7
    return list(range(first, days - 6, 7))


def run_replay(paths: dict[str, Path], out: Path) -> pl.DataFrame:
    """RebateGuard's replay with the shipped default policy; decisions' risk by tx."""
    from features.engine import FeatureEngine
    from graph.layer import GraphLayer
    from rebate_guard.core.decider import Decider, Scorer
    from rebate_guard.core.policy import default_policy
    from rebate_guard.tools.replay import replay

    decisions = out / "decisions.parquet"
    if not decisions.exists():
        scorer = Scorer(
            features=FeatureEngine(), decider=Decider(policy=default_policy()), graph=GraphLayer()
        )
        replay(
            paths["transactions"],
            out,
            signups=paths["signups"],
            labels=paths["labels"],
            scorer=scorer,
        )
    return pl.read_parquet(decisions, columns=["tx_id", "risk", "trust_weight"]).select(
        tx=pl.col("tx_id").str.slice(1).cast(pl.Int64),
        rg="risk",
        rg_weight=1.0 - pl.col("trust_weight"),
    )


def fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="world and replay directory")
    parser.add_argument("--customers", type=int, default=CardWorldConfig.customers)
    parser.add_argument("--terminals", type=int, default=CardWorldConfig.terminals)
    parser.add_argument("--days", type=int, default=CardWorldConfig.days)
    parser.add_argument("--seed", type=int, default=CardWorldConfig.seed)
    parser.add_argument(
        "--rg-features",
        action="store_true",
        help="also the same weekly logistic regression on RebateGuard's own features "
        "(`rebate-guard features`, as long again as the replay): features or learner?",
    )
    args = parser.parse_args(argv)
    config = CardWorldConfig(args.customers, args.terminals, args.days, args.seed)
    started = time.perf_counter()
    world = generate(config)
    paths = write_events(world, args.out / "world")
    stamp = args.out / "replay" / "world.json"  # replay outputs are reused for the same world
    if not stamp.exists() or json.loads(stamp.read_text()) != asdict(config):
        shutil.rmtree(args.out / "replay", ignore_errors=True)
        stamp.parent.mkdir(parents=True)
        stamp.write_text(json.dumps(asdict(config)))
    by_scenario = ", ".join(
        f"{SCENARIOS.get(s, 'legit')} {n:,}"
        for s, n in world.group_by("scenario").len().sort("scenario").iter_rows()
    )
    print(
        f"world: {config.customers:,} customers, {config.terminals:,} terminals, "
        f"{config.days} days from {START.date()}, seed {config.seed}, grid "
        f"{config.grid:.1f}, {config.terminal_rate:g} terminals and {config.customer_rate:g} "
        f"customers compromised a day: {world.height:,} transactions, "
        f"{world['fraud'].to_numpy().mean():.2%} fraud "
        f"({by_scenario})"
        f"; {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    rg = run_replay(paths, args.out / "replay")
    print(f"replay done: {time.perf_counter() - started:.0f} s", flush=True)
    features = handbook_features(world)
    # The handbook's k = 100 cards a day among 5,000 customers; the same share of this world's.
    ks = tuple(sorted({round(TOP_K * config.customers / HANDBOOK_CUSTOMERS), TOP_K}))
    cp_names = [f"{who} CP@{k}" for k in ks for who in ("LR", "RG")]
    header = (
        f"| test week | tx | fraud | LR AUC | RG AUC | LR AP | RG AP | {' | '.join(cp_names)} |"
    )
    print(f"\n{header}\n|{'---|' * (header.count(' | ') + 1)}")
    weeks, per_week = [], []
    for day in test_weeks(config.days):
        week = baseline_scores(features, day).join(rg, on="tx")
        lr, rgm = metrics(week, "lr", ks), metrics(week, "rg", ks)
        weeks.append(week)
        per_week.append(lr + rgm)
        mark = " (handbook's)" if day == HANDBOOK_TEST_DAY else ""
        print(_row(f"{_week_name(day)}{mark}", week, lr, rgm))
    every = pl.concat(weeks)
    lr, rgm = metrics(every, "lr", ()), metrics(every, "rg", ())
    means = np.mean(per_week, axis=0)
    half = len(means) // 2
    # Card precision is a mean over days; AUC and AP are over the pooled test weeks.
    print(
        _row("**all test weeks**", every, lr + tuple(means[2:half]), rgm + tuple(means[half + 2 :]))
    )
    print(
        f"\nMean of the weekly figures: AUC LR {fmt(means[0])}, RG {fmt(means[half])}; "
        f"AP LR {fmt(means[1])}, RG {fmt(means[half + 1])}"
    )
    print(
        "\nAll test weeks, AP of each scenario's fraud against all legit transactions; and "
        "RebateGuard ranked by 1 - trust_weight instead of risk:"
    )
    legit = every.filter(~pl.col("fraud"))
    for scenario, name in SCENARIOS.items():
        mine = pl.concat([every.filter(pl.col("scenario") == scenario), legit])
        print(
            f"  {name}: {int(mine['fraud'].sum()):,} fraud, AP LR {fmt(metrics(mine, 'lr')[1])}"
            f", RG {fmt(metrics(mine, 'rg')[1])}"
        )
    weight = metrics(every, "rg_weight")
    print(f"  RG by 1 - trust_weight: AUC {fmt(weight[0])}, AP {fmt(weight[1])}")
    print("\nRebateGuard's AP per week of the world (all transactions, labels from day 7 on):")
    everything = world.select("tx", "day", "customer", "fraud").join(rg, on="tx")
    weekly = []
    for n in range(config.days // 7):
        of_week = everything.filter(pl.col("day") // 7 == n)
        weekly.append(fmt(metrics(of_week, "rg")[1]) if of_week["fraud"].any() else "n/a")
    print(" ".join(f"w{i}:{ap}" for i, ap in enumerate(weekly)))
    if args.rg_features:
        theirs = rg_features(paths, args.out / "replay" / "features.parquet")
        names = tuple(c for c in theirs.columns if c != "tx")
        frame = features.select("tx", "day", "customer", "fraud", "scenario").join(theirs, on="tx")
        scored = [
            baseline_scores(frame, day, names, max_iter=1000).join(rg, on="tx")
            for day in test_weeks(config.days)
        ]
        pooled = metrics(pl.concat(scored), "lr", ())
        weekly_lr = np.mean([metrics(one, "lr", ks) for one in scored], axis=0)
        cps = ", ".join(f"CP@{k} {fmt(v)}" for k, v in zip(ks, weekly_lr[2:], strict=True))
        print(
            f"\nThe weekly LR on RebateGuard's {len(names)} features, all test weeks: AUC "
            f"{fmt(pooled[0])}, AP {fmt(pooled[1])}, {cps}; mean weekly AP {fmt(weekly_lr[1])}"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _row(name: str, frame: pl.DataFrame, lr: tuple[Any, ...], rg: tuple[Any, ...]) -> str:
    cells = " | ".join(f"{fmt(a)} | {fmt(b)}" for a, b in zip(lr, rg, strict=True))
    return f"| {name} | {frame.height:,} | {int(frame['fraud'].sum()):,} | {cells} |"


def _week_name(day: int) -> str:
    first = (START + dt.timedelta(days=day)).date()
    return f"{first.isoformat()}..{(first + dt.timedelta(days=6)).strftime('%m-%d')}"


if __name__ == "__main__":
    main()
