"""Gaia XP continuous files streamed in row batches: one archive file, a directory of
bulk-download files (``XpContinuousMeanSpectrum_*.csv.gz``) or a glob of them.

:class:`XpContinuousSource` reads file after file, in pieces of rows, and converts each
piece alone, so memory is bounded by the piece, not by the file:

==================  ===============================================================
CSV / ECSV,         blocks of whole lines of ``block_size`` bytes (``.gz`` decompressed
plain or ``.gz``    as it streams; the next block read and parsed on threads while this
                    one's parts are converted): a comma-delimited block
                    in the archive's plain layout is cut at every comma and cast at
                    once (:mod:`kielnet.io.streams.xp_tokens`); any other block, and any
                    other file, is read by ``pyarrow.csv``, every cell as text, the
                    ``"(c1, …)"`` / ``"[c1, …]"`` array strings parsed vectorised
                    (:func:`kielnet.io.xp_arrays.parse_array_strings`): the same numbers,
                    and the bad cells found and named. The ECSV
                    header (``#`` lines, APE 6: the Gaia bulk files are ECSV-headed
                    ``.csv.gz``) is skipped; its ``delimiter`` is used; ``null`` and
                    empty cells are missing values, ``null`` inside a JSON array is NaN.
FITS                memory-mapped row ranges of the first table HDU (a ``.fits.gz``
                    cannot be memory-mapped: astropy decompresses it whole, then slices).
VOTable             read whole per file by astropy (no row streaming), then sliced:
                    memory is bounded by the largest file, not the piece.
==================  ===============================================================

Each piece becomes a star table exactly as :func:`kielnet.io.gaia_xp.read_xp_continuous`
reads those rows (:func:`~kielnet.io.gaia_xp.xp_star_table`: stars with unusable cells
kept with NaN and listed in ``meta['bad_rows']`` of their piece); with ``sampled=True``
each piece is then calibrated to the 343-pixel sampled spectrum divided by its median
(:func:`~kielnet.io.gaia_xp.xp_sampled_spectra`, the in-house linear map), so that
``xp-apogee-dr17`` applies, and the correlations (1,485 values per band and star) are
dropped at once. Every input row gives one output row, in input order.

Pieces are the same whatever the batch size or ``start`` (blocks of a file from its
beginning, cut at ``piece_rows``), so a batch converts to the same numbers in a Dask
worker as in one process. ``start`` skips whole files by their row counts
(:meth:`XpContinuousSource.file_rows`, counted once per file and kept; a cluster run
counts every file in parallel first, :meth:`~XpContinuousSource.plan_rows`) and
whole pieces without converting them. The row count (``n_rows``) is unknown
(``None``) until then.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.data.xp import N_XP_COEFFICIENTS, N_XP_CORRELATIONS
from kielnet.errors import InputError
from kielnet.io.paths import TEXT_ENCODING
from kielnet.io.registry import files_of
from kielnet.io.sources import FileSource, rows_from
from kielnet.io.streams.xp_tokens import ParsedBlock, line_blocks, parse_block, split_lines
from kielnet.threads import prefetch, thread_map

__all__ = ["XpContinuousSource", "xp_files", "count_file_rows", "XP_SUFFIXES", "BLOCK_SIZE", "PIECE_ROWS"]

#: File names the reader takes from a directory (the archive's and the bulk download's forms).
XP_SUFFIXES = (".csv", ".csv.gz", ".ecsv", ".ecsv.gz", ".fits", ".fit", ".fits.gz", ".fit.gz",
               ".vot", ".votable", ".xml")
#: Bytes of text per CSV block (one archive row is ~45-70 kB: ~500 rows per block).
BLOCK_SIZE = 32 << 20
#: Most rows converted at once (FITS / VOTable pieces; CSV blocks are cut at this too).
PIECE_ROWS = 2048
#: Array columns (read as text, parsed vectorised).
_ARRAYS = tuple(f"{b}_{k}" for b in ("bp", "rp")
                for k in ("coefficients", "coefficient_errors", "coefficient_correlations"))
_NULLS = ["", "null", "NULL", "nan", "NaN"]
#: Values of a full array cell, by column kind (the fast path's layout).
_ARRAY_SIZES = {f"{b}_{k}": n for b in ("bp", "rp")
                for k, n in (("coefficients", N_XP_COEFFICIENTS), ("coefficient_errors", N_XP_COEFFICIENTS),
                             ("coefficient_correlations", N_XP_CORRELATIONS))}
#: Bytes of text per part of a block parsed on one thread (the fast path).
_PART_BYTES = 8 << 20
#: Parts handed back in a row after which the rest of a file goes to ``pyarrow.csv`` directly.
_GIVE_UP = 4
#: Decompressed bytes looked at for line ends before a file takes the fast path.
_PEEK = 1 << 20


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".ecsv", ".ecsv.gz")):
        return "text"
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        return "fits"
    if name.endswith((".vot", ".votable", ".xml")):
        return "votable"
    raise InputError(f"unknown XP continuous file format '{''.join(path.suffixes)}'; use one of "
                     f"{', '.join(XP_SUFFIXES)}", source=str(path))


def xp_files(target: Any) -> list[Path]:
    """The files of ``target`` in reading order: the file itself, a list of files (a
    glob's matches), or a directory's files with an XP suffix (:data:`XP_SUFFIXES`),
    sorted, hidden and ``_``-prefixed names (``_MD5SUM.txt``) skipped."""
    if isinstance(target, (list, tuple)) or not Path(target).is_dir():
        return files_of(target)
    files = [f for f in files_of(target) if f.name.lower().endswith(XP_SUFFIXES)]
    if not files:
        raise InputError(f"directory holds no XP continuous files ({', '.join(XP_SUFFIXES)})", source=str(target))
    return files


# ------------------------------------------------------------------ CSV / ECSV text
def _text_header(path: Path) -> tuple[int, str, list[str], bool]:
    """``(lines before the data, delimiter, column names, ECSV?)``: the ``#`` lines (an
    ECSV header, whose ``delimiter`` is used: a space unless it says otherwise), then
    the column-name line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    skipped, delimiter, ecsv = 0, None, False
    with opener(path, "rt", encoding=TEXT_ENCODING, errors="replace", newline="") as fh:
        for line in fh:
            if line.startswith("#"):
                skipped += 1
                ecsv = ecsv or "%ECSV" in line
                m = re.match(r"#\s*delimiter:\s*['\"]?(.)['\"]?\s*$", line.rstrip("\r\n"))
                if m:
                    delimiter = m.group(1)
                continue
            if not line.strip():
                skipped += 1
                continue
            delimiter = delimiter or (" " if ecsv else ",")  # the ECSV default is a space
            names = next(csv.reader([line], delimiter=delimiter, skipinitialspace=delimiter == " "))
            return skipped + 1, delimiter, [c.strip() for c in names if c.strip() or delimiter != " "], ecsv
    raise InputError("table has no rows", source=str(path))


def _binary_stream(path: Path) -> Any:
    """The file's bytes for ``pyarrow.csv``: a ``.gz`` file as :func:`_raw_stream`
    decompresses it (a Python stream wrapped for Arrow), a plain file as its path."""
    import pyarrow as pa

    if not path.name.lower().endswith(".gz"):
        return str(path)
    stream = _raw_stream(path)
    return stream if isinstance(stream, pa.NativeFile) else pa.PythonFile(stream, mode="r")


def _gzip_errors() -> type[Exception]:
    """The decompression error class of the stream :func:`_raw_stream` uses."""
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        return zlib.error
    return isal_zlib.error


@contextlib.contextmanager
def _open_text(path: Path, block_size: int, columns: Sequence[str] | None = None,
               header: tuple[int, str, list[str], bool] | None = None) -> Iterator[Any]:
    """A ``pyarrow.csv`` streaming reader of the file's data rows, every cell as text
    (a context: the decompressing stream is closed on leaving). ``header``: the file's
    :func:`_text_header`, when the caller has read it already."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    skip, delimiter, names, _ = header or _text_header(path)
    source = _binary_stream(path)
    try:
        yield pcsv.open_csv(source, **_csv_options(names, skip, delimiter, columns, block_size))
    finally:
        if not isinstance(source, str):
            source.close()


def _csv_options(names: list[str], skip: int, delimiter: str, columns: Sequence[str] | None,
                 block_size: int) -> dict[str, Any]:
    """``pyarrow.csv`` options: the file's ``names``, ``skip`` lines before the data, every
    cell of ``columns`` (default: all) as text, the archive's null spellings."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    include = list(names if columns is None else columns)
    return dict(read_options=pcsv.ReadOptions(column_names=names, skip_rows=skip, block_size=block_size,
                                              use_threads=True),
                parse_options=pcsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=True),
                convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in include},
                                                    include_columns=include, null_values=_NULLS,
                                                    strings_can_be_null=True, quoted_strings_can_be_null=True))


def _raw_stream(path: Path) -> Any:
    """The file's decompressed bytes as a binary stream with ``read(n)`` and ``close()``
    (ISA-L's igzip for ``.gz`` when installed, else pyarrow's zlib stream)."""
    if not path.name.lower().endswith(".gz"):
        return open(path, "rb")
    try:
        from isal import igzip
    except ImportError:
        import pyarrow as pa

        return pa.input_stream(str(path), compression="gzip")
    return igzip.open(path, "rb")


def _plain_lines(path: Path) -> bool:
    """Whether the file's lines end with ``\\n`` (or ``\\r\\n``) in its first
    :data:`_PEEK` bytes: no ``\\r`` alone, as old Mac files end them (``pyarrow.csv``
    takes those)."""
    with contextlib.closing(_raw_stream(path)) as stream:
        head = stream.read(_PEEK)
    return b"\n" in head and head.count(b"\r") == head.count(b"\r\n")


def _fast_text_blocks(path: Path, header: tuple[int, str, list[str], bool], block_size: int) -> Iterator[list[Any]]:
    """The file's data rows in blocks of whole lines, each block a list of its parts (of
    :data:`_PART_BYTES`, parsed on the pool's threads), each part cut at every comma and
    parsed at once (:func:`kielnet.io.streams.xp_tokens.parse_block`: a :class:`ParsedBlock`);
    a part not in the plain archive layout is read by ``pyarrow.csv`` instead (record
    batches of text cells, as :func:`_open_text` gives). After :data:`_GIVE_UP` parts in a
    row are handed back (a file with a text column, say), the rest of the file goes to
    ``pyarrow.csv`` without a try."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    skip, delimiter, names, _ = header
    sizes = {c.lower(): _ARRAY_SIZES[c.lower()] for c in names if c.lower() in _ARRAY_SIZES}
    options = _csv_options(names, 0, delimiter, None, block_size)
    missed = 0  # parts handed back in a row
    with contextlib.closing(_raw_stream(path)) as stream:
        # the next block inflated while this one is parsed; stopped (its thread joined) before the stream closes
        with contextlib.closing(prefetch(line_blocks(stream, block_size, skip))) as blocks:
            while True:
                try:
                    block = next(blocks, None)
                except ValueError as exc:  # a line longer than a few blocks
                    raise InputError(f"cannot read as csv: {exc}", source=str(path)) from exc
                if block is None:
                    return
                parts = split_lines(block, -(-len(block) // _PART_BYTES))  # the same pieces on any number of threads
                if missed < _GIVE_UP:
                    parsed = thread_map(lambda part: parse_block(part, names, sizes, _NULLS, _scalar_column), parts)
                else:  # a file whose layout the fast path does not take (e.g. a text column): no more tries
                    parsed = [None] * len(parts)
                out = []
                for part, rows in zip(parts, parsed):
                    missed = 0 if rows is not None else missed + 1
                    if rows is not None:
                        out.append(rows)
                    else:
                        out.extend(pcsv.read_csv(pa.py_buffer(part), **options).to_batches())
                yield out


def count_file_rows(path: str, block_size: int = BLOCK_SIZE) -> int:
    """Data rows of one XP continuous file (CSV / ECSV: the text is tokenised, one
    column converted; FITS: ``NAXIS2``; VOTable: read whole)."""
    p = Path(path)
    kind = _kind(p)
    if kind == "fits":
        from kielnet.io.tables import fits_table_rows

        n = fits_table_rows(p)
        if n is not None:
            return int(n)
    if kind != "text":
        from kielnet.io.gaia_rvs import _read_archive_table

        return len(_read_archive_table(p)[0])
    header = _text_header(p)
    with _open_text(p, block_size, header[2][:1], header) as reader:
        return sum(b.num_rows for b in reader)


class _Columns:
    """A block of text cells with the column access :func:`xp_star_table` needs: array
    columns as pyarrow strings, the others as (masked) NumPy int64 / float64 columns
    where every cell converts, else text (refused with its row by the reader)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.colnames = list(batch.schema.names)

    def __getitem__(self, name: str) -> Any:
        col = self.batch.column(name)
        if name.lower() in _ARRAYS:  # parsed by xp_star_table (null_as_nan for ECSV)
            return col
        return _scalar_column(col)


def _scalar_column(cells: Any) -> Any:
    """A scalar column's cell texts (a pyarrow string array, nulls for missing cells) →
    int64 where every cell converts, else float64, else text; masked where missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.utf8_trim_whitespace(cells)
    null = np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False), dtype=bool)
    mask = null if null.any() else None
    for kind in (pa.int64(), pa.float64()):
        try:
            values = pc.cast(text, kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        values = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
        return values if mask is None else np.ma.masked_array(values, mask=mask)
    strings = np.asarray(pc.fill_null(text, "").to_numpy(zero_copy_only=False), dtype=str)
    return np.ma.masked_array(strings, mask=null)


# ------------------------------------------------------------------ the source
class XpContinuousSource(FileSource):
    """Archive XP continuous files streamed in pieces (module docstring).

    Parameters
    ----------
    target
        A file, a directory of files or a list of files (a glob's matches).
    sampled
        Yield sampled spectra (343 px, 336-1020 nm, divided by the median flux; extra
        ``source_id``, ``medflux``, ``missing_bp`` / ``missing_rp``; scalars ``g`` etc.
        when the file has them) instead of the coefficients as scalars ``bp_0 … rp_54``.
    uncertainties
        Read the coefficient errors and correlations too (``extra``; needed for
        ``sampled``). ``False``: the coefficients only, for a model that reads them and
        no spectrum — the error and correlation cells are tokenised but not converted.
    block_size
        Bytes of text per CSV block (must exceed one row, ~70 kB).
    piece_rows
        Most rows converted at once.
    """

    reader_name = "gaia-xp"
    description = "Gaia XP continuous spectra"

    def __init__(self, target: Any, *, sampled: bool = False, uncertainties: bool = True,
                 block_size: int = BLOCK_SIZE, piece_rows: int = PIECE_ROWS) -> None:
        super().__init__(target)
        self.sampled = bool(sampled)
        if self.sampled and not uncertainties:
            raise ValueError("sampled spectra need the coefficient uncertainties (their flux errors)")
        self.uncertainties = bool(uncertainties)
        self.block_size = int(block_size)
        self.piece_rows = int(piece_rows)
        self._files: list[Path] | None = None
        self._rows: dict[str, int] = {}

    def files(self) -> list[Path]:
        if self._files is None:
            self._files = xp_files(self.target)
        return self._files

    def read_all(self) -> StarTable:
        """Every star in one table: a single file as :func:`~kielnet.io.gaia_xp.read_xp_continuous`
        (or :func:`~kielnet.io.gaia_xp.xp_sampled_spectra`) reads it, else the pieces
        concatenated (memory grows with the input)."""
        if isinstance(self.target, Path) and self.target.is_file():
            from kielnet.io.gaia_xp import read_xp_continuous, xp_sampled_spectra

            return (xp_sampled_spectra if self.sampled else read_xp_continuous)(self.target)
        pieces = list(self.pieces())
        if not pieces:
            raise InputError("the input holds no stars", source=self.spec)
        table = pieces[0] if len(pieces) == 1 else StarTable.concat(pieces)
        table.meta["source"] = self.spec
        return table

    def identity(self) -> dict:
        return dict(super().identity(), xp="sampled" if self.sampled else
                    "coefficients" if self.uncertainties else "coefficients only")

    # -- row counts (for start)
    def file_rows(self, i: int) -> int:
        """Data rows of file ``i`` (counted once, kept with the source)."""
        f = str(self.files()[i])
        if f not in self._rows:
            self._rows[f] = count_file_rows(f, self.block_size)
        return self._rows[f]

    def plan_rows(self, map_: Callable[[Callable, list], list]) -> None:
        """Count the rows of every file not counted yet with ``map_(fn, items)`` (e.g.
        one Dask task per file), before tasks start at row offsets."""
        todo = [str(f) for f in self.files() if str(f) not in self._rows]
        if todo:
            self._rows.update(zip(todo, (int(n) for n in map_(count_file_rows, todo))))

    # -- pieces
    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        files = self.files()
        first, at = 0, 0
        if start:
            for first in range(len(files)):
                n = self.file_rows(first)
                if at + n > start:
                    break
                at += n
            else:
                return iter(()), start
        return self._iter(files, first, start - at, rows), start

    def _iter(self, files: list[Path], first: int, skip: int, batch_rows: int) -> Iterator[StarTable]:
        handed = [0]  # rows handed out so far (from ``start``), counted as blocks are read
        for f in files[first:]:
            for table in self._file_pieces(f, skip, batch_rows, handed):
                yield table
            skip = 0

    def _file_pieces(self, path: Path, skip: int, batch_rows: int, handed: list[int]) -> Iterator[StarTable]:
        """The stars of one file from its row ``skip`` on, piece by piece.

        A text file's next block is decompressed, and parsed on the pool's threads, on a
        thread of its own while the caller converts this block's parts one by one
        (:func:`kielnet.threads.prefetch`; each part's calibration runs in the caller's
        thread, a part holding fewer stars than a calibration part). Handing the parts over
        one at a time left the pool idle while the caller converted all but a block's last
        part: reading 4×10^4 archive rows alone on 2 cores took 5.2 s, now 4.6 s (ad hoc,
        interleaved). Nothing is made after a block that completes a batch of ``batch_rows``
        (``handed[0]``: rows of the blocks before, from the batches' start): the caller then
        works on the batch (the networks, on every core) before it asks for more."""
        kind = _kind(path)
        row = 0
        blocks = self._blocks(path, kind)
        if kind == "text":
            at = [0]  # rows of this file read so far

            def batch_complete(item: tuple[list[Any], str, bool]) -> bool:
                n = sum(part.num_rows for part in item[0])
                before, at[0] = at[0], at[0] + n
                new = max(0, at[0] - max(skip, before))  # rows of this block from row `skip` on
                old, handed[0] = handed[0], handed[0] + new
                return handed[0] // batch_rows > old // batch_rows

            blocks = prefetch(blocks, pause=batch_complete)
        for item, fmt, ecsv in blocks:
            for block in item if kind == "text" else [item]:
                n = block.num_rows if kind == "text" else len(block)
                for a in range(0, n, self.piece_rows):
                    m = min(self.piece_rows, n - a)
                    if row + m <= skip:
                        row += m
                        continue
                    part = block.slice(a, m) if kind == "text" else block[a:a + m]
                    with rows_from(row):
                        table = self._convert(part, kind, fmt, ecsv, str(path))
                    if skip > row:
                        table = table.take(np.arange(skip - row, len(table)))
                    row += m
                    yield table

    def _blocks(self, path: Path, kind: str) -> Iterator[tuple[Any, str, bool]]:
        """The file in blocks of rows: for text, a list per block of its parts (parsed
        blocks or pyarrow record batches); else astropy tables."""
        if kind == "text":
            import pyarrow as pa

            header = _text_header(path)
            ecsv = header[3]
            fmt = "ascii.ecsv" if ecsv or path.name.lower().endswith((".ecsv", ".ecsv.gz")) else "ascii.csv"
            columns = None
            if not self.uncertainties:  # the error / correlation cells are not converted
                columns = [c for c in header[2] if not c.lower().endswith(("_coefficient_errors",
                                                                           "_coefficient_correlations"))]
            # the error classes looked up before the reading starts: a generator left unfinished
            # is closed at interpreter shutdown, when pyarrow's and the decompressor's modules may
            # already be torn down (their names None)
            arrow_errors = (pa.ArrowInvalid, pa.ArrowNotImplementedError)
            read_errors = (EOFError, OSError, _gzip_errors())
            try:
                if columns is None and header[1] == "," and _plain_lines(path):
                    for parts in _fast_text_blocks(path, header, self.block_size):
                        yield parts, fmt, ecsv
                    return
                with _open_text(path, self.block_size, columns, header) as reader:
                    for batch in reader:
                        yield [batch], fmt, ecsv
            except arrow_errors as exc:
                raise InputError(f"cannot read as {fmt}: {exc}", source=str(path)) from exc
            except read_errors as exc:  # truncated / corrupt .gz
                raise InputError(f"cannot read as {fmt}: the file is truncated or not valid gzip "
                                 f"({type(exc).__name__}: {exc})", source=str(path)) from exc
        elif kind == "fits":
            yield from self._fits_blocks(path)
        else:
            from kielnet.io.gaia_rvs import _read_archive_table

            tab, fmt = _read_archive_table(path)
            yield tab, fmt, False

    def _fits_blocks(self, path: Path) -> Iterator[tuple[Any, str, bool]]:
        from astropy.io import fits
        from astropy.table import Table

        from kielnet.io.paths import check_readable

        check_readable(path)
        with contextlib.ExitStack() as stack:
            try:
                hdul = stack.enter_context(fits.open(path, memmap=True))
                hdus = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
            except Exception as exc:  # noqa: BLE001 - an unreadable file becomes one clear error
                raise InputError(f"cannot read as fits: {type(exc).__name__}: {exc}", source=str(path)) from exc
            if not hdus:
                raise InputError("cannot read as fits: the file holds no table HDU", source=str(path))
            hdu = hdus[0]
            n = int(hdu.header.get("NAXIS2", 0))
            if n == 0:
                raise InputError("table has no rows", source=str(path))
            step = max(self.piece_rows, 1)
            for a in range(0, n, step):
                rows = Table.read(type(hdu)(data=hdu.data[a:a + step], header=hdu.header))
                yield rows, "fits", False

    def _convert(self, part: Any, kind: str, fmt: str, ecsv: bool, source: str) -> StarTable:
        from kielnet.io.gaia_xp import xp_sampled_spectra, xp_star_table

        rows = part if isinstance(part, ParsedBlock) or kind != "text" else _Columns(part)
        table = xp_star_table(rows, source=source, fmt=fmt, refuse_unusable=False,
                              uncertainties=self.uncertainties, null_as_nan=ecsv)
        if not self.sampled:
            return table
        out = xp_sampled_spectra(table)
        out.meta.update(source=source, format=fmt)
        if "bad_rows" in table.meta:
            out.meta["bad_rows"] = table.meta["bad_rows"]
        return out
