"""The online pipeline against static models trained once on the first two weeks.

Both see the same features (`rebate-guard features`) and the same delayed labels: a static
model is trained, once, on the transactions of the first `--train-days` days whose label had
arrived by the end of that period (the latest label wins), then scores every later
transaction. The online pipeline's figures are the `risk` of `rebate-guard replay`'s
decisions on those same later transactions (it went on learning as labels arrived). All are
measured against the ground truth, overall and per abuse scenario. Prints a table.

    .venv/bin/rebate-guard simulate --out /tmp/w200k --transactions 200000
    .venv/bin/rebate-guard features ... --out /tmp/f200k.parquet
    .venv/bin/rebate-guard replay ... --out /tmp/r200k
    .venv/bin/python benchmarks/online_vs_static.py --world /tmp/w200k \\
        --features /tmp/f200k.parquet --decisions /tmp/r200k/decisions.parquet

scikit-learn is a dev-only dependency, for this baseline alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rebate_guard.contract.time import DAY_MS  # noqa: E402
from rebate_guard.core.decider import ALL_FEATURE_NAMES  # noqa: E402
from rebate_guard.tools.evaluate import ranking  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--decisions", type=Path, required=True)
    parser.add_argument("--train-days", type=int, default=14)
    args = parser.parse_args()

    txs = pl.read_parquet(args.world / "transactions.parquet").select("tx_id", "ts")
    truth = pl.read_parquet(args.world / "truth" / "tx_truth.parquet")
    features = pl.read_parquet(args.features)
    online = pl.read_parquet(args.decisions).select("tx_id", "risk")
    frame = features.join(txs, on="tx_id").join(truth, on="tx_id").sort("ts")
    cut = int(frame["ts"].min()) + args.train_days * DAY_MS  # type: ignore[operator]

    labels = (
        pl.read_parquet(args.world / "labels.parquet")
        .filter(pl.col("tx_id").is_not_null() & (pl.col("ts") < cut))
        .sort("ts")
        .group_by("tx_id")
        .last()
        .select("tx_id", (pl.col("label") == "fraud").alias("y"))
    )
    train = frame.filter(pl.col("ts") < cut).join(labels, on="tx_id")
    test = frame.filter(pl.col("ts") >= cut).join(online, on="tx_id")
    x_train = train.select(ALL_FEATURE_NAMES).to_numpy().astype(float)
    y_train = train["y"].to_numpy()
    x_test = test.select(ALL_FEATURE_NAMES).to_numpy().astype(float)
    print(
        f"train: {train.height:,} labelled transactions before day {args.train_days} "
        f"({int(y_train.sum()):,} fraud); test: {test.height:,} transactions after, "
        f"{int(test['is_fraud'].sum()):,} fraud"
    )

    models = {
        "static logistic regression": make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True),
            StandardScaler(),
            LogisticRegression(class_weight="balanced", max_iter=2_000),
        ),
        "static gradient boosting": HistGradientBoostingClassifier(
            class_weight="balanced", random_state=0
        ),
    }
    scores = {"online pipeline (replay risk)": test["risk"].to_numpy()}
    for name, model in models.items():
        model.fit(x_train, y_train)
        scores[name] = model.predict_proba(x_test)[:, 1]

    scenarios = sorted(set(test.filter(pl.col("is_fraud"))["scenario"].to_list()))
    header = "| model | ROC AUC | average precision | " + " | ".join(f"AP {s}" for s in scenarios)
    print()
    print(header + " |")
    print("|" + "---|" * (3 + len(scenarios)))
    for name, score in scores.items():
        scored = test.select("is_fraud", "scenario").with_columns(
            risk=pl.Series(np.asarray(score, dtype=float)), fraud=pl.col("is_fraud")
        )
        overall = ranking(scored)
        per = []
        legit = scored.filter(~pl.col("fraud"))
        for scenario in scenarios:
            mine = scored.filter(pl.col("fraud") & (pl.col("scenario") == scenario))
            per.append(ranking(pl.concat([mine, legit])).average_precision)
        cells = " | ".join(f"{v:.4f}" if v is not None else "n/a" for v in per)
        print(f"| {name} | {overall.roc_auc:.4f} | {overall.average_precision:.4f} | {cells} |")


if __name__ == "__main__":
    main()
