"""The report file in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium; nothing downloaded), opened from disk as a risk team would: the charts and
the ring graphs draw, no script error, and ids hostile to the reader run nothing.

`make test` installs the browser when it is missing (the Makefile's `browser` target), so this
is skipped only when pytest runs outside make on a machine without it.

The README's screenshot comes from here, not from CI:
`python -m tests.unit.test_report_browser docs/screenshots/report.png`."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebate_guard.tools.report import write_report
from tests.browser import CHROMEDRIVER, CHROMIUM, MISSING, chromium
from tests.report_world import HOSTILE_REGION, HOSTILE_RING, replayed_world

pytestmark = pytest.mark.browser

pytest.importorskip("selenium.webdriver", reason="selenium: pip install -e '.[dev]'")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WINDOW = "--window-size=1280,1000"

#: Whether a canvas has any pixel drawn (not all transparent).
DRAWN = """
const c = arguments[0];
if (!c.width || !c.height) return false;
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
return false;
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(MISSING)
    driver = chromium(tmp_path / "profile", WINDOW)
    try:
        yield driver
    finally:
        driver.quit()


def _drawn(driver: Any, selector: str) -> bool:
    canvases = driver.find_elements(By.CSS_SELECTOR, selector)
    return any(driver.execute_script(DRAWN, c) for c in canvases)


def test_the_report_draws_offline_and_no_script_from_the_data_runs(
    browser: Any, tmp_path: Path
) -> None:
    driver = browser
    world = replayed_world(tmp_path / "w")
    out = tmp_path / "report.html"
    shown = write_report(world.replay, out, top_n=4)
    rings = len(shown["rings"])
    assert rings == 4
    driver.get(out.resolve().as_uri())
    wait = WebDriverWait(driver, 20)
    charts = ("money-chart", "solvency-chart", "curve-chart")
    wait.until(lambda d: all(_drawn(d, f"#{chart} canvas") for chart in charts))
    for chart in charts:
        canvas = driver.find_element(By.CSS_SELECTOR, f"#{chart} .uplot canvas")
        assert canvas.size["width"] > 300 and canvas.size["height"] > 100
    for i in range(rings):
        wait.until(lambda d, i=i: _drawn(d, f"#ring-graph-{i} canvas"))
        graph = driver.find_element(By.CSS_SELECTOR, f"#ring-graph-{i} canvas")
        assert graph.size["width"] > 200 and graph.size["height"] > 200

    # The legend is uPlot's (text), the hostile ring's id its heading's text.
    legend = driver.find_element(By.CSS_SELECTOR, "#money-chart .u-legend").text
    assert "granted" in legend and "withheld" in legend
    legend = driver.find_element(By.CSS_SELECTOR, "#solvency-chart .u-legend").text
    assert "liability : distributable" in legend and "warning line" in legend
    # The hostile region is a row heading's text in the solvency table.
    regions = driver.find_elements(By.CSS_SELECTOR, "#solvency-table th")
    assert f"region:{HOSTILE_REGION}" in [r.text for r in regions]
    heading = driver.find_element(By.CSS_SELECTOR, "#ring-0 h3").text
    assert heading.startswith(HOSTILE_RING)

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (raises when no alert() ran)
    assert driver.execute_script("return window.__xss === undefined") is True
    assert driver.find_elements(By.CSS_SELECTOR, "img, svg, iframe") == []
    scripts = driver.execute_script("return document.scripts.length")
    assert scripts == 8  # five JSON blocks and the three inlined scripts, nothing injected
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []


def screenshot(out: Path, transactions: int = 12_000, days: int = 14) -> None:
    """The README's picture: a clean simulated world's report, the page down to its first
    two rings."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = replayed_world(root, hostile=False, transactions=transactions, days=days)
        page = root / "report.html"
        write_report(world.replay, page, top_n=2)
        driver = chromium(root / "profile", WINDOW)
        try:
            driver.get(page.resolve().as_uri())
            WebDriverWait(driver, 30).until(lambda d: _drawn(d, "#ring-graph-1 canvas"))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1280, height)
            WebDriverWait(driver, 30).until(lambda d: _drawn(d, "#ring-graph-1 canvas"))
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots/report.png"))
