"""The browser pages' HTML (api/http/templates/) with hostile values in every field a user or a DICOM
sender controls: patient name, query text, the ``next`` URL, error text, user name. Each must come
back as the same text (escaped, never markup), and the page data must not leave its script element.
The pages are rendered directly: no server needed."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.responses import HTMLResponse

from api.auth import User
from api.http.web import _search_page, _signin_page, _study_page, message_page

HOSTILE = [
    '"><script>alert(1)</script><img src=x onerror=alert(2)>',
    "' onmouseover='alert(3)' x='",
    "</script><!--<script>alert(4)//-->",
    "Иванов &amp; &lt;b&gt; & Co",  # already-escaped text must not be un-escaped on the way
    "{{ 7*7 }} {% raw %}",  # template syntax in data is data
]
BENIGN = "Ivanov"
DATA_BLOCK = re.compile(r'<script type="application/json" id="cami-data">(.*?)</script>', re.S)


class Parsed(HTMLParser):
    """Tags in document order (name and attribute names), attribute values, text per element id."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.shape: list[tuple[str, tuple[str, ...]]] = []
        self.attributes: list[dict[str, str | None]] = []
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.shape.append((tag, tuple(name for name, _ in attrs)))
        self.attributes.append(dict(attrs))
        if tag not in ("meta", "link", "input", "br", "img"):
            self._open.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.text[element_id] = self.text.get(element_id, "") + data

    def value_of(self, name: str) -> str | None:
        [value] = [a.get("value") for a in self.attributes if a.get("name") == name]
        return value


def document(page: HTMLResponse) -> str:
    return bytes(page.body).decode("utf-8")


def page_data(page: HTMLResponse) -> Any:
    """The page data block, after checking nothing in it could end the script element early."""
    [block] = DATA_BLOCK.findall(document(page))
    assert "<" not in block and ">" not in block and "&" not in block
    return json.loads(block)


def user(name: str = "dr.petrov", role: str = "radiologist") -> User:
    return User(name, role, "1.2.643.5.1.13.13.12.2.50.1001")


def same_shape(hostile: HTMLResponse, benign: HTMLResponse) -> None:
    """The hostile values added no element, no attribute and no script: the markup is the benign page's."""
    assert Parsed(document(hostile)).shape == Parsed(document(benign)).shape
    # the data block, /static/cami.js and on the study page /static/frames.js: nothing else
    assert document(hostile).count("<script") == document(benign).count("<script") <= 3


@pytest.mark.parametrize("value", HOSTILE)
def test_the_next_url_comes_back_as_the_same_text(value: str) -> None:
    page = _signin_page(value, "bad-credentials", 401)
    parsed = Parsed(document(page))
    assert parsed.value_of("next") == value
    assert page_data(page) == {"page": "signin", "next": value, "error": "bad-credentials"}
    same_shape(page, _signin_page("/search", "bad-credentials", 401))
    assert page.status_code == 401 and "script-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("error", "key"),
    [
        ("bad-credentials", "signin.bad"),
        ("expired", "signin.needed"),
        ("unavailable", "signin.unavailable"),
        ("too-many-attempts", "signin.too-many"),
        (None, None),
        (HOSTILE[0], None),  # an unknown error code shows no message (and is not printed)
    ],
)
def test_the_sign_in_page_says_what_went_wrong(error: str | None, key: str | None) -> None:
    page = _signin_page("/search", error)
    text = document(page)
    keys = re.findall(r'<p class="(?:error|note)" id="signin-error"><span data-i18n="([^"]+)">', text)
    assert keys == ([key] if key else [])
    if error is not None and key is None:
        assert error not in text and "onerror" not in text.split("</script>", 1)[1]


@pytest.mark.parametrize("value", HOSTILE)
def test_error_text_and_user_name_are_escaped_on_the_message_page(value: str) -> None:
    page = message_page(404, "error.404-study", value, user(name=value))
    parsed = Parsed(document(page))
    assert parsed.text["message"] == value
    assert parsed.text["who"].startswith(value + " · ")
    assert page_data(page) == {"page": "message", "status": 404, "message": "error.404-study"}
    same_shape(page, message_page(404, "error.404-study", BENIGN, user(name=BENIGN)))
    assert page.status_code == 404


def test_the_message_page_without_a_user_has_no_sign_out() -> None:
    page = message_page(503, "error.503", "Архив временно недоступен.", None)
    parsed = Parsed(document(page))
    assert "who" not in parsed.text and 'action="/signout"' not in document(page)
    assert parsed.text["message"] == "Архив временно недоступен." and "<h1>503</h1>" in document(page)


@pytest.mark.parametrize("value", HOSTILE)
def test_the_query_text_is_escaped_on_the_search_page(value: str) -> None:
    asked = {"patient": value, "name": value}
    data = {"user": {"name": "dr.petrov", "role": "radiologist"}, "query": asked, "results": None}
    page = _search_page(user(), data, value, value, 400)
    parsed = Parsed(document(page))
    assert parsed.value_of("patient") == value and parsed.value_of("name") == value
    assert page_data(page) == {"page": "search", **data}
    benign = {**data, "query": {"patient": BENIGN, "name": BENIGN}}
    same_shape(page, _search_page(user(), benign, BENIGN, BENIGN, 400))
    assert page.status_code == 400


@pytest.mark.parametrize("value", HOSTILE)
def test_the_patient_name_stays_inside_the_study_page_data(value: str) -> None:
    data = {
        "user": {"name": "dr.petrov", "role": "radiologist"},
        "patient": {"id": value, "name": value},
        "study": {"study_uid": "1.2.3", "study_description": value, "first_received": None},
        "series": [{"description": value, "instances": []}],
    }
    page = _study_page(user(), data)
    assert page_data(page) == {"page": "study", **data}
    text = document(page)
    assert value not in DATA_BLOCK.sub("", text)  # only in the data block, \u-escaped there (page_data)
    assert Parsed(text).text["study-root"].strip() == "Для просмотра изображений включите JavaScript."
    same_shape(page, _study_page(user(), {**data, "patient": {"id": BENIGN, "name": BENIGN}}))
    assert page.headers["cache-control"] == "no-store" and page.headers["x-content-type-options"] == "nosniff"


def test_page_data_that_is_not_json_is_sent_as_its_text() -> None:
    import datetime

    received = datetime.datetime(2026, 11, 24, 9, 30, tzinfo=datetime.UTC)
    page = _study_page(user(), {"study": {"first_received": received}})
    assert page_data(page)["study"]["first_received"] == str(received)


def test_the_pages_keep_the_hooks_the_script_reads() -> None:
    signin = document(_signin_page("/search"))
    search = document(_search_page(user(), {"results": None}, None, None, 200))
    for hook in ('id="signin-form"', 'id="user"', 'id="token"', 'id="signin-submit"', 'id="lang-toggle"'):
        assert hook in signin
    for hook in ('id="search-form"', 'id="search-results"', 'id="who"', 'data-i18n="role.radiologist"'):
        assert hook in search
    assert '<body class="page-signin">' in signin and '<body class="page-search">' in search
    assert 'value="" maxlength="64"' in search  # an empty query is an empty field, not "None"
