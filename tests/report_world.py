"""A small simulated world, replayed, for the report's tests (and its screenshot): ids hostile
to the reader's browser are put into the world's files before the replay (a ring member, the
merchant they pay, their device, a category) and into the replay's rings afterwards (a ring id
and its evidence), so they reach the report through every path an id takes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from rebate_guard.tools.replay import replay
from rebate_guard.tools.simulator import ABUSE_SCENARIOS, WorldConfig, simulate_world, write_world

HOSTILE_USER = "<img src=x onerror=alert(1)>"
HOSTILE_MERCHANT = "</script><script>window.__xss=1</script>"
HOSTILE_DEVICE = '"><svg onload="window.__xss=2">'
HOSTILE_CATEGORY = "<iframe srcdoc='<script>parent.__xss=3</script>'>"
HOSTILE_RING = "<img src=x onerror=window.__xss=4>"
HOSTILE_EVIDENCE = "</script><!--<script>window.__xss=5</script>"
HOSTILE_REGION = "<script>window.__xss=6</script>"
HOSTILE = (
    HOSTILE_USER,
    HOSTILE_MERCHANT,
    HOSTILE_DEVICE,
    HOSTILE_CATEGORY,
    HOSTILE_RING,
    HOSTILE_EVIDENCE,
    HOSTILE_REGION,
)


@dataclass(frozen=True)
class ReplayedWorld:
    world: Path  # contract files, truth/ beside them
    replay: Path  # replay's --out

    @property
    def truth(self) -> Path:
        return self.world / "truth"


def replayed_world(
    root: Path, hostile: bool = True, transactions: int = 2_500, days: int = 10, seed: int = 5
) -> ReplayedWorld:
    config = WorldConfig(
        seed=seed,
        n_users=max(250, transactions // 10),
        n_merchants=max(25, transactions // 100),
        days=days,
        target_transactions=transactions,
    )
    paths = write_world(simulate_world(config), root / "world")
    if hostile:
        _poison_world(paths)
    out = root / "replay"
    replay(
        transactions=paths["transactions"],
        signups=paths["signups"],
        labels=paths["labels"],
        out_dir=out,
        progress=None,
        platform_events=paths["platform_events"],
    )
    if hostile:
        _poison_rings(out / "rings.parquet")
    return ReplayedWorld(root / "world", out)


def _poison_world(paths: dict[str, Path]) -> None:
    """Rename the abusive account that requested most, the merchant it paid most, its device,
    that merchant's category and its region, in every file of the world (truth included)."""
    txs = pl.read_parquet(paths["transactions"])
    roles = pl.read_parquet(paths["user_truth"])
    abusive = roles.filter(pl.col("role").is_in(ABUSE_SCENARIOS))["user_id"]
    mine = txs.filter(pl.col("user_id").is_in(abusive.implode()))
    top = mine.group_by("user_id").agg(pl.col("amount_cents").sum()).sort("amount_cents").tail(1)
    user = top["user_id"][0]
    paid = txs.filter(pl.col("user_id") == user)
    merchant = paid.group_by("merchant_id").len().sort("len", "merchant_id")["merchant_id"][-1]
    device = paid["device_id"].drop_nulls()[0]
    category = paid.filter(pl.col("merchant_id") == merchant)["merchant_category"][0]
    merchants = pl.read_parquet(paths["merchant_truth"])
    region = merchants.filter(pl.col("merchant_id") == merchant)["region"][0]
    renames = {
        region: HOSTILE_REGION,
        user: HOSTILE_USER,
        merchant: HOSTILE_MERCHANT,
        device: HOSTILE_DEVICE,
        category: HOSTILE_CATEGORY,
    }
    for path in paths.values():
        frame = pl.read_parquet(path)
        frame.with_columns(_renamed(frame, renames)).write_parquet(path)


def _renamed(frame: pl.DataFrame, renames: dict[str, str]) -> list[pl.Expr]:
    exprs = []
    for name, dtype in frame.schema.items():
        if dtype == pl.String:
            exprs.append(pl.col(name).replace(renames))
        elif dtype == pl.List(pl.String):
            exprs.append(pl.col(name).list.eval(pl.element().replace(renames)))
    return exprs


def _poison_rings(path: Path) -> None:
    """The ring with the most money at risk gets a hostile id and hostile evidence."""
    rings = pl.read_parquet(path)
    top = rings.sort("rebate_at_risk_cents")["ring_id"][-1]

    def evidence(text: str) -> str:
        return json.dumps({**json.loads(text), "note": HOSTILE_EVIDENCE}, sort_keys=True)

    is_top = pl.col("ring_id") == top
    rings.with_columns(
        pl.when(is_top).then(pl.lit(HOSTILE_RING)).otherwise("ring_id").alias("ring_id"),
        pl.when(is_top)
        .then(pl.col("evidence").map_elements(evidence, return_dtype=pl.String))
        .otherwise("evidence")
        .alias("evidence"),
    ).write_parquet(path)
