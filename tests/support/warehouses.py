"""One warehouse backend under test (``chdb`` in this process or ``clickhouse-http`` through
:mod:`tests.support.chdb_http`), its storage kept across ``restart()``."""

from __future__ import annotations

from pathlib import Path

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
