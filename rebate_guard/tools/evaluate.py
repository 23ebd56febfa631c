"""How good are the decisions? Ranking quality of `risk` against labels or ground truth.

- ROC AUC (Mann-Whitney, ties averaged) and average precision (the area under the
  precision-recall curve, as the mean precision at each fraud) over transactions;
- precision among the top-k riskiest users of each day (what a review team working a daily
  queue of k users would find), averaged over days;
- with ground truth that names scenarios: the same per scenario, each scenario's
  transactions against all legitimate ones, and per look-alike group (the share of the group's
  legitimate transactions that were held or blocked);
- with ground truth, the **money outcome**: the share of the rebate money fraudulent payments
  requested that was withheld (not granted at decision time: scaled down, held or blocked),
  against the share of legitimate rebate money withheld, overall, per scenario and per
  look-alike group. Held money counts as withheld (it is not paid when the decision is made).
  With the ledger's adjustments (`--adjustments`), also the share withheld in the end:
  after labels, refunds and hold timeouts released, voided or clawed back money (a refunded
  legitimate payment is owed no rebate and leaves the legitimate side).

- **calibration**: does `risk` mean what it says? A reliability table over ten equal-width
  bins of risk (each bin's transactions, mean risk and observed fraud rate) and the expected
  calibration error, ECE = sum over bins of (bin's share of transactions) x |mean risk -
  fraud rate| (0: risk is the fraud probability; a risk that ranks well can still be far
  off, which matters because the trust weight, 1 - risk, turns it into money).

- with ground truth for the platform's events (`platform_truth.parquet` beside the
  transactions' truth: event_id, is_fraud, scenario, group), the **points withheld on
  points requests** (redeem, transfer, withdraw; decided by the points policy and the request
  rules, docs/economics.md): the share of the points asked that was not allowed at decision
  (held, blocked, or scaled away), for fraud and legit overall, per scenario and per
  look-alike group. Without that file the figures are left out.

With `--labels` only labelled transactions count (a tx-level label; the latest one wins), so
the figures describe the labelled sample, not the whole traffic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rebate_guard.contract.time import DAY_MS
from rebate_guard.core.points import POINTS_THRESHOLDS

WITHHELD = ("hold", "block")
#: The legitimate friction at which `capture_at_friction` is reported by `evaluate`.
CAPTURE_AT_FRICTION = 0.01
#: Equal-width bins of risk in the reliability table.
CALIBRATION_BINS = 10


@dataclass
class Ranking:
    transactions: int
    fraud: int
    roc_auc: float | None
    average_precision: float | None


@dataclass
class Reliability:
    """One bin of the reliability table: risk in [low, high) (the last bin includes 1)."""

    low: float
    high: float
    transactions: int
    mean_risk: float
    fraud_rate: float


@dataclass
class Evaluation:
    source: str  # "truth" or "labels"
    overall: Ranking
    top_k: int
    precision_top_k_users_per_day: float | None
    days: int
    per_scenario: dict[str, Ranking] = field(default_factory=dict)
    #: look-alike group -> share of its legitimate transactions held or blocked
    lookalikes_withheld: dict[str, float] = field(default_factory=dict)
    #: Money outcome (truth only): share of requested rebate money withheld, by slice:
    #: "fraud", "legit", "fraud:<scenario>", "legit:<look-alike group>".
    money_withheld: dict[str, float] = field(default_factory=dict)
    #: The same in the end, after the ledger's adjustments (when given).
    money_withheld_final: dict[str, float] = field(default_factory=dict)
    #: Truth only, decisions with trust weights: the share of fraud money the best single
    #: weight cut withholds at `CAPTURE_AT_FRICTION` legitimate friction (`capture_at_friction`).
    fraud_capture_at_friction: float | None = None
    #: Mean risk against observed fraud rate per bin of risk (empty bins left out).
    reliability: list[Reliability] = field(default_factory=list)
    expected_calibration_error: float | None = None
    #: The policy's friction budget (legit_friction) the decisions were made under, if known.
    budget: float | None = None
    #: Truth with `platform_truth.parquet`: share of the points asked by points requests
    #: that was not allowed at decision, by slice as `money_withheld` ("fraud", "legit",
    #: "fraud:<scenario>", "legit:<look-alike group>"); empty without that truth.
    points_withheld: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        rows = [("all transactions", self.overall), *sorted(self.per_scenario.items())]
        lines = [
            f"evaluated against {self.source}",
            "",
            "| slice | transactions | fraud | ROC AUC | average precision |",
            "|---|---|---|---|---|",
        ]
        for name, r in rows:
            lines.append(
                f"| {name} | {r.transactions:,} | {r.fraud:,} | {_fmt(r.roc_auc)} "
                f"| {_fmt(r.average_precision)} |"
            )
        lines += [
            "",
            f"precision among the top {self.top_k} riskiest users per day: "
            f"{_fmt(self.precision_top_k_users_per_day)} (over {self.days} days)",
        ]
        if self.reliability:
            lines += [
                "",
                f"calibration: expected calibration error {_fmt(self.expected_calibration_error)}",
                "",
                "| risk | transactions | mean risk | fraud rate |",
                "|---|---|---|---|",
            ]
            for b in self.reliability:
                lines.append(
                    f"| {b.low:.1f}-{b.high:.1f} | {b.transactions:,} | {b.mean_risk:.4f} "
                    f"| {b.fraud_rate:.4f} |"
                )
        if self.lookalikes_withheld:
            lines += ["", "| look-alike group | legitimate transactions held or blocked |"]
            lines.append("|---|---|")
            for group, share in sorted(self.lookalikes_withheld.items()):
                lines.append(f"| {group} | {share:.2%} |")
        if self.money_withheld:
            final = self.money_withheld_final
            head = "| rebate money | withheld at decision |" + (" in the end |" if final else "")
            lines += ["", head, "|---|---|" + ("---|" if final else "")]
            for name, share in self.money_withheld.items():
                end = f" {final[name]:.2%} |" if final else ""
                lines.append(f"| {name} | {share:.2%} |{end}")
            if self.budget is not None:
                legit = self.money_withheld["legit"]
                verdict = "within" if legit <= self.budget else "over"
                lines += [
                    "",
                    f"legitimate rebate money withheld at decision: {legit:.2%}, {verdict} the "
                    f"friction budget of {self.budget:.2%}",
                ]
        if self.fraud_capture_at_friction is not None:
            lines += [
                "",
                f"best fraud money withheld by any weight cut at {CAPTURE_AT_FRICTION:.0%} "
                f"legitimate friction: {self.fraud_capture_at_friction:.2%}",
            ]
        if self.points_withheld:
            lines += ["", "| points asked by points requests | withheld at decision |", "|---|---|"]
            lines += [f"| {name} | {share:.2%} |" for name, share in self.points_withheld.items()]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def ranking(frame: pl.DataFrame) -> Ranking:
    """ROC AUC and average precision of `risk` for the boolean `fraud` column."""
    n = frame.height
    positives = int(frame["fraud"].sum()) if n else 0
    negatives = n - positives
    if positives == 0 or negatives == 0:
        return Ranking(n, positives, None, None)
    ranks = frame.select(pl.col("risk").rank("average").alias("r"), "fraud")
    rank_sum = float(ranks.filter(pl.col("fraud"))["r"].sum())
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    ordered = frame.sort("risk", descending=True, maintain_order=True).with_columns(
        hits=pl.col("fraud").cast(pl.Int64).cum_sum(),
        seen=pl.int_range(1, n + 1),
    )
    precision_at_hits = ordered.filter(pl.col("fraud")).select(pl.col("hits") / pl.col("seen"))
    ap = float(precision_at_hits.to_series().mean())  # type: ignore[arg-type]
    return Ranking(n, positives, auc, ap)


def calibration(
    frame: pl.DataFrame, bins: int = CALIBRATION_BINS
) -> tuple[list[Reliability], float | None]:
    """The reliability table of `risk` for the boolean `fraud` column, and the expected
    calibration error (None for no rows)."""
    if frame.is_empty():
        return [], None
    binned = (
        frame.select(
            (pl.col("risk").clip(0.0, 1.0) * bins).floor().clip(0, bins - 1).alias("bin"),
            "risk",
            pl.col("fraud").cast(pl.Float64),
        )
        .group_by("bin")
        .agg(pl.len().alias("n"), pl.col("risk").mean(), pl.col("fraud").mean())
        .sort("bin")
    )
    table, error = [], 0.0
    for b, n, risk, rate in binned.iter_rows():
        table.append(Reliability(b / bins, (b + 1) / bins, n, risk, rate))
        error += n / frame.height * abs(risk - rate)
    return table, error


def _top_k_users(frame: pl.DataFrame, k: int) -> tuple[float | None, int]:
    """Mean over days of the share of fraudulent users among the day's k riskiest."""
    by_user_day = frame.group_by(pl.col("ts") // DAY_MS, "user_id").agg(
        pl.col("risk").max(), pl.col("fraud").any()
    )
    # Ties in risk broken by user id: the figure must not depend on group_by's order.
    ranked = by_user_day.sort(["risk", "user_id"], descending=[True, False])
    top = ranked.group_by("ts", maintain_order=True).head(k)
    per_day = top.group_by("ts").agg(pl.col("fraud").mean())
    if per_day.is_empty():
        return None, 0
    return float(per_day["fraud"].mean()), per_day.height  # type: ignore[arg-type]


def evaluate(
    decisions: Path,
    labels: Path | None = None,
    truth: Path | None = None,
    top_k: int = 10,
    adjustments: Path | None = None,
    budget: float | None = None,
) -> Evaluation:
    """`budget`: the policy's legit_friction; None: from the `budget.json` replay wrote
    next to the decisions, if they were made in budget mode."""
    source, frame = evaluation_frame(decisions, labels=labels, truth=truth)
    precision, days = _top_k_users(frame, top_k)
    result = Evaluation(source, ranking(frame), top_k, precision, days)
    result.reliability, result.expected_calibration_error = calibration(frame)
    result.budget = budget if budget is not None else _budget_beside(decisions)
    if "scenario" in frame.columns:
        legit = frame.filter(~pl.col("fraud"))
        for scenario in sorted(set(frame.filter(pl.col("fraud"))["scenario"].to_list())):
            mine = frame.filter(pl.col("fraud") & (pl.col("scenario") == scenario))
            result.per_scenario[scenario] = ranking(pl.concat([mine, legit]))
        groups = legit.filter(pl.col("group").is_not_null() & (pl.col("group") != "legit"))
        for (group,), rows in groups.group_by("group"):
            withheld = rows["action"].is_in(WITHHELD).mean()
            result.lookalikes_withheld[str(group)] = float(withheld)  # type: ignore[arg-type]
        result.money_withheld = money_withheld(frame)
        if "trust_weight" in frame.columns:
            result.fraud_capture_at_friction = capture_at_friction(frame, CAPTURE_AT_FRICTION)
        if adjustments is not None:
            result.money_withheld_final = money_withheld(_after_ledger(frame, adjustments))
        requests = points_requests(decisions, truth) if truth is not None else None
        if requests is not None and not requests.is_empty():
            result.points_withheld = money_withheld(requests.rename({"is_fraud": "fraud"}))
    return result


#: The truth of the platform's events, beside the transactions' (written by the simulator).
PLATFORM_TRUTH = "platform_truth.parquet"


def points_requests(decisions: Path, truth: Path) -> pl.DataFrame | None:
    """The decisions on points requests joined with the platform events' truth: `tx_id`
    (the request's event_id), the points asked and allowed (`rebate_requested_cents`,
    `rebate_granted_cents`), `action`, `trust_weight`, `reasons`, `is_fraud`, `scenario`
    and `group` (null where the
    truth says "": legitimate, or no look-alike). None when `truth` (a directory, or its
    tx_truth.parquet) has no `platform_truth.parquet` beside it."""
    path = (truth if truth.is_dir() else truth.parent) / PLATFORM_TRUTH
    if not path.exists():
        return None
    decided = pl.read_parquet(decisions)
    if "threshold_version" not in decided.columns:  # from before points were decided
        return None
    facts = pl.read_parquet(path).select(
        pl.col("event_id").alias("tx_id"),
        "is_fraud",
        *(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in ("scenario", "group")),
    )
    return (
        decided.filter(pl.col("threshold_version") == POINTS_THRESHOLDS)
        .select(
            "tx_id",
            "ts",
            "user_id",
            "action",
            "rebate_requested_cents",
            "rebate_granted_cents",
            "trust_weight",
            "reasons",
        )
        .join(facts, on="tx_id", how="inner")
    )


def payment_decisions(decided: pl.DataFrame) -> pl.DataFrame:
    """The decisions on payments: the points requests' (keyed by their event_id, decided by
    the points policy: docs/economics.md) are not transactions, and are left out."""
    if "threshold_version" not in decided.columns:  # decisions from before it was recorded
        return decided
    return decided.filter(pl.col("threshold_version") != POINTS_THRESHOLDS)


def evaluation_frame(
    decisions: Path, labels: Path | None = None, truth: Path | None = None
) -> tuple[str, pl.DataFrame]:
    """The decisions joined with what is known of them: ("truth", frame with boolean `fraud`,
    `scenario` and `group`) or ("labels", frame with `fraud` from each transaction's latest
    label; unlabelled transactions left out)."""
    if (labels is None) == (truth is None):
        raise ValueError("give exactly one of --labels or --truth")
    decided = payment_decisions(pl.read_parquet(decisions))
    decided = decided.select(
        "tx_id",
        "ts",
        "user_id",
        "risk",
        "action",
        "rebate_requested_cents",
        "rebate_granted_cents",
        *(["trust_weight"] if "trust_weight" in decided.columns else []),
    )
    if truth is not None:
        source = "truth"
        facts = pl.read_parquet(_truth_file(truth)).select(
            "tx_id", pl.col("is_fraud").alias("fraud"), "scenario", "group"
        )
        frame = decided.join(facts, on="tx_id", how="inner")
    else:
        source = "labels"
        assert labels is not None
        latest = (
            pl.read_parquet(labels)
            .filter(pl.col("tx_id").is_not_null())
            .sort("ts")
            .group_by("tx_id")
            .last()
            .select("tx_id", (pl.col("label") == "fraud").alias("fraud"))
        )
        frame = decided.join(latest, on="tx_id", how="inner")
    if frame.is_empty():
        raise ValueError(f"no decision in {decisions} matches the {source}")
    return source, frame


def _after_ledger(frame: pl.DataFrame, adjustments: Path) -> pl.DataFrame:
    """`frame` with each transaction's granted money as its last adjustment left it. A
    legitimate payment that was refunded is owed no rebate (the refund voided it): it leaves
    the legitimate side; a fraudulent one stays (its rebate is withheld either way)."""
    made = pl.read_parquet(adjustments, columns=["tx_id", "ts", "granted_cents", "cause"])
    refunded = made.filter(pl.col("cause").str.starts_with("refund:"))["tx_id"].unique()
    last = (
        made.sort("ts", maintain_order=True)
        .group_by("tx_id")
        .last()
        .select("tx_id", pl.col("granted_cents").alias("granted_in_the_end"))
    )
    return (
        frame.filter(pl.col("fraud") | ~pl.col("tx_id").is_in(refunded.implode()))
        .join(last, on="tx_id", how="left")
        .with_columns(
            pl.coalesce("granted_in_the_end", "rebate_granted_cents").alias("rebate_granted_cents")
        )
        .drop("granted_in_the_end")
    )


def money_withheld(frame: pl.DataFrame) -> dict[str, float]:
    """Share of requested rebate money not granted, for fraud and legit overall, each
    scenario's fraud and each look-alike group's legitimate payments."""
    paid = frame.filter(pl.col("rebate_requested_cents") > 0)

    def share(rows: pl.DataFrame) -> float:
        requested = int(rows["rebate_requested_cents"].sum())
        granted = int(rows["rebate_granted_cents"].sum())
        return 1.0 - granted / requested if requested else 0.0

    fraud, legit = paid.filter(pl.col("fraud")), paid.filter(~pl.col("fraud"))
    out = {"fraud": share(fraud), "legit": share(legit)}
    for (scenario,), rows in sorted(fraud.group_by("scenario"), key=lambda g: str(g[0][0])):
        out[f"fraud:{scenario}"] = share(rows)
    groups = legit.filter(pl.col("group").is_not_null() & (pl.col("group") != "legit"))
    for (group,), rows in sorted(groups.group_by("group"), key=lambda g: str(g[0][0])):
        out[f"legit:{group}"] = share(rows)
    return out


def capture_at_friction(frame: pl.DataFrame, friction: float) -> float | None:
    """The best any single trust-weight cut could do: the share of fraudulent rebate money
    withheld when payments are withheld lowest weight first until the legitimate rebate
    money withheld reaches `friction` of all legitimate rebate money. It measures the
    ranking where the money is, whatever the policy: a weight that puts legitimate money
    among the fraud can capture little at a small friction however its thresholds are set.

    `frame`: payments with `trust_weight`, `rebate_requested_cents` and boolean `fraud`.
    Payments with equal weights are withheld together (a cut cannot split them), so a tie
    that would overshoot the friction is left out. None when there is no money of either
    class."""
    curve = friction_curve(frame)
    if curve is None:
        return None
    legit_total, fraud_total = int(curve["legit_cents"].sum()), int(curve["fraud_cents"].sum())
    within = curve.filter(pl.col("legit_withheld") <= friction * legit_total)
    if within.is_empty():
        return 0.0
    return int(within["fraud_withheld"].max()) / fraud_total  # type: ignore[arg-type]


def friction_curve(frame: pl.DataFrame) -> pl.DataFrame | None:
    """Every single trust-weight cut, lowest weight first (payments with equal weights
    together): `trust_weight`, the money at that weight (`fraud_cents`, `legit_cents`) and
    the money withheld by a cut just above it (`fraud_withheld`, `legit_withheld`, cents;
    `fraud_share`, `legit_share` of each class's rebate money). The curve of fraud money
    withheld against legitimate friction that `capture_at_friction` reads at one friction.
    None when there is no money of either class."""
    paid = frame.filter(pl.col("rebate_requested_cents") > 0)
    by_weight = paid.group_by("trust_weight").agg(
        pl.col("rebate_requested_cents").filter(pl.col("fraud")).sum().alias("fraud_cents"),
        pl.col("rebate_requested_cents").filter(~pl.col("fraud")).sum().alias("legit_cents"),
    )
    fraud_total = int(by_weight["fraud_cents"].sum())
    legit_total = int(by_weight["legit_cents"].sum())
    if fraud_total == 0 or legit_total == 0:
        return None
    return (
        by_weight.sort("trust_weight")
        .with_columns(
            pl.col("fraud_cents").cum_sum().alias("fraud_withheld"),
            pl.col("legit_cents").cum_sum().alias("legit_withheld"),
        )
        .with_columns(
            (pl.col("fraud_withheld") / fraud_total).alias("fraud_share"),
            (pl.col("legit_withheld") / legit_total).alias("legit_share"),
        )
    )


def _budget_beside(decisions: Path) -> float | None:
    """The shared legit_friction in the `budget.json` replay wrote next to `decisions`."""
    path = decisions.parent / "budget.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    shared = report.get("groups", {}).get("*") if report.get("mode") == "budget" else None
    return None if shared is None else float(shared["legit_friction"])


def _truth_file(truth: Path) -> Path:
    """`--truth` may name the world's truth directory or its tx_truth.parquet."""
    return truth / "tx_truth.parquet" if truth.is_dir() else truth


def write_json(evaluation: Evaluation, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evaluation.to_json(), indent=2) + "\n")
