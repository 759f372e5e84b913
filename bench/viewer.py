"""The study page's viewer on three links: unthrottled, 2 Mbit/s and 256 kbit/s (the regional
minimum for a doctor's workstation), each with 100 ms of latency when throttled.

    python bench/viewer.py [--slices 100] [--scroll 20] [--json]

One archive as ``cami serve`` runs it on the embedded defaults (tests/support/readside.py), a
100-slice 512x512 CT series that compresses like a real one (tests/support/phantom.py) sent with
storescu, and Debian's headless Chromium throttled by its own network emulation. A doctor with a
warm session (signed in, script cached) opens the study and scrolls ``--scroll`` slices one key
press at a time, waiting for each; the browser's cache is emptied before each first visit.

Printed per link:
- first image: seconds from navigation to the first picture drawn (the page's own clock);
- s/slice: seconds from a key press to its slice drawn, averaged over the scroll;
- bytes/slice: bytes over the wire per frame the viewer fetched (previews and full quality);
- refined: seconds from the last key press to the slice in full quality;
- second visit: bytes of the same visit again, as a share of the first's.

Anchor, in the same run and browser: the viewer as it was before issue 16, i.e. every slice as a
full-size PNG, one request at a time, nothing fetched ahead (the viewer's own "full quality" mode
with prefetch off: localStorage ``cami.viewer.full=1``, ``cami.viewer.prefetch=0``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

from tests.support.browser import chromium  # noqa: E402
from tests.support.readside import ReadSide  # noqa: E402
from tests.support.viewer import (  # noqa: E402
    LINKS,
    forget_frames,
    frame_sizes,
    series_study,
    sign_in,
    throttle,
    transferred,
    viewer_mode,
    visit,
    wait_quiet,
)


@dataclass
class Row:
    link: str
    viewer: str
    first_image_s: float
    seconds_per_slice: float
    bytes_per_slice: float
    preview_bytes: float | None
    full_bytes: float | None
    refined_s: float | None
    second_visit_share: float | None


def measure(driver: WebDriver, side: ReadSide, study: str, link: str, *, anchor: bool, scroll: int) -> Row:
    throttle(driver, None)
    viewer_mode(driver, side, full=anchor, prefetch=not anchor)
    forget_frames(driver, side)
    throttle(driver, LINKS[link])
    first = visit(driver, side, study, scroll=scroll, refine=not anchor)
    previews, full = frame_sizes(driver)
    sizes = previews + full
    share = None
    if not anchor:
        wait_quiet(driver)
        page, frames, _ = transferred(driver)
        visit(driver, side, study, scroll=scroll)
        wait_quiet(driver)
        page2, frames2, _ = transferred(driver)
        share = (page2 + frames2) / (page + frames)
    return Row(
        link,
        "anchor: PNG, 1 at a time" if anchor else "CAMI",
        first.first_image,
        first.per_slice,
        statistics.fmean(sizes) if sizes else float("nan"),
        statistics.fmean(previews) if previews else None,
        statistics.fmean(full) if full else None,
        first.refined,
        share,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100, help="slices in the series (default 100)")
    parser.add_argument("--scroll", type=int, default=20, help="slices scrolled, one key press each (default 20)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    console = Console(stderr=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cami-bench-viewer-") as tmp:
        side = ReadSide.start(Path(tmp))
        driver = chromium()
        try:
            console.print(f"storing a {args.slices}-slice 512x512 CT series with storescu…")
            study = series_study(side, args.slices)
            sign_in(driver, side)
            for link in LINKS:
                for anchor in (True, False):
                    console.print(f"{link}: {'anchor' if anchor else 'CAMI'}…")
                    rows.append(measure(driver, side, study, link, anchor=anchor, scroll=args.scroll))
        finally:
            driver.quit()
            side.stop()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table(
        title=f"Viewer: {args.slices}-slice 512x512 CT, {args.scroll} slices scrolled (100 ms latency when throttled)"
    )
    for column in ("link", "viewer", "first image", "s/slice", "bytes/slice", "preview / full bytes", "refined",
                   "2nd visit", "vs anchor: first / per slice / bytes"):  # fmt: skip
        table.add_column(column)
    anchors = {r.link: r for r in rows if r.viewer.startswith("anchor")}
    for r in rows:
        a = anchors[r.link]
        versus = (
            ""
            if r is a
            else f"{r.first_image_s / a.first_image_s:.2f} / {r.seconds_per_slice / a.seconds_per_slice:.2f} / "
            f"{r.bytes_per_slice / a.bytes_per_slice:.2f}"
        )
        table.add_row(
            r.link,
            r.viewer,
            f"{r.first_image_s:.2f} s",
            f"{r.seconds_per_slice:.3f} s",
            f"{r.bytes_per_slice / 1000:.1f} kB",
            " / ".join("—" if v is None else f"{v / 1000:.1f} kB" for v in (r.preview_bytes, r.full_bytes)),
            "—" if r.refined_s is None else f"{r.refined_s:.2f} s",
            "—" if r.second_visit_share is None else f"{100 * r.second_visit_share:.1f} %",
            versus,
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
