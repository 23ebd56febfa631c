"""The console's solvency page: the monitor's readings and alerts read as the worker serves
them (values written with the records' `dumps()`), malformed entries skipped and counted, the
ratio chart's geometry against the policy's lines, and values from events escaped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from markupsafe import escape

from rebate_guard.contract.records import (
    CRITICAL,
    SOLVENT,
    WARNING,
    PlatformAlert,
    SolvencyReading,
)
from rebate_guard.core.policy import Policy
from streams.console import solvency
from streams.console.chart import BOTTOM, HEIGHT, TOP, ratio_chart
from streams.console.store import MemoryConsoleStore
from streams.store import MemoryDecisionStore
from tests.console_world import Feed, Session, console_settings
from tests.solvency_world import (
    CRITICAL_LINE,
    PERIOD_MS,
    WARNING_LINE,
    alert_for,
    growth_stall,
    outputs_of,
    publish,
    reading,
    stall_events,
)
from tests.web import served

HOSTILE_REGION = "region:<script>alert(1)</script>"
HOSTILE_MESSAGE = '<img src=x onerror="alert(2)">'
LIVE = Policy.from_document({"version": "solvency-test-1"})
#: A growth stall: new money stops, the liability keeps growing, distributable shrinks.
STALL = [(100_000, 100_000), (200_000, 90_000), (260_000, 80_000), (300_000, 70_000),
         (330_000, 60_000), (360_000, 50_000)]  # fmt: skip


def _platform_stall() -> list[SolvencyReading]:
    return [
        reading("platform", i, liability=owed, distributable=held)
        for i, (owed, held) in enumerate(STALL)
    ]


def _page(store: MemoryConsoleStore, scope: str = "platform") -> dict[str, Any]:
    return asyncio.run(solvency.read_page(store, LIVE, scope=scope))


def _served(
    outputs: list[SolvencyReading | PlatformAlert], running: list[SolvencyReading]
) -> MemoryConsoleStore:
    """A console store over a worker's memory store that `outputs` were published to."""
    worker = MemoryDecisionStore()
    asyncio.run(publish(worker, outputs, {r.scope: r for r in running}))
    return MemoryConsoleStore(solvency=worker)


def _alerts(outputs: list[SolvencyReading | PlatformAlert]) -> list[PlatformAlert]:
    return [o for o in outputs if isinstance(o, PlatformAlert)]


def test_the_page_shows_the_books_the_worker_serves_and_alerts_newest_first() -> None:
    platform = _platform_stall()
    north = [reading("region:north", i, liability=50_000, distributable=40_000) for i in range(3)]
    running = [
        reading("platform", len(STALL), liability=370_000, distributable=45_000),
        reading("region:north", 3, liability=60_000, distributable=40_000),
    ]
    merchant = reading("merchant:m-1", 2, liability=9_000, distributable=1_000)
    closed = sorted([*platform, *north, merchant], key=lambda r: r.period_end)
    store = _served(outputs_of(closed), running)

    shown = _page(store)
    assert [row["scope"] for row in shown["rows"]] == ["platform", "region:north"]
    platform_row, north_row = shown["rows"]
    assert platform_row["now"] == running[0] and platform_row["closed"] == platform[-1]
    assert north_row["now"] == running[1] and north_row["closed"] == north[-1]
    # Every level change alerted (the merchant's too), newest first.
    written = _alerts(outputs_of(closed))
    assert shown["alerts"] == written[::-1]
    assert [a.ts for a in shown["alerts"]] == sorted((a.ts for a in written), reverse=True)
    assert {a.level for a in shown["alerts"]} == {WARNING, CRITICAL}
    # The closed periods, then the open one so far.
    assert [p.reading for p in shown["chart"].points] == [*platform, running[0]]
    assert [p.running for p in shown["chart"].points] == [False] * len(platform) + [True]
    assert shown["skipped"] == 0
    north_points = _page(store, "region:north")["chart"].points
    assert [p.reading for p in north_points] == [*north, running[1]]
    assert _page(store, "merchant:m-1")["charted"] is False
    now = asyncio.run(solvency.platform_now(store))
    assert now["reading"] == running[0] and now["alert"] == shown["alerts"][0]


@pytest.mark.parametrize("lines", [None, (2, 4)])
def test_a_growth_stall_through_the_monitor_crosses_the_policys_lines_where_drawn(
    lines: tuple[int, int] | None,
) -> None:
    """The monitor's own readings and alerts (rebate_guard/core/solvency.py) under the policy's
    lines (the documented defaults, or the risk team's own), as the worker serves them."""
    doc: dict[str, Any] = {"version": "solvency-test-2"}
    if lines is not None:
        doc["solvency"] = {"warning_ratio": lines[0], "critical_ratio": lines[1]}
    policy = Policy.from_document(doc)
    outputs, running = growth_stall("<script>alert(1)</script>", terms=policy.solvency)
    store = _served(outputs, list(running.values()))
    shown = asyncio.run(solvency.read_page(store, policy, scope="platform"))
    warning, critical = shown["chart"].lines
    assert (warning.ratio, critical.ratio) == (
        policy.solvency.warning_ratio, policy.solvency.critical_ratio,
    )  # fmt: skip
    closed = [o for o in outputs if isinstance(o, SolvencyReading) and o.scope == "platform"]
    points = shown["chart"].points
    assert [p.reading for p in points] == closed
    # Each period is drawn on the side of each line that its level (the monitor's) says.
    for p in points:
        level = p.reading.level
        assert (p.y <= warning.y) == (level in (WARNING, CRITICAL)), (p.reading, warning)
        assert (p.y <= critical.y) == (level == CRITICAL), (p.reading, critical)
    assert {p.reading.level for p in points} == {SOLVENT, WARNING, CRITICAL}
    # The stall alerted: past the warning line, then the critical one, newest first.
    platform_alerts = [a for a in shown["alerts"] if a.scope == "platform"]
    assert [a.level for a in platform_alerts] == [CRITICAL, WARNING]
    assert platform_alerts[1].line == policy.solvency.warning_ratio
    assert (
        f"past the warning line {policy.solvency.warning_ratio:g}:1" in platform_alerts[1].message
    )
    regions = sorted(s for s in running if s.startswith("region:"))
    assert [row["scope"] for row in shown["rows"]] == ["platform", *regions]
    assert {HOSTILE_REGION, "region:north"} <= set(regions)
    assert shown["lines"].policy_version == "solvency-test-2" and shown["skipped"] == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"scope": "platform"}',  # fields missing
    ],
)
def test_a_malformed_entry_is_skipped_and_counted_never_a_crash(bad: bytes) -> None:
    platform = _platform_stall()
    store = _served(outputs_of(platform), platform[-1:])
    served = store.solvency
    served.solvency_series["platform"].insert(2, bad)
    served.solvency_current["region:broken"] = bad
    served.solvency_latest["region:broken"] = bad
    served.alerts.append(bad)
    shown = _page(store)
    assert shown["skipped"] == 4
    assert [p.reading for p in shown["chart"].points] == platform
    assert [row["scope"] for row in shown["rows"]] == ["platform"]
    assert shown["alerts"] == _alerts(outputs_of(platform))[::-1]


def _with(values: SolvencyReading | PlatformAlert, **changed: Any) -> bytes:
    return type(values)(**{**values.asdict(), **changed}).dumps()


def test_a_field_of_the_wrong_type_or_an_unknown_level_is_malformed() -> None:
    good = reading("platform", 0, liability=100, distributable=50)
    alert = alert_for(good, SOLVENT)
    wrong = [
        _with(good, ratio="2.0"),
        _with(good, liability_cents=True),
        _with(good, liability_cents=1.5),
        _with(good, level="panic"),
        _with(good, scope=None),
        good.dumps().replace(b'"ratio":2.0', b'"ratio":NaN'),
        good.dumps().replace(b'"ratio":2.0', b'"ratio":Infinity'),
    ]
    assert all(solvency.parse(SolvencyReading, w) is None for w in wrong)
    assert solvency.parse(SolvencyReading, good.dumps()) == good
    assert solvency.parse(SolvencyReading, _with(good, ratio=None)) is not None
    assert solvency.parse(PlatformAlert, _with(alert, previous_level="?")) is None
    assert solvency.parse(PlatformAlert, _with(alert, message=7)) is None
    assert solvency.parse(PlatformAlert, alert.dumps()) == alert


def _chart(readings: list[SolvencyReading]) -> Any:
    return ratio_chart(readings, warning=WARNING_LINE, critical=CRITICAL_LINE)


def test_the_chart_orders_points_by_period_and_draws_the_lines_at_their_ratio() -> None:
    platform = _platform_stall()
    # On each line exactly: drawn on it.
    on_lines = [
        reading("platform", 10, liability=300, distributable=100),
        reading("platform", 11, liability=500, distributable=100),
    ]
    shuffled = [platform[3], on_lines[1], platform[0], platform[5], on_lines[0], *platform]
    chart = _chart(shuffled)
    assert [p.reading for p in chart.points] == [*platform, *on_lines]
    xs = [p.x for p in chart.points]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert xs[0] == chart.left and xs[-1] == chart.right_edge
    warning, critical = chart.lines
    assert (warning.name, warning.ratio, critical.name, critical.ratio) == (
        "warning", WARNING_LINE, "critical", CRITICAL_LINE,
    )  # fmt: skip
    assert chart.points[-2].y == pytest.approx(warning.y)
    assert chart.points[-1].y == pytest.approx(critical.y)
    assert chart.top < critical.y < warning.y < chart.bottom_edge
    # The y scale is linear from 0 at the bottom: the lines' ratio of heights is theirs.
    assert (chart.bottom_edge - critical.y) / (chart.bottom_edge - warning.y) == pytest.approx(
        CRITICAL_LINE / WARNING_LINE
    )
    assert chart.ticks[0].value == 0 and chart.ticks[0].y == HEIGHT - BOTTOM
    assert chart.ticks[-1].value == pytest.approx(chart.y_max)
    assert chart.ticks[-1].y == pytest.approx(TOP)
    # Higher ratio, higher on the chart (smaller y); nothing off the scale.
    stall = chart.points[: len(platform)]
    assert [p.y for p in stall] == sorted((p.y for p in stall), reverse=True)
    assert not any(p.off_scale for p in chart.points)
    # A period written twice is drawn once, as last written.
    again = reading("platform", 2, liability=1, distributable=100)
    assert [p.reading for p in _chart([*platform, again]).points][2] == again


def test_the_open_period_is_drawn_after_the_closed_ones_and_apart_from_them() -> None:
    platform = _platform_stall()
    open_now = reading("platform", len(platform), liability=400_000, distributable=50_000)
    chart = ratio_chart(platform, warning=WARNING_LINE, critical=CRITICAL_LINE, running=open_now)
    *closed, last = chart.points
    assert last.running and last.reading == open_now and last.x == chart.right_edge
    assert [p.reading for p in closed] == platform and not any(p.running for p in closed)
    assert f"{last.x:.1f}," not in chart.path
    assert chart.running_segment == (closed[-1], last)
    # The running figures of a period already closed (nothing moved since) are not drawn twice.
    again = ratio_chart(
        platform, warning=WARNING_LINE, critical=CRITICAL_LINE, running=platform[-1]
    )
    assert [p.reading for p in again.points] == platform and again.running_segment is None
    alone = ratio_chart([], warning=WARNING_LINE, critical=CRITICAL_LINE, running=open_now)
    assert [p.running for p in alone.points] == [True] and alone.running_segment is None


def test_nothing_distributable_is_off_the_scale_and_critical_and_a_collapse_keeps_the_lines() -> (
    None
):
    owed_nothing_left = reading("platform", 2, liability=50_000, distributable=0)
    nothing_at_all = reading("platform", 0, liability=0, distributable=-5)
    collapse = reading("platform", 3, liability=10**9, distributable=1)
    fine = reading("platform", 1, liability=100, distributable=100)
    chart = _chart([owed_nothing_left, nothing_at_all, collapse, fine])
    points = {p.reading.period_start: p for p in chart.points}
    off = points[owed_nothing_left.period_start]
    assert off.reading.ratio is None and off.reading.level == CRITICAL
    assert off.off_scale and off.y < chart.top
    assert points[collapse.period_start].off_scale
    assert points[collapse.period_start].y == off.y
    # Nothing owed and nothing distributable: no ratio, and nothing to draw above 0.
    assert not points[nothing_at_all.period_start].off_scale
    assert points[nothing_at_all.period_start].y == chart.bottom_edge
    owed_back = reading("platform", 4, liability=-100, distributable=100)
    assert _chart([owed_back]).points[0].y == chart.bottom_edge
    # The scale stops short of the collapse, so both lines stay inside the plot.
    assert CRITICAL_LINE < chart.y_max < collapse.ratio  # type: ignore[operator]
    assert all(chart.top < line.y < chart.bottom_edge for line in chart.lines)
    assert f"{off.x:.1f},{off.y:.1f}" in chart.path
    lone = _chart([owed_nothing_left])
    assert lone.points[0].x == (lone.left + lone.right_edge) / 2
    assert _chart([]).points == [] and _chart([]).path == ""


def test_the_page_needs_a_login_and_shows_event_values_as_text(tmp_path: Path) -> None:
    hostile = [
        reading(HOSTILE_REGION, i, liability=owed, distributable=held)
        for i, (owed, held) in enumerate(STALL)
    ]
    with served(console_settings(tmp_path)) as server:
        store = server.worker.runtime.console
        store.solvency = server.store  # as the Redis console store reads the worker's keys
        assert isinstance(store, MemoryConsoleStore)
        closed = outputs_of([*_platform_stall(), *hostile])
        server.run(publish(server.store, closed, {hostile[-1].scope: hostile[-1]}))
        last = hostile[-1]
        bad_alert = alert_for(last, WARNING, message=HOSTILE_MESSAGE)
        newest = {"scope": "merchant:" + HOSTILE_MESSAGE, "alert_id": HOSTILE_MESSAGE,
                  "ts": last.period_end + PERIOD_MS}  # fmt: skip
        newest_alert = PlatformAlert(**{**bad_alert.asdict(), **newest})
        server.run(publish(server.store, [newest_alert]))
        status, response, _ = server.call("GET", "/console/solvency")
        assert status == 303 and response.headers["Location"] == "/login"
        vera = Session(server, "vera")
        for path in ("/console/solvency", "/console/solvency?scope=" + quote(HOSTILE_REGION),
                     "/console/solvency?scope=" + quote(HOSTILE_MESSAGE), "/console/"):  # fmt: skip
            status, page = vera.get(path)
            assert status == 200, path
            assert "<script>alert" not in page and "<img" not in page
        status, page = vera.get("/console/solvency")
        assert f'<a href="/console/solvency?scope={quote(HOSTILE_REGION)}">' in page
        assert f">{escape(HOSTILE_REGION)}</a>" in page
        assert f"<td>{escape(HOSTILE_MESSAGE)}</td>" in page
        assert 'href="/console/solvency" class="here"' in page
        status, page = vera.get("/console/solvency?scope=" + quote(HOSTILE_REGION))
        assert f'<span id="chart-scope">{escape(HOSTILE_REGION)}</span>' in page
        assert page.count('<circle class="point') == len(hostile)
        status, page = vera.get("/console/")
        assert 'id="solvency-card"' in page and escape(HOSTILE_MESSAGE) in page


def test_a_growth_stall_fed_to_the_served_worker_shows_on_its_page(tmp_path: Path) -> None:
    """Platform events through the worker's own processor, solvency shard, publisher and
    store (broker-free): the page shows what the worker wrote, as it does over Redis."""
    region = "<script>alert(1)</script>"
    events = stall_events(region)
    with served(console_settings(tmp_path)) as server:
        runtime = server.worker.runtime
        assert isinstance(runtime.console, MemoryConsoleStore)
        runtime.console.solvency = server.store  # as the Redis console store reads its keys
        Feed(server).put(events)
        shown = server.run(solvency.page(runtime, "platform"))
        assert shown["skipped"] == 0
        written = [SolvencyReading.loads(r) for r in server.store.solvency_series["platform"]]
        chart = shown["chart"]
        assert written and [p.reading for p in chart.points if not p.running] == written
        assert chart.points[-1].running  # the last hour is open
        assert [p.reading.level for p in chart.points][-1] == CRITICAL
        platform = [(a.previous_level, a.level) for a in shown["alerts"] if a.scope == "platform"]
        # Newest first: past the warning line as the stall went on, then past the critical one.
        assert platform == [(WARNING, CRITICAL), (SOLVENT, WARNING)]
        status, page = Session(server, "vera").get("/console/solvency")
        assert status == 200 and "<script>alert" not in page
        assert f'data-points="{len(chart.points)}"' in page
        assert "past the warning line 3:1" in page and escape(f"region:{region}") in page
