"""An independent computation of the named features (issue #3), by Polars joins.

The engine keeps incremental windows; this recomputes each feature from scratch by joining every
transaction with all earlier events and filtering to the window, so the two share no logic
beyond the definitions: "earlier" is the replay order (ts, then signups < labels <
transactions, then the event's id, then input row); windows are (t - width, t]; payments
only, refunds excluded.
"""

from __future__ import annotations

import polars as pl

from rebate_guard.contract.time import DAY_MS, HOUR_MS

HOUR, DAY = HOUR_MS, DAY_MS

#: The features `named_features` computes, as the engine names them.
NAMED = [
    "user_tx_count_24h",
    "user_amount_sum_24h",
    "merchant_tx_count_1h",
    "user_merchant_tx_count_7d",
    "device_user_count_7d",
    "device_rebate_requested_24h",
    "ip_user_count_24h",
    "card_user_count_30d",
    "user_account_age_s",
    "merchant_fraud_rate_30d",
    "merchant_fraud_rate_7d",
    "merchant_labelled_count_30d",
    "merchant_labelled_count_7d",
]


def _ordered(
    tx: pl.DataFrame, signups: pl.DataFrame, labels: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ids = {0: pl.col("user_id"), 1: pl.coalesce("tx_id", "user_id", pl.lit("")), 2: pl.col("tx_id")}
    parts = [
        f.select(
            "ts",
            pl.lit(rank).alias("rank"),
            ids[rank].cast(pl.String).alias("id"),
            pl.int_range(pl.len()).alias("row"),
        )
        for rank, f in ((0, signups), (1, labels), (2, tx))
    ]
    order = (
        pl.concat(parts)
        .sort("ts", "rank", "id", "row")
        .with_row_index("seq")
        .select("rank", "row", "seq")
    )

    def with_seq(frame: pl.DataFrame, rank: int) -> pl.DataFrame:
        seqs = order.filter(pl.col("rank") == rank).sort("row")["seq"]
        return frame.with_columns(seqs.alias("seq"))

    return with_seq(tx, 2), with_seq(signups, 0), with_seq(labels, 1)


def _near(frame: pl.DataFrame, width: int) -> pl.DataFrame:
    """Each earlier event twice, tagged with its own time bucket and the next one.

    A window (t - width, t] touches only t's bucket and the one before it (buckets are `width`
    long), so joining on the bucket as well as the key bounds the join to about two windows of
    events per row instead of the key's whole history (which explodes at 1M transactions).
    """
    bucket = pl.col("ts") // width
    return pl.concat(
        [frame.with_columns(bucket.alias("b")), frame.with_columns((bucket + 1).alias("b"))]
    )


def _bucketed(frame: pl.DataFrame, width: int) -> pl.DataFrame:
    return frame.with_columns((pl.col("ts") // width).alias("b"))


def _window_count_sum(
    cur: pl.DataFrame, prev: pl.DataFrame, on: list[str], width: int, prefix: str
) -> pl.DataFrame:
    joined = _bucketed(cur.select("tx_id", "ts", "seq", *on), width).join(
        _near(prev.select(*on, "ts", "seq", "amount_cents"), width).select(
            *on,
            "b",
            pl.col("ts").alias("p_ts"),
            pl.col("seq").alias("p_seq"),
            pl.col("amount_cents").alias("p_amount"),
        ),
        on=[*on, "b"],
    )
    inside = joined.filter(
        (pl.col("p_seq") < pl.col("seq")) & (pl.col("p_ts") > pl.col("ts") - width)
    )
    agg = inside.group_by("tx_id").agg(
        pl.len().cast(pl.Float64).alias(f"{prefix}_count"),
        pl.col("p_amount").sum().cast(pl.Float64).alias(f"{prefix}_sum"),
    )
    return cur.select("tx_id").join(agg, on="tx_id", how="left").fill_null(0.0)


def _distinct_users(
    cur: pl.DataFrame, sightings: pl.DataFrame, key: str, width: int, name: str
) -> pl.DataFrame:
    mine = cur.filter(pl.col(key).is_not_null()).select("tx_id", "ts", "seq", "user_id", key)
    joined = (
        _bucketed(mine, width).join(
            _near(sightings.filter(pl.col(key).is_not_null()), width).select(
                key,
                "b",
                pl.col("user_id").alias("s_user"),
                pl.col("ts").alias("s_ts"),
                pl.col("seq").alias("s_seq"),
            ),
            on=[key, "b"],
        )
    ).filter((pl.col("s_seq") < pl.col("seq")) & (pl.col("s_ts") > pl.col("ts") - width))
    members = pl.concat(
        [
            joined.select("tx_id", pl.col("s_user").alias("member")),
            mine.select("tx_id", pl.col("user_id").alias("member")),
        ]
    )
    agg = members.group_by("tx_id").agg(pl.col("member").n_unique().cast(pl.Float64).alias(name))
    return cur.select("tx_id").join(agg, on="tx_id", how="left")


def named_features(
    transactions: pl.DataFrame, signups: pl.DataFrame, labels: pl.DataFrame
) -> pl.DataFrame:
    tx, sg, lb = _ordered(transactions, signups, labels)
    pay = tx.filter(pl.col("kind") == "payment")
    out = tx.select("tx_id")
    user = _window_count_sum(tx, pay, ["user_id"], DAY, "user")
    out = out.join(
        user.rename({"user_count": "user_tx_count_24h", "user_sum": "user_amount_sum_24h"}),
        on="tx_id",
    )
    merchant = _window_count_sum(tx, pay, ["merchant_id"], HOUR, "m")
    out = out.join(
        merchant.select("tx_id", pl.col("m_count").alias("merchant_tx_count_1h")), on="tx_id"
    )
    pair = _window_count_sum(tx, pay, ["user_id", "merchant_id"], 7 * DAY, "p")
    out = out.join(
        pair.select("tx_id", pl.col("p_count").alias("user_merchant_tx_count_7d")), on="tx_id"
    )
    # Rebate requested (exact: the rate in millionths, as `requested_rebate_cents`) by the
    # device's earlier payments in 24 h; null where the transaction names no device.
    rebate = (pl.col("amount_cents") * (pl.col("rebate_rate") * 1_000_000).round()) // 1_000_000
    device_money = _window_count_sum(
        tx, pay.with_columns(amount_cents=rebate.cast(pl.Int64)), ["device_id"], DAY, "d"
    )
    out = out.join(
        device_money.join(tx.select("tx_id", "device_id"), on="tx_id").select(
            "tx_id",
            pl.when(pl.col("device_id").is_null())
            .then(None)
            .otherwise(pl.col("d_sum"))
            .alias("device_rebate_requested_24h"),
        ),
        on="tx_id",
    )
    device_seen = pl.concat(
        [
            pay.select("device_id", "user_id", "ts", "seq"),
            sg.select("device_id", "user_id", "ts", "seq"),
        ]
    )
    ip_seen = pl.concat(
        [pay.select("ip", "user_id", "ts", "seq"), sg.select("ip", "user_id", "ts", "seq")]
    )
    out = out.join(
        _distinct_users(tx, device_seen, "device_id", 7 * DAY, "device_user_count_7d"), on="tx_id"
    )
    out = out.join(_distinct_users(tx, ip_seen, "ip", DAY, "ip_user_count_24h"), on="tx_id")
    out = out.join(
        _distinct_users(
            tx,
            pay.select("card_id", "user_id", "ts", "seq"),
            "card_id",
            30 * DAY,
            "card_user_count_30d",
        ),
        on="tx_id",
    )
    age = (
        tx.select("tx_id", "user_id", "ts", "seq")
        .join(
            sg.select("user_id", pl.col("ts").alias("s_ts"), pl.col("seq").alias("s_seq")),
            on="user_id",
        )
        .filter(pl.col("s_seq") < pl.col("seq"))
        .sort("s_seq")
        .group_by("tx_id")
        .agg((pl.col("ts") - pl.col("s_ts")).first().alias("age_ms"))
    )
    # Polars divides by a constant through its reciprocal (not correctly rounded); seconds are
    # defined as the exact quotient, so divide in Python.
    age = age.with_columns(
        pl.Series("user_account_age_s", [ms / 1000 for ms in age["age_ms"]], dtype=pl.Float64)
    ).drop("age_ms")
    out = out.join(age, on="tx_id", how="left")
    # merchant_fraud_rate_{30d,7d}: previous payments at the merchant in (t - width, t]
    # whose label has arrived by t (the latest such label per payment), share labelled fraud;
    # merchant_labelled_count_*: how many those are (0 when none).
    # Only payments that ever get a label matter: join those (few) rather than every payment.
    tx_labels = lb.filter(pl.col("tx_id").is_not_null()).select(
        pl.col("tx_id").alias("p_tx"), pl.col("seq").alias("l_seq"), "label"
    )
    labelled = pay.select(
        "merchant_id", pl.col("tx_id").alias("p_tx"), "ts", pl.col("seq").alias("p_seq")
    ).join(tx_labels, on="p_tx")
    longest = 30 * DAY
    latest = (
        _bucketed(tx.select("tx_id", "merchant_id", "ts", "seq"), longest)
        .join(
            _near(labelled, longest).select(
                "merchant_id", "b", "p_tx", pl.col("ts").alias("p_ts"), "p_seq", "l_seq", "label"
            ),
            on=["merchant_id", "b"],
        )
        .filter(
            (pl.col("p_seq") < pl.col("seq"))
            & (pl.col("p_ts") > pl.col("ts") - longest)
            & (pl.col("l_seq") < pl.col("seq"))
        )
        .sort("l_seq")
        .group_by("tx_id", "p_tx")
        .agg(pl.col("label").last(), pl.col("ts").first(), pl.col("p_ts").first())
    )
    for name, width in (("30d", longest), ("7d", 7 * DAY)):
        rate = (
            latest.filter(pl.col("p_ts") > pl.col("ts") - width)
            .group_by("tx_id")
            .agg(
                ((pl.col("label") == "fraud").sum() / pl.len()).alias(
                    f"merchant_fraud_rate_{name}"
                ),
                pl.len().cast(pl.Int64).alias(f"merchant_labelled_count_{name}"),
            )
        )
        count = f"merchant_labelled_count_{name}"
        out = out.join(rate, on="tx_id", how="left").with_columns(pl.col(count).fill_null(0))
    return out
