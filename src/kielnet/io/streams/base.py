"""The base of the streamed star-table sources: one column plan for every batch."""

from __future__ import annotations

from typing import Any

from kielnet.data.startable import StarTable
from kielnet.io.registry import reading
from kielnet.io.sources import FileSource
from kielnet.io.tables import ColumnPlan

__all__ = ["TableFileSource", "TABLE_READER"]

#: The name of the reader these sources stream for (errors say ``cannot read as a star table``).
TABLE_READER = "table"


class TableFileSource(FileSource):
    """A table file read with one :class:`ColumnPlan` for every batch."""

    reader_name = TABLE_READER
    description = "a star table"

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._plan: ColumnPlan | None = None

    def plan(self) -> ColumnPlan:
        """The file's column plan (made once, from a summary of the whole file)."""
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    def _make_plan(self) -> ColumnPlan:
        raise NotImplementedError

    def read_all(self) -> StarTable:
        from kielnet.io.tables import read_table

        with reading(self._reader(), self.spec):
            return read_table(self.target)
