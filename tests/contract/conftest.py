"""Contract fixtures shared by tests that need a warehouse (ClickHouse) or a query store on both
backends.

``warehouse_target`` is parametrised ``chdb`` (embedded ClickHouse in this process, on a fresh
data directory) and ``clickhouse-http`` (the real clickhouse-connect client over HTTP against
``tests.support.chdb_http``, a TEST-ONLY endpoint serving its own chdb directory in a separate
process — the stand-in for a ClickHouse server, which has no usable package on these machines).
Each test gets fresh storage; ``restart()`` closes everything and brings the same storage back,
so a test can check what survives.

``query_stores`` is parametrised ``sqlite`` (files in the test's directory) and ``postgresql``
(schemas of one real PostgreSQL server per session, started by ``infra/postgres.sh``, marked
``postgres``): the query model's contract holds on both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.warehouse import Warehouse
from tests.support.postgres import PostgresServer, QueryStores
from tests.support.warehouses import WarehouseTarget


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test keeps to schemas of its own)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def query_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueryStores]:
    server = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    stores = QueryStores(request.param, tmp_path, server)
    try:
        yield stores
    finally:
        stores.close()
