"""Accept negotiation of WADO-RS (api.http.wado): the media ranges, the transfer syntaxes a client
takes for objects, the rendered image type."""

from __future__ import annotations

import pytest

from api.http.errors import ApiError
from api.http.wado import dicom_syntaxes, parse_accept, rendered_media_type


def test_no_accept_header_is_anything() -> None:
    assert [r.type for r in parse_accept(None)] == ["*/*"]
    assert dicom_syntaxes(parse_accept("")) is None


def test_ranges_best_first_and_q0_dropped() -> None:
    ranges = parse_accept('image/png;q=0.5, image/jpeg, text/html;q=0, multipart/related; type="application/dicom"')
    assert [r.type for r in ranges] == ["image/jpeg", "multipart/related", "image/png"]
    assert ranges[1].params["type"] == "application/dicom"


def test_transfer_syntaxes_of_objects() -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert dicom_syntaxes(parse_accept(accept)) == {"1.2.840.10008.1.2.4.50"}
    assert dicom_syntaxes(parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')) is None
    with pytest.raises(ApiError) as refused:
        dicom_syntaxes(parse_accept("image/jpeg"))
    assert refused.value.status == 406


def test_rendered_type_follows_the_preference() -> None:
    assert rendered_media_type(parse_accept("image/png, image/jpeg;q=0.8")) == "image/png"
    assert rendered_media_type(parse_accept("image/*")) == "image/jpeg"
    with pytest.raises(ApiError) as refused:
        rendered_media_type(parse_accept("application/dicom"))
    assert refused.value.status == 406
