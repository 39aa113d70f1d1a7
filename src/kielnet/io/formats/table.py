"""Format ``table``: a star table — a FITS / Parquet / CSV / ECSV file (``.gz`` allowed
after FITS / CSV), a directory of Parquet files (a dataset) or a glob pattern of them.

Read by :func:`kielnet.io.tables.read_table` (a directory or list of Parquet files:
its pieces concatenated). Streamed by the sources of :mod:`kielnet.io.streams`
(:func:`open_table` picks one per file suffix): Parquet by row groups, FITS by
memory-mapped row ranges, CSV with ``pyarrow.csv``, ECSV read whole and sliced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.tables import read_table
from kielnet.io.registry import ReaderSpec, files_of, register_reader
from kielnet.io.streams.base import TABLE_READER

__all__ = ["READER", "open_table"]


def open_table(target: Any):
    """The streamed source of a star table (:mod:`kielnet.io.streams`): a Parquet file /
    directory / list of files, FITS, CSV (streamed) or ECSV (read whole)."""
    from kielnet.io.streams import CsvSource, EcsvSource, FitsTableSource, ParquetSource
    from kielnet.io.tables import table_format

    if isinstance(target, (list, tuple)) or Path(target).is_dir():
        files = files_of(target)
        bad = [f for f in files if table_format(f) != "parquet"]
        if bad or not files:
            raise InputError("only Parquet files can be read as one table from a directory or a list of "
                             f"files; {bad[0].name if bad else 'no file'} is not Parquet",
                             source=str(bad[0]) if bad else str(target))
        return ParquetSource(target)
    fmt = table_format(target)
    if fmt == "parquet":
        return ParquetSource(target)
    if fmt == "fits":
        return FitsTableSource(target)
    if fmt == "ascii.csv":
        return CsvSource(target)
    return EcsvSource(target)


def identify(path: Path) -> bool:
    """.fits/.fit/.fz/.parquet/.pq/.csv/.ecsv files (.gz after FITS/CSV); a directory of Parquet files"""
    from kielnet.io.tables import table_format

    if path.is_dir():
        files = files_of(path)
        return bool(files) and all(table_format(f) == "parquet" for f in files)
    return table_format(path) is not None


def read(path: Any) -> StarTable:
    """Every star of a table file, or of a directory / list of Parquet files."""
    from kielnet.io.tables import table_format

    if isinstance(path, (list, tuple)) or Path(path).is_dir():
        return open_table(path).read_all()
    if table_format(path) is None:  # only a file another reader's identify passed on (or --format)
        raise InputError("unknown table format", source=str(path))
    return read_table(path)


def iter_tables(path: Any) -> Iterator[StarTable]:
    """The table in pieces (row groups, row ranges)."""
    return open_table(path).pieces()


def count_rows(path: Any) -> int | None:
    """Rows from the Parquet footers or the FITS header; ``None`` for CSV / ECSV."""
    return open_table(path).n_rows


READER = register_reader(ReaderSpec(
    TABLE_READER, identify=identify, read=read, iter_tables=iter_tables, directories=True, priority=0,
    description="a star table", count_rows=count_rows, open=open_table,
    hint=".fits/.parquet/.csv/.ecsv star tables, or a directory of Parquet files"))
