"""Debian's headless Chromium driven by selenium through Debian's chromedriver (nothing is
downloaded), screenshots to ``tests/artifacts/``, and a wait until the viewer shows a decoded image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60

IMAGE_SHOWN = """
const img = document.getElementById('image');
if (!img || !img.complete || !img.naturalWidth || !img.getAttribute('src')) return null;
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
let lo = 255, hi = 0;
for (let i = 0; i < px.length; i += 4) { lo = Math.min(lo, px[i]); hi = Math.max(hi, px[i]); }
return {width: img.naturalWidth, url: img.getAttribute('data-url'), lo: lo, hi: hi};
"""


def chromium(monkeypatch: pytest.MonkeyPatch | None = None, env: dict[str, str] | None = None) -> WebDriver:
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1024", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    # with both paths given selenium-manager has nothing to find; offline makes sure it fetches nothing
    if monkeypatch is not None:
        monkeypatch.setenv("SE_OFFLINE", "true")
    else:  # a bench: its own process
        os.environ["SE_OFFLINE"] = "true"
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_image(driver: WebDriver, changed_from: str | None = None) -> dict[str, object]:
    """Until the viewer shows a decoded, non-blank image (other than ``changed_from``)."""

    def ready(d: WebDriver) -> dict[str, object] | None:
        shown = d.execute_script(IMAGE_SHOWN)
        if not shown or shown["url"] == changed_from:
            return None
        return dict(shown)

    shown = WebDriverWait(driver, WAIT).until(ready, "the viewer shows no image")
    assert int(str(shown["width"])) > 0 and shown["hi"] != shown["lo"], shown  # pixels, not a blank square
    return shown
