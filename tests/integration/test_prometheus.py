"""A real Prometheus (Debian package, infra/prometheus.sh) scrapes CAMI's /metrics on loopback,
with the shipped alert rules and the Grafana dashboard's queries.

storescu sends a study to a running archive (what ``cami serve`` runs) and one object it refuses;
Prometheus, scraping with the bearer token of ``$CAMI_HOME/metrics.token`` as a production scrape
config would, must answer a PromQL query with exactly the number of instances the test stored.
The dashboard's PromQL runs on that Prometheus, its ClickHouse SQL on the archive's warehouse
(chdb), and the figures must be the test's. The rule file passes ``promtool check rules`` and its
own rule unit tests (each alert fires on the series it is meant for).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.paths import ROOT
from tests.support.readside import ORG, ROOT_UID, SENDER_AE, ReadSide
from tests.support.servers import PrometheusServer

RULES = ROOT / "infra" / "prometheus" / "cami-rules.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "cami-dashboard.json"
PROMTOOL = "/usr/bin/promtool"
T = TypeVar("T")


def until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def panel_targets(datasource: str) -> list[tuple[str, dict[str, Any]]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if target["datasource"]["type"] == datasource
    ]


def clickhouse_sql(raw: str) -> str:
    """The panel's SQL as Grafana's ClickHouse plugin sends it for "the last hour"."""
    return raw.replace("$__fromTime", "toDateTime(now() - 3600)").replace("$__toTime", "toDateTime(now() + 60)")


def number(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_ingest_count_the_test_produced(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        token = side.home / "metrics.token"
        token.write_text("prometheus-scrape-token\n", encoding="utf-8")
        study = generate_uid(prefix=ROOT_UID)
        side.store_study(study, 3, patient_id="PROM-1")
        bad = studies.instance(study, generate_uid(prefix=ROOT_UID), 1, patient_id=None, size=4)
        bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
        studies.storescu("127.0.0.1", side.dicom_port, [tmp_path / "bad.dcm"], calling=SENDER_AE[ORG])
        target = urlsplit(side.url).netloc
        with PrometheusServer(
            tmp_path / "prometheus", target, token_file=token, rules=(RULES,), interval="1s"
        ) as prometheus:
            stored = 'sum(cami_ingest_objects_total{job="cami", channel="dicom", outcome="stored"})'
            result = until(lambda: prometheus.query(stored), lambda r: number(r) == 3)
            assert number(result) == 3, (result, prometheus.targets())
            (cami,) = prometheus.targets()
            assert cami["health"] == "up" and cami["lastError"] == ""
            refused = prometheus.query('cami_ingest_objects_total{outcome="rejected"}')
            assert [(r["metric"]["reason"], float(r["value"][1])) for r in refused] == [("missing-patient-id", 1)]
            # the histogram is there too: one observation per stored object
            assert number(prometheus.query('sum(cami_ingest_seconds_count{outcome="stored"})')) == 3

            # the shipped rules are loaded and evaluate without error against the real series
            groups = until(
                prometheus.rules_loaded,
                lambda g: bool(g) and all(r["health"] == "ok" for r in g[0]["rules"]),
            )
            (group,) = groups
            assert {r["name"] for r in group["rules"]} >= {"CamiIngestRejectionsSpike", "CamiAgentSilent"}
            assert all(r["health"] == "ok" for r in group["rules"]), group
            # every PromQL query of the dashboard is valid for this Prometheus
            promql = panel_targets("prometheus")
            assert len(promql) >= 6
            answers = {title: prometheus.query(panel["expr"]) for title, panel in promql}  # raises if refused
            assert answers["Projection lag (events behind the log)"], answers

        # the dashboard's ClickHouse panels, on the archive's warehouse, show what was sent
        sql = {
            title: clickhouse_sql(target["rawSql"]) for title, target in panel_targets("grafana-clickhouse-datasource")
        }
        assert len(sql) >= 4
        totals = "Studies, instances and bytes per organisation (warehouse)"
        rows = until(
            lambda: side.archive.warehouse.query(sql[totals]).dicts(),
            lambda r: any(row["organisation"] == ORG and row["instances"] == 3 for row in r),
        )
        mine = next(row for row in rows if row["organisation"] == ORG)
        assert (mine["studies"], mine["instances"]) == (1, 3) and mine["bytes"] > 0
        refusals = until(
            lambda: side.archive.warehouse.query(sql["Refusals by organisation and reason (warehouse)"]).dicts(),
            lambda r: bool(r),
        )
        assert [(r["organisation"], r["reason"], r["rejections"]) for r in refusals] == [(ORG, "missing-patient-id", 1)]
        for query in sql.values():
            side.archive.warehouse.query(query).dicts()  # every panel's SQL runs


def test_alert_rules_pass_promtool_and_their_unit_tests(tmp_path: Path) -> None:
    PrometheusServer(tmp_path, "127.0.0.1:1").install()  # Debian's prometheus package brings promtool
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    # alerts fire on the series they are meant for, and only there (infra/prometheus/cami-rules.test.yml)
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", "cami-rules.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr
