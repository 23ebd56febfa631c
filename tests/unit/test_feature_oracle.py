"""The named features from `rebate-guard features` equal an independent Polars computation."""

from pathlib import Path

import polars as pl

from oracle.features import NAMED, named_features
from rebate_guard.tools.replay import compute_features
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world


def test_named_features_match_the_polars_oracle_exactly(tmp_path: Path) -> None:
    world = simulate_world(
        WorldConfig(seed=5, n_users=600, n_merchants=60, days=35, target_transactions=12_000)
    )
    paths = write_world(world, tmp_path / "world")
    compute_features(
        transactions=paths["transactions"],
        signups=paths["signups"],
        labels=paths["labels"],
        out=tmp_path / "features.parquet",
        progress=None,
    )
    engine = pl.read_parquet(tmp_path / "features.parquet").select("tx_id", *NAMED)
    oracle = named_features(world.transactions, world.signups, world.labels).select("tx_id", *NAMED)
    assert engine.height == world.transactions.height
    joined = engine.join(oracle, on="tx_id", suffix="_oracle")
    assert joined.height == engine.height
    for name in NAMED:
        mismatched = joined.filter(~pl.col(name).eq_missing(pl.col(f"{name}_oracle")))
        shown = mismatched.select("tx_id", name, f"{name}_oracle").head(5)
        assert mismatched.height == 0, f"{name}: {shown}"
        assert joined[name].drop_nulls().len() > 0, f"{name} is never computed"
    # The world exercises what the windows are about.
    assert joined["merchant_fraud_rate_30d"].drop_nulls().max() > 0
    assert joined["merchant_fraud_rate_7d"].drop_nulls().max() > 0
    assert joined["merchant_labelled_count_30d"].max() > joined["merchant_labelled_count_7d"].max()
    assert joined["device_user_count_7d"].max() > 2
    assert joined["device_rebate_requested_24h"].max() > 0
