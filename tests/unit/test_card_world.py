"""The card world of benchmarks/card_world.py keeps the handbook's documented rules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest

from rebate_guard.contract.time import DAY_MS

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("card_world", ROOT / "benchmarks/card_world.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("card_world", module)
    spec.loader.exec_module(module)
    return module


cw = _load()
SMALL = cw.CardWorldConfig(customers=300, terminals=600, days=60, seed=3)


@pytest.fixture(scope="module")
def world() -> pl.DataFrame:
    return cw.generate(SMALL)


def test_deterministic_by_seed(world: pl.DataFrame) -> None:
    assert cw.generate(SMALL).equals(world)
    other = cw.generate(cw.CardWorldConfig(customers=300, terminals=600, days=60, seed=4))
    assert not other.equals(world)


def test_every_amount_over_220_is_fraud_and_fraud_share_is_the_handbooks(
    world: pl.DataFrame,
) -> None:
    assert world.filter(pl.col("amount") > 220)["fraud"].all()
    assert world.filter(pl.col("scenario") == 1)["amount"].min() > 220  # type: ignore[operator]
    assert set(world["scenario"].unique().to_list()) == {0, 1, 2, 3}
    # The handbook's world has ~0.8% fraud; the scaled compromise rates keep it.
    assert 0.004 < world["fraud"].mean() < 0.016  # type: ignore[operator]
    assert (world["seconds"] // cw.DAY_S == world["day"]).all()
    assert world["seconds"].is_sorted()


def _schedule(world: pl.DataFrame, what: str, column: str) -> pl.DataFrame:
    """(entity, day compromised) pairs of the world's schedule."""
    days = cw.compromised(SMALL, what, int(world["day"].max()))  # type: ignore[arg-type]
    return pl.DataFrame(
        [(int(e), d) for d, bad in enumerate(days) for e in bad],
        schema={column: pl.Int64, "since": pl.Int64},
        orient="row",
    )


def test_a_compromised_terminal_is_all_fraud_for_28_days(world: pl.DataFrame) -> None:
    schedule = _schedule(world, "terminals", "terminal")
    assert schedule.height > 0
    inside = world.join(schedule, on="terminal").filter(
        (pl.col("day") >= pl.col("since")) & (pl.col("day") < pl.col("since") + 28)
    )
    assert inside.height > 0 and inside["fraud"].all()
    # Every terminal fraud is in such a window; the day after one ends, the terminal is clean.
    assert set(world.filter(pl.col("scenario") == 2)["tx"].to_list()) <= set(inside["tx"])
    outside = world.filter(
        ~pl.col("tx").is_in(inside["tx"].implode())
        & pl.col("terminal").is_in(schedule["terminal"].implode())
    )
    assert (outside["scenario"] != 2).all()


def test_a_compromised_card_pays_a_third_at_five_times_for_14_days(world: pl.DataFrame) -> None:
    schedule = _schedule(world, "customers", "customer")
    inside = world.join(schedule, on="customer").filter(
        (pl.col("day") >= pl.col("since")) & (pl.col("day") < pl.col("since") + 14)
    )
    stolen = world.filter(pl.col("scenario") == 3)
    assert stolen.height > 0
    assert set(stolen["tx"].to_list()) <= set(inside["tx"].to_list())
    pool = inside["tx"].n_unique()
    assert 0.2 < stolen.height / pool <= 0.34  # a third of each window (windows overlap)
    customers = stolen["customer"].unique()
    usual = world.filter(pl.col("customer").is_in(customers.implode()) & ~pl.col("fraud"))
    mean_usual = usual.group_by("customer").agg(pl.col("amount").mean().alias("usual"))
    ratio = stolen.group_by("customer").agg(pl.col("amount").mean()).join(mean_usual, on="customer")
    assert (ratio["amount"] / ratio["usual"]).median() > 3  # type: ignore[operator]


def test_events_follow_the_contract_with_labels_seven_days_late(
    world: pl.DataFrame, tmp_path: Path
) -> None:
    from rebate_guard.contract.validation import parse_label, parse_signup, parse_transaction

    paths = cw.write_events(world, tmp_path)
    tx = pl.read_parquet(paths["transactions"])
    labels = pl.read_parquet(paths["labels"])
    signups = pl.read_parquet(paths["signups"])
    assert tx.height == world.height and (tx["amount_cents"] > 0).all()
    for kind, parser in (("transactions", tx), ("signups", signups), ("labels", labels)):
        parse = {"transactions": parse_transaction, "signups": parse_signup}.get(kind, parse_label)
        for row in parser.head(50).iter_rows(named=True):
            parse(row)
    joined = labels.join(tx.select("tx_id", tx_ts="ts"), on="tx_id")
    assert joined.height == labels.height
    assert (joined["ts"] - joined["tx_ts"] == 7 * DAY_MS).all()
    truth = pl.read_parquet(paths["tx_truth"]).join(labels, on="tx_id")
    assert ((truth["label"] == "fraud") == truth["is_fraud"]).all()
    end = tx["ts"].min() + SMALL.days * DAY_MS
    assert labels.height == tx.filter(pl.col("ts") + 7 * DAY_MS < end).height
    first = tx.group_by("user_id").agg(pl.col("ts").min().alias("first"))
    assert (signups.join(first, on="user_id").select(pl.col("ts") < pl.col("first")))["ts"].all()


def test_terminal_risk_counts_only_labels_older_than_the_delay() -> None:
    hour = 3600
    world = pl.DataFrame(
        {
            "tx": [0, 1, 2, 3],
            "seconds": [
                12 * hour,
                3 * cw.DAY_S + 12 * hour,
                8 * cw.DAY_S + 11 * hour,
                9 * cw.DAY_S,
            ],
            "day": [0, 3, 8, 9],
            "customer": [0, 1, 2, 2],
            "terminal": [0, 0, 0, 0],
            "amount": [10.0, 20.0, 30.0, 40.0],
            "fraud": [True, False, False, False],
            "scenario": [2, 0, 0, 0],
        }
    )
    f = cw.handbook_features(world)
    # On day 3 the day-0 fraud is inside the 7-day delay: not known yet.
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"][1] == 0 and f["TERMINAL_ID_RISK_7DAY_WINDOW"][1] == 0
    # Day 8, 11:00: (day 0 11:00, day 1 11:00] holds the fraud alone.
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"][2] == 1 and f["TERMINAL_ID_RISK_1DAY_WINDOW"][2] == 1
    # Day 9, 00:00: the 7-day window (day -5, day 2] still holds it.
    assert f["TERMINAL_ID_RISK_7DAY_WINDOW"][3] == 1.0
    assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"][3] == 0
    # The customer's windows include the transaction itself.
    assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].to_list() == [1, 1, 1, 2]
    assert f["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"][3] == 35.0


def test_card_precision_leaves_out_cards_found_on_earlier_days() -> None:
    frame = pl.DataFrame(
        {
            "day": [0, 0, 1, 1],
            "customer": [1, 2, 1, 2],
            "fraud": [True, False, True, False],
            "score": [0.9, 0.1, 0.9, 0.1],
        }
    )
    # Day 0: card 1 (fraud) is the top one; day 1: it is known, card 2 (legit) is left.
    assert cw.card_precision_top_k(frame, "score", k=1) == 0.5
    assert cw.card_precision_top_k(frame, "score", k=2) == 0.25
