"""Streaming star sources over files: any number of stars through bounded memory.

:func:`open_stars` returns a :class:`~kielnet.data.source.StarSource` for anything
:func:`kielnet.io.read_stars` reads (the reader comes from
:mod:`kielnet.io.registry`). ``source.batches(size, start)`` yields consecutive
:class:`~kielnet.data.StarTable` batches of exactly ``size`` stars (the last may be
shorter) in input order, whatever the layout of the files, and the concatenation of
the batches equals ``read_stars(spec)`` — ids, spectra, scalars, labels, errors and
pass-through columns, value for value.

This module is the format-independent machinery: batching, ``start`` (resume),
errors naming the file and the row in it, run identities, metadata joins. What is
streamed and how is each reader's business (its hooks, :class:`ReaderSpec`), chosen
in this order:

=====================  ==========================================================
``open``               a source of the reader's own (e.g. the table reader's
                       row-group / row-range streaming, :mod:`kielnet.io.streams`).
``iter_files``         :class:`FileBatchSource`: one file at a time, in the order of
                       ``list_files``; for ``one_star_per_file`` readers ``start``
                       skips files unread and the row count is the file count.
``iter_tables``        :class:`ReaderSource`: the reader's pieces (row groups, files).
neither                :class:`ReaderSource`: the input read whole once (per
                       process), then sliced; row count from ``count_rows``.
=====================  ==========================================================

What each built-in format does is described in its module of
:mod:`kielnet.io.formats`. Differences from ``read_stars`` of the whole input, by
design: per-file metadata (``meta['bad_rows']``) is kept only for batches made of
one file's stars; meta keys other than :data:`~kielnet.io.registry.SHARED_META` and
the reader's ``shared_meta`` are those of a batch's first piece.

Errors are those of ``read_stars``: :class:`~kielnet.errors.InputError` naming the
file, column, row (in the file) and star; anything else raised while reading becomes
``cannot read as <format>: …`` naming the file.

Metadata tables (``open_stars(spec, metadata=[...])``): each is read whole and
indexed by id once, when the source is opened; every batch gets their scalar columns
joined by id (vectorised ``searchsorted``), exactly as successive
:meth:`StarTable.join_scalars` calls would (a finite value of a later table wins; a
star absent from every table keeps NaN, reported as a missing input and flagged
``missing_input`` downstream). :attr:`MetadataSource.matched` counts, per table, the
stars of the last pass found in it. A table of more than :data:`RANGE_JOIN_ROWS` rows
whose source can list the id range of each of its row groups (``id_ranges``, integer ids,
e.g. a whole sky's photometry by source id) is not read whole: each batch reads only the
row groups whose id range holds one of its ids (``read_row_groups``,
:func:`metadata_index`), so memory stays bounded when the table is sorted by id; an id
given twice is refused when a batch's row groups hold it.

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
from kielnet.data.startable import StarTable, overlay_values
from kielnet.errors import InputError
from kielnet.io.paths import check_readable
from kielnet.io.registry import SHARED_META, ReaderSpec, files_of, guarded, reading, registered_readers, resolve

__all__ = ["open_stars", "FileSource", "ReaderSource", "FileBatchSource", "MetadataSource", "JoinStats",
           "join_metadata", "metadata_index", "rows_from", "slices", "PIECE_ROWS", "RANGE_JOIN_ROWS"]

#: Rows per piece when no batch size is given (``pieces()``, plan scans).
PIECE_ROWS = 10_000


def open_stars(spec: str | os.PathLike, *, metadata: Sequence[str | os.PathLike] = (),
               format: str | None = None, sampled: bool = False,
               coefficients_only: bool = False) -> StarSource:
    """A :class:`~kielnet.data.source.StarSource` over ``spec`` (anything
    :func:`kielnet.io.read_stars` reads, or a glob pattern of files of one reader).

    Parameters
    ----------
    spec
        A data-set alias, a file, a directory or a glob pattern.
    metadata
        Paths of tables (photometry, parallax, XP coefficients) whose scalar columns
        are joined by star id onto every batch (see the module docstring); each is
        read and indexed once, here.
    format
        Name of the registered reader to use instead of the one the registry would
        choose (``--format``; see :func:`kielnet.io.registry.resolve`).
    sampled
        The stars as sampled spectra, for a model that reads them: the reader's
        ``open_sampled`` source (e.g. spectra given as basis-function coefficients,
        sampled batch by batch); ignored for a reader without one.
    coefficients_only
        The stars' basis-function coefficients without their uncertainties, for a model
        that reads coefficients and no spectrum: the reader's ``open_coefficients``
        source (its uncertainty cells left unconverted); ignored for a reader without
        one.

    Raises
    ------
    InputError
        Naming the path, for what :func:`read_stars` refuses before reading (missing,
        empty or unreadable file, unknown format, a directory without files to read)
        and for unreadable or ambiguous metadata tables. Problems inside the data
        are raised by ``batches`` when reached.
    UsageError
        For a ``format`` no reader is registered under.
    """
    resolved = resolve(spec, format)
    reader = resolved.reader
    if resolved.kind == "file":
        check_readable(resolved.target)
    with reading(reader, resolved.spec):
        if sampled and reader.open_sampled is not None:
            source = reader.open_sampled(resolved.target)
        elif coefficients_only and reader.open_coefficients is not None:
            source = reader.open_coefficients(resolved.target)
        elif reader.open is not None:
            source = reader.open(resolved.target)
        elif reader.iter_files is not None:
            source = FileBatchSource(resolved.target, reader)
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
def rows_from(offset: int) -> Iterator[None]:
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

    #: the registered reader's name and description (set by each subclass)
    reader_name = ""
    description = ""

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

    def shared_meta(self) -> tuple[str, ...]:
        """Meta keys of the first piece carried onto every batch: the common ones
        (:data:`~kielnet.io.registry.SHARED_META`) and the reader's ``shared_meta``."""
        return SHARED_META + self._reader().shared_meta

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
        keys = self.shared_meta()
        for batch in rebatch(guarded(pieces, reader, self.spec), int(size), int(start) - at):
            if not shared:
                shared = {k: v for k, v in batch.meta.items() if k in keys}
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


# ------------------------------------------------------------------ whole reads
def slices(table: StarTable, start: int, rows: int) -> Iterator[StarTable]:
    """``table`` from row ``start`` on, in tables of ``rows`` stars."""
    return (table.take(np.arange(a, min(a + rows, len(table)))) for a in range(start, len(table), rows))


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
        if self.reader.list_files is not None:
            return list(self.reader.list_files(self.target))
        if isinstance(self.target, Path) and str(self.target) in self.reader.aliases:
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
        return slices(self.read_all(), start, rows), start


# ------------------------------------------------------------------ one file at a time
class FileBatchSource(ReaderSource):
    """The files of a reader with ``iter_files`` hooks (a file, a directory, a list),
    read one file at a time; ``start`` skips whole files unread when each holds one
    star (``one_star_per_file``)."""

    def __init__(self, target: Any, reader: ReaderSpec) -> None:
        if reader.iter_files is None:
            raise ValueError(f"reader '{reader.name}' has no iter_files hook to read one file at a time")
        super().__init__(target, reader)
        self._files: list[Path] | None = None

    def files(self) -> list[Path]:
        if self._files is None:
            self._files = super().files()
        return self._files

    def read_all(self) -> StarTable:
        """Every star in one table (``read`` of the input; not kept)."""
        return FileSource.read_all(self)

    def _count(self) -> int | None:
        if self.reader.one_star_per_file:
            return len(self.files())
        return super()._count()

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        files = self.files()
        first = min(start, len(files)) if self.reader.one_star_per_file else 0
        return iter(self.reader.iter_files(files, first)), first


# ------------------------------------------------------------------ metadata joins
@dataclass
class _MetaIndex:
    """One metadata table indexed by id: ids sorted once, looked up per batch."""

    source: str
    sorted_ids: np.ndarray
    rows: np.ndarray                       #: table row of each sorted id
    scalars: dict[str, np.ndarray]

    @classmethod
    def of(cls, table: StarTable, source: str | None = None) -> "_MetaIndex":
        source = table.source if source is None else source
        uniq, counts = np.unique(table.ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"ids appear more than once in the metadata table, e.g. "
                             f"{uniq[counts > 1][0]}", source=source, field="id")
        order = np.argsort(table.ids, kind="stable")
        return cls(source, table.ids[order], order, dict(table.scalars))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, row)`` per id (row valid where found)."""
        if not len(self.sorted_ids):
            return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
        pos = np.searchsorted(self.sorted_ids, ids)
        pos = np.minimum(pos, len(self.sorted_ids) - 1)
        found = self.sorted_ids[pos] == ids
        return found, self.rows[pos]

    def ids_in_memory(self) -> np.ndarray | None:
        """Every id of the table (sorted)."""
        return self.sorted_ids

    def values(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(found, columns)``: per id whether the table holds it, and each scalar
        column's value for every id (NaN where not found)."""
        found, rows = self.lookup(ids)
        out = {}
        for c, col in self.scalars.items():
            v = np.full(len(ids), np.nan)
            v[found] = col[rows[found]]
            out[c] = v
        return found, out


#: a metadata table with more rows than this whose source lists its row groups' id ranges
#: is not read whole but joined batch by batch from the row groups that can hold the
#: batch's ids (:func:`metadata_index`)
RANGE_JOIN_ROWS = 5_000_000


@dataclass
class _RangeIndex:
    """A large metadata table with integer ids in row groups: their id ranges are kept,
    and each batch reads only the row groups whose range holds one of its ids (the last
    ones read are kept for the next batch). Ids that occur more than once are refused as
    :class:`_MetaIndex` refuses them, among the rows a batch reads: every row group that
    could hold a batch star's id is among them."""

    source: str
    table: Any                                         #: its source (``id_ranges``, ``read_row_groups``)
    ranges: list[tuple[str, int, int, int]]            #: (file, row group, min id, max id)
    columns: tuple[str, ...]                           #: the scalar columns it joins
    _cache: tuple[tuple, _MetaIndex] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # a worker reads its own row groups
        return state

    def ids_in_memory(self) -> None:
        """None: the ids are read batch by batch, never all at once."""
        return None

    def values(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ids = np.asarray(ids)
        wanted = np.sort(_integer_ids(ids))
        groups = tuple((f, rg) for f, rg, lo, hi in self.ranges
                       if np.searchsorted(wanted, hi, "right") > np.searchsorted(wanted, lo, "left"))
        if not groups:
            return np.zeros(len(ids), bool), {c: np.full(len(ids), np.nan) for c in self.columns}
        if self._cache is None or self._cache[0] != groups:
            self._cache = (groups, _MetaIndex.of(self.table.read_row_groups(list(groups)), source=self.source))
        found, out = self._cache[1].values(ids)
        return found, {c: out.get(c, np.full(len(ids), np.nan)) for c in self.columns}


def _integer_ids(ids: np.ndarray) -> np.ndarray:
    """The ids written as decimal integers (as an integer id column's ids read), as
    int64; the others cannot match such a column and are left out."""
    text = np.char.strip(np.asarray(ids).astype(str))
    ok = np.char.isdigit(np.char.lstrip(text, "-")) & (np.char.str_len(text) <= 19)
    ok &= np.char.str_len(np.char.lstrip(text, "-")) > 0
    return text[ok].astype(np.int64) if ok.any() else np.zeros(0, np.int64)


def metadata_index(path: str | os.PathLike) -> "_MetaIndex | _RangeIndex":
    """The index a metadata table is joined with: read whole and indexed by id, or, for a
    table of more than :data:`RANGE_JOIN_ROWS` rows whose source lists the id range of
    every row group (``id_ranges``: integer ids with min/max statistics, e.g. a whole
    sky's photometry by source id), those ranges, its rows read batch by batch (bounded
    memory)."""
    from kielnet.io.registry import read_stars

    try:
        source = open_stars(path)
    except InputError:  # read whole below, which names the problem
        return _MetaIndex.of(read_stars(path))
    ranges = getattr(source, "id_ranges", None)
    if callable(ranges) and callable(getattr(source, "read_row_groups", None)):
        n = source.n_rows
        if n is not None and n > RANGE_JOIN_ROWS:
            with reading(source._reader(), str(path)):
                found = ranges()
                columns = tuple(source.plan().scalars)
            if found is not None:
                return _RangeIndex(str(path), source, found, columns)
    return _MetaIndex.of(read_stars(path))


@dataclass
class JoinStats:
    """Stars joined in the last pass (this process) and, per metadata table, how many
    of them it held and, per column, for how many stars its finite value replaced a
    different finite value the input held (``replaced``)."""

    stars: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, dict[str, int]] = field(default_factory=dict)

    def reset(self) -> None:
        self.stars = 0
        self.matched = {k: 0 for k in self.matched}
        self.replaced = {}


def join_metadata(table: StarTable, *, indexes: tuple["_MetaIndex | _RangeIndex", ...],
                  stats: JoinStats | None = None
                  ) -> StarTable:
    """``table`` with the scalar columns of each indexed metadata table joined by id,
    as successive :meth:`StarTable.join_scalars` calls would (module docstring)."""
    scalars = dict(table.scalars)
    meta = dict(table.meta)
    for index in indexes:
        found, columns = index.values(table.ids)
        for c, v in columns.items():
            scalars[c], n = overlay_values(scalars.get(c), v)
            if n and stats is not None:
                counts = stats.replaced.setdefault(index.source, {})
                counts[c] = counts.get(c, 0) + n
        meta["metadata_source"] = index.source
        if stats is not None:
            stats.matched[index.source] = stats.matched.get(index.source, 0) + int(found.sum())
    if stats is not None:
        stats.stars += len(table)
    return replace(table, scalars=scalars, meta=meta)


class MetadataSource(MappedSource):
    """A source whose batches get metadata tables joined by id (see the module docstring)."""

    def __init__(self, base: StarSource, metadata: Sequence[str | os.PathLike]) -> None:
        paths = [metadata] if isinstance(metadata, (str, os.PathLike)) else list(metadata)
        indexes = tuple(metadata_index(p) for p in paths)
        self.metadata = [str(p) for p in paths]
        self.stats = JoinStats(matched={ix.source: 0 for ix in indexes})
        super().__init__(base, functools.partial(join_metadata, indexes=indexes, stats=self.stats),
                         what="metadata joined by id: " + ", ".join(self.metadata))

    @property
    def matched(self) -> dict[str, int]:
        """Per metadata table (its path), stars of the last pass found in it."""
        return dict(self.stats.matched)

    @property
    def replaced(self) -> dict[str, dict[str, int]]:
        """Per metadata table, per column: stars of the last pass whose own, different
        finite value the table's replaced."""
        return {k: dict(v) for k, v in self.stats.replaced.items()}

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
