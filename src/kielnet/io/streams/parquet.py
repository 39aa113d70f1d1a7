"""Parquet files, directories of Parquet files (datasets) and lists of them, streamed by row groups."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.registry import reading
from kielnet.io.sources import rows_from
from kielnet.io.streams.base import TableFileSource
from kielnet.io.tables import ColumnPlan, arrow_to_table, build_startable, column_plan, masked_int_choice

__all__ = ["ParquetSource"]


class ParquetSource(TableFileSource):
    """A Parquet file, a directory of Parquet files (a dataset; hive ``key=value``
    directories become columns) or a list of files, streamed by row groups."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._files: list[tuple[str, dict]] | None = None
        self._widths: dict[str, tuple[int, int]] = {}
        self._schema_md: dict | None = None

    def parts(self) -> list[tuple[str, dict]]:
        """``(file, partition keys)`` in reading order."""
        if self._files is None:
            if isinstance(self.target, list):
                self._files = [(str(f), {}) for f in self.target]
            elif self.target.is_dir():
                import pyarrow.dataset as ds

                dataset = ds.dataset(str(self.target), format="parquet", partitioning="hive")
                self._files = sorted(((f.path, ds.get_partition_keys(f.partition_expression))
                                      for f in dataset.get_fragments()), key=lambda x: x[0])
                if not self._files:
                    raise InputError("directory holds no Parquet files", source=str(self.target))
            else:
                self._files = [(str(self.target), {})]
        return self._files

    def files(self) -> list[Path]:
        return [Path(f) for f, _ in self.parts()]

    def read_all(self) -> StarTable:
        if isinstance(self.target, Path) and self.target.is_file():
            return super().read_all()
        with reading(self._reader(), self.spec):
            return self.read_whole()

    def read_whole(self) -> StarTable:
        """All rows as one table (a directory or a list: the pieces concatenated, and
        refused like a single file if no star has a finite flux value)."""
        pieces = list(self.pieces())
        table = pieces[0] if len(pieces) == 1 else StarTable.concat(pieces)
        table.meta.update({k: v for k, v in pieces[0].meta.items() if k in self.shared_meta()})
        table.meta["source"] = self.spec
        if table.flux is not None and not np.isfinite(table.flux).any():
            raise InputError("no star has a single finite flux value", source=self.spec,
                             field=self.plan().flux_field)
        return table

    @staticmethod
    def _open(path: str):
        import pyarrow.parquet as pq

        # buffered reads: column chunks are decoded page by page, not loaded whole
        return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Within the block, a failure that is not kielnet's own is reported as
        :func:`read_table` reports it (``cannot read as parquet: …``). Not held across
        a ``yield``."""
        try:
            yield
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
            raise InputError(f"cannot read as parquet: {type(exc).__name__}: {exc}", source=self.spec) from exc

    def _count(self) -> int | None:
        import pyarrow.parquet as pq

        try:
            return sum(pq.read_metadata(f).num_rows for f, _ in self.parts())
        except Exception:  # noqa: BLE001 - unknown; reading the data reports the problem
            return None

    def plan(self) -> ColumnPlan:
        with self._errors():
            return super().plan()

    def _with_keys(self, batch, keys: dict):
        import pyarrow as pa

        for name, value in keys.items():
            if name not in batch.schema.names:
                batch = batch.append_column(name, pa.array([value] * batch.num_rows))
        return batch

    def _make_plan(self) -> ColumnPlan:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from kielnet.io.checks import parse_floats

        parts = self.parts()
        first_file = parts[0][0]
        schema = pq.read_schema(first_file)
        self._schema_md = dict(schema.metadata or {})
        if self.n_rows == 0:
            raise InputError("table has no rows", source=self.spec)
        # the whole file's first non-null cell of each variable-length list column
        for fld in schema:
            if pa.types.is_list(fld.type) or pa.types.is_large_list(fld.type):
                self._widths[fld.name] = self._first_list_cell(fld.name)
        sample_path, sample_keys = next((f, k) for f, k in parts if pq.read_metadata(f).num_rows)
        batch = next(self._open(sample_path).iter_batches(batch_size=1))
        sample = arrow_to_table(self._with_keys(batch, sample_keys), source=sample_path,
                                schema_metadata=self._schema_md, list_widths=self._widths)

        def numeric(c: str) -> tuple[int | None, str | None]:
            kind = np.asarray(sample[c]).dtype.kind
            if kind in "fiub":
                return None, None
            if kind not in "USO":
                _, bad_row, bad_value = parse_floats(sample[c])  # row 0: never a number
                return bad_row, bad_value
            return self._scan_text(c)

        plan = column_plan(list(sample.colnames), sample.meta, None, source=sample_path,
                           ndim=lambda c: np.asarray(sample[c]).ndim,
                           kind=lambda c: np.asarray(sample[c]).dtype.kind, numeric=numeric)
        for key, col in plan.extra.items():
            if np.asarray(sample[col]).dtype.kind in "iu":
                choice = masked_int_choice(*self._int_summary(col))
                if choice is not None:
                    plan.masked_ints[key] = choice
        return plan

    def _column_batches(self, name: str) -> Iterator[tuple[str, int, Any]]:
        """``(file, first row, batch)`` of one column over every file."""
        import pyarrow as pa

        row = 0
        for path, keys in self.parts():
            pf = self._open(path)
            if name in keys:
                n = pf.metadata.num_rows
                if n:
                    yield path, row, pa.record_batch({name: pa.array([keys[name]] * n)})
                row += n
                continue
            for batch in pf.iter_batches(batch_size=65_536, columns=[name]):
                yield path, row, batch
                row += batch.num_rows

    def _first_list_cell(self, name: str) -> tuple[int, int]:
        import pyarrow.compute as pc

        for path, row, batch in self._column_batches(name):
            col = batch.column(0)
            if col.null_count < len(col):
                present = np.flatnonzero(~np.asarray(col.is_null()))
                first = int(present[0])
                return int(pc.list_value_length(col)[first].as_py()), row + first
        raise InputError("list column has only null cells", source=self.spec, field=name)

    def _scan_text(self, name: str) -> tuple[int | None, str | None]:
        """Row (in the whole input) and text of the first cell of a text column that is not a number."""
        from kielnet.io.checks import parse_floats

        for path, row, batch in self._column_batches(name):
            tab = arrow_to_table(batch, source=path)
            _, bad_row, bad_value = parse_floats(tab[name])
            if bad_row is not None:
                return row + bad_row, bad_value
        return None, None

    def _int_summary(self, name: str) -> tuple[bool, float]:
        """Whether an integer column has a null anywhere, and its largest |value|:
        from the row-group statistics where written, else by reading the column."""
        import pyarrow.compute as pc

        has_null, max_abs = False, 0.0
        for path, keys in self.parts():
            if name in keys:
                value = keys[name]
                has_null |= value is None
                max_abs = max(max_abs, abs(float(value)) if value is not None else 0.0)
                continue
            pf = self._open(path)
            md = pf.metadata
            leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path == name), None)
            for rg in range(md.num_row_groups):
                stats = None if leaf is None else md.row_group(rg).column(leaf).statistics
                n_rg = md.row_group(rg).num_rows
                if (stats is not None and stats.has_null_count
                        and (stats.has_min_max or stats.null_count == n_rg)):
                    has_null |= stats.null_count > 0
                    if stats.has_min_max:
                        max_abs = max(max_abs, abs(float(stats.min)), abs(float(stats.max)))
                    continue
                col = pf.read_row_group(rg, columns=[name]).column(0)
                has_null |= col.null_count > 0
                if col.null_count < len(col):
                    mm = pc.min_max(col)
                    max_abs = max(max_abs, abs(float(mm["min"].as_py())), abs(float(mm["max"].as_py())))
        return has_null, max_abs

    def id_ranges(self) -> list[tuple[str, int, int, int]] | None:
        """``(file, row group, smallest id, largest id)`` of every non-empty row group,
        from the id column's statistics; ``None`` unless the id column is an integer column
        of every file (not a partition key) and every row group has its min/max and no
        null id. Lets a reader load only the row groups that can hold given ids
        (:func:`kielnet.io.sources.metadata_index`)."""
        import pyarrow as pa

        id_col = self.plan().id_col
        out = []
        with self._errors():
            for path, keys in self.parts():
                if id_col in keys:
                    return None
                md = self._open(path).metadata
                schema = md.schema.to_arrow_schema()
                if id_col not in schema.names or not pa.types.is_integer(schema.field(id_col).type):
                    return None
                leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path == id_col), None)
                for rg in range(md.num_row_groups):
                    n_rg = md.row_group(rg).num_rows
                    if not n_rg:
                        continue
                    stats = None if leaf is None else md.row_group(rg).column(leaf).statistics
                    if (stats is None or not stats.has_min_max or not stats.has_null_count
                            or stats.null_count):
                        return None
                    out.append((path, rg, int(stats.min), int(stats.max)))
        return out

    def read_row_groups(self, groups: list[tuple[str, int]]) -> StarTable:
        """The stars of the given ``(file, row group)`` pairs as one table, read with the
        file's column plan as :meth:`batches` reads them (only the columns it uses)."""
        plan = self.plan()
        keys = dict(self.parts())
        pieces = []
        by_file: dict[str, list[int]] = {}
        for path, rg in groups:
            by_file.setdefault(path, []).append(rg)
        for path, rgs in by_file.items():
            with self._errors():
                pf = self._open(path)
                batch = pf.read_row_groups(sorted(rgs), columns=self._columns(pf, plan, keys[path], path),
                                           use_threads=False)
            with self._errors():
                pieces.append(self._star_table(batch, keys[path], plan, path))
        if not pieces:
            raise ValueError("no row groups given")
        return pieces[0] if len(pieces) == 1 else StarTable.concat(pieces)

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        plan = self.plan()
        return self._iter(plan, start, rows), start

    def _iter(self, plan: ColumnPlan, start: int, rows: int) -> Iterator[StarTable]:
        skip = start
        for path, keys in self.parts():
            with self._errors():
                pf = self._open(path)
            md = pf.metadata
            if skip >= md.num_rows:
                skip -= md.num_rows
                continue
            groups, row = [], 0
            for rg in range(md.num_row_groups):
                n_rg = md.row_group(rg).num_rows
                if not groups and row + n_rg <= skip:
                    row += n_rg  # a whole row group before start: not read
                    continue
                groups.append(rg)
            drop, skip = skip - row, 0
            columns = self._columns(pf, plan, keys, path)
            batches = pf.iter_batches(batch_size=rows, row_groups=groups, columns=columns, use_threads=False)
            while True:
                with self._errors():
                    batch = next(batches, None)
                if batch is None:
                    break
                if drop:
                    if drop >= batch.num_rows:
                        drop -= batch.num_rows
                        row += batch.num_rows
                        continue
                    batch = batch.slice(drop)
                    row += drop
                    drop = 0
                with self._errors(), rows_from(row):
                    table = self._star_table(batch, keys, plan, path)
                row += batch.num_rows
                yield table

    @staticmethod
    def _columns(pf, plan: ColumnPlan, keys: dict, path: str) -> list[str]:
        """The file columns the plan uses (only those are read); a used column missing
        from this file (and not a partition key) is refused."""
        names = pf.schema_arrow.names
        missing = sorted(plan.columns_used() - set(names) - set(keys))
        if missing:
            raise InputError(f"column '{missing[0]}' is missing (the first file has it)", source=path,
                             field=missing[0])
        return [c for c in names if c in plan.columns_used()]

    def _star_table(self, batch, keys: dict, plan: ColumnPlan, path: str) -> StarTable:
        """Rows of one file (a record batch or table, partition keys added) as a star
        table, by the file's column plan."""
        tab = arrow_to_table(self._with_keys(batch, keys), source=path, schema_metadata=self._schema_md,
                             list_widths=self._widths)
        return build_startable(tab, plan, source=path, check_flux=False)
