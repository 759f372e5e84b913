"""api.http.rendering: one frame of a stored object -> PNG/JPEG, on objects as modalities send them.

The CT files are written by :mod:`tests.support.studies` (pydicom, then dcmtk's own converters for
each transfer syntax); JPEG 2000, multi-frame, MONOCHROME1, RGB and colour JPEG objects are made
here with pydicom (and dcmcjpeg for colour JPEG baseline). Pictures are decoded with Pillow and
compared with the pixel values the pipeline must produce.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from api.http.rendering import (
    JPEG,
    PNG,
    RenderError,
    Viewport,
    Window,
    apply_window,
    parse_frame,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
    window_from,
)
from tests.support import studies


def _picture(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(_picture(data))


def _ct(**changes: object) -> Dataset:
    ds = studies.instance(generate_uid(), generate_uid(), 1)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    return studies.part10_bytes(ds)


# -- every transfer syntax the archive receives ------------------------------------------------------
@pytest.mark.parametrize("syntax", list(studies.TRANSFER_SYNTAXES))
def test_renders_each_transfer_syntax_of_a_stored_ct(tmp_path: Path, syntax: str) -> None:
    (sent,) = studies.write_study(tmp_path, 1, [syntax])
    data = sent.path.read_bytes()
    expected = np.asarray(dcmread(sent.path).pixel_array, dtype=np.float64)  # the decoded frame
    for media_type, fmt in ((PNG, "PNG"), (JPEG, "JPEG")):
        picture = _picture(render(data, media_type=media_type))
        assert picture.format == fmt
        assert picture.size == (64, 64) and picture.mode == "L"
    # no window in the object: min..max maps onto 0..255 (linear exact), so the extremes are black and white
    png = _pixels(render(data)).astype(np.float64)
    low, high = expected.min(), expected.max()
    want = np.rint(np.clip((expected - (low + high) / 2) / (high - low) + 0.5, 0, 1) * 255)
    if syntax == "1.2.840.10008.1.2.4.50":
        assert np.abs(png - want).max() <= 1  # lossy, but the decoded frame is what was rendered
    else:
        assert np.array_equal(png, want)
    assert png.min() == 0 and png.max() == 255


def test_jpeg_2000_is_rendered() -> None:
    ds = _ct()
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    picture = _picture(render(_bytes(ds)))
    assert picture.size == (64, 64)
    assert _pixels(render(_bytes(ds)))[0, 0] == 0


# -- the grayscale pipeline --------------------------------------------------------------------
def test_window_from_parameters_beats_the_objects_window() -> None:
    ds = _ct(WindowCenter=2000, WindowWidth=10)
    data = _bytes(ds)  # pixel values 1..127: under the object's window everything is black
    assert _pixels(render(data)).max() == 0
    wide = _pixels(render(data, window=Window(64, 128)))
    narrow = _pixels(render(data, window=Window(64, 16)))
    assert wide.max() > 0 and not np.array_equal(wide, narrow)
    assert narrow.min() == 0 and narrow.max() == 255  # saturates at both ends


def test_objects_first_window_value_is_used() -> None:
    ds = _ct(WindowCenter=[10, 3000], WindowWidth=[2, 100])
    pixels = _pixels(render(_bytes(ds)))
    source = dcmread(io.BytesIO(_bytes(ds))).pixel_array
    assert np.array_equal(pixels == 255, source >= 10)  # linear window 10/2: black up to 9, white from 10


def test_rescale_is_applied_before_the_window() -> None:
    # stored 1..127, slope 1 intercept -1024 -> HU -1023..-897; a window at -960 splits them
    ds = _ct(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=-960, WindowWidth=2)
    pixels = _pixels(render(_bytes(ds)))
    source = dcmread(io.BytesIO(_bytes(ds))).pixel_array.astype(int) - 1024
    assert np.array_equal(pixels == 255, source >= -960)


def test_monochrome1_is_inverted() -> None:
    m2 = _pixels(render(_bytes(_ct())))
    m1 = _pixels(render(_bytes(_ct(PhotometricInterpretation="MONOCHROME1"))))
    assert np.array_equal(m1, 255 - m2)


def test_window_functions_follow_ps3_3() -> None:
    x = np.array([-10.0, 0.0, 49.5, 50.0, 100.0, 110.0])
    linear = apply_window(x, Window(50, 101))
    assert linear[0] == 0 and linear[-1] == 255 and 126 <= linear[3] <= 129
    exact = apply_window(x, Window(50, 100, "linear_exact"))
    assert list(exact[[1, 3, 4]]) == [0, 128, 255]
    sigmoid = apply_window(x, Window(50, 100, "sigmoid"))
    assert list(sigmoid[[0, 3, 5]]) == [21, 128, 234]  # 255 / (1 + exp(-4 (x - c) / w))


# -- multi-frame -------------------------------------------------------------------------------
def _multiframe(frames: int = 3, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds = _ct()
    ds.NumberOfFrames = frames
    stack = np.stack([np.full((64, 64), 100 * (i + 1), dtype=np.uint16) for i in range(frames)])
    stack[:, 0, 0] = 0  # a dark corner so min/max differ
    ds.PixelData = stack.tobytes()
    ds.WindowCenter, ds.WindowWidth = 200, 101  # frame 1 black, frame 2 mid-grey, frame 3 white
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "pylibjpeg")
    return _bytes(ds)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_multiframe_renders_the_frame_asked_for(syntax: str) -> None:
    data = _multiframe(3, syntax)
    assert _pixels(render(data, 1))[5, 5] == 0
    assert _pixels(render(data, 2))[5, 5] == 129  # ((200 - 199.5) / 100 + 0.5) * 255
    assert _pixels(render(data, 3))[5, 5] == 255


@pytest.mark.parametrize("frame", [0, 4, -1])
def test_frame_out_of_range_names_the_frame(frame: int) -> None:
    with pytest.raises(RenderError) as failure:
        render(_multiframe(3), frame)
    assert failure.value.parameter == "frame"


# -- colour ----------------------------------------------------------------------------------------
def _rgb() -> Dataset:
    ds = _ct(SamplesPerPixel=3, PhotometricInterpretation="RGB", BitsAllocated=8, BitsStored=8, HighBit=7)
    ds.PlanarConfiguration = 0
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, :32, 0] = 250  # left red, right blue
    image[:, 32:, 2] = 250
    ds.PixelData = image.tobytes()
    return ds


def test_rgb_is_rendered_in_colour() -> None:
    pixels = _pixels(render(_bytes(_rgb())))
    assert pixels.shape == (64, 64, 3)
    assert tuple(pixels[10, 5]) == (250, 0, 0) and tuple(pixels[10, 60]) == (0, 0, 250)


def test_colour_jpeg_baseline_ybr_is_converted_to_rgb(tmp_path: Path) -> None:
    source, target = tmp_path / "rgb.dcm", tmp_path / "ybr.dcm"
    _rgb().save_as(source, enforce_file_format=True)
    subprocess.run(["/usr/bin/dcmcjpeg", "+eb", str(source), str(target)], check=True, env=studies.DCMTK_ENV)
    assert str(dcmread(target).PhotometricInterpretation).startswith("YBR")
    pixels = _pixels(render(target.read_bytes())).astype(int)
    assert pixels.shape == (64, 64, 3)
    red, blue = pixels[10, 5], pixels[10, 60]
    assert red[0] > 200 and red[2] < 40 and blue[2] > 200 and blue[0] < 40


# -- viewport and quality --------------------------------------------------------------------------
def test_viewport_scales_to_fit_keeping_the_aspect_ratio() -> None:
    data = _bytes(_ct())
    assert _picture(render(data, viewport=Viewport(128, 128))).size == (128, 128)
    assert _picture(render(data, viewport=Viewport(32, 100))).size == (32, 32)
    cropped = _picture(render(data, viewport=Viewport(20, 10, (0, 0, 32, 16))))
    assert cropped.size == (20, 10)


def test_jpeg_quality_changes_the_bytes() -> None:
    data = _bytes(_ct())
    low, high = render(data, media_type=JPEG, quality=5), render(data, media_type=JPEG, quality=100)
    assert low != high and len(low) < len(high)


def test_object_without_pixels_is_refused() -> None:
    ds = _ct()
    del ds.PixelData
    with pytest.raises(RenderError) as failure:
        render(_bytes(ds))
    assert failure.value.parameter == "object"


def test_unreadable_bytes_are_refused() -> None:
    with pytest.raises(RenderError) as failure:
        render(b"not dicom at all")
    assert failure.value.parameter == "object"


# -- request parameters ----------------------------------------------------------------------------
def test_parameters_parse() -> None:
    assert parse_window("40,400") == Window(40, 400, "linear")
    assert parse_window("40,400,SIGMOID") == Window(40, 400, "sigmoid")
    assert parse_viewport("512,256") == Viewport(512, 256)
    assert parse_viewport("512,256,0,0,10,10").region == (0, 0, 10, 10)
    assert parse_quality("75") == 75
    assert parse_frame("2") == 2
    assert window_from(None, None, ("windowCenter", "windowWidth")) is None
    assert window_from("40", "400", ("windowCenter", "windowWidth")) == Window(40, 400)


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda: parse_window("40"), "window"),
        (lambda: parse_window("a,b"), "window"),
        (lambda: parse_window("40,0"), "window"),
        (lambda: parse_window("40,400,cubic"), "window"),
        (lambda: parse_window("nan,400"), "window"),
        (lambda: parse_viewport("0,10"), "viewport"),
        (lambda: parse_viewport("10"), "viewport"),
        (lambda: parse_viewport("10.5,10"), "viewport"),
        (lambda: parse_viewport("99999,10"), "viewport"),
        (lambda: parse_quality("0"), "quality"),
        (lambda: parse_quality("high"), "quality"),
        (lambda: parse_frame("0"), "frame"),
        (lambda: parse_frame("1,2"), "frame"),
        (lambda: window_from("40", None, ("windowCenter", "windowWidth")), "windowWidth"),
        (lambda: window_from("x", "400", ("windowCenter", "windowWidth")), "windowCenter"),
        (lambda: window_from("40", "-3", ("windowCenter", "windowWidth")), "windowWidth"),
        (lambda: render(b"", media_type="image/gif"), "media-type"),
    ],
)
def test_bad_parameters_name_themselves(call: object, parameter: str) -> None:
    with pytest.raises(RenderError) as failure:
        call()  # type: ignore[operator]
    assert failure.value.parameter == parameter
