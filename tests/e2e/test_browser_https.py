"""The study page in headless Chromium over HTTPS: the archive serves a certificate from a
throwaway CA, and the browser trusts that CA (no certificate errors ignored). Its own module: one
archive per module (embedded ClickHouse opens one directory per process at a time)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import WAIT, chromium, shot, wait_image
from tests.support.readside import ROOT_UID, ReadSide
from tests.support.scenes import PATIENT, ct_series, send, study_url
from tests.support.tls import TestCA


@pytest.fixture(scope="module")
def https_scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReadSide, TestCA, str]]:
    """An archive serving HTTPS with a certificate from a throwaway CA, and one CT study."""
    directory = tmp_path_factory.mktemp("browser-https")
    ca = TestCA.create(directory / "ca")
    side = ReadSide.start(directory, env=ca.env(ca.issue("cami-archive", server=True), "none"))
    try:
        study = generate_uid(prefix=ROOT_UID)
        send(side, ct_series(study, 2, PATIENT))
        side.wait_indexed(study, 2)
    except BaseException:
        side.stop()
        raise
    yield side, ca, study
    side.stop()


@pytest.fixture()
def trusting_browser(
    https_scene: tuple[ReadSide, TestCA, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebDriver]:
    """Chromium that trusts the test CA the way a hospital's managed browsers trust the region's:
    the CA in the user's NSS database ($HOME/.pki/nssdb, NSS's certutil), no certificate errors
    ignored."""
    _, ca, _ = https_scene
    nssdb = tmp_path / "home" / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for command in (
        ["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"],
        ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "CAMI test CA", "-t", "C,,", "-i", str(ca.cert)],
    ):
        subprocess.run(["/usr/bin/" + command[0], *command[1:]], check=True, capture_output=True)
    driver = chromium(monkeypatch, {**os.environ, "HOME": str(tmp_path / "home")})
    try:
        yield driver
    finally:
        driver.quit()


def test_the_study_page_over_https(https_scene: tuple[ReadSide, TestCA, str], trusting_browser: WebDriver) -> None:
    side, _, study = https_scene
    link = side.url + study_url(PATIENT, study)
    assert link.startswith("https://127.0.0.1:")
    trusting_browser.get(link)
    WebDriverWait(trusting_browser, WAIT).until(lambda d: d.find_elements(By.ID, "signin-form"))
    trusting_browser.find_element(By.ID, "user").send_keys("dr.petrov")
    trusting_browser.find_element(By.ID, "token").send_keys(side.tokens["dr.petrov"])
    trusting_browser.find_element(By.ID, "signin-submit").click()
    WebDriverWait(trusting_browser, WAIT).until(lambda d: d.find_elements(By.ID, "patient-card"))
    assert trusting_browser.current_url == link
    wait_image(trusting_browser)  # the viewer's WADO requests went over HTTPS too
    assert trusting_browser.execute_script("return window.isSecureContext") is True
    cookie = trusting_browser.get_cookie("cami_session")
    assert cookie is not None and cookie["secure"] is True and cookie["httpOnly"] is True
    shot(trusting_browser, "08-study-page-https")
