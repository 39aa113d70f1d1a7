"""The reader registry: which reader reads a file, a directory or a named data set.

As astropy's unified I/O registry and specutils' loaders do, each input format is
one :class:`ReaderSpec` — a name, a cheap ``identify`` test, a ``read`` function
and optional streaming hooks — registered with :func:`register_reader`.
:func:`kielnet.io.read_stars` and :func:`kielnet.io.open_stars` ask
:func:`get_reader` which reader to use, so a new survey format is one module that
calls :func:`register_reader`, not an edit of a dispatch chain::

    from kielnet.io import register_reader

    @register_reader("lamost-lrs", identify=lambda p: p.name.startswith("spec-"), priority=20)
    def read_lamost(path):
        ...                                   # -> StarTable

Choosing a reader
-----------------
``spec`` names a data set (an alias such as ``xp-library``), an existing file or
directory, or a glob pattern (``dir/apStar-*.fits``; every match must have the same
reader, which then receives the list of files, see :func:`resolve`). Among the
readers whose ``identify(path)`` is true — for a directory, only readers that accept
directories are asked — the one with the highest ``priority`` wins, and among equal
priorities the one registered last (so that a project's reader can stand in for a
built-in one). ``identify`` must be cheap: a suffix, a file name, the column names in
a header; an exception inside it counts as "no".

Overriding the choice
---------------------
``resolve(spec, format="gaia-rvs")`` (``read_stars`` / ``open_stars`` /
``kielnet … --format NAME``) skips ``identify`` and uses the reader of that name
(:func:`reader_named`; an unknown name is a :class:`~kielnet.errors.UsageError`
listing the registered names).

Built-in readers
----------------
Each built-in format is one module of :mod:`kielnet.io.formats` that registers
itself when :mod:`kielnet.io` is imported (its table of names, priorities and
identify rules is there). A new built-in format is one new module in that package.

Errors
------
Any exception that is not kielnet's own, raised while a reader reads, becomes an
:class:`~kielnet.errors.InputError` naming the file and the reader
(``cannot read as <description>: <type>: <message>``, the original as
``__cause__``); see :func:`reading`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from kielnet.errors import InputError, KielnetError
from kielnet.io.paths import TEXT_ENCODING

if TYPE_CHECKING:  # pragma: no cover
    from kielnet.data.source import StarSource
    from kielnet.data.startable import StarTable

__all__ = ["ReaderSpec", "register_reader", "unregister_reader", "get_reader", "registered_readers",
           "reader_named", "resolve", "Resolved", "reading", "read_stars", "column_names", "files_of", "safe_iterdir"]

#: Meta keys of a reader's first piece carried onto every streamed batch (``loader``,
#: ``format``, …), whatever the reader; a reader adds its own with ``shared_meta``.
SHARED_META = ("loader", "non_numeric_columns", "format", "formats")

@dataclass(frozen=True)
class ReaderSpec:
    """One input format.

    Parameters
    ----------
    name
        Short unique name (``"apstar"``); shown in messages and run identities.
    identify
        ``identify(path) -> bool``: whether this reader reads ``path`` (a file, or a
        directory when ``directories`` is true). Must be cheap: suffix, file name,
        header column names.
    read
        ``read(path) -> StarTable``: every star of ``path``. Readers that accept
        directories are also given a list of files (the matches of a glob pattern).
    iter_tables
        Optional ``iter_tables(path) -> Iterator[StarTable]``: the same stars in
        pieces of any length, in input order (row groups, files), for streaming with
        bounded memory. Without it a streamed source reads the whole input once and
        slices it.
    directories
        Whether ``path`` may be a directory (a directory of apStar or RVS files).
    priority
        Higher wins when several readers identify the same path.
    description
        What the format is, for messages: ``cannot read as <description>: …``
        (default: ``format '<name>'``).
    hint
        What the reader recognises, for the message listing the known formats when
        nothing identifies a path (default: the docstring's first line of ``identify``).
    aliases
        Names that stand for a data set rather than a path (``xp-library``); ``read``
        and ``open`` receive ``Path(alias)``.
    count_rows
        Optional ``count_rows(path) -> int | None``: the number of stars without
        reading the data (metadata, headers, a file count), ``None`` if unknown.
    open
        Optional ``open(path) -> StarSource``: a streaming source of its own (cheap
        ``start`` skipping, known row counts), used by :func:`kielnet.io.open_stars`
        instead of the generic one built from ``read`` / ``iter_tables``.
    one_star_per_file
        Whether each file holds exactly one star (then a directory's row count is its
        file count and ``start`` skips files without reading them).
    list_files
        Optional ``list_files(target) -> list[Path]``: the files the input is made of,
        in input order (default: the file, or every file under a directory; nothing
        for an alias). Used for run identities and by ``iter_files``.
    iter_files
        Optional ``iter_files(files, first) -> Iterator[StarTable]``: the stars of
        ``files[first:]`` (of ``list_files``), file by file, in input order, for
        streaming one file at a time. ``first`` is > 0 only for
        ``one_star_per_file`` readers (``start`` skips those files unread).
    shared_meta
        Meta keys (besides :data:`SHARED_META`) that describe the whole input and are
        carried from the first piece onto every streamed batch.
    as_sampled
        Optional ``as_sampled(path) -> StarTable``: the stars of a file converted to
        sampled spectra, for a model whose input is a sampled spectrum (Gaia XP
        continuous coefficients → the XP library's 343-pixel representation).
    open_sampled
        Optional ``open_sampled(path) -> StarSource``: the same conversion streamed
        (:func:`kielnet.io.open_stars` with ``sampled=True``); preferred to
        ``as_sampled``, which reads a whole file.
    open_coefficients
        Optional ``open_coefficients(path) -> StarSource``: the stars' basis-function
        coefficients alone, without their uncertainties, for a model that reads
        coefficients and no spectrum (:func:`kielnet.io.open_stars` with
        ``coefficients_only=True``; Gaia XP: the correlations are not converted).
    """

    name: str
    identify: Callable[[Path], bool]
    read: Callable[..., "StarTable"]
    iter_tables: Callable[..., Iterator["StarTable"]] | None = None
    directories: bool = False
    priority: int = 0
    description: str = ""
    hint: str = ""
    aliases: tuple[str, ...] = ()
    count_rows: Callable[..., int | None] | None = None
    open: Callable[..., "StarSource"] | None = None
    one_star_per_file: bool = False
    list_files: Callable[..., list[Path]] | None = None
    iter_files: Callable[..., Iterator["StarTable"]] | None = None
    shared_meta: tuple[str, ...] = ()
    as_sampled: Callable[..., "StarTable"] | None = None
    open_sampled: Callable[..., "StarSource"] | None = None
    open_coefficients: Callable[..., "StarSource"] | None = None
    #: registration order (set by :func:`register_reader`; breaks priority ties)
    order: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", self.name):
            raise ValueError(f"reader name must be a short word (letters, digits, - _ . +), got {self.name!r}")
        for what in ("identify", "read"):
            if not callable(getattr(self, what)):
                raise TypeError(f"reader '{self.name}': {what} must be callable")
        for what in ("iter_tables", "count_rows", "open", "list_files", "iter_files", "as_sampled",
                     "open_sampled"):
            value = getattr(self, what)
            if value is not None and not callable(value):
                raise TypeError(f"reader '{self.name}': {what} must be callable or None")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "shared_meta", tuple(self.shared_meta))

    @property
    def what(self) -> str:
        """The format in words (``description``, or ``format '<name>'``)."""
        return self.description or f"format '{self.name}'"

    def summary(self) -> str:
        """``name (hint)`` for the list of known formats."""
        hint = self.hint or ((self.identify.__doc__ or "").strip().splitlines() or [""])[0]
        return f"{self.name} ({hint})" if hint else self.name


_REGISTRY: dict[str, ReaderSpec] = {}
_COUNTER = itertools.count(1)


def register_reader(spec: ReaderSpec | str | None = None, /, *, identify: Callable[[Path], bool] | None = None,
                    read: Callable[..., "StarTable"] | None = None, override: bool = False,
                    **options: Any) -> Any:
    """Register an input format.

    Three forms::

        register_reader(ReaderSpec("fmt", identify=..., read=...))     # -> the spec
        register_reader("fmt", identify=..., read=..., priority=5)      # -> the spec
        @register_reader("fmt", identify=...)                           # decorates read
        def read_fmt(path): ...                                         # -> read_fmt

    ``options`` are the other :class:`ReaderSpec` fields (``iter_tables``,
    ``directories``, ``priority``, ``description``, ``hint``, ``aliases``,
    ``count_rows``, ``open``, ``one_star_per_file``, ``list_files``, ``iter_files``,
    ``shared_meta``, ``as_sampled``, ``open_sampled``). A name already registered is a
    ``ValueError`` unless ``override=True`` (which replaces it).
    """
    if isinstance(spec, ReaderSpec):
        if identify is not None or read is not None or options:
            raise TypeError("give either a ReaderSpec or its fields, not both")
        return _add(spec, override)
    if not isinstance(spec, str):
        raise TypeError("register_reader needs a ReaderSpec or a name")
    if identify is None:
        raise TypeError(f"reader '{spec}': identify is required")
    if read is None:  # decorator form
        def decorate(fn: Callable[..., "StarTable"]) -> Callable[..., "StarTable"]:
            _add(ReaderSpec(spec, identify=identify, read=fn, **options), override)
            return fn
        return decorate
    return _add(ReaderSpec(spec, identify=identify, read=read, **options), override)


def _add(spec: ReaderSpec, override: bool) -> ReaderSpec:
    if spec.name in _REGISTRY and not override:
        raise ValueError(f"a reader named '{spec.name}' is already registered (override=True replaces it)")
    spec = replace(spec, order=next(_COUNTER))
    _REGISTRY[spec.name] = spec
    return spec


def unregister_reader(name: str) -> ReaderSpec:
    """Remove a registered reader (``KeyError`` if there is none of that name); returns it."""
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise KeyError(f"no reader named '{name}' is registered") from None


def registered_readers() -> list[ReaderSpec]:
    """The registered readers, highest priority first (the order they are tried in)."""
    return sorted(_REGISTRY.values(), key=lambda s: (-s.priority, -s.order))


def reader_named(name: str) -> ReaderSpec:
    """The registered reader called ``name`` (``--format NAME``).

    Raises
    ------
    UsageError
        For a name no reader has, listing the registered names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    from kielnet.errors import UsageError

    names = ", ".join(sorted(_REGISTRY))
    raise UsageError(f"unknown format '{name}': the registered formats are {names}")


def _identifies(spec: ReaderSpec, path: Path) -> bool:
    try:
        return bool(spec.identify(path))
    except Exception:  # noqa: BLE001 - an identify that fails does not identify
        return False


def _known() -> str:
    return "; ".join(s.summary() for s in registered_readers())


def get_reader(path: str | os.PathLike) -> ReaderSpec:
    """The reader of ``path`` (an alias, a file or a directory; see the module docstring).

    Raises
    ------
    InputError
        Naming the path: it does not exist, or no registered reader identifies it
        (the message lists the known formats); a directory that no reader accepts
        says ``directory holds no files to read``.
    """
    text = str(path)
    for spec in registered_readers():
        if text in spec.aliases:
            return spec
    p = Path(path)
    if not p.exists():
        raise InputError("file does not exist", source=text)
    is_dir = p.is_dir()
    for spec in registered_readers():
        if (spec.directories or not is_dir) and _identifies(spec, p):
            return spec
    if is_dir:
        empty = not any(True for _ in safe_iterdir(p))
        kinds = "; ".join(s.summary() for s in registered_readers() if s.directories)
        raise InputError(f"directory holds no files to read: no reader accepts it (readers of "
                         f"directories: {kinds})" + ("; it is empty" if empty else ""), source=text)
    raise InputError(f"unknown format '{''.join(p.suffixes) or p.name}': no reader recognises the file; "
                     f"known formats: {_known()}", source=text)


def safe_iterdir(p: Path) -> Iterator[Path]:
    """The entries of directory ``p``; an :class:`InputError` naming it if it cannot be listed."""
    try:
        yield from p.iterdir()
    except OSError as exc:
        raise InputError(f"cannot list the directory: {type(exc).__name__}: {exc}", source=str(p)) from exc


@dataclass(frozen=True)
class Resolved:
    """What a spec names: its reader and the path(s) to give it.

    ``kind``: ``"alias"`` (``target`` is ``Path(alias)``), ``"file"``, ``"directory"``
    or ``"glob"`` (``target`` is the sorted list of matching files)."""

    spec: str
    reader: ReaderSpec
    target: Any
    kind: str


def resolve(spec: str | os.PathLike, format: str | None = None) -> Resolved:
    """The reader and target of ``spec``: an alias, an existing file or directory, or
    a glob pattern (when no such path exists) whose matching files all have the same
    reader — one that accepts directories, since it is given the list of files.

    ``format``: the name of the reader to use (:func:`reader_named`) instead of the
    one ``identify`` would choose (``--format``).

    Raises :class:`InputError` naming the spec when nothing exists or matches, the
    matches need different readers, or the reader reads single files only (or
    :class:`~kielnet.errors.UsageError` for an unknown ``format``)."""
    forced = None if format is None else reader_named(format)
    text = str(spec)
    for reader in registered_readers():
        if text in reader.aliases and forced in (None, reader):
            return Resolved(text, reader, Path(text), "alias")
    p = Path(spec)
    if not p.exists() and glob.has_magic(text):
        files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
        if not files:
            raise InputError("no file matches the pattern", source=text)
        if forced is None:
            readers = {}
            for f in files:
                readers.setdefault(get_reader(f).name, f)
            if len(readers) > 1:
                shown = ", ".join(f"{f.name}: {name}" for name, f in readers.items())
                raise InputError(f"the files matching the pattern need different readers ({shown})", source=text)
        reader = forced or _REGISTRY[next(iter(readers))]
        if not reader.directories:
            raise InputError(f"reader '{reader.name}' reads single files, not a list of files: name one "
                             "file (or a directory)", source=text)
        return Resolved(text, reader, files, "glob")
    if p.is_file():
        from kielnet.io.paths import check_readable

        check_readable(p)  # a missing, unreadable or empty file is named as such first
    if forced is None:
        reader = get_reader(p)
    elif not p.exists():
        raise InputError("file does not exist", source=text)
    elif p.is_dir() and not forced.directories:
        raise InputError(f"reader '{forced.name}' reads single files, not a directory: name one file",
                         source=text)
    else:
        reader = forced
    return Resolved(text, reader, p, "directory" if p.is_dir() else "file")


def files_of(target: Any) -> list[Path]:
    """The files a target stands for: a file, every file under a directory (sorted,
    recursively, hidden and ``_``-prefixed names skipped), or a list of files."""
    if isinstance(target, (list, tuple)):
        return [Path(t) for t in target]
    p = Path(target)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p)))
    return [p]


def _hidden(rel: Path) -> bool:
    return any(part.startswith((".", "_")) for part in rel.parts)


# ------------------------------------------------------------------ errors while reading
def _wrapped(exc: Exception, reader: ReaderSpec, source: str) -> InputError:
    err = InputError(f"cannot read as {reader.what}: {type(exc).__name__}: {exc}", source=source)
    err.__cause__ = exc
    return err


@contextlib.contextmanager
def reading(reader: ReaderSpec, source: str | os.PathLike) -> Iterator[None]:
    """Within the block, an exception that is not kielnet's own becomes an
    :class:`InputError` naming ``source`` and the reader, the original as ``__cause__``."""
    try:
        yield
    except KielnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reader bug or library error on a bad file
        raise _wrapped(exc, reader, str(source)) from exc


def guarded(pieces: Iterator[Any], reader: ReaderSpec, source: str) -> Iterator[Any]:
    """``pieces`` with :func:`reading`'s translation of foreign exceptions (for generators)."""
    with reading(reader, source):
        yield from pieces


# ------------------------------------------------------------------ cheap column sniffing
_TEXT_TABLE = (".csv", ".csv.gz", ".ecsv", ".ecsv.gz")
_FITS = (".fits", ".fit", ".fits.gz", ".fit.gz")
_VOTABLE = (".vot", ".votable", ".xml")


def column_names(path: str | os.PathLike) -> frozenset[str]:
    """Lower-case column names of a CSV / ECSV / FITS / VOTable file, read cheaply (the
    header line, the FITS table header, the VOTable FIELDs); empty if unknown."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return frozenset()
    return _column_names(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _column_names(path: str, size: int, mtime: int) -> frozenset[str]:
    import csv
    import gzip

    name = path.lower()
    try:
        if name.endswith(_TEXT_TABLE):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding=TEXT_ENCODING, errors="replace") as fh:
                for line in fh:
                    if line.strip() and not line.startswith("#"):
                        if name.endswith((".ecsv", ".ecsv.gz")) and "," not in line:
                            cells = line.split()
                        else:
                            cells = next(csv.reader([line]))
                        return frozenset(c.strip().strip('"').lower() for c in cells)
            return frozenset()
        if name.endswith(_FITS):
            from astropy.io import fits

            with fits.open(path) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                        return frozenset(c.lower() for c in hdu.columns.names)
            return frozenset()
        if name.endswith(_VOTABLE):
            with open(path, "rb") as fh:
                head = fh.read(1 << 16).decode("utf-8", "replace")
            return frozenset(m.lower() for m in re.findall(r"<FIELD\b[^>]*\bname=\"([^\"]+)\"", head))
    except Exception:  # noqa: BLE001 - unreadable: the reader reports it with its own error
        return frozenset()
    return frozenset()


def read_stars(spec: str | Path, *, format: str | None = None) -> StarTable:
    """Read stars from ``spec``: ``"xp-library"`` (the embedded library), an XP-library
    ``.npz`` subset, APOGEE apStar files (a file named ``apStar*`` or a directory of
    them, see :mod:`kielnet.io.apstar`), Gaia DR3 RVS mean spectra in the archive's
    datalink form (a file or a directory of them, :mod:`kielnet.io.gaia_rvs`), Gaia
    XP continuous coefficients (:mod:`kielnet.io.gaia_xp`), or a FITS / Parquet / CSV /
    ECSV table or a directory of Parquet files (see :mod:`kielnet.io.tables`); or any
    format registered with :func:`register_reader`. CSV and FITS files are recognised
    by their column names. A glob pattern (``dir/apStar-*.fits``) reads the matching
    files of one reader that accepts directories.

    The reader is the registry's choice (:func:`get_reader`, see
    :mod:`kielnet.io.registry` for the rules), or the reader named ``format``
    (``--format``; :func:`reader_named`); :func:`open_stars` streams the same stars in
    batches.

    Raises
    ------
    InputError
        For anything wrong with the input, naming the file: a path that does not
        exist, a directory without readable files, an empty or unreadable file, a
        format no reader recognises, and every failure inside a reader — an error
        that is not kielnet's own becomes ``cannot read as <reader>: <type>:
        <message>`` with the original as ``__cause__``.
    UsageError
        For a ``format`` no reader is registered under (the message lists them).
    """
    resolved = resolve(spec, format)
    source = resolved.spec if resolved.kind == "glob" else str(resolved.target)
    with reading(resolved.reader, source):
        return resolved.reader.read(resolved.target)
