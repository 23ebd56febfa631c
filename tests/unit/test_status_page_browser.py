"""The status page in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by selenium; nothing downloaded): a person logs in, and ids that came from events
hostile to the analyst are shown as the text they are, no script of theirs running.

`make test` installs the browser when it is missing (the Makefile's `browser` target), so this
is skipped only when pytest runs outside make on a machine without it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from graph.layer import RingEvent
from tests.browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS
from tests.factories import T0, tx
from tests.web import TOKEN, Served, served

pytestmark = pytest.mark.browser

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: pip install -e '.[dev]'")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE_TX = '<img src=x onerror="window.__xss=1">'
HOSTILE_USER = "<script>window.__xss=2</script>"
HOSTILE_MERCHANT = '"><svg onload="window.__xss=3">'
HOSTILE_RING = "<img src=x onerror=window.__xss=4>"
HOSTILE_DEVICE = "<iframe srcdoc='<script>parent.__xss=5</script>'>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium missing: `make browser` (apt chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(arg)
    # Both paths given: Selenium Manager (which would look for, or download, a browser and
    # driver) is not run.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _hostile_decision_and_ring(server: Served) -> None:
    payment = tx(HOSTILE_TX, user_id=HOSTILE_USER, merchant_id=HOSTILE_MERCHANT)
    body = json.dumps(payment).encode()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status, _, answer = server.call("POST", "/score", body, headers)
    assert status == 200 and json.loads(answer)["decision"]["tx_id"] == HOSTILE_TX
    ring = RingEvent(
        ring_id=HOSTILE_RING,
        kind="farm",
        version=2,
        users=[HOSTILE_USER, "u2"],
        merchants=[HOSTILE_MERCHANT],
        score=0.9,
        detected_at=T0,
        ts=T0,
        evidence={"shared_device": HOSTILE_DEVICE, "accounts": 2},
        rebate_at_risk_cents=1_000,
    )
    server.run(server.store.put_rings([(ring.ring_id, ring.dumps())], {}))


def _cells(driver, table: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tr")[1:]  # after the header
    return [[c.text for c in row.find_elements(By.CSS_SELECTOR, "th,td")] for row in rows]


def test_hostile_ids_are_shown_as_text_after_login_and_no_script_runs(browser) -> None:  # type: ignore[no-untyped-def]
    driver = browser
    with served() as server:
        _hostile_decision_and_ring(server)
        driver.get(f"{server.base}/")
        assert driver.current_url == f"{server.base}/login"  # not logged in yet
        driver.find_element(By.NAME, "user").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # The page redraws its tables every refresh: a cell read mid-redraw is stale (or, as
        # chromedriver sometimes says it, a node that no longer belongs to the document).
        wait = WebDriverWait(driver, 20, ignored_exceptions=(WebDriverException,))
        wait.until(lambda d: d.current_url == f"{server.base}/console/")  # where a login lands
        driver.get(f"{server.base}/")  # the status page, with the session
        wait.until(lambda d: _cells(d, "recent") and _cells(d, "rings"))
        assert driver.current_url == f"{server.base}/"
        # Rendered at least twice (the rate shows from the second refresh on): any
        # injected element has had its load and error events.
        wait.until(lambda d: "decisions/s" in d.find_element(By.ID, "rate").text)

        recent = wait.until(lambda d: _cells(d, "recent"))
        assert len(recent) == 1 and recent[0][:3] == [HOSTILE_TX, HOSTILE_USER, HOSTILE_MERCHANT]
        rings = wait.until(lambda d: _cells(d, "rings"))
        assert rings[0][:2] == [f"{HOSTILE_RING} v2", "farm"]
        assert rings[0][3:5] == ["2", "1"]  # users, merchants
        assert f"shared_device={HOSTILE_DEVICE}" in rings[0][6]

        injected = "table img, table svg, table script, table iframe"
        assert driver.find_elements(By.CSS_SELECTOR, injected) == []
        assert driver.execute_script("return window.__xss === undefined") is True
        # The session cookie is HttpOnly: no script on the page can read it.
        assert driver.execute_script("return document.cookie") == ""
        assert driver.get_cookie("rg_session")["httpOnly"] is True
