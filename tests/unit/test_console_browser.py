"""The console as a risk analyst uses it, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; nothing downloaded): log in, see the charts drawn, open
a ring and see its graph, label a held payment and see it released once the stream takes the
label in, edit a policy draft, backtest it and publish it; and no script from event data runs.

With `RG_SCREENSHOTS=<dir>` it also saves a screenshot of each page (docs/screenshots/ holds
the committed ones: `RG_SCREENSHOTS=docs/screenshots pytest tests/unit/test_console_browser.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import (
    WARNING,
    Label,
    PlatformAlert,
    SolvencyReading,
    Transaction,
)
from streams.console.store import MemoryConsoleStore
from tests.browser import CHROMEDRIVER, CHROMIUM, MISSING, chromium
from tests.console_world import PASSWORD, POLICY, console_settings, console_world, world_events
from tests.factories import tx
from tests.solvency_world import alert_for, growth_stall, publish
from tests.web import Served, served

pytestmark = pytest.mark.browser

pytest.importorskip("selenium.webdriver", reason="selenium: pip install -e '.[dev]'")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE_USER = "<img src=x onerror=window.__xss=1>"
HOSTILE_MERCHANT = "<script>window.__xss=2</script>"
HOSTILE_TX = '"><svg onload="window.__xss=3">'
SHOTS = os.environ.get("RG_SCREENSHOTS")


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(MISSING)
    browser = chromium(tmp_path / "profile", "--window-size=1400,1000")
    try:
        yield browser
    finally:
        browser.quit()


def _shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))


def _no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.__xss === undefined") is True
    # The solvency page's chart is the only SVG the console draws, of shapes and text only.
    drawn = "rect, line, text, polyline, circle, title"
    injected = "main img, main svg:not(#ratio-chart), main script, main iframe"
    injected += f", #ratio-chart :not({drawn})"
    assert driver.find_elements(By.CSS_SELECTOR, injected) == []


def _hostile_world(events: list[Event]) -> list[Event]:
    """The world, then a payment whose ids are markup, held by the test policy."""
    last = max(e.ts for e in events if isinstance(e, Transaction))
    payment = tx(HOSTILE_TX, ts=last + 1, user_id=HOSTILE_USER, merchant_id=HOSTILE_MERCHANT,
                 amount_cents=250_000, rebate_rate=0.3)  # fmt: skip
    return [*events, Transaction(**payment)]


def _login(driver: Any, server: Served, user: str) -> WebDriverWait:
    driver.get(f"{server.base}/console/")
    assert driver.current_url == f"{server.base}/login"
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(f"{PASSWORD} {user}")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # A form's POST reloads the page: an element found on the old page goes stale mid-wait,
    # which chromedriver sometimes reports as a plain error ("Node with given id does not
    # belong to the document"); the wait polls again, and still fails if it never holds.
    wait = WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,))
    wait.until(lambda d: d.current_url == f"{server.base}/console/")
    return wait


def _follow(driver: Any, wait: WebDriverWait, link_text: str) -> None:
    """Click a link and wait until its page has loaded: a click need not wait for the
    navigation it starts, and an element looked up meanwhile is the old page's, or none."""
    link = driver.find_element(By.LINK_TEXT, link_text)
    target = link.get_attribute("href")
    link.click()
    wait.until(
        lambda d: (
            d.current_url == target and d.execute_script("return document.readyState") == "complete"
        )
    )


def test_an_analyst_reviews_a_ring_labels_a_held_payment_and_publishes_a_policy(
    driver: Any, tmp_path: Path
) -> None:
    events = _hostile_world(world_events())
    with console_world(tmp_path / "world", events) as (server, feed):
        wait = _login(driver, server, "adam")
        # Overview: the charts drew from the series API.
        wait.until(lambda d: d.find_element(By.ID, "chart-rate").get_attribute("data-drawn"))
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-rate canvas, #chart-money canvas")
        _shot(driver, "overview")
        _no_script_ran(driver)

        # Rings: the costliest ring opens as a graph of its members and what links them.
        _follow(driver, wait, "Rings")
        driver.find_elements(By.CSS_SELECTOR, "a.ring-link")[0].click()
        wait.until(lambda d: d.find_element(By.ID, "ring-graph").get_attribute("data-nodes"))
        graph = driver.find_element(By.ID, "ring-graph")
        assert int(graph.get_attribute("data-nodes")) >= 2
        assert int(graph.get_attribute("data-edges")) >= 1
        assert graph.find_elements(By.TAG_NAME, "canvas")
        members = driver.execute_script("return window.rgRingGraph.nodes('[member = 1]').length")
        assert members >= 2
        _shot(driver, "ring")

        # Review: the hostile payment is held, shown as text; a legit label releases it.
        _follow(driver, wait, "Review")
        rows = driver.find_elements(By.CSS_SELECTOR, "#queue tr[data-tx]")
        assert rows
        ids = [r.get_attribute("data-tx") for r in rows]
        assert HOSTILE_TX in ids
        row = rows[ids.index(HOSTILE_TX)]
        assert row.find_element(By.CSS_SELECTOR, "td").text == HOSTILE_TX
        assert HOSTILE_USER in row.text
        assert driver.find_element(By.ID, "review-sample").text.startswith("No review sample")
        _shot(driver, "review")
        _no_script_ran(driver)
        row.find_element(By.CSS_SELECTOR, "button.legit").click()
        wait.until(lambda d: d.find_elements(By.ID, "message"))
        assert "labelled" in driver.find_element(By.ID, "message").text
        # The label went to the labels topic; the stream takes it in (no broker here).
        topic = server.worker.runtime.settings.topic("labels")
        sent = [Label.loads(v) for _, v in server.worker.runtime.sink.sent[topic]]  # type: ignore[attr-defined]
        assert [(x.tx_id, x.reviewer, x.source) for x in sent] == [(HOSTILE_TX, "adam", "review")]
        feed.put(sent)
        driver.refresh()
        rows = driver.find_elements(By.CSS_SELECTOR, "#queue tr[data-tx]")
        assert HOSTILE_TX not in [r.get_attribute("data-tx") for r in rows]
        _follow(driver, wait, "Search")
        box = driver.find_element(By.NAME, "q")
        box.send_keys(HOSTILE_TX)
        box.submit()
        wait.until(lambda d: d.find_elements(By.ID, "ledger"))
        ledger = driver.find_elements(By.CSS_SELECTOR, "#ledger tr")[1].text.split()
        assert ledger[0] == ledger[1] == "750.00" and ledger[2] == "0.00"  # requested, granted
        assert "legit" in driver.find_element(By.ID, "tx-label").text
        _no_script_ran(driver)

        # Policy: a stricter draft, saved, backtested, then published.
        _follow(driver, wait, "Policy")
        assert driver.find_element(By.ID, "live-version").text == "console-test-1"
        draft = POLICY.replace("console-test-1", "console-test-2")
        draft = draft.replace("allow_at = 0.9", "allow_at = 0.97").replace("0.8", "0.95")
        editor = driver.find_element(By.ID, "editor")
        editor.find_element(By.NAME, "name").send_keys("stricter")
        editor.find_element(By.CSS_SELECTOR, "select[name=fmt] option[value=toml]").click()
        text = editor.find_element(By.NAME, "text")
        text.clear()
        text.send_keys(draft)
        driver.find_element(By.ID, "save-draft").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#message, #error"))
        assert "saved" in driver.find_element(By.CSS_SELECTOR, "#message, #error").text
        days = driver.find_element(By.CSS_SELECTOR, "section.draft input[name=days]")
        days.clear()
        days.send_keys("30")
        driver.find_element(By.CSS_SELECTOR, "button.backtest-button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.backtest"))
        assert int(driver.find_element(By.CSS_SELECTOR, ".newly-hit").text) > 0
        _shot(driver, "policy")
        driver.find_element(By.CSS_SELECTOR, "button.publish-button").click()
        wait.until(lambda d: d.find_element(By.ID, "live-version").text == "console-test-2")
        assert server.worker.runtime.processor.policy.version == "console-test-2"
        assert "console-test-1 → console-test-2" in driver.find_element(By.ID, "history").text

        _follow(driver, wait, "Audit")
        audit = driver.find_element(By.ID, "audit").text
        for action in ("label", "draft", "backtest", "publish"):
            assert f"adam {action}" in audit
        _no_script_ran(driver)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []


HOSTILE_REGION_NAME = "<script>window.__xss=4</script>"
HOSTILE_REGION = f"region:{HOSTILE_REGION_NAME}"
HOSTILE_MESSAGE = "<img src=x onerror=window.__xss=5>"


def _middle(driver: Any, selector: str) -> float:
    """Where the first element matching `selector` is drawn: the middle of its box, in px."""
    box = driver.find_element(By.CSS_SELECTOR, selector).rect
    return float(box["y"] + box["height"] / 2)


def test_a_viewer_sees_the_ratio_climb_past_the_lines_and_the_alerts_as_text(
    driver: Any, tmp_path: Path
) -> None:
    # The monitor's own outputs for a growth stall, the last period still open.
    outputs, running = growth_stall(HOSTILE_REGION_NAME, close_last=False)
    closed = [o for o in outputs if isinstance(o, SolvencyReading) and o.scope == "platform"]
    with served(console_settings(tmp_path / "world")) as server:
        store = server.worker.runtime.console
        assert isinstance(store, MemoryConsoleStore)
        store.solvency = server.store  # as the Redis console store reads the worker's keys
        server.run(publish(server.store, outputs, running))
        stalled = running[HOSTILE_REGION]
        hostile = alert_for(stalled, WARNING, message=HOSTILE_MESSAGE)
        newest = PlatformAlert(**{**hostile.asdict(), "ts": stalled.period_end + 1})
        server.run(publish(server.store, [newest]))
        wait = _login(driver, server, "vera")
        card = driver.find_element(By.ID, "solvency-card").text
        assert running["platform"].level in card and HOSTILE_MESSAGE in card
        _follow(driver, wait, "Solvency")
        wait.until(lambda d: d.find_elements(By.ID, "ratio-chart"))
        chart = driver.find_element(By.ID, "ratio-chart")
        points = chart.find_elements(By.CSS_SELECTOR, "circle.point")
        # The closed periods, then the open one so far, joined to them by a dashed segment.
        assert len(points) == len(closed) + 1
        assert [p.get_attribute("class").endswith("running") for p in points][-2:] == [False, True]
        assert chart.find_elements(By.CSS_SELECTOR, "line.ratio.running")
        labels = [t.text for t in chart.find_elements(By.CSS_SELECTOR, "text.line-label")]
        assert labels == ["warning 3:1", "critical 5:1"]
        warning, critical = _middle(driver, "line.warning"), _middle(driver, "line.critical")
        assert critical < warning  # higher ratio, higher up
        # The stall's points climb; each is drawn on the side of the lines its level says.
        ys = [p.rect["y"] + p.rect["height"] / 2 for p in points]
        assert ys == sorted(ys, reverse=True)
        levels = [p.get_attribute("class").split()[1] for p in points]
        assert {"level-ok", "level-warning", "level-critical"} <= set(levels)
        for level, y in zip(levels, ys, strict=True):
            expected = {"level-ok": y > warning, "level-warning": critical < y <= warning,
                        "level-critical": y <= critical}  # fmt: skip
            assert expected[level], (level, y, warning, critical)
        rows = driver.find_elements(By.CSS_SELECTOR, "#alerts tr[data-alert]")
        newest = [td.text for td in rows[0].find_elements(By.TAG_NAME, "td")]
        assert newest[1:] == [stalled.level, HOSTILE_REGION, HOSTILE_MESSAGE]
        messages = [r.find_elements(By.TAG_NAME, "td")[3].text for r in rows]
        assert any(
            m.startswith("platform: ") and "past the warning line 3:1" in m for m in messages
        )
        _shot(driver, "solvency")
        _no_script_ran(driver)
        driver.find_element(By.LINK_TEXT, HOSTILE_REGION).click()
        wait.until(lambda d: d.find_element(By.ID, "chart-scope").text == HOSTILE_REGION)
        region = driver.find_elements(By.CSS_SELECTOR, "#ratio-chart circle.point")
        assert len(region) == len(closed) + 1
        _no_script_ran(driver)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
