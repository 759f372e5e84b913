"""The study page in a real browser: Debian's headless Chromium, driven by selenium through
Debian's chromedriver (nothing is downloaded), against a running archive with a CT series and a
signed report. Screenshots go to ``tests/artifacts/`` (not committed) for a person to look at."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import IMAGE_SHOWN, WAIT, shot, wait_image
from tests.support.readside import ORG, SENDER_AE
from tests.support.scenes import CONCLUSION, PATIENT, PROTOCOL, Scene, build_scene, study_url


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    built = build_scene(tmp_path_factory.mktemp("browser"))
    yield built
    built.side.stop()


def instance_number(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "slice-info").get_attribute("data-instance-number"))


def wait_instance(driver: WebDriver, number: str) -> None:
    WebDriverWait(driver, WAIT).until(lambda d: instance_number(d) == number, f"instance {number} not shown")


def test_sign_in_open_the_mis_link_see_image_and_report_and_scroll(scene: Scene, browser: WebDriver) -> None:
    side = scene.side
    before = {e.envelope.event_id for e in side.accesses()}
    link = side.url + study_url(PATIENT, scene.study)

    # the MIS link, not signed in: the sign-in page, then back to the study
    browser.get(link)
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "signin-form"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Вход"
    shot(browser, "01-sign-in")
    browser.find_element(By.ID, "user").send_keys("dr.petrov")
    browser.find_element(By.ID, "token").send_keys(side.tokens["dr.petrov"])
    browser.find_element(By.ID, "signin-submit").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "patient-card"))
    assert browser.current_url == link

    # an image and the signed report
    first = wait_image(browser)
    assert scene.ct_sops[0] in str(first["url"])
    assert browser.find_element(By.ID, "patient-name").text == "Кузнецова Мария Ильинична"
    # the organisation by name (the senders file names it here), its code kept for the title
    organisation = browser.find_element(By.CSS_SELECTOR, "#study-card .org")
    assert organisation.text == SENDER_AE[ORG] and organisation.get_attribute("data-code") == ORG
    assert "unknown" not in str(organisation.get_attribute("class")).split()
    status = browser.find_element(By.ID, "report-status")
    assert status.get_attribute("data-status") == "signed" and status.text == "Заключение подписано"
    conclusion = browser.find_element(By.CSS_SELECTOR, "#report .report-text.conclusion")
    protocol = browser.find_element(By.CSS_SELECTOR, "#report .report-text.protocol")
    assert conclusion.is_displayed() and conclusion.text == CONCLUSION
    assert protocol.is_displayed() and protocol.text == PROTOCOL
    assert instance_number(browser) == "1"
    shot(browser, "02-study-page")

    # scroll: arrow key, mouse wheel, slider end
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    wait_instance(browser, "2")
    second = wait_image(browser, changed_from=str(first["url"]))
    assert scene.ct_sops[1] in str(second["url"])
    viewport = browser.find_element(By.ID, "viewport")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(viewport), 0, 120).perform()
    wait_instance(browser, "3")
    third = wait_image(browser, changed_from=str(second["url"]))
    ActionChains(browser).send_keys(Keys.END).perform()
    wait_instance(browser, "4")
    wait_image(browser, changed_from=str(third["url"]))
    shot(browser, "03-scrolled")

    # CT window presets and zoom
    browser.find_element(By.CSS_SELECTOR, '#presets button[data-preset="lung"]').click()
    WebDriverWait(browser, WAIT).until(lambda d: "window=" in str((d.execute_script(IMAGE_SHOWN) or {}).get("url")))
    lung = wait_image(browser)
    assert "window=-600%2C1500%2Clinear" in str(lung["url"])
    browser.find_element(By.ID, "zoom-in").click()
    browser.find_element(By.ID, "zoom-in").click()
    assert "scale(2)" in str(browser.find_element(By.ID, "image").get_attribute("style"))
    shot(browser, "04-lung-window-zoomed")

    # the multi-frame object: its frames scroll like slices
    browser.find_elements(By.CSS_SELECTOR, "#series-list li")[1].click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "slice-info").get_attribute("data-frame") == "1")
    frame1 = wait_image(browser, changed_from=str(lung["url"]))
    assert "/frames/1/rendered" in str(frame1["url"])
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "slice-info").get_attribute("data-frame") == "2")
    assert "/frames/2/rendered" in str(wait_image(browser, changed_from=str(frame1["url"]))["url"])
    shot(browser, "05-multiframe")

    # English, remembered across pages
    browser.find_element(By.ID, "lang-toggle").click()
    assert browser.find_element(By.ID, "report-status").text == "Report signed"
    browser.get(side.url + "/search?patient=" + PATIENT)
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert [r.get_attribute("data-study") for r in rows] == [scene.study, scene.draft, scene.prior]
    assert browser.find_element(By.CSS_SELECTOR, "#search-form button").text == "Search"
    shot(browser, "06-search-english")

    # the audit trail: the page view is one event, and each series viewed one more (not one per
    # frame fetched, prefetched or refined), naming the series and the frames it holds
    new = [e for e in side.accesses() if e.envelope.event_id not in before]
    views = [e for e in new if e.payload["channel"] == "study-page" and e.payload["action"] == "view"]
    assert len(views) == 1
    assert views[0].payload["StudyInstanceUID"] == scene.study and views[0].payload["PatientID"] == PATIENT
    assert views[0].envelope.actor.user == "dr.petrov"
    images = [e for e in new if e.payload["channel"] == "wado-rs"]
    assert all(e.payload["StudyInstanceUID"] == scene.study and e.payload["action"] == "view" for e in images)
    by_series = {e.payload["SeriesInstanceUID"]: e.payload["results"] for e in images}
    assert len(images) == len(by_series) == 2, [e.payload for e in images]
    assert sorted(by_series.values()) == [3, len(scene.ct_sops)]  # the multi-frame object's 3 frames; 4 slices

    # a link from another site arrives without the SameSite=Strict cookie and lands on the sign-in
    # page: the page finds the session (same-origin request) and goes on to the study by itself
    browser.get(side.url + "/signin?" + urlencode({"next": study_url(PATIENT, scene.study)}))
    WebDriverWait(browser, WAIT).until(lambda d: d.current_url == link)
    wait_image(browser)


def test_a_role_without_images_sees_the_403_page(scene: Scene, browser: WebDriver) -> None:
    side = scene.side
    browser.get(side.url + "/signin")
    browser.find_element(By.ID, "user").send_keys("it")
    browser.find_element(By.ID, "token").send_keys(side.tokens["it"])
    browser.find_element(By.ID, "signin-submit").click()
    WebDriverWait(browser, WAIT).until(lambda d: "/search" in d.current_url)
    browser.get(side.url + study_url(PATIENT, scene.study))
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "message"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "403"
    assert "Кузнецова" not in browser.page_source
    shot(browser, "07-forbidden")
