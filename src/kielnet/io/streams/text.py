"""CSV files (streamed with ``pyarrow.csv.open_csv``) and ECSV files (read whole, then sliced)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.paths import TEXT_ENCODING
from kielnet.io.sources import rows_from, slices
from kielnet.io.streams.base import TableFileSource
from kielnet.io.tables import ColumnPlan, build_startable, column_plan, masked_int_choice

__all__ = ["CsvSource", "EcsvSource"]


_INT_TEXT = r"^[+-]?[0-9]+$"


@dataclass
class _CsvColumn:
    """What a first pass learnt about one CSV column over the whole file."""

    n_values: int = 0             #: non-empty cells
    ints: bool = True             #: every non-empty cell is an integer literal
    int64: bool = True            #: ... that fits in int64
    floats: bool = True           #: every non-empty cell is a float literal
    max_abs: float = 0.0          #: largest |integer|
    bad_row: int | None = None    #: first cell that is not a number (parse_floats)
    bad_value: str | None = None

    def kind(self) -> str:
        """The dtype kind astropy gives the whole column: ``i`` (also when every
        cell is empty), ``f`` or ``U`` (text; integers beyond int64 too)."""
        if self.ints:
            return "i" if self.int64 else "U"
        return "f" if self.floats else "U"


def _is_pixel(name: str) -> bool:
    return re.fullmatch(r"flux_(err_)?\d+", name) is not None


class CsvSource(TableFileSource):
    """A CSV file (optionally gzipped) streamed with ``pyarrow.csv.open_csv``."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._names: list[str] | None = None
        self._kinds: dict[str, str] = {}

    def names(self) -> list[str]:
        """Column names of the header line (stripped, as astropy reads them)."""
        if self._names is None:
            import csv
            import gzip

            opener = gzip.open if str(self.target).lower().endswith(".gz") else open
            with opener(self.target, "rt", encoding=TEXT_ENCODING, errors="replace", newline="") as fh:
                header = next(csv.reader(fh), [])
            self._names = [c.strip() for c in header]
            if not self._names:
                raise InputError("table has no rows", source=str(self.target))
        return self._names

    def _reader_csv(self, columns: list[str] | None = None, block_size: int = 1 << 20):
        import pyarrow as pa
        import pyarrow.csv as pcsv

        names = self.names()
        include = names if columns is None else columns
        return pcsv.open_csv(
            str(self.target),
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=1, block_size=block_size),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in include},
                                                include_columns=include, null_values=[""],
                                                strings_can_be_null=True, quoted_strings_can_be_null=True))

    def _failure(self, exc: Exception) -> InputError:
        """The error for a CSV that pyarrow cannot parse: truncated, not UTF-8, malformed."""
        from kielnet.io.checks import check_csv_complete, read_error_message

        source = str(self.target)
        if not source.lower().endswith(".gz"):
            lines = 0
            with open(self.target, "rb") as fh:  # data rows = line ends after the header's
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    lines += chunk.count(b"\n")
            check_csv_complete(self.target, source, lines)  # raises if the last line is cut off
        if "utf8" in str(exc).lower().replace("-", ""):
            message = read_error_message(self.target, "ascii.csv", UnicodeDecodeError("utf-8", b"", 0, 1, "bad"))
        else:
            message = f"cannot read as ascii.csv: {type(exc).__name__}: {exc}"
        return InputError(message, source=source)

    def _summary(self) -> tuple[dict[str, _CsvColumn], int]:
        """First pass: per non-spectrum column, what astropy would make of it."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from kielnet.io.checks import parse_floats

        columns = [c for c in self.names() if not _is_pixel(c)]
        info = {c: _CsvColumn() for c in columns}
        rows = 0
        try:
            reader = self._reader_csv(columns)
            for batch in reader:
                for c in columns:
                    text = pc.utf8_trim_whitespace(batch.column(c))
                    present = pc.fill_null(pc.and_kleene(pc.is_valid(text), pc.not_equal(text, "")), False)
                    values = pc.filter(text, present)
                    ci = info[c]
                    ci.n_values += len(values)
                    if not len(values):
                        continue
                    if ci.ints:
                        ci.ints = bool(pc.all(pc.match_substring_regex(values, _INT_TEXT)).as_py())
                        if ci.ints and ci.int64:
                            try:
                                ints = np.asarray(values.to_numpy(zero_copy_only=False).astype(str)).astype(np.int64)
                                ci.max_abs = max(ci.max_abs, float(np.abs(ints.astype(np.float64)).max()))
                            except (OverflowError, ValueError):
                                ci.int64 = False
                    if ci.floats:
                        try:
                            pc.cast(values, pa.float64())
                        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                            ci.floats = False
                    if ci.bad_row is None and not ci.ints and not ci.floats:
                        cells = np.ma.masked_array(
                            np.asarray(pc.fill_null(text, "").to_numpy(zero_copy_only=False), dtype=str),
                            mask=~np.asarray(present))
                        _, bad_row, bad_value = parse_floats(cells)
                        if bad_row is not None:
                            ci.bad_row, ci.bad_value = rows + bad_row, bad_value
                rows += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise self._failure(exc) from exc
        return info, rows

    def _make_plan(self) -> ColumnPlan:
        source = str(self.target)
        info, n = self._summary()
        if n == 0:
            raise InputError("table has no rows", source=source)
        self._kinds = {c: (info[c].kind() if c in info else "f") for c in self.names()}

        def numeric(c: str) -> tuple[int | None, str | None]:
            if c not in info or self._kinds[c] != "U":
                return None, None
            return info[c].bad_row, info[c].bad_value

        plan = column_plan(self.names(), {}, None, source=source, ndim=lambda c: 1,
                           kind=self._kinds.__getitem__, numeric=numeric)
        for key, col in plan.extra.items():
            if self._kinds.get(col) == "i":
                choice = masked_int_choice(info[col].n_values < n, info[col].max_abs)
                if choice is not None:
                    plan.masked_ints[key] = choice
        return plan

    def _table(self, batch) -> Any:
        """A batch of text cells as astropy reads the whole file (types from the plan)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        from astropy.table import Table

        tab = Table()
        for c in batch.schema.names:
            text = pc.utf8_trim_whitespace(batch.column(c))
            empty = np.asarray(pc.or_kleene(pc.is_null(text), pc.equal(text, "")).fill_null(True))
            kind = self._kinds[c]
            mask = empty if empty.any() else None
            filled = pc.if_else(pa.array(empty), "0" if kind in "if" else "", text)
            if kind == "i":
                values = np.asarray(filled.to_numpy(zero_copy_only=False).astype(str)).astype(np.int64)
            elif kind == "f":
                try:
                    values = pc.cast(filled, pa.float64()).to_numpy(zero_copy_only=False)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    if not _is_pixel(c):
                        raise
                    # a spectrum cell that is not a number: kept as text, refused by the
                    # conversion with its row and star, as read_table does
                    values = np.asarray(pc.fill_null(text, "").to_numpy(zero_copy_only=False), dtype=str)
            else:
                values = np.asarray(pc.fill_null(text, "").to_numpy(zero_copy_only=False), dtype=str)
            tab[c] = np.ma.masked_array(values, mask=mask) if mask is not None else values
        return tab

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        return self._iter(self.plan(), start, rows), start

    def _iter(self, plan: ColumnPlan, start: int, rows: int) -> Iterator[StarTable]:
        import pyarrow as pa

        source = str(self.target)
        row = 0
        used = plan.columns_used()
        reader = self._reader_csv([c for c in self.names() if c in used])
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise self._failure(exc) from exc
            end = row + batch.num_rows
            if end <= start:
                row = end
                continue
            if row < start:
                batch = batch.slice(start - row)
                row = start
            for a in range(0, batch.num_rows, rows):
                part = batch.slice(a, rows)
                with rows_from(row):
                    table = build_startable(self._table(part), plan, source=source, check_flux=False)
                row += part.num_rows
                yield table


class EcsvSource(TableFileSource):
    """An ECSV table: read whole (astropy) once per process, then sliced."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._whole: StarTable | None = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _whole=None)

    def read_all(self) -> StarTable:
        if self._whole is None:
            self._whole = super().read_all()
        return self._whole

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        return slices(self.read_all(), start, rows), start
