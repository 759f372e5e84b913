"""The live regional dashboard in a real browser (Debian's headless Chromium through selenium), on
real processes: ``cami serve`` (embedded defaults) and a hospital's ``cami agent run`` with a
one-second heartbeat and a capped link, fed by dcmtk's storescu as a modality would.

Regional IT signs in and opens ``/monitoring``; while the page stays open (a marker set on
``window`` must survive: the page is never reloaded), a study sent through the agent shows up as a
transfer in flight, then in the organisation's counts for today; stopping the agent for longer than
its heartbeat interval raises the agent alarm on the page. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from api.demo.synthetic import region, synthetic_study, write_study
from tests.support.agent_region import IT_TOKEN, IT_USER, ORGANISATION, Agent, Cami, ports, storescu
from tests.support.browser import WAIT, shot

pytestmark = pytest.mark.slow

AGENT_AE = "OKB_AGENT"
MODALITY_AE = "OKB_CT1"
INSTANCES = 6

ROW = f'#dashboard-rows tr[data-organisation="{ORGANISATION}"]'
# what the page shows of the organisation (read in the page, as the user sees it)
FIGURES = f"""
const row = document.querySelector('{ROW}');
if (!row) return null;
const text = (sel) => {{ const n = row.querySelector(sel); return n ? n.textContent : null; }};
return {{
  marker: window.camiMarker || null,
  instances: text('.today-instances'), studies: text('.today-studies'),
  in_flight: Array.from(row.querySelectorAll('.in-flight .transfer')).map(t => t.textContent),
  link: row.querySelector('.link') ? row.querySelector('.link').getAttribute('data-link') : null,
  alarms: Array.from(document.querySelectorAll('#alarms .alarm')).map(a => a.getAttribute('data-kind')),
}};
"""


@pytest.fixture()
def region_with_agent(tmp_path: Path) -> Iterator[tuple[Cami, Agent]]:
    dicom_port, http_port, agent_port = ports(3)
    cami = Cami(tmp_path / "cami", dicom_port, http_port, AGENT_AE, agent_port)
    cami.start()
    # a one-second heartbeat (the alarm comes after a few missed), a link slow enough that the
    # study is seen in flight
    agent = Agent(
        tmp_path / "agent",
        AGENT_AE,
        agent_port,
        ("127.0.0.1", dicom_port),
        cami.base_url,
        heartbeat=1.0,
        bandwidth_kbps=800,
    )
    try:
        agent.start()
        yield cami, agent
    finally:
        agent.process.stop()
        cami.process.stop()


def figures(driver: WebDriver) -> dict[str, Any]:
    shown = driver.execute_script(FIGURES)
    return dict(shown) if shown else {}


def test_regional_it_watches_a_study_arrive_and_the_agent_fall_silent(
    region_with_agent: tuple[Cami, Agent], browser: WebDriver, tmp_path: Path
) -> None:
    cami, agent = region_with_agent
    browser.get(cami.base_url + "/monitoring")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "signin-form"))
    browser.find_element(By.ID, "user").send_keys(IT_USER)
    browser.find_element(By.ID, "token").send_keys(IT_TOKEN)
    browser.find_element(By.ID, "signin-submit").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "dashboard"))
    assert browser.current_url == cami.base_url + "/monitoring"
    assert browser.find_element(By.ID, "nav-monitoring").text == "Мониторинг"
    # live, and the agent's heartbeats already on the page (its link unknown: nothing sent yet)
    WebDriverWait(browser, WAIT).until(
        lambda d: d.find_element(By.ID, "live-state").get_attribute("data-state") == "open", "no live stream"
    )
    WebDriverWait(browser, WAIT).until(lambda d: figures(d).get("link") == "unknown", "no heartbeat shown")
    browser.execute_script("window.camiMarker = 'loaded once';")
    before = figures(browser)
    assert before["instances"] in (None, "0") and before["in_flight"] == [] and before["alarms"] == []

    study = synthetic_study(region()[0], "CT", instances=INSTANCES, seed=1201, pathology=True)
    storescu(MODALITY_AE, AGENT_AE, agent.port, write_study(study, tmp_path / "study"))

    flying = WebDriverWait(browser, WAIT).until(lambda d: figures(d)["in_flight"], "no transfer shown in flight")
    # "arrived/queued progress%" (the agent may queue the first object on its own, the rest after)
    assert re.fullmatch(r"\d+/\d+ \d+%", flying[0]), flying
    shot(browser, "monitoring-01-in-flight")
    done = WebDriverWait(browser, WAIT * 2).until(
        lambda d: (f := figures(d))["instances"] == str(INSTANCES) and not f["in_flight"] and f,
        "the study's objects not counted for today",
    )
    assert done["studies"] == "1" and done["marker"] == "loaded once"  # the same page, never reloaded
    WebDriverWait(browser, WAIT).until(lambda d: figures(d)["link"] == "up", "the link not shown up after a delivery")
    shot(browser, "monitoring-02-delivered")

    agent.process.stop()
    alarmed = WebDriverWait(browser, WAIT).until(
        lambda d: "agent-silent" in (f := figures(d))["alarms"] and f, "no alarm for the silent agent"
    )
    assert alarmed["marker"] == "loaded once"
    alarm = browser.find_element(By.CSS_SELECTOR, '#alarms .alarm[data-kind="agent-silent"]')
    assert alarm.get_attribute("data-organisation") == ORGANISATION and "okb-agent-1" in alarm.text
    assert "Агент не присылает сигналы" in alarm.text
    shot(browser, "monitoring-03-agent-alarm")

    # the organisation's own page: the transfer events and the chart (uPlot from infra/web-assets.sh)
    browser.get(f"{cami.base_url}/monitoring/{ORGANISATION}")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "transfer-events"))
    events = browser.find_elements(By.CSS_SELECTOR, "#transfer-events tbody tr")
    kinds = {e.find_elements(By.TAG_NAME, "td")[2].text for e in events}
    assert {"TransferQueued", "TransferStarted", "TransferCompleted"} <= kinds
    assert not browser.find_elements(By.ID, "chart-missing"), "run infra/web-assets.sh (installs uPlot)"
    chart = WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#throughput-chart canvas"))
    assert chart[0].size["width"] > 0
    assert int(browser.find_element(By.ID, "throughput-chart").get_attribute("data-drawn") or 0) >= 1  # minutes
    shot(browser, "monitoring-04-organisation")
