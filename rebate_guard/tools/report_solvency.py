"""The report's platform-economics part: the solvency monitor's readings and alerts that
replay wrote (`solvency.parquet`, `platform_alerts.parquet`, docs/economics.md) and the
points requests among the decisions, as the tables and chart data the template shows.

Every value here is text or a number for the template (which escapes it) or for a JSON block
(`report.script_json`); nothing from the events is written as markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rebate_guard.contract.records import SOLVENCY_LEVELS
from rebate_guard.core.policy import Policy
from rebate_guard.core.solvency import MERCHANT_PREFIX, PLATFORM

#: The newest alerts listed (the rest are counted).
ALERTS_SHOWN = 100
#: Points requests' reasons listed, most frequent first.
REASONS_SHOWN = 12


@dataclass(frozen=True)
class Formats:
    """How the report writes figures (its own `cents`, `share`, `number`, `utc`)."""

    cents: Any
    share: Any
    number: Any
    utc: Any


def read_if(path: Path | None) -> pl.DataFrame | None:
    return pl.read_parquet(path) if path is not None else None


def solvency_view(
    readings: pl.DataFrame | None,
    alerts: pl.DataFrame | None,
    *,
    policy: Policy,
    fmt: Formats,
) -> dict[str, Any] | None:
    """The platform's and each region's last reading, the merchants' last levels counted,
    the alerts newest first and the platform's ratio over time against `policy`'s lines;
    None when replay wrote no readings (no `--platform-events`)."""
    if readings is None or readings.height == 0:
        return None
    last = readings.sort("scope", "period_end").group_by("scope", maintain_order=True).last()
    merchants = last.filter(pl.col("scope").str.starts_with(MERCHANT_PREFIX))
    shown = last.filter(~pl.col("scope").str.starts_with(MERCHANT_PREFIX)).sort(
        pl.col("scope") != PLATFORM, "scope"
    )
    rows = [
        {
            "scope": r["scope"],
            "period_end": fmt.utc(r["period_end"]),
            "level": r["level"],
            "ratio": fmt.number(r["ratio"], 2),
            "liability": fmt.cents(r["liability_cents"]),
            "distributable": fmt.cents(r["distributable_cents"]),
            "new_money_share": fmt.share(r["new_money_share"]),
            "growth_needed": fmt.share(r["growth_needed"]),
        }
        for r in shown.iter_rows(named=True)
    ]
    levels = dict(merchants.group_by("level").len().iter_rows())
    terms = policy.solvency
    return {
        "rows": rows,
        "merchant_levels": [(level, levels.get(level, 0)) for level in SOLVENCY_LEVELS],
        "merchants": merchants.height,
        "alerts": alert_rows(alerts, fmt=fmt),
        "alerts_total": 0 if alerts is None else alerts.height,
        "warning": terms.warning_ratio,
        "critical": terms.critical_ratio,
        "policy_version": policy.version,
        "chart": ratio_series(readings, warning=terms.warning_ratio, critical=terms.critical_ratio),
    }


def alert_rows(alerts: pl.DataFrame | None, *, fmt: Formats) -> list[dict[str, str]]:
    if alerts is None:
        return []
    newest = alerts.sort("ts", "alert_id", descending=True).head(ALERTS_SHOWN)
    return [
        {
            "at": fmt.utc(a["ts"]),
            "scope": a["scope"],
            "change": f"{a['previous_level']} → {a['level']}",
            "ratio": fmt.number(a["ratio"], 2),
            "line": fmt.number(a["line"], 2),
            "message": a["message"],
        }
        for a in newest.iter_rows(named=True)
    ]


def ratio_series(readings: pl.DataFrame, *, warning: float, critical: float) -> dict[str, Any]:
    """The platform's ratio at each period's end (seconds, for uPlot), None where nothing
    was distributable, and the two lines."""
    platform = readings.filter(pl.col("scope") == PLATFORM).sort("period_end")
    n = platform.height
    return {
        "x": [end // 1000 for end in platform["period_end"]],
        "ratio": platform["ratio"].to_list(),
        "levels": platform["level"].to_list(),
        "warning": [warning] * n,
        "critical": [critical] * n,
    }


def points_view(requests: pl.DataFrame, *, fmt: Formats) -> dict[str, Any] | None:
    """The points requests decided (the decisions that are not payments): how many and how
    many points per action, and their reasons counted; None when there were none."""
    if requests.height == 0:
        return None
    by_action = (
        requests.group_by("action")
        .agg(
            pl.len().alias("requests"),
            pl.col("rebate_requested_cents").sum().alias("requested"),
            pl.col("rebate_granted_cents").sum().alias("granted"),
        )
        .sort("action")
    )
    reasons = (
        requests.select(pl.col("reasons").explode().drop_nulls())
        .group_by("reasons")
        .len()
        .sort(["len", "reasons"], descending=[True, False])
        .head(REASONS_SHOWN)
    )
    return {
        "total": requests.height,
        "actions": [
            {
                "action": r["action"],
                "requests": r["requests"],
                "requested": fmt.cents(r["requested"]),
                "granted": fmt.cents(r["granted"]),
            }
            for r in by_action.iter_rows(named=True)
        ],
        "reasons": [(reason, count) for reason, count in reasons.iter_rows()],
    }
