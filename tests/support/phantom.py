"""A CT series that looks like one: 512x512 axial chest slices with body, lungs, vessels, spine and
a table, in Hounsfield units with scanner-like noise, stored as 16-bit with RescaleIntercept -1024.

Synthetic ramps compress far better than real images; the viewer's sizes and timings are only
meaningful on pixels that compress like a real CT (noise in soft tissue, sharp edges at the lungs
and bone). Each slice differs: the lungs widen and narrow along the series and a nodule passes
through a few slices.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.readside import ROOT_UID

SIZE = 512
#: the mediastinal window the objects carry (centre, width)
WINDOW = (40, 400)


def slice_pixels(index: int, count: int, seed: int = 7) -> NDArray[np.uint16]:
    """Slice ``index`` of ``count`` as stored values (HU + 1024)."""
    rng = np.random.default_rng(seed * 100_003 + index)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cx, cy = SIZE / 2, SIZE / 2 + 10
    hu = np.full((SIZE, SIZE), -1000.0)  # air
    along = index / max(count - 1, 1)  # 0 at the apex, 1 at the base
    body = ((x - cx) / 215) ** 2 + ((y - cy) / 150) ** 2 < 1
    fat = ((x - cx) / 205) ** 2 + ((y - cy) / 140) ** 2 < 1
    hu[body] = -100  # subcutaneous fat
    hu[fat] = 40  # muscle and mediastinum
    lung_w = 70 + 25 * np.sin(np.pi * along)
    lung_h = 95 + 20 * np.sin(np.pi * along)
    for side in (-1, 1):
        lung = ((x - (cx + side * 95)) / lung_w) ** 2 + ((y - (cy - 5)) / lung_h) ** 2 < 1
        hu[lung] = -850
        # vessels: bright dots branching through the lung
        for _ in range(40):
            vx = cx + side * 95 + rng.normal(0, lung_w / 2.2)
            vy = cy - 5 + rng.normal(0, lung_h / 2.2)
            r = rng.uniform(1.5, 4.0)
            vessel = ((x - vx) ** 2 + (y - vy) ** 2 < r * r) & lung
            hu[vessel] = 30
    heart = ((x - cx - 20) / (55 + 25 * along)) ** 2 + ((y - cy + 10) / 50) ** 2 < 1
    hu[heart] = 45
    aorta = (x - cx + 15) ** 2 + (y - cy - 55) ** 2 < 16**2
    hu[aorta] = 180  # contrast-enhanced
    spine = (x - cx) ** 2 + (y - cy - 95) ** 2 < 24**2
    hu[spine] = 350
    cortex = spine & ~((x - cx) ** 2 + (y - cy - 95) ** 2 < 19**2)
    hu[cortex] = 900
    for side in (-1, 1):  # ribs
        for angle in np.linspace(0.5, 2.6, 5):
            rx = cx + side * 200 * np.cos(angle) * 0.98
            ry = cy + 138 * np.sin(angle) * -0.98 if angle < 1.5 else cy + 138 * np.sin(angle) * 0.98
            hu[(x - rx) ** 2 + (y - ry) ** 2 < 7**2] = 700
    nodule_at = int(0.6 * count)
    if abs(index - nodule_at) <= 3:
        r = 9 - 2 * abs(index - nodule_at)
        hu[(x - cx - 110) ** 2 + (y - cy + 20) ** 2 < r * r] = 20
    table = (y > cy + 165) & (y < cy + 175) & (abs(x - cx) < 230)
    hu[table] = 200
    hu += rng.normal(0, 25, hu.shape) * (hu > -950)  # quantum noise of a 1 mm slice where there is matter
    return np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)


def ct_series(study_uid: str, count: int, patient_id: str, *, description: str = "КТ ОГК") -> list[Dataset]:
    """``count`` slices of one series, instance numbers 1..count, 512x512, 16-bit."""
    series_uid = generate_uid(prefix=ROOT_UID)
    out = []
    for number in range(1, count + 1):
        ds = studies.instance(study_uid, series_uid, number, patient_id=patient_id, size=SIZE)
        ds.StudyDescription = description
        ds.SeriesDescription = "Аксиальные 1 мм"
        ds.PixelData = slice_pixels(number - 1, count).tobytes()
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter, ds.WindowWidth = WINDOW
        ds.SliceLocation = float(number)
        out.append(ds)
    return out
