"""The viewer on the region's thinnest link: a doctor's workstation at 256 kbit/s with 100 ms of
latency (Chromium's own network throttling), a 100-slice 512x512 CT series, a warm session.

First picture under 2 s after navigation; 20 slices scrolled one key press each, waiting for each,
in under 10 s; the slice the doctor stops on refined to full quality (lossless, full resolution);
the counter never names a slice other than the one drawn; a second visit costs under a tenth of
the first's bytes; and the audit chain holds one event per study opened and one per series
viewed. Screenshots: tests/artifacts/viewer-256k-*.png.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import shot
from tests.support.readside import ReadSide
from tests.support.viewer import (
    PATIENT,
    picture,
    series_study,
    settled,
    sign_in,
    state,
    throttle,
    transferred,
    visit,
    wait_quiet,
)

SLICES = 100
KBIT_256 = 256_000


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReadSide, str]]:
    side = ReadSide.start(tmp_path_factory.mktemp("viewer-link"))
    try:
        yield side, series_study(side, SLICES)
    finally:
        side.stop()


def test_a_100_slice_ct_on_a_256_kbit_s_link(archive: tuple[ReadSide, str], browser: WebDriver) -> None:
    side, study = archive
    sign_in(browser, side)  # warm: signed in, script and style sheet cached under their fingerprints
    before = {e.envelope.event_id for e in side.accesses()}
    throttle(browser, KBIT_256)

    first = visit(browser, side, study, shot=lambda name: shot(browser, f"viewer-256k-{name}"))
    print(f"256 kbit/s: first picture {first.first_image:.2f} s, 20 slices {first.scroll_total:.2f} s, "
          f"refined in {first.refined:.2f} s")  # fmt: skip
    assert first.first_image < 2.0, first
    assert len(first.slices) == 20 and first.scroll_total < 10.0, first.slices

    # refined: the full-resolution lossless picture, the one the server renders as PNG
    drawn = settled(browser)
    assert drawn is not None and drawn["quality"] == "full" and drawn["width"] == 512 and drawn["index"] == 20
    url = str(browser.find_element("id", "image").get_attribute("data-url"))
    assert "viewport=" not in url and "quality=" not in url
    with side.client("admin") as http:
        answer = http.get(url.split("?")[0], headers={"Accept": "image/png"})
    assert answer.status_code == 200
    assert np.array_equal(picture(browser), np.asarray(Image.open(io.BytesIO(answer.content)).convert("L")))

    # the whole series arrives ahead of the doctor, a bounded number of requests at a time
    loaded = wait_quiet(browser)
    page, frame_bytes, requests = transferred(browser)
    first_visit = page + frame_bytes
    print(f"first visit: {requests} frame requests, {frame_bytes} bytes of frames, page {page}")
    assert loaded["previews"] + loaded["full"] == SLICES and requests <= SLICES + 20

    # fast scrolling (keys faster than frames arrive): the counter always names the slice drawn
    mismatches = []
    for _ in range(15):
        ActionChains(browser).send_keys(Keys.PAGE_UP).perform()
        mismatches += browser.execute_script(
            """const info = document.getElementById('slice-info');
            const url = document.getElementById('image').getAttribute('data-url') || '';
            return url.includes('/instances/' + info.dataset.sop + '/') ? [] : [info.textContent];"""
        )
    assert not mismatches, mismatches
    WebDriverWait(browser, 60).until(lambda d: (s := settled(d)) is not None and s["index"] == 0)

    # the second visit: the browser's cache answers for every frame
    second = visit(browser, side, study)
    wait_quiet(browser)
    page2, frames2, _ = transferred(browser)
    print(f"bytes: first visit {first_visit}, second {page2 + frames2}")
    assert page2 + frames2 < 0.1 * first_visit, (first_visit, page2, frames2)
    assert second.first_image < first.first_image

    # the audit chain: the study opened twice, the series viewed once in this session
    new = [e for e in side.accesses() if e.envelope.event_id not in before and e.envelope.actor.user == "dr.petrov"]
    pages = [e for e in new if e.payload["channel"] == "study-page"]
    frames = [e for e in new if e.payload["channel"] == "wado-rs"]
    assert len(pages) == 2 and all(e.payload["PatientID"] == PATIENT for e in pages)
    assert len(frames) == 1, [(e.envelope.occurred_at, e.payload) for e in frames]
    assert frames[0].payload["results"] == SLICES and frames[0].payload["action"] == "view"
    assert state(browser)["slices"] == SLICES
