"""Write projection rows into ClickHouse through the :class:`Warehouse` interface."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from projections import dead_letters
from projections.warehouse.base import Warehouse
from streams.processing import DeadLetter, Row


class WarehouseSink:
    """Batch-inserts rows per table. Idempotency comes from the tables' engines and keys
    (ReplacingMergeTree on the event's log position), not from this class. Its projection's
    unprocessable events go to the ``dead_letters`` table (:mod:`projections.dead_letters`).
    ``on_write`` is called after each write that inserted rows (e.g. a
    :class:`projections.changes.ChangeNotifier`'s ``changed``)."""

    def __init__(
        self, warehouse: Warehouse, ddl: Iterable[str] = (), on_write: Callable[[], None] | None = None
    ) -> None:
        self.warehouse = warehouse
        self.on_write = on_write
        for statement in (*ddl, dead_letters.DDL):
            warehouse.command(statement)

    def write(self, rows: Sequence[Row]) -> None:
        by_table: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            by_table[row.table].append(row)
        for table, table_rows in by_table.items():
            columns = list(table_rows[0].values)
            values: list[list[Any]] = [[r.values[c] for c in columns] for r in table_rows]
            self.warehouse.insert(table, columns, values)
        if by_table and self.on_write is not None:
            self.on_write()

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        dead_letters.record(self.warehouse, letters)
