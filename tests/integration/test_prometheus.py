"""A real Prometheus (Debian package, infra/prometheus.sh) scrapes CAMI's /metrics on loopback.

storescu sends a study to a running archive (what ``cami serve`` runs); Prometheus, scraping with
the bearer token of ``$CAMI_HOME/metrics.token`` as a production scrape config would, must answer
a PromQL query with exactly the number of instances the test stored.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from pydicom.uid import generate_uid

from tests.support.readside import ROOT_UID, ReadSide
from tests.support.servers import PrometheusServer


def test_prometheus_scrapes_the_ingest_count_the_test_produced(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        token = side.home / "metrics.token"
        token.write_text("prometheus-scrape-token\n", encoding="utf-8")
        side.store_study(generate_uid(prefix=ROOT_UID), 3, patient_id="PROM-1")
        target = urlsplit(side.url).netloc
        with PrometheusServer(tmp_path / "prometheus", target, token_file=token, interval="1s") as prometheus:
            stored = 'sum(cami_ingest_objects_total{job="cami", channel="dicom", outcome="stored"})'
            deadline = time.monotonic() + 60
            while True:
                result = prometheus.query(stored)
                if (result and float(result[0]["value"][1]) == 3) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert result and float(result[0]["value"][1]) == 3, (result, prometheus.targets())
            (cami,) = prometheus.targets()
            assert cami["health"] == "up" and cami["lastError"] == ""
            # the histogram is there too: one observation per stored object
            count = prometheus.query('sum(cami_ingest_seconds_count{channel="dicom", outcome="stored"})')
            assert float(count[0]["value"][1]) == 3
