"""Rendering one frame of a stored DICOM object as a PNG or JPEG picture (pure: bytes in, bytes out).

Used by WADO-RS ``/rendered`` (PS3.18 8.3.5, rendered resources) and WADO-URI (PS3.18 9, an
image/jpeg or image/png ``contentType``). The object is read exactly as stored (any transfer
syntax pydicom can decode with the installed handlers: native little endian, deflate, JPEG
baseline/lossless, JPEG-LS, JPEG 2000, RLE), one frame is decoded and then, for grayscale
images, the PS3.4 grayscale pipeline is applied:

1. modality LUT: the Modality LUT Sequence or RescaleSlope/RescaleIntercept;
2. VOI: the window asked for (centre, width, function), else the object's first window
   (WindowCenter/WindowWidth and VOILUTFunction), else its first VOI LUT, else the frame's
   minimum to maximum;
3. MONOCHROME1 is inverted so that the picture always shows "high = white".

Colour images (RGB, YBR_* decoded to RGB, PALETTE COLOR through its LUT) are scaled to 8 bits; a
window does not apply to them. The picture may be scaled to fit a viewport (aspect ratio kept)
after an optional crop of the source region. Frame numbers are 1-based.

Every problem with the *request* raises :class:`RenderError` naming the parameter (the HTTP layer
turns it into a 400); the message never contains a value from the object.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array

PNG = "image/png"
JPEG = "image/jpeg"
MEDIA_TYPES = (PNG, JPEG)
DEFAULT_QUALITY = 90
#: changes whenever the pictures change for the same request (a different resampling, pipeline, ...):
#: it is part of every rendered frame's ETag, so browsers do not keep pictures drawn the old way
RENDERER = "1"
#: no picture wider or higher than this (a viewport cannot make the server allocate gigabytes)
MAX_VIEWPORT = 8192
WINDOW_FUNCTIONS = ("linear", "linear_exact", "sigmoid")

Array = NDArray[Any]


class RenderError(ValueError):
    """The request cannot be rendered; ``parameter`` names what is wrong (frame, window, ...)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Window:
    """VOI window (PS3.3 C.11.2.1.2): centre, width and function (linear, linear_exact, sigmoid)."""

    center: float
    width: float
    function: str = "linear"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise RenderError("window", "window centre and width must be finite numbers")
        if self.function not in WINDOW_FUNCTIONS:
            raise RenderError("window", f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}")
        minimum = 1.0 if self.function == "linear" else 0.0
        if self.width < minimum or (self.function != "linear" and self.width <= 0):
            raise RenderError("window", "window width must be at least 1 (linear) or above 0 (other functions)")


@dataclass(frozen=True)
class Viewport:
    """The picture's maximum size and optionally the source region shown (PS3.18 8.3.5.1.3)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh in source pixels

    def __post_init__(self) -> None:
        if not (0 < self.width <= MAX_VIEWPORT and 0 < self.height <= MAX_VIEWPORT):
            raise RenderError("viewport", f"viewport width and height must be between 1 and {MAX_VIEWPORT}")
        if self.region is not None:
            sx, sy, sw, sh = self.region
            if sx < 0 or sy < 0 or sw <= 0 or sh <= 0:
                raise RenderError("viewport", "viewport region needs sx, sy >= 0 and sw, sh > 0")


# -- parsing request parameters ------------------------------------------------------------------
def _numbers(text: str, parameter: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise RenderError(parameter, f"{parameter} must be comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise RenderError(parameter, f"{parameter} must be finite numbers")
    return values


def parse_window(text: str) -> Window:
    """PS3.18 ``window=center,width,function`` (function defaults to linear)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise RenderError("window", "window takes center,width[,function]")
    center, width = _numbers(",".join(parts[:2]), "window")
    function = parts[2].lower() if len(parts) == 3 else "linear"
    return Window(center, width, function)


def window_from(center: str | None, width: str | None, parameters: tuple[str, str]) -> Window | None:
    """WADO-URI ``windowCenter`` / ``windowWidth``: both or neither."""
    if center is None and width is None:
        return None
    if center is None or width is None:
        missing = parameters[0] if center is None else parameters[1]
        raise RenderError(missing, f"{parameters[0]} and {parameters[1]} must be given together")
    c = _numbers(center, parameters[0])
    w = _numbers(width, parameters[1])
    if len(c) != 1:
        raise RenderError(parameters[0], f"{parameters[0]} must be one number")
    if len(w) != 1:
        raise RenderError(parameters[1], f"{parameters[1]} must be one number")
    try:
        return Window(c[0], w[0])
    except RenderError as exc:
        raise RenderError(parameters[1], str(exc)) from None


def parse_viewport(text: str) -> Viewport:
    """PS3.18 ``viewport=vw,vh`` or ``viewport=vw,vh,sx,sy,sw,sh``."""
    values = _numbers(text, "viewport")
    if len(values) not in (2, 6) or any(v != int(v) for v in values):
        raise RenderError("viewport", "viewport takes vw,vh or vw,vh,sx,sy,sw,sh (integers)")
    ints = [int(v) for v in values]
    region = (ints[2], ints[3], ints[4], ints[5]) if len(ints) == 6 else None
    return Viewport(ints[0], ints[1], region)


def parse_quality(text: str, parameter: str = "quality") -> int:
    """JPEG quality, 1 to 100."""
    try:
        quality = int(text)
    except ValueError:
        raise RenderError(parameter, f"{parameter} must be an integer from 1 to 100") from None
    if not 1 <= quality <= 100:
        raise RenderError(parameter, f"{parameter} must be an integer from 1 to 100")
    return quality


def parse_frame(text: str, parameter: str = "frame") -> int:
    """A 1-based frame number."""
    try:
        frame = int(text)
    except ValueError:
        raise RenderError(parameter, f"{parameter} must be a positive integer") from None
    if frame < 1:
        raise RenderError(parameter, f"{parameter} must be a positive integer (frames are numbered from 1)")
    return frame


# -- rendering -----------------------------------------------------------------------------------
def read(data: bytes) -> Dataset:
    """The object as stored (Part-10 bytes, any transfer syntax)."""
    try:
        return dcmread(io.BytesIO(data))
    except Exception:
        raise RenderError("object", "the stored object cannot be read as DICOM") from None


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def render(
    data: bytes | Dataset,
    frame: int = 1,
    *,
    media_type: str = PNG,
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int | None = None,
) -> bytes:
    """One frame of the object as ``media_type`` (image/png or image/jpeg) bytes."""
    if media_type not in MEDIA_TYPES:
        raise RenderError("media-type", f"rendered media type must be one of {', '.join(MEDIA_TYPES)}")
    ds = data if isinstance(data, Dataset) else read(data)
    picture = render_image(ds, frame, window=window, viewport=viewport)
    out = io.BytesIO()
    if media_type == JPEG:
        picture.save(out, format="JPEG", quality=quality or DEFAULT_QUALITY)
    else:
        picture.save(out, format="PNG")
    return out.getvalue()


def render_image(
    ds: Dataset, frame: int = 1, *, window: Window | None = None, viewport: Viewport | None = None
) -> Image.Image:
    """One frame as a Pillow image (mode L or RGB), windowed, inverted and scaled as asked."""
    if "PixelData" not in ds:
        raise RenderError("object", "the object has no pixel data to render")
    frames = frame_count(ds)
    if not 1 <= frame <= frames:
        raise RenderError("frame", f"frame {frame} is out of range: the object has {frames} frame(s)")
    try:
        arr = pixel_array(ds, index=frame - 1)
    except Exception as exc:
        raise RenderError("object", f"the pixel data cannot be decoded ({type(exc).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric == "PALETTE COLOR":
        pixels = _to_8bit(apply_color_lut(arr, ds))
    elif samples == 1:
        pixels = grayscale(arr, ds, window, invert=photometric == "MONOCHROME1")
    else:
        pixels = _to_8bit(arr, int(ds.get("BitsStored", 8) or 8))
    picture = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    return fit(picture, viewport) if viewport else picture


def grayscale(arr: Array, ds: Dataset, window: Window | None, *, invert: bool = False) -> NDArray[np.uint8]:
    """Modality LUT, then VOI (asked window > object's window > object's VOI LUT > min/max)."""
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if window is None:
        window = object_window(ds)
        if window is None and "VOILUTSequence" in ds:
            return _invert(_voi_lut(values, ds), invert)
    if window is None:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        window = Window((low + high) / 2, max(high - low, 1e-6), "linear_exact")
    return _invert(apply_window(values, window), invert)


def object_window(ds: Dataset) -> Window | None:
    """The object's first window (WindowCenter/WindowWidth, VOILUTFunction), if valid."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().lower()
        return Window(c, w, function if function in WINDOW_FUNCTIONS else "linear")
    except (TypeError, ValueError, IndexError):  # RenderError is a ValueError: an unusable window
        return None


def _is_multi(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")


def apply_window(values: Array, window: Window) -> NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2 window functions onto 0..255."""
    x = np.asarray(values, dtype=np.float64)
    c, w = window.center, window.width
    if window.function == "sigmoid":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "linear_exact":
        y = np.clip((x - c) / w + 0.5, 0.0, 1.0) * 255.0
    elif w <= 1:  # linear with width 1: a threshold at c - 0.5
        y = np.where(x > c - 0.5, 255.0, 0.0)
    else:
        y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0
    return np.rint(y).astype(np.uint8)


def _voi_lut(arr: Array, ds: Dataset) -> NDArray[np.uint8]:
    try:
        out = np.asarray(apply_voi(arr, ds, index=0), dtype=np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    except Exception:
        raise RenderError("object", "the object's VOI LUT cannot be applied") from None
    top = float((1 << bits) - 1) if 0 < bits <= 16 else float(out.max() or 1.0)
    return np.rint(np.clip(out / top, 0.0, 1.0) * 255.0).astype(np.uint8)


def _invert(pixels: NDArray[np.uint8], invert: bool) -> NDArray[np.uint8]:
    return (255 - pixels).astype(np.uint8) if invert else pixels


def _to_8bit(arr: Array, bits: int | None = None) -> NDArray[np.uint8]:
    if arr.dtype == np.uint8:
        return arr
    if bits is None or bits <= 8:
        bits = 16 if arr.dtype.itemsize >= 2 else 8
    top = float((1 << bits) - 1)
    return np.rint(np.clip(np.asarray(arr, dtype=np.float64) / top, 0.0, 1.0) * 255.0).astype(np.uint8)


def fit(picture: Image.Image, viewport: Viewport) -> Image.Image:
    """Crop to the viewport's region (clipped to the image), then scale to the largest size that
    fits in the viewport keeping the aspect ratio."""
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        if sx >= picture.width or sy >= picture.height:
            raise RenderError("viewport", "viewport region starts outside the image")
        picture = picture.crop((sx, sy, min(sx + sw, picture.width), min(sy + sh, picture.height)))
    scale = min(viewport.width / picture.width, viewport.height / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    if size == picture.size:
        return picture
    return picture.resize(size, Image.Resampling.BILINEAR)
