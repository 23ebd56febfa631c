"""`rebate-guard report`: a replayed simulated world as one HTML file whose figures are
evaluate's, whose tables name the scenarios and groups, whose rings are drawn, and where ids
hostile to the reader are only ever text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from markupsafe import escape

from rebate_guard.cli import main
from rebate_guard.tools.evaluate import (
    evaluate,
    evaluation_frame,
    friction_curve,
    payment_decisions,
)
from rebate_guard.tools.report import (
    Sources,
    build,
    evidence_in_words,
    render,
    script_json,
    write_report,
)
from tests.approx import close
from tests.report_world import (
    HOSTILE,
    HOSTILE_REGION,
    HOSTILE_RING,
    HOSTILE_USER,
    ReplayedWorld,
    replayed_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ReplayedWorld:
    return replayed_world(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def page(world: ReplayedWorld, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("page") / "report.html"
    # No --world: the replay's inputs.json says where the files are, and truth/ is beside them.
    assert main(["report", str(world.replay), "--out", str(out), "--top-rings", "50"]) == 0
    return out.read_text()


class Page(HTMLParser):
    """The tags of a page, its JSON blocks and its tables' cell text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.blocks: dict[str, Any] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._block: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.tags.append((tag, named))
        if tag == "script" and named.get("type") == "application/json":
            self._block = named["id"]
        elif tag == "table":
            self._table = named.get("id")
            self.tables[str(self._table)] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "script":
            self._block = None

    def handle_data(self, data: str) -> None:
        if self._block is not None:
            self.blocks[self._block] = json.loads(data)
        elif self._cell is not None:
            self._cell.append(data)


def test_the_figures_are_evaluates(world: ReplayedWorld, page: str) -> None:
    parsed = Page(page)
    adjustments = world.replay / "adjustments.parquet"
    decisions = world.replay / "decisions.parquet"
    expected = evaluate(decisions, truth=world.truth, adjustments=adjustments)
    assert close(parsed.blocks["evaluation-data"], expected.to_json())

    curve = parsed.blocks["curve-data"]
    _, frame = evaluation_frame(decisions, truth=world.truth)
    cuts = friction_curve(frame)
    assert cuts is not None
    every = set(zip(cuts["legit_share"].to_list(), cuts["fraud_share"].to_list(), strict=True))
    drawn = list(zip(curve["legit_share"], curve["fraud_share"], strict=True))
    assert drawn[0] == (0.0, 0.0) and drawn[-1] == (1.0, 1.0)
    assert set(drawn[1:]) <= every and len(drawn) > 10
    assert curve["point"] == {
        "legit": expected.money_withheld["legit"],
        "fraud": expected.money_withheld["fraud"],
    }
    assert curve["capture_at_friction"] == expected.fraud_capture_at_friction

    money = parsed.blocks["money-data"]
    decided = payment_decisions(pl.read_parquet(decisions))  # not the points requests
    sums = {s["key"]: sum(s["cents"]) for s in money["series"]}
    assert money["bucket"] == "day" and len(money["x"]) == 10
    assert sums["requested"] == decided["rebate_requested_cents"].sum()
    assert sums["granted"] == decided["rebate_granted_cents"].sum()
    assert sums["withheld"] == sums["requested"] - sums["granted"]
    held = decided.filter(pl.col("action") == "hold")["rebate_requested_cents"].sum()
    assert sums["held"] == held


def test_the_tables_name_every_scenario_and_group(world: ReplayedWorld, page: str) -> None:
    parsed = Page(page)
    expected = evaluate(world.replay / "decisions.parquet", truth=world.truth)
    scenarios = {row[0]: row for row in parsed.tables["scenario-table"][1:]}
    assert set(scenarios) == set(expected.per_scenario) and len(scenarios) >= 4
    for name, ranking in expected.per_scenario.items():
        assert scenarios[name][1] == f"{ranking.fraud:,}"
        assert scenarios[name][2] == f"{ranking.roc_auc:.4f}"
        assert scenarios[name][5] == f"{expected.money_withheld[f'fraud:{name}']:.2%}"
    groups = {row[0] for row in parsed.tables["lookalike-table"][1:]}
    assert groups == set(expected.lookalikes_withheld)
    categories = {row[0] for row in parsed.tables["category-table"][1:]}
    assert {"restaurant", "retail"} <= categories
    assert [row[0] for row in parsed.tables["budget-table"][1:]] == ["all other categories"]
    assert parsed.tables["evaluation-table"][1][0] == "truth"
    assert "ground truth" in page and "default-" in page  # the policy version


def test_the_top_rings_are_drawn_by_money_at_risk(world: ReplayedWorld, page: str) -> None:
    parsed = Page(page)
    rings = pl.read_parquet(world.replay / "rings.parquet")
    final = rings.sort("version").group_by("ring_id").last()
    order = final.sort(["rebate_at_risk_cents", "ring_id"], descending=[True, False])
    drawn = parsed.blocks["rings-data"]
    assert [r["ring_id"] for r in drawn] == order["ring_id"].to_list()
    graphs = [a["id"] for tag, a in parsed.tags if tag == "div" and a.get("class") == "graph"]
    assert graphs == [f"ring-graph-{i}" for i in range(len(drawn))]
    top = drawn[0]
    assert top["ring_id"] == HOSTILE_RING
    kinds = {e["data"].get("kind") for e in top["elements"]}
    assert {"user", "merchant", "payment"} <= kinds
    members = {e["data"]["label"] for e in top["elements"] if e["data"].get("kind") == "user"}
    expected = set(final.filter(pl.col("ring_id") == HOSTILE_RING)["users"][0])
    assert members == expected
    assert any(HOSTILE_USER in {e["data"].get("label") for e in r["elements"]} for r in drawn)
    # Evidence in words, e.g. a farm's "accounts", beside the graph.
    assert re.search(r"<li>\d+ (accounts|users|new accounts)</li>", page)


def test_hostile_ids_appear_only_escaped(page: str) -> None:
    for hostile in HOSTILE:
        assert hostile not in page
        # In a JSON block (<, >, & as \u escapes) or as escaped text in the tables.
        assert script_json(hostile)[1:-1] in page or str(escape(hostile)) in page
    assert str(escape(HOSTILE_RING)) in page  # the ring's heading
    parsed = Page(page)
    tags = [tag for tag, _ in parsed.tags]
    assert tags.count("script") == 8  # five JSON blocks, uPlot, Cytoscape, the report's own
    assert not {"img", "svg", "iframe"} & set(tags)
    scripts = [a for tag, a in parsed.tags if tag == "script"]
    assert all(not a.get("src") for a in scripts)  # nothing loaded from anywhere
    csp = next(str(a["content"]) for tag, a in parsed.tags if a.get("http-equiv"))
    rules = dict(rule.strip().split(" ", 1) for rule in csp.split(";"))
    assert rules["default-src"] == "'none'"
    # Only the three scripts the report inlines may run: their hashes, no 'unsafe-inline'.
    assert rules["script-src"].count("'sha256-") == 3 and "unsafe" not in rules["script-src"]


def test_without_truth_the_labels_are_used_and_said(world: ReplayedWorld) -> None:
    sources = Sources(world.replay, labels=world.world / "labels.parquet")
    context = build(sources, top_n=2)
    parsed = Page(render(context))
    expected = evaluate(world.replay / "decisions.parquet", labels=world.world / "labels.parquet")
    assert close(parsed.blocks["evaluation-data"], expected.to_json())
    assert parsed.blocks["curve-data"] is None and "scenario-table" not in parsed.tables
    assert "labelled sample" in context["source_note"]
    assert len(parsed.blocks["rings-data"]) == 2


def test_with_neither_truth_nor_labels_the_money_and_rings_are_shown(
    world: ReplayedWorld, tmp_path: Path
) -> None:
    context = write_report(world.replay, tmp_path / "r.html", top_n=3, world=tmp_path)
    assert "No ground truth and no labels" in context["source_note"]
    parsed = Page((tmp_path / "r.html").read_text())
    assert parsed.blocks["evaluation-data"] is None
    assert len(parsed.blocks["money-data"]["x"]) == 10
    assert len(parsed.blocks["rings-data"]) == 3
    assert "evaluation-table" not in parsed.tables


def test_the_solvency_section_is_the_monitors_last_readings_and_alerts(
    world: ReplayedWorld, page: str
) -> None:
    readings = pl.read_parquet(world.replay / "solvency.parquet")
    alerts = pl.read_parquet(world.replay / "platform_alerts.parquet")
    last = readings.sort("period_end").group_by("scope").last()
    shown = last.filter(~pl.col("scope").str.starts_with("merchant:"))
    parsed = Page(page)
    table = parsed.tables["solvency-table"][1:]
    # The platform first, then every region (the hostile one among them, as text).
    regions = sorted(s for s in shown["scope"] if s != "platform")
    assert [row[0] for row in table] == ["platform", *regions]
    assert f"region:{HOSTILE_REGION}" in [row[0] for row in table]
    for row in table:
        expected = shown.filter(pl.col("scope") == row[0]).row(0, named=True)
        assert row[2] == expected["level"]
        assert row[4] == f"{expected['liability_cents'] / 100:,.2f}"
        assert row[5] == f"{expected['distributable_cents'] / 100:,.2f}"
    # The chart: the platform's ratio at each period's end, against the shipped lines.
    chart = parsed.blocks["solvency-data"]
    platform = readings.filter(pl.col("scope") == "platform").sort("period_end")
    assert chart["x"] == [end // 1000 for end in platform["period_end"]]
    assert chart["ratio"] == platform["ratio"].to_list()
    assert set(chart["warning"]) == {3.0} and set(chart["critical"]) == {5.0}
    # Alerts newest first; with none, the page says so.
    if alerts.height:
        rows = parsed.tables["alert-table"][1:]
        assert len(rows) == min(alerts.height, 100)
        newest = alerts.sort("ts", "alert_id", descending=True).row(0, named=True)
        assert rows[0][1] == newest["scope"] and rows[0][5] == newest["message"]
    else:
        assert "No alert" in page
    merchants = last.filter(pl.col("scope").str.starts_with("merchant:")).height
    assert f"{merchants} merchants read" in page


def test_the_points_requests_are_counted_by_action(world: ReplayedWorld, page: str) -> None:
    decided = pl.read_parquet(world.replay / "decisions.parquet")
    requests = decided.filter(pl.col("threshold_version") == "points")
    assert requests.height > 0  # the simulated platform redeems and transfers points
    table = Page(page).tables["points-table"][1:]
    counts = dict(requests.group_by("action").len().iter_rows())
    assert {row[0]: int(row[1]) for row in table} == counts


def test_a_replay_without_platform_events_says_how_to_get_them(
    world: ReplayedWorld, tmp_path: Path
) -> None:
    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    decided = pl.read_parquet(world.replay / "decisions.parquet")
    decided.filter(pl.col("threshold_version") != "points").write_parquet(
        replay_dir / "decisions.parquet"
    )
    context = write_report(replay_dir, tmp_path / "r.html", world=world.world)
    page = (tmp_path / "r.html").read_text()
    assert context["solvency"] is None and context["points"] is None
    assert 'id="no-solvency"' in page and "--platform-events" in page
    assert Page(page).blocks["solvency-data"] is None


def test_a_directory_that_is_no_replay_is_refused(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2


def test_evidence_is_written_in_words() -> None:
    evidence = {
        "accounts": 12,
        "referred_share": 0.75,
        "mean_amount_cents": 25_000,
        "expired": True,
        "left_window": True,
        "hours_for_5_signups": 0.3,
        "traits": {"fast_growth": 1.0},
        "something_new": "x",
    }
    assert evidence_in_words(evidence) == [
        "12 accounts",
        "75% of the accounts signed up through a referral",
        "a mean payment of 250.00",
        "retired: it no longer stands on the graph's window",
        "all its accounts have left the graph's window (the verdict stands)",
        "5 signups within 0.3 h",
        "trait scores (0-1, the weakest bounds the score): fast growth 1.0",
        "something new: x",
    ]
