"""Headless Chromium for the browser tests: Debian's `chromium` and `chromium-driver`,
driven by selenium, nothing downloaded (`make browser` installs them)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = "headless Chromium missing: `make browser` (apt chromium chromium-driver)"


def chromium(profile: Path, *args: str) -> Any:
    """A driven headless Chromium with its own profile, keeping the browser's console log
    (`driver.get_log("browser")`). Both paths are given, so Selenium Manager (which would
    look for, or download, a browser and driver) is not run."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in [*CHROMIUM_ARGS, *args, f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver
