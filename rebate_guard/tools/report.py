"""`rebate-guard report`: a replay directory as one self-contained HTML file, for risk teams
who backtest offline.

The page holds everything it needs: the vendored uPlot and Cytoscape.js (MIT,
`streams/static/vendor/`) and the report's own small script are inlined, the figures travel
in `<script type="application/json">` blocks, and a Content-Security-Policy lets only those
three scripts run and nothing be fetched. Tables are rendered here by the Jinja2 template,
autoescaped; the charts and ring graphs are drawn in the browser from the JSON blocks, whose
`<`, `>` and `&` are written as \\u003c \\u003e \\u0026 so no id can end a block.

The figures are `rebate_guard.tools.evaluate`'s: the decisions joined with the world's ground truth
(when the replayed files came from the simulator, or `--truth`), else with the labels (the
labelled sample only), else none, which the page says. Where the events came from is read
from the `inputs.json` replay writes (or given with `--world`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
from jinja2 import Environment, PackageLoader, select_autoescape

from rebate_guard.contract.time import DAY_MS, HOUR_MS
from rebate_guard.core.points import POINTS_THRESHOLDS
from rebate_guard.core.policy import Policy, default_policy
from rebate_guard.tools.evaluate import (
    CAPTURE_AT_FRICTION,
    Evaluation,
    evaluate,
    evaluation_frame,
    friction_curve,
    money_withheld,
    payment_decisions,
)
from rebate_guard.tools.io import read_frame
from rebate_guard.tools.report_solvency import Formats, points_view, read_if, solvency_view
from rebate_guard.tools.simulator import ABUSE_SCENARIOS

#: Periods up to this long are drawn per hour, longer ones per day.
HOURLY_UP_TO_MS = 3 * DAY_MS
#: The friction curve is thinned to about this many points (the page stays small).
CURVE_POINTS = 1_000
#: A ring graph shows at most this many of its users (those whose payments requested most).
MAX_RING_USERS = 120
#: Users' ids are written beside them in graphs of up to this many users.
MAX_LABELLED_USERS = 40
VENDOR = ("uplot.min.js", "uplot.min.css", "cytoscape.min.js")
FORMATS = ("parquet", "csv", "jsonl")
#: Roles of the simulator's abusive accounts (`user_truth.role`): its abuse scenarios.
ABUSIVE_ROLES = frozenset(ABUSE_SCENARIOS)


@dataclass(frozen=True)
class Sources:
    """Where a report's figures come from."""

    replay_dir: Path
    transactions: Path | None = None
    signups: Path | None = None
    labels: Path | None = None
    truth: Path | None = None  # a directory holding tx_truth.parquet

    @property
    def decisions(self) -> Path:
        return self.replay_dir / "decisions.parquet"

    def beside(self, name: str) -> Path | None:
        path = self.replay_dir / name
        return path if path.exists() else None


def find_sources(
    replay_dir: Path,
    world: Path | None = None,
    truth: Path | None = None,
    labels: Path | None = None,
) -> Sources:
    """The replay's outputs and its input files: from `world` (a directory of contract files,
    as `simulate --out` writes them, with `truth/` when simulated), else from the replay's
    `inputs.json`. `truth` and `labels` override what is found."""
    if not (replay_dir / "decisions.parquet").exists():
        raise FileNotFoundError(f"{replay_dir} holds no decisions.parquet: not a replay directory")
    found: dict[str, Path | None] = {"transactions": None, "signups": None, "labels": None}
    if world is not None:
        for name in found:
            found[name] = next(
                (p for ext in FORMATS if (p := world / f"{name}.{ext}").exists()), None
            )
    elif (replay_dir / "inputs.json").exists():
        named = json.loads((replay_dir / "inputs.json").read_text())
        for name in found:
            path = Path(named[name]) if named.get(name) else None
            found[name] = path if path is not None and path.exists() else None
    if truth is None:
        base = world or (found["transactions"].parent if found["transactions"] else None)
        if base is not None and (base / "truth" / "tx_truth.parquet").exists():
            truth = base / "truth"
    elif not truth.is_dir():
        truth = truth.parent  # tx_truth.parquet named: its directory
    return Sources(
        replay_dir,
        transactions=found["transactions"],
        signups=found["signups"],
        labels=labels if labels is not None else found["labels"],
        truth=truth,
    )


# ------------------------------------------------------------------------------------------
# Figures


def cents(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value / 100:,.2f}"


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def money_over_time(decisions: pl.DataFrame, fraud: pl.DataFrame | None) -> dict[str, Any]:
    """Rebate money per hour or day of event time (cents): requested, granted, held (the
    requests of held payments) and withheld (requested - granted: held, blocked and the part
    a scale cut). With ground truth, also the part withheld from legitimate payments."""
    span = decisions.select(pl.col("ts").max() - pl.col("ts").min()).item() or 0
    bucket_ms = HOUR_MS if span <= HOURLY_UP_TO_MS else DAY_MS
    frame = decisions.with_columns((pl.col("ts") // bucket_ms * bucket_ms).alias("bucket"))
    if fraud is not None:
        frame = frame.join(fraud.select("tx_id", "fraud"), on="tx_id", how="left")
    withheld = pl.col("rebate_requested_cents") - pl.col("rebate_granted_cents")
    aggs = [
        pl.col("rebate_requested_cents").sum().alias("requested"),
        pl.col("rebate_granted_cents").sum().alias("granted"),
        pl.col("rebate_requested_cents").filter(pl.col("action") == "hold").sum().alias("held"),
        withheld.sum().alias("withheld"),
    ]
    if fraud is not None:
        aggs.append(withheld.filter(pl.col("fraud") == False).sum().alias("withheld_legit"))  # noqa: E712
    per = frame.group_by("bucket").agg(aggs).sort("bucket")
    names = [
        ("requested", "requested", "#7f7f7f"),
        ("granted", "granted", "#2ca02c"),
        ("held", "held", "#ff7f0e"),
        ("withheld", "withheld (held, blocked, scaled down)", "#d62728"),
    ]
    if fraud is not None:
        names.append(("withheld_legit", "withheld from legitimate payments", "#9467bd"))
    return {
        "bucket": "hour" if bucket_ms == HOUR_MS else "day",
        "x": [ts // 1000 for ts in per["bucket"].to_list()],
        "series": [
            {"key": key, "label": label, "color": color, "cents": per[key].to_list()}
            for key, label, color in names
        ],
    }


def curve_data(frame: pl.DataFrame, evaluation: Evaluation) -> dict[str, Any] | None:
    """`evaluate.friction_curve` of the decisions (truth, with trust weights), thinned to
    about `CURVE_POINTS` of its points (the first and last kept), and this replay's own
    point: the money its decisions withheld from each class."""
    if "trust_weight" not in frame.columns:
        return None
    curve = friction_curve(frame)
    if curve is None:
        return None
    step = max(1, curve.height // CURVE_POINTS)
    keep = sorted({*range(0, curve.height, step), curve.height - 1})
    points = curve[keep]
    point = {
        "legit": evaluation.money_withheld["legit"],
        "fraud": evaluation.money_withheld["fraud"],
    }
    reach = max(0.05, 3 * point["legit"], 3 * (evaluation.budget or 0.0))
    return {
        "legit_share": [0.0, *points["legit_share"].to_list()],
        "fraud_share": [0.0, *points["fraud_share"].to_list()],
        "point": point,
        "budget": evaluation.budget,
        "x_max": min(1.0, reach),
        "capture_at_friction": evaluation.fraud_capture_at_friction,
        "friction": CAPTURE_AT_FRICTION,
    }


def scenario_rows(frame: pl.DataFrame, evaluation: Evaluation) -> list[dict[str, str]]:
    final = evaluation.money_withheld_final
    requested = _requested_by(frame.filter(pl.col("fraud")), "scenario")
    rows = []
    for name, r in sorted(evaluation.per_scenario.items()):
        key = f"fraud:{name}"
        rows.append(
            {
                "scenario": name,
                "fraud": f"{r.fraud:,}",
                "roc_auc": number(r.roc_auc),
                "average_precision": number(r.average_precision),
                "requested": cents(requested.get(name, 0)),
                "withheld": share(evaluation.money_withheld.get(key)),
                "withheld_final": share(final.get(key)) if final else "",
            }
        )
    return rows


def lookalike_rows(frame: pl.DataFrame, evaluation: Evaluation) -> list[dict[str, str]]:
    final = evaluation.money_withheld_final
    legit = frame.filter(~pl.col("fraud"))
    counts = dict(legit.group_by("group").len().iter_rows())
    requested = _requested_by(legit, "group")
    return [
        {
            "group": group,
            "transactions": f"{counts.get(group, 0):,}",
            "held_or_blocked": share(held),
            "requested": cents(requested.get(group, 0)),
            "withheld": share(evaluation.money_withheld.get(f"legit:{group}")),
            "withheld_final": share(final.get(f"legit:{group}")) if final else "",
        }
        for group, held in sorted(evaluation.lookalikes_withheld.items())
    ]


def category_rows(
    decisions: pl.DataFrame, categories: pl.DataFrame, fraud: pl.DataFrame | None
) -> list[dict[str, str]]:
    """Per merchant category: the money, and with ground truth the share withheld from
    fraud and from legitimate payments (`evaluate.money_withheld` of the category's
    payments)."""
    frame = decisions.join(categories, on="tx_id", how="left").with_columns(
        pl.col("merchant_category").fill_null("(unknown)")
    )
    if fraud is not None:
        frame = frame.join(fraud.select("tx_id", "fraud", "scenario", "group"), on="tx_id")
    rows, held = [], pl.col("action") == "hold"
    for (category,), part in sorted(frame.group_by("merchant_category"), key=lambda g: str(g[0])):
        requested = int(part["rebate_requested_cents"].sum())
        granted = int(part["rebate_granted_cents"].sum())
        row = {
            "category": str(category),
            "transactions": f"{part.height:,}",
            "requested": cents(requested),
            "granted": cents(granted),
            "held": cents(int(part.filter(held)["rebate_requested_cents"].sum())),
            "withheld": share(1 - granted / requested if requested else None),
            "fraud_withheld": "",
            "legit_withheld": "",
        }
        if fraud is not None:
            outcome = money_withheld(part)
            paid = part.filter(pl.col("rebate_requested_cents") > 0)
            has_fraud, has_legit = paid["fraud"].any(), (~paid["fraud"]).any()
            row["fraud_withheld"] = share(outcome["fraud"] if has_fraud else None)
            row["legit_withheld"] = share(outcome["legit"] if has_legit else None)
        rows.append(row)
    return rows


def budget_rows(budget: Mapping[str, Any] | None) -> list[dict[str, str]]:
    if not budget or budget.get("mode") != "budget":
        return []
    return [
        {
            "group": "all other categories" if name == "*" else str(name),
            "legit_friction": share(state.get("legit_friction")),
            "cut": number(state.get("cut"), 3),
            "block_cut": number(state.get("block_cut"), 3),
            "payments": f"{state.get('payments', 0):,}",
            "achieved": share(state.get("achieved_legit_friction")),
            "expected": share(state.get("expected_legit_friction")),
        }
        for name, state in sorted(budget.get("groups", {}).items())
    ]


def _requested_by(frame: pl.DataFrame, column: str) -> dict[str, int]:
    per = frame.group_by(column).agg(pl.col("rebate_requested_cents").sum())
    return {str(k): int(v) for k, v in per.iter_rows()}


# ------------------------------------------------------------------------------------------
# Rings

#: Evidence keys in words; others are written as "key: value".
EVIDENCE_WORDS: dict[str, str] = {
    "accounts": "{v} account{s}",
    "new_accounts": "{v} new account{s}",
    "users": "{v} user{s}",
    "merchants": "{v} merchant{s}",
    "payments": "{v} payment{s} inside the group",
    "referred_share": "{p} of the accounts signed up through a referral",
    "accounts_per_device_or_phone": "{v} accounts per device or phone number",
    "accounts_per_device": "{v} accounts per device",
    "accounts_per_card_or_device": "{v} accounts per card or device",
    "accounts_per_device_or_ip": "{v} accounts per device or IP address",
    "median_hours_to_first_buy": "first purchase a median {v} h after signup",
    "tiers": "{v} tiers of referrals",
    "median_hours_between_tiers": "a new tier every {v} h (median)",
    "root": "the referral tree starts at user {v}",
    "share_paying_at_one_merchant": "{p} of the members pay at one merchant",
    "closed_share": "{p} of the money goes round inside the group",
    "share_of_all_payments": "{p} of the merchants' payments come from the group",
    "cross_paying_share": "{p} of the members pay at several of the group's merchants",
    "mean_rebate_rate": "a mean rebate rate of {p}",
    "payments_per_account": "{v} payments per account",
    "quick_refund_share": "{p} of the payments refunded within a day",
    "mean_amount_cents": "a mean payment of {c}",
    "score_cap": "score capped at {v} (a signup batch is intent, not yet abuse)",
    "linked": "linked by shared devices, phones or referrals: {v} (0-1)",
    "share_of_the_ips_users": "{p} of the IP address's users signed up in the batch",
    "superseded_by": "retired: superseded by ring {v}",
}
#: Evidence flags (true) in words.
EVIDENCE_FLAGS: dict[str, str] = {
    "expired": "retired: it no longer stands on the graph's window",
    "left_window": "all its accounts have left the graph's window (the verdict stands)",
}


def evidence_in_words(evidence: Mapping[str, Any]) -> list[str]:
    """The ring's evidence as sentences (text; the template escapes it)."""
    lines = []
    for key, value in evidence.items():
        words, template = key.replace("_", " "), EVIDENCE_WORDS.get(key)
        if key == "traits" and isinstance(value, Mapping):
            traits = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(value.items()))
            if traits:
                lines.append(f"trait scores (0-1, the weakest bounds the score): {traits}")
        elif isinstance(value, bool):
            if key not in EVIDENCE_FLAGS:
                lines.append(f"{words}: {'yes' if value else 'no'}")
            elif value:
                lines.append(EVIDENCE_FLAGS[key])
        elif template is not None and isinstance(value, int | float):
            plural = "" if value == 1 else "s"
            lines.append(template.format(v=value, p=f"{value:.0%}", c=cents(value), s=plural))
        elif template is not None and "{v}" in template:
            lines.append(template.format(v=value))
        elif key.startswith("hours_for_"):
            lines.append(f"{key.removeprefix('hours_for_').replace('_', ' ')} within {value} h")
        elif isinstance(value, Mapping | list):
            lines.append(f"{words}: {json.dumps(value, sort_keys=True)}")
        else:
            lines.append(f"{words}: {value}")
    return lines


def top_rings(rings: pl.DataFrame, n: int) -> pl.DataFrame:
    """The final version of each ring, the `n` with the most rebate money at risk."""
    final = (
        rings.sort("version", maintain_order=True).group_by("ring_id", maintain_order=True).last()
    )
    return final.sort(["rebate_at_risk_cents", "ring_id"], descending=[True, False]).head(n)


def ring_view(
    ring: Mapping[str, Any],
    decisions: pl.DataFrame,
    devices: pl.DataFrame | None,
    referrals: pl.DataFrame | None,
    roles: Mapping[str, str] | None,
) -> dict[str, Any]:
    """One ring for the page: its facts and evidence in words (template) and its graph
    (Cytoscape elements: users, merchants, shared devices; payment, device and referral
    edges)."""
    users: list[str] = list(ring["users"] or [])
    merchants: list[str] = list(ring["merchants"] or [])
    paid = decisions.filter(pl.col("user_id").is_in(users))
    by_user = dict(paid.group_by("user_id").agg(pl.col("rebate_requested_cents").sum()).iter_rows())
    shown = sorted(users, key=lambda u: (-by_user.get(u, 0), u))[:MAX_RING_USERS]
    shown_set = set(shown)
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for user in shown:
        data: dict[str, Any] = {"id": f"u:{user}", "label": user, "kind": "user"}
        if roles is not None:
            data["abusive"] = roles.get(user) in ABUSIVE_ROLES
        nodes.append({"data": data})
    for merchant in merchants:
        nodes.append({"data": {"id": f"m:{merchant}", "label": merchant, "kind": "merchant"}})
    at_ring = paid.filter(
        pl.col("user_id").is_in(list(shown_set)) & pl.col("merchant_id").is_in(merchants)
    )
    pairs = at_ring.group_by("user_id", "merchant_id").agg(
        pl.len().alias("payments"), pl.col("rebate_requested_cents").sum()
    )
    for user, merchant, payments, requested in pairs.sort("user_id", "merchant_id").iter_rows():
        edges.append(
            {
                "data": {
                    "id": f"p:{user}\x1f{merchant}",
                    "source": f"u:{user}",
                    "target": f"m:{merchant}",
                    "kind": "payment",
                    "payments": payments,
                    "cents": requested,
                }
            }
        )
    shared_devices = 0
    if devices is not None:
        mine = devices.filter(pl.col("user_id").is_in(list(shown_set))).unique()
        per = mine.group_by("device_id").agg(pl.col("user_id").sort()).sort("device_id")
        for device, holders in per.iter_rows():
            if len(holders) < 2:
                continue  # a device of one member is no link between members
            shared_devices += 1
            nodes.append({"data": {"id": f"d:{device}", "label": device, "kind": "device"}})
            for user in holders:
                edges.append(
                    {
                        "data": {
                            "id": f"e:{user}\x1f{device}",
                            "source": f"u:{user}",
                            "target": f"d:{device}",
                            "kind": "device",
                        }
                    }
                )
    referral_edges, referred = 0, set()
    if referrals is not None:
        inside = referrals.filter(
            pl.col("user_id").is_in(list(shown_set)) & pl.col("referrer_id").is_in(list(shown_set))
        )
        for user, referrer in (
            inside.select("user_id", "referrer_id").unique().sort("user_id").iter_rows()
        ):
            referral_edges += 1
            referred.add(user)
            edges.append(
                {
                    "data": {
                        "id": f"r:{referrer}\x1f{user}",
                        "source": f"u:{referrer}",
                        "target": f"u:{user}",
                        "kind": "referral",
                    }
                }
            )
    requested = int(paid["rebate_requested_cents"].sum())
    granted = int(paid["rebate_granted_cents"].sum())
    actions = dict(paid.group_by("action").len().iter_rows())
    evidence = json.loads(ring["evidence"]) if isinstance(ring["evidence"], str) else {}
    view: dict[str, Any] = {
        "ring_id": ring["ring_id"],
        "kind": ring["kind"],
        "version": ring["version"],
        "status": ring["status"],
        "score": number(ring["score"], 2),
        "at_risk": cents(ring["rebate_at_risk_cents"]),
        "detected_at": utc(ring["detected_at"]),
        "users": len(users),
        "merchants": len(merchants),
        "shown_users": len(shown),
        "shared_devices": shared_devices,
        "referral_edges": referral_edges,
        "evidence": evidence_in_words(evidence),
        "payments": paid.height,
        "requested": cents(requested),
        "granted": cents(granted),
        "withheld": share(1 - granted / requested if requested else None),
        "actions": ", ".join(
            f"{actions[a]:,} {a}" for a in ("allow", "scale", "hold", "block") if a in actions
        ),
        "abusive": None,
        "elements": nodes + edges,
        # A pyramid is drawn as its referral tree from these users down; other rings by force.
        "tree_roots": [f"u:{u}" for u in shown if u not in referred]
        if ring["kind"] == "pyramid" and referral_edges
        else None,
        "user_labels": len(shown) <= MAX_LABELLED_USERS,
    }
    if roles is not None:
        view["abusive"] = sum(roles.get(u) in ABUSIVE_ROLES for u in users)
    return view


# ------------------------------------------------------------------------------------------
# The page


def script_json(value: Any) -> str:
    """JSON for a `<script type="application/json">` block: no `<`, `>` or `&` in it, so
    no value can close the block or open a comment (JSON.parse reads the escapes back)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _vendor(name: str) -> str:
    text = (resources.files("streams") / "static" / "vendor" / name).read_text("utf-8")
    return _inlinable(name, text)


def _own(name: str) -> str:
    return _inlinable(
        name, (resources.files("rebate_guard.tools") / "templates" / name).read_text("utf-8")
    )


def _inlinable(name: str, text: str) -> str:
    if "</script" in text.lower() or "</style" in text.lower() or "<!--" in text:
        raise ValueError(f"{name} cannot be inlined: it would end its element")
    return text


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("rebate_guard.tools", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass
class Judged:
    """The decisions against what is known of them (`evaluate`), or nothing known."""

    evaluation: Evaluation | None
    frame: pl.DataFrame | None  # evaluate's joined frame
    note: str  # which truth or labels the figures use, in words

    @property
    def truth(self) -> pl.DataFrame | None:
        """The frame, when it is the ground truth's (scenarios, groups, money)."""
        judged = self.evaluation is not None and self.evaluation.source == "truth"
        return self.frame if judged else None


def judge(sources: Sources, decided: int) -> Judged:
    """`evaluate` against the ground truth if there is one, else the labels, else nothing."""
    adjustments = sources.beside("adjustments.parquet")
    skipped = ""
    for source, path in (("truth", sources.truth), ("labels", sources.labels)):
        if path is None:
            continue
        truth, labels = (path, None) if source == "truth" else (None, path)
        try:
            evaluation = evaluate(
                sources.decisions, labels=labels, truth=truth, adjustments=adjustments
            )
            _, frame = evaluation_frame(sources.decisions, labels=labels, truth=truth)
        except (ValueError, OSError, pl.exceptions.PolarsError) as exc:  # e.g. not parquet
            skipped += f"Not used, the {source} from {path}: {exc}. "
            continue
        if source == "truth":
            note = (
                f"Fraud figures use the simulator's ground truth ({path}/tx_truth.parquet): "
                "every decided transaction is known fraud or legitimate, with its scenario "
                "and look-alike group."
            )
        else:
            note = (
                f"No ground truth: fraud figures use the labels ({path}, each transaction's "
                "latest label), so they describe the labelled sample "
                f"({evaluation.overall.transactions:,} of {decided:,} transactions, "
                f"{evaluation.overall.fraud:,} labelled fraud), not the whole traffic. Money "
                "withheld by scenario and look-alike group needs the ground truth."
            )
        return Judged(evaluation, frame, skipped + note)
    return Judged(
        None,
        None,
        skipped + "No ground truth and no labels were found for these decisions: the page "
        "shows the money and the rings only, not how much of it was fraud. Give --truth (a "
        "simulated world's truth directory) or --labels.",
    )


def header(sources: Sources, decisions: pl.DataFrame) -> dict[str, Any]:
    """What was replayed: world, transactions, period, policy versions, the money."""
    requested = int(decisions["rebate_requested_cents"].sum())
    granted = int(decisions["rebate_granted_cents"].sum())
    held = int(decisions.filter(pl.col("action") == "hold")["rebate_requested_cents"].sum())
    actions = dict(decisions.group_by("action").len().iter_rows())
    versions = decisions.group_by("policy_version").len().sort("policy_version")
    period = "n/a"
    if decisions.height:
        first, last = decisions.select(pl.col("ts").min().alias("a"), pl.col("ts").max()).row(0)
        period = f"{utc(first)} to {utc(last)}"
    return {
        "replay_dir": str(sources.replay_dir),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "world": _world_name(sources),
        "transactions": f"{decisions.height:,}",
        "period": period,
        "policy_versions": [f"{v} ({n:,} decisions)" for v, n in versions.iter_rows()],
        "threshold_versions": decisions["threshold_version"].n_unique(),
        "money": {
            "requested": cents(requested),
            "granted": cents(granted),
            "held": cents(held),
            "withheld": cents(requested - granted),
            "withheld_share": share(1 - granted / requested if requested else None),
        },
        "actions": [(a, f"{actions.get(a, 0):,}") for a in ("allow", "scale", "hold", "block")],
    }


def headline(evaluation: Evaluation) -> dict[str, Any]:
    """`evaluate`'s overall figures as text."""
    withheld, final = evaluation.money_withheld, evaluation.money_withheld_final
    return {
        "source": evaluation.source,
        "transactions": f"{evaluation.overall.transactions:,}",
        "fraud": f"{evaluation.overall.fraud:,}",
        "roc_auc": number(evaluation.overall.roc_auc),
        "average_precision": number(evaluation.overall.average_precision),
        "top_k": evaluation.top_k,
        "precision_top_k": number(evaluation.precision_top_k_users_per_day),
        "days": evaluation.days,
        "ece": number(evaluation.expected_calibration_error),
        "fraud_withheld": share(withheld.get("fraud")),
        "legit_withheld": share(withheld.get("legit")),
        "fraud_withheld_final": share(final.get("fraud")),
        "legit_withheld_final": share(final.get("legit")),
        "budget": share(evaluation.budget) if evaluation.budget is not None else None,
        "capture": share(evaluation.fraud_capture_at_friction),
        "friction": f"{CAPTURE_AT_FRICTION:.0%}",
    }


def build(sources: Sources, top_n: int = 10, policy: Policy | None = None) -> dict[str, Any]:
    """Everything the template shows: tables as escaped text, charts and graphs as data.
    `policy` gives the solvency lines drawn (default: the shipped policy's)."""
    decided = pl.read_parquet(sources.decisions)
    decisions = payment_decisions(decided)
    judged = judge(sources, decisions.height)
    evaluation, truth = judged.evaluation, judged.truth
    context = header(sources, decisions)
    context["source_note"] = judged.note
    context["evaluation"] = headline(evaluation) if evaluation is not None else None
    context["final"] = bool(evaluation and evaluation.money_withheld_final)
    curve = None
    context["scenarios"], context["lookalikes"] = [], []
    if truth is not None and evaluation is not None:
        curve = curve_data(truth, evaluation)
        context["scenarios"] = scenario_rows(truth, evaluation)
        context["lookalikes"] = lookalike_rows(truth, evaluation)
    context["has_curve"] = curve is not None

    transactions = read_frame(sources.transactions) if sources.transactions else None
    context["categories"] = []
    if transactions is not None and "merchant_category" in transactions.columns:
        categories = transactions.select("tx_id", "merchant_category").unique("tx_id", keep="first")
        context["categories"] = category_rows(decisions, categories, truth)
    budget_path = sources.beside("budget.json")
    context["budget"] = budget_rows(json.loads(budget_path.read_text()) if budget_path else None)

    rings_path = sources.beside("rings.parquet")
    rings = pl.read_parquet(rings_path) if rings_path else None
    context["rings_total"] = rings["ring_id"].n_unique() if rings is not None else 0
    devices = _devices(transactions, sources.signups)
    referrals = _referrals(sources.signups)
    roles = _roles(sources.truth)
    views = []
    if rings is not None and top_n > 0:
        for ring in top_rings(rings, top_n).iter_rows(named=True):
            views.append(ring_view(ring, decisions, devices, referrals, roles))
    context["rings"] = views
    context["has_devices"] = devices is not None
    context["has_referrals"] = referrals is not None
    context["has_roles"] = roles is not None

    money = money_over_time(decisions, truth)
    context["bucket"] = money["bucket"]
    fmt = Formats(cents=cents, share=share, number=number, utc=utc)
    context["solvency"] = solvency = solvency_view(
        read_if(sources.beside("solvency.parquet")),
        read_if(sources.beside("platform_alerts.parquet")),
        policy=policy or default_policy(),
        fmt=fmt,
    )
    context["points"] = None
    if "threshold_version" in decided.columns:  # decisions from before it was recorded: none
        requests = decided.filter(pl.col("threshold_version") == POINTS_THRESHOLDS)
        context["points"] = points_view(requests, fmt=fmt)
    blocks = {
        "money-data": money,
        "curve-data": curve,
        "rings-data": [
            {key: v[key] for key in ("ring_id", "elements", "tree_roots", "user_labels")}
            for v in views
        ],
        "evaluation-data": evaluation.to_json() if evaluation is not None else None,
        "solvency-data": solvency["chart"] if solvency is not None else None,
    }
    context["data_blocks"] = [(name, script_json(value)) for name, value in blocks.items()]
    return context


def render(context: Mapping[str, Any]) -> str:
    scripts = [_vendor("uplot.min.js"), _vendor("cytoscape.min.js"), _own("report.js")]
    styles = [_vendor("uplot.min.css"), _own("report.css")]
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src " + " ".join(f"'{_sha256(s)}'" for s in scripts),
            "style-src 'unsafe-inline'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )
    template = _environment().get_template("report.html")
    return template.render(**context, scripts=scripts, styles=styles, csp=csp)


def write_report(
    replay_dir: Path,
    out: Path,
    top_n: int = 10,
    world: Path | None = None,
    truth: Path | None = None,
    labels: Path | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """Write the report of `replay_dir` to `out`; returns what it shows."""
    sources = find_sources(replay_dir, world=world, truth=truth, labels=labels)
    context = build(sources, top_n, policy=policy)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(context), encoding="utf-8")
    return context


def _world_name(sources: Sources) -> str:
    if sources.transactions is None:
        return "unknown (no inputs.json in the replay directory; give --world)"
    name = str(sources.transactions.parent)
    config = sources.truth / "config.json" if sources.truth else None
    if config is not None and config.exists():
        c = json.loads(config.read_text())
        name += f" (simulated: seed {c.get('seed')}, {c.get('days')} days)"
    elif sources.truth is not None:
        name += " (simulated)"
    return name


def _devices(transactions: pl.DataFrame | None, signups: Path | None) -> pl.DataFrame | None:
    """(user_id, device_id) of every payment and signup, when the files are known."""
    parts: list[pl.DataFrame] = []
    if transactions is not None and "device_id" in transactions.columns:
        parts.append(transactions.select("user_id", "device_id"))
    if signups is not None:
        frame = read_frame(signups)
        if "device_id" in frame.columns:
            parts.append(frame.select("user_id", "device_id"))
    if not parts:
        return None
    return pl.concat(parts).drop_nulls().unique()


def _referrals(signups: Path | None) -> pl.DataFrame | None:
    if signups is None:
        return None
    frame = read_frame(signups)
    if "referrer_id" not in frame.columns:
        return None
    return frame.select("user_id", "referrer_id").drop_nulls()


def _roles(truth: Path | None) -> dict[str, str] | None:
    path = truth / "user_truth.parquet" if truth else None
    if path is None or not path.exists():
        return None
    return dict(pl.read_parquet(path, columns=["user_id", "role"]).iter_rows())
