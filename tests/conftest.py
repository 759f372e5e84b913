"""Shared fixtures: real servers (started on loopback, stopped at the end) and backend reports.

Contract tests are parametrised by backend id (``embedded``/``kafka``, ``local``/``s3``,
``chdb``/``clickhouse-http``). At the end of the run a summary says how many tests ran against
each backend, so a run that silently stopped exercising a real server is visible at once.
Nothing here skips: if a real server cannot start, its tests error.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest

BACKEND_IDS = ("embedded", "kafka", "local", "s3", "chdb", "clickhouse-http")
_BACKEND_IN_NODEID = re.compile(r"\[(?:[^\]]*-)?(" + "|".join(map(re.escape, BACKEND_IDS)) + r")(?:-[^\]]*)?\]")


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real Apache Kafka broker (KRaft) for the session, via infra/kafka.sh."""
    from tests.support.servers import KafkaServer

    server = KafkaServer(tmp_path_factory.mktemp("kafka"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def minio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real MinIO S3 server for the session, via infra/minio.sh."""
    from tests.support.servers import MinioServer

    server = MinioServer(tmp_path_factory.mktemp("minio"))
    server.start()
    yield server
    server.stop()


_outcomes: Counter[tuple[str, str]] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        match = _BACKEND_IN_NODEID.search(report.nodeid)
        if match:
            _outcomes[(match.group(1), report.outcome)] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _outcomes:
        return
    terminalreporter.section("tests per backend")
    for backend in BACKEND_IDS:
        counts = {o: n for (b, o), n in _outcomes.items() if b == backend}
        if counts:
            detail = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
            terminalreporter.write_line(f"{backend:>16}: {detail}")
