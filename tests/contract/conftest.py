"""Contract fixtures shared by tests that need a warehouse (ClickHouse) on both backends.

``warehouse_target`` is parametrised ``chdb`` (embedded ClickHouse in this process, on a fresh
data directory) and ``clickhouse-http`` (the real clickhouse-connect client over HTTP against
``tests.support.chdb_http``, a TEST-ONLY endpoint serving its own chdb directory in a separate
process — the stand-in for a ClickHouse server, which has no usable package on these machines).
Each test gets fresh storage; ``restart()`` closes everything and brings the same storage back,
so a test can check what survives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.warehouse import Warehouse, open_warehouse
from tests.support.chdb_http import ChdbHttpServer


class WarehouseTarget:
    """One backend under test: ``open()`` a warehouse on its storage, ``restart()`` it."""

    def __init__(self, backend_id: str, data_dir: Path) -> None:
        self.id = backend_id
        self.data_dir = data_dir
        self._server = ChdbHttpServer(data_dir).start() if backend_id == "clickhouse-http" else None
        self._opened: list[Warehouse] = []

    @property
    def url(self) -> str:
        if self._server is not None:
            return self._server.url
        return f"chdb://{self.data_dir}"

    def open(self) -> Warehouse:
        warehouse = open_warehouse(self.url)
        self._opened.append(warehouse)
        return warehouse

    def close_all(self) -> None:
        while self._opened:
            self._opened.pop().close()

    def restart(self) -> None:
        """Close every warehouse (and stop the server); the storage stays for the next ``open()``."""
        self.close_all()
        if self._server is not None:
            self._server.stop()
            self._server.start()

    def stop(self) -> None:
        self.close_all()
        if self._server is not None:
            self._server.stop()


@pytest.fixture(params=["chdb", pytest.param("clickhouse-http", marks=pytest.mark.clickhouse_http)])
def warehouse_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WarehouseTarget]:
    target = WarehouseTarget(request.param, tmp_path / f"warehouse-{request.param}")
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def warehouse(warehouse_target: WarehouseTarget) -> Warehouse:
    return warehouse_target.open()
