"""The study page's viewer driven as a doctor on a given link would drive it: Chromium's own network
throttling (DevTools network conditions through chromedriver), one key press per slice, waiting
for each slice to be drawn. Shared by tests/e2e/test_viewer_link.py and bench/viewer.py.

The times are the page's own where it has them (``performance.now()`` at the first picture drawn,
from navigation start) and the driver's wall clock otherwise; bytes are what crossed the wire
(Resource Timing ``transferSize``: 0 for what the browser cache answered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from api.http.assets import asset_url
from tests.support import phantom
from tests.support.readside import ROOT_UID, ReadSide
from tests.support.scenes import send, study_url

#: the regulation's minimum for a doctor's workstation, a common office link, and no limit (bits/s)
LINKS: dict[str, int | None] = {"unthrottled": None, "2 Mbit/s": 2_000_000, "256 kbit/s": 256_000}
LATENCY_MS = 100
WAIT = 120
POLL = 0.005
PATIENT = "VL-0001"

#: the picture on screen is decoded, and its slice is the one asked for
_SETTLED = """
const img = document.getElementById('image');
const v = window.camiViewer && window.camiViewer.state();
if (!v || !img || !img.complete || !img.naturalWidth) return null;
return v.index === v.target ? {index: v.index, quality: v.quality, width: img.naturalWidth} : null;
"""

_TRANSFERRED = """
const nav = performance.getEntriesByType('navigation').map(e => e.transferSize);
const res = performance.getEntriesByType('resource');
const frames = res.filter(e => e.name.includes('/rendered'));
return {
  page: nav.reduce((a, b) => a + b, 0),
  resources: res.reduce((a, b) => a + b.transferSize, 0),
  frames: frames.reduce((a, b) => a + b.transferSize, 0),
  frame_requests: frames.length,
};
"""


def series_study(side: ReadSide, count: int = 100) -> str:
    """A study of one ``count``-slice 512x512 CT series (tests.support.phantom), sent with storescu."""
    study = generate_uid(prefix=ROOT_UID)
    datasets: list[Dataset] = phantom.ct_series(study, count, PATIENT)
    send(side, datasets)
    side.wait_indexed(study, count)
    return study


def sign_in(driver: WebDriver, side: ReadSide, user: str = "dr.petrov") -> None:
    """A warm session: signed in, the page's script and style sheet in the browser's cache."""
    driver.get(side.url + "/signin")
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.ID, "signin-form"))
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "token").send_keys(side.tokens[user])
    driver.find_element(By.ID, "signin-submit").click()
    WebDriverWait(driver, WAIT).until(lambda d: "/search" in d.current_url)
    warm(driver)


def warm(driver: WebDriver) -> None:
    """Put the study page's assets in the browser's cache under the URLs the page links (the
    search page loads the script and style sheet; the viewer's frame loader only the study page)."""
    driver.execute_async_script(
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(() => arguments[1]());",
        asset_url("frames.js"),
    )


def throttle(driver: WebDriver, bits_per_second: int | None, latency_ms: int = LATENCY_MS) -> None:
    """Chromium's network emulation for every request the page makes (None: no limit, no latency)."""
    if bits_per_second is None:
        driver.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=-1)  # type: ignore[attr-defined]
        return
    rate = bits_per_second // 8
    driver.set_network_conditions(  # type: ignore[attr-defined]
        offline=False, latency=latency_ms, download_throughput=rate, upload_throughput=rate
    )


def forget_frames(driver: WebDriver, side: ReadSide) -> None:
    """A first visit with a warm session: the browser's HTTP cache emptied (the session cookie
    stays), then the pages' assets loaded again."""
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})  # type: ignore[attr-defined]
    driver.get(side.url + "/search")
    warm(driver)


def viewer_mode(driver: WebDriver, side: ReadSide, *, full: bool, prefetch: bool) -> None:
    """The viewer's two switches (kept in the browser): always full quality, prefetch ahead; and
    what it remembered of the link (a new workstation)."""
    driver.get(side.url + "/search")
    driver.execute_script(
        "localStorage.setItem('cami.viewer.full', arguments[0]);"
        "localStorage.setItem('cami.viewer.prefetch', arguments[1]);"
        "localStorage.removeItem('cami.viewer.link'); localStorage.removeItem('cami.viewer.tiers');",
        "1" if full else "0",
        "1" if prefetch else "0",
    )


def state(driver: WebDriver) -> dict[str, Any]:
    return dict(driver.execute_script("return window.camiViewer ? window.camiViewer.state() : null") or {})


def settled(driver: WebDriver) -> dict[str, Any] | None:
    found = driver.execute_script(_SETTLED)
    return dict(found) if found else None


@dataclass
class Visit:
    first_image: float  # seconds from navigation to the first picture drawn
    slices: list[float]  # seconds from each key press to its slice drawn
    refined: float | None  # seconds from the last key press to the slice in full quality
    page_bytes: int
    frame_bytes: int
    frame_requests: int

    @property
    def per_slice(self) -> float:
        return sum(self.slices) / len(self.slices) if self.slices else float("nan")

    @property
    def scroll_total(self) -> float:
        return sum(self.slices)

    @property
    def transferred(self) -> int:
        return self.page_bytes + self.frame_bytes


def visit(
    driver: WebDriver,
    side: ReadSide,
    study: str,
    *,
    scroll: int = 20,
    refine: bool = True,
    shot: Callable[[str], None] | None = None,
) -> Visit:
    """Open the study page, wait for the first picture, scroll ``scroll`` slices one key press at a
    time (each waited for), then wait for the slice to be refined to full quality."""
    driver.get(side.url + study_url(PATIENT, study))
    WebDriverWait(driver, WAIT, poll_frequency=POLL).until(lambda d: settled(d), "no first picture")
    first = int(str(driver.find_element(By.TAG_NAME, "body").get_attribute("data-first-image-ms"))) / 1000
    if shot:
        shot("first")
    times = []
    for expected in range(1, scroll + 1):
        started = time.perf_counter()
        ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()
        WebDriverWait(driver, WAIT, poll_frequency=POLL).until(
            lambda d, n=expected: (s := settled(d)) is not None and s["index"] == n, f"slice {expected + 1} not drawn"
        )
        times.append(time.perf_counter() - started)
    if shot:
        shot("scrolled")
    refined = None
    if refine:
        started = time.perf_counter()
        WebDriverWait(driver, WAIT, poll_frequency=0.02).until(
            lambda d: (s := settled(d)) is not None and s["quality"] == "full", "the slice was not refined"
        )
        refined = time.perf_counter() - started
        if shot:
            shot("refined")
    page, frames, requests = transferred(driver)
    return Visit(first, times, refined, page, frames, requests)


def frame_sizes(driver: WebDriver) -> tuple[list[int], list[int]]:
    """Bytes over the wire per frame response since the page was opened: previews, full quality
    (what the cache answered is left out)."""
    found = driver.execute_script(
        """return performance.getEntriesByType('resource')
           .filter(e => e.name.includes('/rendered') && e.transferSize > 0)
           .map(e => [e.name.includes('viewport=') ? 'preview' : 'full', e.transferSize]);"""
    )
    previews = [int(size) for kind, size in found if kind == "preview"]
    full = [int(size) for kind, size in found if kind == "full"]
    return previews, full


def transferred(driver: WebDriver) -> tuple[int, int, int]:
    """Bytes over the wire since the page was opened: the page itself, the frames; frame requests."""
    found = driver.execute_script(_TRANSFERRED)
    return int(found["page"]), int(found["frames"]), int(found["frame_requests"])


def wait_quiet(driver: WebDriver, timeout: float = 300) -> dict[str, Any]:
    """Until the viewer has nothing in flight and every slice of the series loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = state(driver)
        if now and not now["pending"] and now["previews"] + now["full"] >= now["slices"]:
            return now
        time.sleep(0.1)
    raise AssertionError(f"the viewer did not finish prefetching: {state(driver)}")


def picture(driver: WebDriver) -> np.ndarray:
    """The picture on screen, as gray levels."""
    data = driver.execute_script(
        """const img = document.getElementById('image');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        return Array.from(g.getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0));"""
    )
    width = int(driver.execute_script("return document.getElementById('image').naturalWidth"))
    return np.asarray(data, dtype=np.uint8).reshape(-1, width)


def artifacts(name: str) -> Path:
    path = Path(__file__).resolve().parent.parent / "artifacts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
