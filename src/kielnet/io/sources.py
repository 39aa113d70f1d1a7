"""Streaming star sources over files: any number of stars through bounded memory.

:func:`open_stars` returns a :class:`~kielnet.data.source.StarSource` for anything
:func:`kielnet.io.read_stars` reads (the reader comes from
:mod:`kielnet.io.registry`). ``source.batches(size, start)`` yields consecutive
:class:`~kielnet.data.StarTable` batches of exactly ``size`` stars (the last may be
shorter) in input order, whatever the layout of the files, and the concatenation of
the batches equals ``read_stars(spec)`` — ids, spectra, scalars, labels, errors and
pass-through columns, value for value.

What is streamed and what is read whole, per format:

=====================  ==========================================================
Parquet file,          streamed: ``ParquetFile.iter_batches`` over the row groups
directory of Parquet   needed (``start`` skips whole files and row groups from the
files (a dataset,      footer metadata, without reading them); memory ≈ one batch
hive ``key=value``     plus the pages being decoded. Row count from the footers.
directories become     List / fixed-size-list columns → 2-D arrays with pyarrow
columns), glob         (no Python loop over rows); null cells → NaN rows.
FITS binary table      streamed: memory-mapped row ranges ``hdu.data[a:b]``; row
                       count from NAXIS2. A gzipped FITS file cannot be memory-
                       mapped: astropy decompresses it whole into memory.
CSV (``.csv[.gz]``)    streamed: ``pyarrow.csv.open_csv``; ``flux_0 … flux_N``
                       columns as :func:`~kielnet.io.read_table` reads them. The
                       file is parsed twice: a first pass (bounded memory) finds the
                       type astropy would give each non-spectrum column for the
                       whole file, so that every batch converts like the whole file.
                       Row count unknown (``None``).
ECSV                   read whole (astropy), then sliced.
apStar files           one file (one star) at a time; ``start`` skips files unread;
(file, directory,      row count = number of files.
glob)
Gaia RVS (file,        one file at a time; row count unknown (a file may hold many
directory, glob)       stars).
Gaia XP continuous     read whole (one file), then sliced.
XP library             read whole, then sliced: the embedded library is one gzipped
(``xp-library``,       FITS table of 40,226 rows; row count from its header (the
``.npz`` subset)       ``.npz`` array header).
other registered       their ``iter_tables`` pieces, else read whole and sliced.
readers
=====================  ==========================================================

Exactness. Table files are converted by one :class:`~kielnet.io.tables.ColumnPlan`
made from a summary of the whole file (column types, which text columns hold only
numbers, which integer pass-through columns have empty cells anywhere), so each
batch converts exactly as the same rows of the whole file. Differences from
``read_stars`` of the whole input, by design: a table in which *no* star has a finite
flux value is refused by ``read_stars`` but streamed (each such star is flagged
``bad_spectrum`` downstream); per-file metadata of RVS / XP files (``meta['bad_rows']``)
is kept only for batches made of one file's stars; RVS files whose extra columns
differ keep the first file's columns (NaN where a file lacks one) where
``read_stars`` keeps only the columns every file has.

Errors are those of ``read_stars``: :class:`~kielnet.errors.InputError` naming the
file, column, row (in the file) and star; anything else raised while reading becomes
``cannot read as <format>: …`` naming the file.

Metadata tables (``open_stars(spec, metadata=[...])``): each is read whole and
indexed by id once, when the source is opened; every batch gets their scalar columns
joined by id (vectorised ``searchsorted``), exactly as successive
:meth:`StarTable.join_scalars` calls would (a finite value of a later table wins; a
star absent from every table keeps NaN, reported as a missing input and flagged
``missing_input`` downstream). :attr:`MetadataSource.matched` counts, per table, the
stars of the last pass found in it.

Sources are picklable (paths, options and small plans only; files are opened inside
``batches``), so a Dask worker can read its own partition.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from kielnet.data.source import MappedSource, StarSource, rebatch
from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.paths import check_readable
from kielnet.io.registry import (XP_LIBRARY, ReaderSpec, files_of, guarded, reading, registered_readers,
                                 resolve)
from kielnet.io.tables import (ColumnPlan, arrow_to_table, build_startable, column_plan,
                               masked_int_choice, table_format)

__all__ = ["open_stars", "open_table", "FileSource", "ParquetSource", "FitsTableSource", "CsvSource",
           "EcsvSource", "ReaderSource", "FileBatchSource", "MetadataSource", "JoinStats", "join_metadata"]

#: Rows per piece when no batch size is given (``pieces()``, plan scans).
PIECE_ROWS = 10_000
#: Meta keys of the first piece carried onto every batch (per-file keys are not).
_SHARED_META = ("loader", "non_numeric_columns", "formats", "format", "nan_fill", "xp_coefficients",
                "xp_correlations")


def open_stars(spec: str | os.PathLike, *, metadata: Sequence[str | os.PathLike] = ()) -> StarSource:
    """A :class:`~kielnet.data.source.StarSource` over ``spec`` (anything
    :func:`kielnet.io.read_stars` reads, or a glob pattern of files of one reader).

    Parameters
    ----------
    spec
        ``xp-library``, a file, a directory or a glob pattern.
    metadata
        Paths of tables (photometry, parallax, XP coefficients) whose scalar columns
        are joined by star id onto every batch (see the module docstring); each is
        read and indexed once, here.

    Raises
    ------
    InputError
        Naming the path, for what :func:`read_stars` refuses before reading (missing,
        empty or unreadable file, unknown format, a directory without files to read)
        and for unreadable or ambiguous metadata tables. Problems inside the data
        are raised by ``batches`` when reached.
    """
    resolved = resolve(spec)
    reader = resolved.reader
    if resolved.kind == "file":
        check_readable(resolved.target)
    with reading(reader, resolved.spec):
        if reader.open is not None:
            source = reader.open(resolved.target)
        else:
            source = ReaderSource(resolved.target, reader)
    source.spec = resolved.spec
    if metadata:
        source = MetadataSource(source, metadata)
    return source


def _batch_args(size: int, start: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"batch size must be an integer >= 1, got {size!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be an integer >= 0, got {start!r}")


def _reader(name: str, description: str) -> ReaderSpec:
    """The registered reader ``name`` (for messages), or a stand-in if it was removed."""
    for spec in registered_readers():
        if spec.name == name:
            return spec
    return ReaderSpec(name, identify=lambda p: False, read=lambda p: None, description=description)


# ------------------------------------------------------------------ row numbers in errors
def _shifted(err: InputError, offset: int) -> InputError:
    """``err`` (about row ``r`` of a batch) about row ``r + offset`` of the file."""
    text = str(err)
    suffix = str(InputError("", source=err.source, field=err.field, star=err.star, row=err.row))
    core = text[:-len(suffix)] if text.endswith(suffix) else text
    core = re.sub(rf"\brow {err.row}\b", f"row {err.row + offset}", core, count=1)
    return InputError(core, source=err.source, field=err.field, star=err.star, row=err.row + offset)


@contextlib.contextmanager
def _rows_from(offset: int) -> Iterator[None]:
    """Errors raised in the block name rows counted from ``offset`` (a batch's first
    row in its file)."""
    try:
        yield
    except InputError as err:
        if not offset or err.row is None:
            raise
        raise _shifted(err, offset) from err


# ------------------------------------------------------------------ the common part
class FileSource:
    """Base of the file-backed sources: batching, ``start``, errors, identity.

    Subclasses give :meth:`_pieces` (tables of at most ``rows`` stars from input row
    ``start`` on, and the row they begin at), :meth:`files` and, where known cheaply,
    :meth:`_count`.
    """

    reader_name = "table"
    description = "a star table"

    def __init__(self, target: Any) -> None:
        self.target = [Path(t) for t in target] if isinstance(target, (list, tuple)) else Path(target)
        self.spec = str(target) if not isinstance(target, (list, tuple)) else ",".join(map(str, target))
        self._n_rows: int | None = None

    # -- to override
    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        raise NotImplementedError

    def _count(self) -> int | None:
        return None

    def files(self) -> list[Path]:
        """The files read, in input order."""
        return files_of(self.target)

    def read_all(self) -> StarTable:
        """Every star in one table: exactly :func:`kielnet.io.read_stars` of the input."""
        reader = self._reader()
        with reading(reader, self.spec):
            return reader.read(self.target)

    # -- common
    def _reader(self) -> ReaderSpec:
        return _reader(self.reader_name, self.description)

    @property
    def n_rows(self) -> int | None:
        """Number of stars if known without reading the data (see the module docstring)."""
        if self._n_rows is None:
            self._n_rows = self._count()
        return self._n_rows

    def batches(self, size: int, start: int = 0) -> Iterator[StarTable]:
        """Consecutive batches of ``size`` stars from input row ``start``, in input order."""
        _batch_args(size, start)
        reader = self._reader()
        with reading(reader, self.spec):
            pieces, at = self._pieces(int(start), int(size))
        shared: dict[str, Any] = {}
        for batch in rebatch(guarded(pieces, reader, self.spec), int(size), int(start) - at):
            if not shared:
                shared = {k: v for k, v in batch.meta.items() if k in _SHARED_META}
            for k, v in shared.items():
                batch.meta.setdefault(k, v)
            yield batch

    def pieces(self, rows: int = PIECE_ROWS) -> Iterator[StarTable]:
        """The input in tables of at most ``rows`` stars (any lengths; for ``iter_tables``)."""
        reader = self._reader()
        with reading(reader, self.spec):
            pieces, _ = self._pieces(0, rows)
        return guarded(pieces, reader, self.spec)

    def identity(self) -> dict:
        """Kind, resolved paths, sizes, modification times and row count (not a digest)."""
        paths, sizes, mtimes = [], [], []
        for f in self.files():
            try:
                st = f.stat()
            except OSError:
                continue
            paths.append(str(f.resolve()))
            sizes.append(int(st.st_size))
            mtimes.append(int(st.st_mtime_ns))
        return {"kind": self.reader_name, "spec": self.spec, "paths": paths, "sizes": sizes,
                "mtimes": mtimes, "n_rows": self.n_rows}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n_rows={self._n_rows})"


# ------------------------------------------------------------------ tables
def open_table(target: Any) -> FileSource:
    """The streamed source of a star table: Parquet file / directory / list of files,
    FITS, CSV (streamed) or ECSV (read whole)."""
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


class _TableSource(FileSource):
    """A table read with one :class:`ColumnPlan` for every batch."""

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
        import kielnet.io as kio

        with reading(self._reader(), self.spec):
            return kio.read_table(self.target)


# ------------------------------------------------------------------ Parquet
class ParquetSource(_TableSource):
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
        table.meta.update({k: v for k, v in pieces[0].meta.items() if k in _SHARED_META})
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
            names = set(pf.schema_arrow.names)
            columns = [c for c in pf.schema_arrow.names if c in plan.columns_used()]  # only what is used
            missing = sorted(plan.columns_used() - names - set(keys))
            if missing:
                raise InputError(f"column '{missing[0]}' is missing (the first file has it)", source=path,
                                 field=missing[0])
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
                batch = self._with_keys(batch, keys)
                with self._errors(), _rows_from(row):
                    tab = arrow_to_table(batch, source=path, schema_metadata=self._schema_md,
                                         list_widths=self._widths)
                    table = build_startable(tab, plan, source=path, check_flux=False)
                row += batch.num_rows
                yield table


# ------------------------------------------------------------------ FITS
class FitsTableSource(_TableSource):
    """The first table HDU of a FITS file, streamed by memory-mapped row ranges."""

    def _count(self) -> int | None:
        from kielnet.io.tables import fits_table_rows

        return fits_table_rows(self.target)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Within the block: astropy's truncation warning is an error, and any failure
        an :class:`InputError` naming the file (as :func:`read_table` reports it). Held
        only around reads, never across a ``yield`` (it changes the warning filters)."""
        from kielnet.io.checks import truncation_as_error

        try:
            with truncation_as_error():
                yield
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
            raise InputError(f"cannot read as fits: file is truncated or corrupt "
                             f"({type(exc).__name__}: {exc})", source=str(self.target)) from exc

    @contextlib.contextmanager
    def _hdu(self) -> Iterator[Any]:
        """The first table HDU of the file, memory-mapped (closed at the end)."""
        from astropy.io import fits

        with self._errors():
            hdul = fits.open(self.target, memmap=True)
        try:
            with self._errors():
                hdus = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
            if not hdus:
                raise InputError(f"cannot read as fits: the file holds no table HDU (it has "
                                 f"{len(hdul)} HDU(s))", source=str(self.target))
            yield hdus[0]
        finally:
            hdul.close()

    @staticmethod
    def _rows(hdu: Any, a: int, b: int):
        """Rows ``[a, b)`` as astropy reads the whole HDU (masks, units, metadata)."""
        from astropy.table import Table

        return Table.read(type(hdu)(data=hdu.data[a:b], header=hdu.header))

    def _make_plan(self) -> ColumnPlan:
        from kielnet.io.checks import parse_floats

        source = str(self.target)
        with self._hdu() as hdu, self._errors():
            n = int(hdu.header.get("NAXIS2", 0))
            if n == 0:
                raise InputError("table has no rows", source=source)
            sample = self._rows(hdu, 0, 1)
            kind = {c: np.asarray(sample[c]).dtype.kind for c in sample.colnames}

            def numeric(c: str) -> tuple[int | None, str | None]:
                if kind[c] in "fiub":
                    return None, None
                if kind[c] not in "USO":
                    return parse_floats(sample[c])[1:]
                for a in range(0, n, 65_536):
                    _, bad_row, bad_value = parse_floats(hdu.data.field(c)[a:a + 65_536])
                    if bad_row is not None:
                        return a + bad_row, bad_value
                return None, None

            plan = column_plan(list(sample.colnames), sample.meta, None, source=source,
                               ndim=lambda c: np.asarray(sample[c]).ndim, kind=kind.__getitem__,
                               numeric=numeric)
            for key, col in plan.extra.items():
                null = hdu.columns[col].null
                if kind[col] not in "iu" or null is None:
                    continue
                has_null, max_abs = False, 0.0
                for a in range(0, n, 65_536):
                    arr = np.asarray(hdu.data.field(col)[a:a + 65_536])
                    mask = arr == null
                    has_null |= bool(mask.any())
                    if (~mask).any():
                        max_abs = max(max_abs, float(np.abs(arr[~mask].astype(np.float64)).max()))
                choice = masked_int_choice(has_null, max_abs)
                if choice is not None:
                    plan.masked_ints[key] = choice
        return plan

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        return self._iter(self.plan(), start, rows), start

    def _iter(self, plan: ColumnPlan, start: int, rows: int) -> Iterator[StarTable]:
        source = str(self.target)
        with self._hdu() as hdu:
            n = int(hdu.header.get("NAXIS2", 0))
            for a in range(start, n, rows):
                with self._errors(), _rows_from(a):
                    batch = build_startable(self._rows(hdu, a, min(a + rows, n)), plan, source=source,
                                            check_flux=False)
                yield batch


# ------------------------------------------------------------------ CSV
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


class CsvSource(_TableSource):
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
            with opener(self.target, "rt", encoding="utf-8", errors="replace", newline="") as fh:
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
                with _rows_from(row):
                    table = build_startable(self._table(part), plan, source=source, check_flux=False)
                row += part.num_rows
                yield table


# ------------------------------------------------------------------ whole reads
def _slices(table: StarTable, start: int, rows: int) -> Iterator[StarTable]:
    return (table.take(np.arange(a, min(a + rows, len(table)))) for a in range(start, len(table), rows))


class EcsvSource(_TableSource):
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
        return _slices(self.read_all(), start, rows), start


class ReaderSource(FileSource):
    """A source over a registered reader without a streaming source of its own: its
    ``iter_tables`` pieces if it has them, else the input read whole once (per process;
    the table is not pickled) and sliced. It pickles with its :class:`ReaderSpec`,
    i.e. when the reader's functions are module-level (not lambdas)."""

    def __init__(self, target: Any, reader: ReaderSpec) -> None:
        super().__init__(target)
        self.reader = reader
        self.reader_name = reader.name
        self.description = reader.what
        self._whole: StarTable | None = None

    def _reader(self) -> ReaderSpec:
        return self.reader

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _whole=None)

    def files(self) -> list[Path]:
        if isinstance(self.target, Path) and str(self.target) in self.reader.aliases:
            if self.reader.name == XP_LIBRARY:
                from kielnet.io.xp_library import default_library_path

                return [default_library_path()]
            return []
        return super().files()

    def _count(self) -> int | None:
        if self.reader.count_rows is None:
            return None
        return self.reader.count_rows(self.target)

    def read_all(self) -> StarTable:
        if self._whole is None:
            self._whole = super().read_all()
        return self._whole

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        if self.reader.iter_tables is not None:
            return iter(self.reader.iter_tables(self.target)), 0
        return _slices(self.read_all(), start, rows), start


# ------------------------------------------------------------------ one file at a time
class FileBatchSource(FileSource):
    """apStar or Gaia RVS files (a file, a directory, a list), read one file at a time."""

    def __init__(self, target: Any, kind: str) -> None:
        super().__init__(target)
        if kind not in ("apstar", "gaia-rvs"):
            raise ValueError(f"FileBatchSource reads apstar or gaia-rvs files, not {kind!r}")
        self.reader_name = kind
        self.description = "an apStar file" if kind == "apstar" else "Gaia RVS mean spectra"
        self._files: list[Path] | None = None

    def files(self) -> list[Path]:
        if self._files is None:
            if self.reader_name == "apstar":
                from kielnet.io.apstar import apstar_files

                self._files = apstar_files(self.target)
            else:
                from kielnet.io.gaia_rvs import rvs_files

                explicit = set(self.target) if isinstance(self.target, list) else {self.target}
                self._files = [f for f in rvs_files(self.target) if f in explicit or not _fits_without_table(f)]
        return self._files

    def _count(self) -> int | None:
        return len(self.files()) if self.reader_name == "apstar" else None

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        if self.reader_name == "apstar":
            from kielnet.io.apstar import iter_apstar

            return iter_apstar(self.files(), start=start), min(start, len(self.files()))
        return self._rvs(), 0

    def _rvs(self) -> Iterator[StarTable]:
        from kielnet.io.gaia_rvs import read_rvs_spectra

        keys: list[str] | None = None
        for f in self.files():
            table = read_rvs_spectra(f)
            if keys is None:
                keys = list(table.extra)
            elif list(table.extra) != keys:  # keep the first file's columns (see module docstring)
                table.extra = {k: table.extra[k] if k in table.extra else np.full(len(table), np.nan)
                               for k in keys}
            yield table


def _fits_without_table(path: Path) -> bool:
    """A FITS file of a directory that holds no table (e.g. an RVS wavelength grid),
    skipped as :func:`~kielnet.io.gaia_rvs.read_rvs_spectra` skips it."""
    name = path.name.lower()
    if not name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        return False
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            return not any(isinstance(h, (fits.BinTableHDU, fits.TableHDU)) for h in hdul)
    except Exception:  # noqa: BLE001 - unreadable files are reported when read
        return False


# ------------------------------------------------------------------ metadata joins
@dataclass
class _MetaIndex:
    """One metadata table indexed by id: ids sorted once, looked up per batch."""

    source: str
    sorted_ids: np.ndarray
    rows: np.ndarray                       #: table row of each sorted id
    scalars: dict[str, np.ndarray]

    @classmethod
    def of(cls, table: StarTable) -> "_MetaIndex":
        uniq, counts = np.unique(table.ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"ids appear more than once in the metadata table, e.g. "
                             f"{uniq[counts > 1][0]}", source=table.source, field="id")
        order = np.argsort(table.ids, kind="stable")
        return cls(table.source, table.ids[order], order, dict(table.scalars))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, row)`` per id (row valid where found)."""
        if not len(self.sorted_ids):
            return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
        pos = np.searchsorted(self.sorted_ids, ids)
        pos = np.minimum(pos, len(self.sorted_ids) - 1)
        found = self.sorted_ids[pos] == ids
        return found, self.rows[pos]


@dataclass
class JoinStats:
    """Stars joined in the last pass (this process) and, per metadata table, how many
    of them it held."""

    stars: int = 0
    matched: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.stars = 0
        self.matched = {k: 0 for k in self.matched}


def join_metadata(table: StarTable, *, indexes: tuple[_MetaIndex, ...], stats: JoinStats | None = None
                  ) -> StarTable:
    """``table`` with the scalar columns of each indexed metadata table joined by id,
    as successive :meth:`StarTable.join_scalars` calls would (module docstring)."""
    scalars = dict(table.scalars)
    meta = dict(table.meta)
    for index in indexes:
        found, rows = index.lookup(table.ids)
        for c, values in index.scalars.items():
            v = np.full(len(table), np.nan)
            v[found] = values[rows[found]]
            if c in scalars:
                v = np.where(np.isfinite(v), v, scalars[c])
            scalars[c] = v
        meta["metadata_source"] = index.source
        if stats is not None:
            stats.matched[index.source] = stats.matched.get(index.source, 0) + int(found.sum())
    if stats is not None:
        stats.stars += len(table)
    return replace(table, scalars=scalars, meta=meta)


class MetadataSource(MappedSource):
    """A source whose batches get metadata tables joined by id (see the module docstring)."""

    def __init__(self, base: StarSource, metadata: Sequence[str | os.PathLike]) -> None:
        from kielnet.io import read_stars

        paths = [metadata] if isinstance(metadata, (str, os.PathLike)) else list(metadata)
        indexes = tuple(_MetaIndex.of(read_stars(p)) for p in paths)
        self.metadata = [str(p) for p in paths]
        self.stats = JoinStats(matched={ix.source: 0 for ix in indexes})
        super().__init__(base, functools.partial(join_metadata, indexes=indexes, stats=self.stats),
                         what="metadata joined by id: " + ", ".join(self.metadata))

    @property
    def matched(self) -> dict[str, int]:
        """Per metadata table (its path), stars of the last pass found in it."""
        return dict(self.stats.matched)

    @property
    def n_joined(self) -> int:
        """Stars that went through the join in the last pass."""
        return self.stats.stars

    def batches(self, size: int, start: int = 0) -> Iterator[StarTable]:
        self.stats.reset()
        yield from super().batches(size, start)

    def read_all(self) -> StarTable:
        self.stats.reset()
        return super().read_all()

    def identity(self) -> dict:
        out = super().identity()
        files = []
        for p in self.metadata:
            path = Path(p)
            try:
                st = path.stat()
                files.append({"path": str(path.resolve()), "size": int(st.st_size), "mtime": int(st.st_mtime_ns)})
            except OSError:
                files.append({"path": p})
        out["metadata"] = files
        return out
