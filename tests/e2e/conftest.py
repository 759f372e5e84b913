"""Fixtures the end-to-end tests share: a headless Chromium (tests/support/browser.py), quit after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import chromium


@pytest.fixture()
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    driver = chromium(monkeypatch)
    try:
        yield driver
    finally:
        driver.quit()
