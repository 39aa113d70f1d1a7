"""Generic star tables in FITS, Parquet, CSV/ECSV (astropy + pyarrow) ↔ :class:`StarTable`.

Column conventions (override any with :class:`ColumnMap`):

* id: the first of ``id``, ``source_id``, ``apogee_id``, ``star_id`` that exists;
* spectrum: an array column ``flux`` (and ``flux_err`` / ``flux_error``); in CSV,
  where cells hold scalars, columns ``flux_0 … flux_{N-1}`` (and ``flux_err_0 …``);
* wavelength: table metadata ``wavelength_nm`` (a list), or argument ``wavelength``;
* labels: columns named like a label (``teff``, ``logg``, ``fe_h``, ``m_h``,
  ``alpha_m``) with errors in ``<label>_err``;
* scalars: every other numeric 1-D column (magnitudes in mag, parallax in mas, …);
  a text column whose every non-empty cell is a number (``"12.3"``) counts as
  numeric. A text column with a cell that is not a number (``"abc"``) is not a
  scalar: it is recorded in ``meta["non_numeric_columns"]`` as ``{name: (row,
  text)}`` (first such cell), so that :meth:`StarTable.require` can say why a
  required input is unusable.

Masked cells (FITS TNULL, Parquet nulls, empty CSV cells) become NaN and are
reported by :meth:`StarTable.missing_report`; nothing is dropped. A null spectrum
cell (Parquet) becomes an all-NaN spectrum (flagged ``bad_spectrum`` downstream)
and a null pixel inside a spectrum a NaN pixel. Every other bad cell is an
:class:`~kielnet.errors.InputError` naming the file, the column and the row (and
star): text that is not UTF-8, a label / error / spectrum cell that is not a
number, an empty id, list cells of different lengths. A truncated or corrupt
file is an error naming the file.

Streaming: :func:`table_to_startable` is :func:`column_plan` (which column becomes
which field) followed by :func:`build_startable`. :mod:`kielnet.io.sources` makes
the :class:`ColumnPlan` once from a summary of the whole file and applies it to each
batch of rows (:func:`arrow_to_table` converts a Parquet batch), so that a batch
converts exactly like the same rows of the whole file.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import astropy.units as u
import numpy as np
from astropy.table import Table

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.labels import DEFAULT_TABLE_LABELS
from kielnet.io.atomic import atomic_path
from kielnet.io.checks import (as_floats, as_text, check_csv_complete, parse_floats, read_error_message,
                               truncation_as_error)
from kielnet.io.paths import TEXT_ENCODING, check_readable
from kielnet.io.writers import get_writer, register_writer

__all__ = ["ColumnMap", "read_table", "write_table", "table_to_startable", "startable_to_table",
           "KNOWN_LABELS", "atomic_write_table", "read_catalogue", "ColumnPlan", "column_plan",
           "build_startable", "arrow_to_table", "TABLE_SUFFIXES", "table_format", "fits_table_rows",
           "astropy_parquet_metadata", "read_reference_columns"]

KNOWN_LABELS = DEFAULT_TABLE_LABELS  # (kept name) columns read as labels without a config
_ID_CANDIDATES = ("id", "source_id", "apogee_id", "star_id")
_FORMATS = {".fits": "fits", ".fit": "fits", ".fz": "fits", ".parquet": "parquet", ".pq": "parquet",
            ".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}


@dataclass
class ColumnMap:
    """Explicit mapping from file columns to star-table fields (``None`` = convention)."""

    id: str | None = None
    flux: str | None = None
    flux_err: str | None = None
    scalars: dict[str, str] | None = None  # star-table name -> file column
    labels: dict[str, str] | None = None
    label_errs: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)


#: Suffixes of the table formats :func:`read_table` reads (optionally followed by ``.gz``).
TABLE_SUFFIXES = tuple(_FORMATS)


def table_format(path: str | Path) -> str | None:
    """The astropy format name of a table file from its suffix (``"parquet"``, ``"fits"``,
    ``"ascii.csv"``, ``"ascii.ecsv"``), or ``None`` for another suffix."""
    try:
        return _format_of(Path(path))
    except InputError:
        return None


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in _FORMATS:
        raise InputError(f"unknown table format '{''.join(path.suffixes)}'; use one of "
                         f"{sorted(_FORMATS)} (optionally .gz for FITS/CSV)", source=str(path))
    return _FORMATS[suffixes[-1]]


def _filled(col, source: str, name: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Column values as float with masked / empty cells → NaN; a cell that is not a
    number is an :class:`InputError` naming the row (and star, with ``ids``)."""
    return as_floats(col, source=source, field=name, ids=ids)


def fits_table_rows(path: str | Path) -> int | None:
    """Rows (NAXIS2) of the first table HDU of a FITS file (plain or gzipped), read
    from the headers alone — the data are skipped, not read — or ``None`` when the
    headers cannot be read or the file holds no table (its reader says why)."""
    import gzip

    from astropy.io import fits

    path = Path(path)
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            for _ in range(1000):
                header = fits.Header.fromfile(fh)
                if header.get("XTENSION", "").strip() in ("BINTABLE", "TABLE"):
                    return int(header["NAXIS2"])
                naxis = int(header.get("NAXIS", 0))
                size = int(np.prod([int(header[f"NAXIS{i}"]) for i in range(1, naxis + 1)])) if naxis else 0
                size = abs(int(header.get("BITPIX", 8))) // 8 * int(header.get("GCOUNT", 1)) * (
                    int(header.get("PCOUNT", 0)) + size)
                fh.seek(-(-size // 2880) * 2880, 1)
    except Exception:  # noqa: BLE001 - unknown; reading the file reports the problem
        return None
    return None


def _read_astropy(path: Path, fmt: str, source: str) -> Table:
    """FITS / CSV / ECSV via astropy. FITS data are read into memory here (no memmap),
    so a truncated file fails inside this call; a CSV cut off inside its last line is
    an error too (astropy would read the missing cells as empty)."""
    if fmt == "fits":
        return _read_fits(path, source)
    try:
        tab = Table.read(path, format=fmt, encoding=TEXT_ENCODING)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
        raise InputError(read_error_message(path, fmt, exc), source=source) from exc
    if fmt == "ascii.csv":
        check_csv_complete(path, source, len(tab))
    return tab


def _read_fits(path: Path, source: str) -> Table:
    """The first table HDU of a FITS file, its data read into memory inside the ``try``."""
    from astropy.io import fits

    try:
        with truncation_as_error(), fits.open(path, memmap=False) as hdul:
            hdus = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
            if not hdus:
                raise InputError(f"cannot read as fits: the file holds no table HDU (it has "
                                 f"{len(hdul)} HDU(s))", source=source)
            return Table.read(hdus[0])
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
        raise InputError(f"cannot read as fits: file is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})", source=source) from exc


def read_table(path: str | Path, columns: ColumnMap | None = None, *,
               wavelength: u.Quantity | None = None) -> StarTable:
    """Read a FITS / Parquet / CSV / ECSV table into a :class:`StarTable`.

    Raises :class:`InputError` naming the file (and column, and row / star where the
    problem is one cell) for missing, empty, unreadable, truncated or corrupt files,
    a table without rows, text that is not UTF-8, an empty id, a label / spectrum
    cell that is not a number and Parquet list cells of different lengths. Null
    spectra and null pixels are kept as NaN; text columns that are not numbers are
    recorded in ``meta["non_numeric_columns"]`` (see the module docstring).
    """
    path = Path(path)
    source = check_readable(path)
    fmt = _format_of(path)
    if fmt == "parquet":
        try:
            tab = _read_parquet(path, id_column=None if columns is None else columns.id)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
            raise InputError(f"cannot read as parquet: {type(exc).__name__}: {exc}",
                             source=source) from exc
    else:
        tab = _read_astropy(path, fmt, source)
    if len(tab) == 0:
        raise InputError("table has no rows", source=source)
    return table_to_startable(tab, columns, wavelength=wavelength, source=source)


def table_to_startable(tab: Table, columns: ColumnMap | None = None, *,
                       wavelength: u.Quantity | None = None, source: str = "<memory>") -> StarTable:
    """Convert an astropy :class:`~astropy.table.Table` with the conventions above."""
    parsed: dict[str, np.ndarray] = {}

    def numeric(c: str) -> tuple[int | None, str | None]:
        values, bad_row, bad_value = parse_floats(tab[c])
        parsed[c] = values
        return bad_row, bad_value

    plan = column_plan(list(tab.colnames), tab.meta, columns, source=source,
                       ndim=lambda c: np.asarray(tab[c]).ndim,
                       kind=lambda c: np.asarray(tab[c]).dtype.kind, numeric=numeric)
    return build_startable(tab, plan, wavelength=wavelength, source=source, parsed=parsed)


@dataclass
class ColumnPlan:
    """Which column of a file becomes which star-table field, decided once per file.

    :func:`table_to_startable` makes the plan from the table it converts. A streamed
    reader (:mod:`kielnet.io.sources`) makes it once from a summary of the *whole*
    file — the column types, which text columns hold only numbers, which integer
    pass-through columns have empty cells — and applies it to every batch, so that
    each batch converts exactly like the same rows of the whole file would.
    """

    id_col: str
    flux_col: str | None = None        #: a 2-D array column
    err_col: str | None = None
    pix: list[str] = field(default_factory=list)    #: flux_0 … (CSV)
    epix: list[str] = field(default_factory=list)   #: flux_err_0 …
    flux_field: str = "flux"           #: field named when no star has a finite flux value
    labels: dict[str, str] = field(default_factory=dict)       #: label -> column
    label_errs: dict[str, str] = field(default_factory=dict)   #: label -> column
    extra: dict[str, str] = field(default_factory=dict)        #: extra name -> column
    scalars: dict[str, str] = field(default_factory=dict)      #: scalar name -> column
    strict_scalars: bool = False       #: named in a ColumnMap: a cell that is not a number is an error
    non_numeric: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: extra name -> "float" / "text": how an integer column with empty cells somewhere
    #: in the file is carried (see :func:`_pass_through`); absent: decided by the data
    masked_ints: dict[str, str] = field(default_factory=dict)

    def columns_used(self) -> set[str]:
        """Every file column the plan reads."""
        used = {self.id_col, *self.pix, *self.epix, *self.labels.values(), *self.label_errs.values(),
                *self.extra.values(), *self.scalars.values()}
        return used | {c for c in (self.flux_col, self.err_col) if c is not None}


def column_plan(names: list[str], meta: dict, columns: ColumnMap | None, *, source: str,
                ndim: Callable[[str], int], kind: Callable[[str], str],
                numeric: Callable[[str], tuple[int | None, str | None]]) -> ColumnPlan:
    """The :class:`ColumnPlan` of a table with columns ``names`` and metadata ``meta``.

    ``ndim(c)`` and ``kind(c)`` give a column's number of dimensions and numpy dtype
    kind; ``numeric(c)`` gives, for a candidate scalar column, the row and text of its
    first cell that is not a number in the whole file (``(None, None)`` if all are;
    see :func:`~kielnet.io.checks.parse_floats`). Raises :class:`InputError` for a
    missing id column or a column named in ``columns`` that is absent.
    """
    cm = columns or ColumnMap()
    roles_json = meta.get("kielnet_roles") if columns is None else None
    if roles_json:  # written by kielnet: column roles are recorded, use them
        roles = json.loads(roles_json) if isinstance(roles_json, str) else dict(roles_json)
        present = [c for c in roles if c in names]
        cm = ColumnMap(labels={c: c for c in present if roles[c] == "label"},
                       scalars={c: c for c in present if roles[c] == "scalar"},
                       extra=[c for c in present if roles[c] == "extra"])
    lower = {n.lower(): n for n in names}

    def pick(explicit: str | None, candidates: tuple[str, ...], what: str, required: bool) -> str | None:
        if explicit is not None:
            if explicit not in names:
                raise InputError(f"{what} column '{explicit}' is missing; columns: {names}",
                                 source=source, field=explicit)
            return explicit
        for c in candidates:
            if c in lower:
                return lower[c]
        if required:
            raise InputError(f"no {what} column (tried {list(candidates)}); columns: {names}",
                             source=source, field=candidates[0])
        return None

    plan = ColumnPlan(id_col=pick(cm.id, _ID_CANDIDATES, "id", True))
    used = {plan.id_col}
    flux_col = pick(cm.flux, ("flux",), "flux", False)
    plan.flux_field = flux_col or "flux"
    if flux_col is not None and ndim(flux_col) == 2:
        plan.flux_col = flux_col
        used.add(flux_col)
        plan.err_col = pick(cm.flux_err, ("flux_err", "flux_error"), "flux error", False)
        if plan.err_col is not None:
            used.add(plan.err_col)
    else:
        plan.pix = sorted((c for c in names if re.fullmatch(r"flux_\d+", c)), key=lambda c: int(c[5:]))
        used.update(plan.pix)
        epix = [f"flux_err_{c[5:]}" for c in plan.pix]
        if plan.pix and all(c in names for c in epix):
            plan.epix = epix
            used.update(epix)
    if cm.labels is not None:
        label_cols = dict(cm.labels)
    else:
        label_cols = {lab: lower[lab] for lab in KNOWN_LABELS if lab in lower}
    for lab, col in label_cols.items():
        if col not in names:
            raise InputError(f"label column '{col}' is missing", source=source, field=col)
        used.add(col)
    plan.labels = label_cols
    for lab, col in label_cols.items():
        ecol = cm.label_errs.get(lab) or lower.get(f"{col.lower()}_err")
        if ecol is not None and ecol in names:
            plan.label_errs[lab] = ecol
            used.add(ecol)
    plan.extra = {c: c for c in cm.extra}
    used.update(cm.extra)
    if "source_id" in lower and lower["source_id"] != plan.id_col and "source_id" not in plan.extra:
        plan.extra["source_id"] = lower["source_id"]
        used.add(lower["source_id"])
    if cm.scalars is not None:
        for k, c in cm.scalars.items():
            if c not in names:
                raise InputError(f"scalar column '{c}' is missing; columns: {names}", source=source, field=c)
        plan.scalars = dict(cm.scalars)
        plan.strict_scalars = True
    else:
        for c in names:
            if c in used or ndim(c) != 1 or kind(c) == "b":
                continue
            bad_row, bad_value = numeric(c)
            if bad_row is None:
                plan.scalars[c] = c  # numbers, or text that holds only numbers
            else:
                plan.non_numeric[c] = (bad_row, bad_value)
    return plan


def build_startable(tab: Table, plan: ColumnPlan, *, wavelength: u.Quantity | None = None,
                    source: str = "<memory>", check_flux: bool = True,
                    parsed: dict[str, np.ndarray] | None = None) -> StarTable:
    """Apply a :class:`ColumnPlan` to ``tab`` (the whole file, or a batch of its rows).

    ``check_flux``: refuse a table in which no star has a finite flux value (off for
    batches: one batch of stars without spectra says nothing about the file).
    ``parsed``: scalar columns already parsed by :func:`parse_floats` (reused).
    """
    parsed = parsed or {}
    ids = _ids(tab[plan.id_col], source, plan.id_col)
    flux = flux_err = None
    if plan.flux_col is not None:
        flux = _filled(tab[plan.flux_col], source, plan.flux_col, ids)
        if plan.err_col is not None:
            flux_err = _filled(tab[plan.err_col], source, plan.err_col, ids)
    elif plan.pix:
        flux = np.stack([_filled(tab[c], source, c, ids) for c in plan.pix], axis=1)
        if plan.epix:
            flux_err = np.stack([_filled(tab[c], source, c, ids) for c in plan.epix], axis=1)
    if flux is not None and check_flux:
        bad_rows = np.flatnonzero(~np.isfinite(flux).any(axis=1))
        # rows with no finite pixel are kept (flagged downstream), never dropped
        if len(bad_rows) == len(flux):
            raise InputError("no star has a single finite flux value", source=source, field=plan.flux_field)
    wl = wavelength
    if wl is None and "wavelength_nm" in tab.meta:
        wl = np.asarray(tab.meta["wavelength_nm"], dtype=float) * u.nm
    labels = {lab: _filled(tab[col], source, col, ids) for lab, col in plan.labels.items()}
    errs = {lab: _filled(tab[col], source, col, ids) for lab, col in plan.label_errs.items()}
    extra = {k: _pass_through(tab[c], source, c, ids, masked_ints=plan.masked_ints.get(k))
             for k, c in plan.extra.items()}
    scalars = {}
    for k, c in plan.scalars.items():
        if plan.strict_scalars:
            scalars[k] = _filled(tab[c], source, c, ids)
        elif c in parsed:
            scalars[k] = parsed[c]
        else:
            values, bad_row, bad_value = parse_floats(tab[c])
            if bad_row is not None:  # only if the file changed since its plan was made
                raise InputError(f"column is not numeric (row {bad_row} holds {bad_value!r}) although it "
                                 "held only numbers when the file was opened", source=source, field=c,
                                 row=bad_row)
            scalars[k] = values
    meta = {"source": source, "loader": "table"}
    if plan.non_numeric:
        meta["non_numeric_columns"] = dict(plan.non_numeric)
    return StarTable(ids=ids, flux=flux, flux_err=flux_err, wavelength=wl, scalars=scalars, labels=labels,
                     label_errs=errs, extra=extra, meta=meta)


def _ids(col, source: str, name: str) -> np.ndarray:
    """Star ids as stripped text; an id that is not UTF-8, masked or empty is an error
    naming its row (an id cannot be kept as NaN). Ids stored as floating-point numbers
    beyond 2^53 get a warning (:func:`_warn_float_ids`)."""
    ids = np.char.strip(as_text(col, source=source, field=name))
    empty = np.ma.getmaskarray(col) | (ids == "")
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise InputError(f"id is empty ({int(empty.sum())} empty id(s) in all)",
                         source=source, field=name, row=row)
    _warn_float_ids(col, ids, source, name)
    return ids


def _warn_float_ids(col, ids: np.ndarray, source: str, name: str) -> None:
    """Warn when ids were written as floating-point numbers larger than 2^53 (a Gaia
    ``source_id`` saved by a spreadsheet as ``5.853498713190526e+18``): their last digits
    are gone, so they match no integer id of another file (a ``--metadata`` join finds
    nothing). The rows are kept; their ids are the text of the numbers."""
    data = np.ma.getdata(col)
    if np.asarray(data).dtype.kind != "f":
        return
    with np.errstate(invalid="ignore"):
        big = np.abs(np.asarray(data, dtype=np.float64).ravel()) >= _EXACT_INT
    if big.any():
        row = int(np.flatnonzero(big)[0])
        warnings.warn(f"{source}: id column '{name}' holds floating-point numbers above 2^53 ({int(big.sum())} "
                      f"of {len(ids)}, e.g. row {row}: {str(ids[row])!r}): their last digits are lost, so they do "
                      "not match integer ids (e.g. Gaia source_id) in other files; write the ids as integers",
                      UserWarning, stacklevel=3)


#: Integers up to this magnitude are exact in float64.
_EXACT_INT = 2 ** 53


def _pass_through(col, source: str, name: str, ids: np.ndarray, masked_ints: str | None = None) -> np.ndarray:
    """A column carried unchanged into ``extra``: text decoded (UTF-8; masked → ``""``),
    masked floats → NaN, anything else as stored.

    Integers with masked cells (FITS TNULL, empty CSV cells, Parquet nulls) cannot
    hold NaN and their stored fill value would be a silent fake id: they become float64
    with NaN when every value is exact in float64 (``|v| ≤ 2**53``), else text with
    ``""`` for the empty cells, so that large ids (Gaia ``source_id``) keep every digit.

    ``masked_ints`` (``"float"`` or ``"text"``) imposes that choice, made for the
    whole file, on a batch of its rows that may have no empty cell itself.
    """
    arr = np.asarray(np.ma.getdata(col))
    if arr.dtype.kind in "SUO":
        return as_text(col, source=source, field=name, ids=ids) if arr.dtype.kind != "O" else arr
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else None
    if mask is None or not mask.any():
        if masked_ints is not None and arr.dtype.kind in "iu":
            return arr.astype(np.float64) if masked_ints == "float" else arr.astype(str)
        return arr
    if arr.dtype.kind == "f":
        return np.where(mask, np.nan, arr)
    if arr.dtype.kind in "iu":
        if masked_ints == "float" or (masked_ints is None
                                      and (np.abs(arr[~mask].astype(np.float64)) <= _EXACT_INT).all()):
            return np.where(mask, np.nan, arr.astype(np.float64))
        return np.where(mask, "", arr.astype(str))
    return arr


def masked_int_choice(has_masked: bool, max_abs: float) -> str | None:
    """How :func:`_pass_through` carries an integer column of a whole file: ``None``
    (as stored) without empty cells, else ``"float"`` if ``max_abs ≤ 2**53``, else ``"text"``."""
    if not has_masked:
        return None
    return "float" if max_abs <= _EXACT_INT else "text"


def startable_to_table(st: StarTable) -> Table:
    """Inverse of :func:`table_to_startable` (array columns for spectra)."""
    tab = Table()
    tab["id"] = st.ids
    for k, v in st.extra.items():
        tab[k] = v
    if st.flux is not None:
        tab["flux"] = st.flux
        if st.flux_err is not None:
            tab["flux_err"] = st.flux_err
    for k, v in st.scalars.items():
        tab[k] = v
    for k, v in st.labels.items():
        tab[k] = v
        if k in st.label_errs:
            tab[f"{k}_err"] = st.label_errs[k]
    if st.wavelength is not None:
        tab.meta["wavelength_nm"] = [float(x) for x in st.wavelength.to_value(u.nm)]
    roles = {k: "label" for k in st.labels}
    roles.update({k: "scalar" for k in st.scalars})
    roles.update({k: "extra" for k in st.extra})
    tab.meta["kielnet_roles"] = json.dumps(roles)
    return tab


def atomic_write_table(tab: Table, path: str | Path) -> Path:
    """Write an astropy table to ``path`` atomically, by the writer of its suffix
    (:func:`kielnet.io.writers.get_writer`: Parquet, FITS, CSV, ECSV or any
    registered one).

    The table is written to a temporary file in the same directory and renamed into
    place, so a reader never sees a half-written file.
    """
    path = Path(path)
    writer = get_writer(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer.write(tab, tmp)
    return path


#: units a FITS header cannot carry (FITS standard §4.3): written without TUNITn, the unit
#: named in TCOMMn instead (``"[dex] <description>"``) and restored by :func:`read_catalogue`
_NON_FITS_UNITS = ("dex",)
_TCOMM_UNIT = re.compile(r"^\[(?P<unit>[^\]]+)\](\s|$)")


def _write_fits(tab: Table, path: Path) -> None:
    """FITS binary table that opens without warnings in astropy, TOPCAT and fitsio.

    Units FITS can express go into TUNITn; ``dex`` (not a FITS unit) is left out of
    TUNITn and stated in TCOMMn (``"[dex] description"``, the HEASARC column-comment
    convention TOPCAT shows as the column description). Descriptions also go into
    TCOMMn (up to 68 characters) and, in full, into astropy's serialized column
    metadata (so :meth:`astropy.table.Table.read` restores them).
    """
    from astropy.io import fits

    tab = tab.copy(copy_data=False)
    odd = {}
    for name in tab.colnames:
        unit = tab[name].unit
        if unit is not None and unit.to_string(format="generic") in _NON_FITS_UNITS:
            odd[name] = unit.to_string(format="generic")
            tab[name].unit = None
    with warnings.catch_warnings():  # long metadata keys (kielnet_roles) become HIERARCH cards, as intended
        warnings.filterwarnings("ignore", message=".*HIERARCH card will be created", category=fits.verify.VerifyWarning)
        tab.write(path, format="fits", overwrite=True)  # astropy's writer: descriptions in its YAML comments
    with fits.open(path, mode="update") as hdul:
        header = hdul[1].header
        for i, name in enumerate(tab.colnames, start=1):
            desc = getattr(tab[name], "description", None) or ""
            text = ((f"[{odd[name]}] " if name in odd else "") + str(desc)).strip()
            if text:
                header.set(f"TCOMM{i}", text[:68], after=f"TTYPE{i}")
            if desc:
                header.comments[f"TTYPE{i}"] = str(desc)[:47]


def _plain_meta(meta: dict) -> dict:
    """Table metadata as plain JSON types (what YAML and JSON both can hold)."""
    return json.loads(json.dumps(dict(meta), default=str))


def astropy_parquet_metadata(tab: Table, str_lengths: dict[str, int] | None = None) -> dict[bytes, bytes]:
    """The schema metadata astropy's own Parquet reader (:func:`astropy.io.misc.parquet.read_table_parquet`,
    i.e. ``Table.read(path)``) uses: ``table_meta_yaml`` (column dtypes, units, descriptions and the
    table metadata, as astropy's writer makes it) and ``table::len::NAME`` for each text column
    (its longest value in characters: ``str_lengths`` or measured in ``tab``); without the
    latter astropy warns on every text column."""
    from astropy.table import meta as table_meta

    plain = Table(tab, copy=False)
    plain.meta = _plain_meta(tab.meta)
    yaml = "\n".join(table_meta.get_yaml_from_table(plain))
    md = {b"table_meta_yaml": yaml.encode()}
    for name in tab.colnames:
        kind = np.asarray(tab[name]).dtype.kind
        if kind in "US":
            if str_lengths is not None and name in str_lengths:
                n = int(str_lengths[name])
            else:
                data = np.asarray(tab[name]).astype(str)
                n = int(np.char.str_len(data).max()) if data.size else 0
            md[f"table::len::{name}".encode()] = str(max(n, 1)).encode()
    return md


def _write_parquet(tab: Table, path: Path) -> None:
    """Parquet via pyarrow (array columns as fixed-size lists); units, descriptions and
    table metadata are kept in the schema metadata as JSON (``kielnet_columns``,
    ``kielnet_meta``) and as astropy's own YAML header (:func:`astropy_parquet_metadata`),
    so ``Table.read(path)`` restores them too (astropy's Parquet reader needs pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays, fields = [], []
    colmeta = {}
    for name in tab.colnames:
        col = tab[name]
        data = np.asarray(col)
        # columns read from FITS are big-endian, which pyarrow refuses: use native order
        if data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        # masked cells (e.g. pass-through columns read from FITS/CSV) become Parquet nulls
        mask = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) and np.ma.is_masked(col) else None
        if data.ndim == 2:
            arr = pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), data.shape[1])
        elif data.dtype.kind in "US":
            arr = pa.array(data.astype(str).tolist(), type=pa.string())
        else:
            arr = pa.array(data, mask=mask)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
        colmeta[name] = {"unit": None if col.unit is None else col.unit.to_string(),
                         "description": getattr(col, "description", None)}
    meta = {b"kielnet_columns": json.dumps(colmeta).encode(),
            b"kielnet_meta": json.dumps(dict(tab.meta), default=str).encode(),
            **astropy_parquet_metadata(tab)}
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta)), path)


def _read_parquet(path: Path, id_column: str | None = None) -> Table:
    """Read Parquet with pyarrow into an astropy table (inverse of :func:`_write_parquet`).

    List columns become 2-D float arrays (see :func:`_list_values`); null cells of
    numeric columns are masked (integers stay integers) and null text cells masked
    with ``""``. ``id_column`` names the star in errors about one row (default: the
    first of the conventional id columns present).
    """
    import pyarrow.parquet as pq

    pt = pq.read_table(path)
    return arrow_to_table(pt, source=str(path), id_column=id_column)


def arrow_to_table(pt, *, source: str, id_column: str | None = None, schema_metadata: dict | None = None,
                   list_widths: dict[str, tuple[int, int]] | None = None) -> Table:
    """A pyarrow Table or RecordBatch (the whole of a Parquet file, or a batch of its
    rows) as an astropy table, column by column as :func:`_read_parquet` describes.

    ``schema_metadata``: the file's schema metadata (default: ``pt``'s own); units,
    descriptions and table metadata written by kielnet are restored from it.
    ``list_widths``: per list column, ``(width, first_row)`` of the whole file's first
    non-null cell, so that a batch is checked against the file's spectrum length (and
    a batch of null cells only gets NaN rows of that width).
    """
    import pyarrow as pa

    md = pt.schema.metadata if schema_metadata is None else schema_metadata
    md = md or {}
    colmeta = json.loads(md.get(b"kielnet_columns", b"{}"))
    tab = Table()
    for i, name in enumerate(pt.schema.names):
        col = pt.column(i)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)
                or pa.types.is_large_list(col.type)):
            width = (list_widths or {}).get(name)
            values = _list_values(col, source, name, lambda: _parquet_ids(pt, id_column),
                                  width=None if width is None else width[0],
                                  first=None if width is None else width[1])
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            text = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=str)
            values = np.ma.masked_array(text, mask=np.asarray(col.is_null())) if col.null_count else text
        elif col.null_count and (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
            mask = np.asarray(col.is_null())
            values = np.ma.masked_array(col.fill_null(0 if pa.types.is_integer(col.type) else False)
                                        .to_numpy(zero_copy_only=False), mask=mask)
        else:
            mask = np.asarray(col.is_null()) if col.null_count else None
            values = col.to_numpy(zero_copy_only=False)
            if mask is not None:
                values = np.ma.masked_array(np.asarray(values, dtype=float) if values.dtype.kind in "fiu"
                                            else values, mask=mask)
        tab[name] = values
        info = colmeta.get(name, {})
        if info.get("unit"):
            tab[name].unit = u.Unit(info["unit"], parse_strict="silent")
        if info.get("description"):
            tab[name].description = info["description"]
    if b"kielnet_meta" in md:
        tab.meta.update(json.loads(md[b"kielnet_meta"]))
    return tab


def _parquet_ids(pt, id_column: str | None) -> np.ndarray | None:
    """Star ids of a pyarrow table as text (for messages), or ``None`` without an id column."""
    names = pt.schema.names
    lower = {n.lower(): n for n in names}
    name = id_column if id_column in names else next(
        (lower[c] for c in _ID_CANDIDATES if c in lower), None)
    if name is None:
        return None
    return np.asarray([str(v) for v in pt.column(name).to_pylist()])


def _list_values(col, source: str, name: str, ids: Callable[[], np.ndarray | None], *,
                 width: int | None = None, first: int | None = None) -> np.ndarray:
    """A Parquet list column (one array per row) as a ``(n_rows, width)`` float array.

    Vectorised with pyarrow: a null cell (no spectrum) becomes a row of NaN — the star
    is kept and flagged downstream — and a null value inside a cell a NaN. Cells of
    different lengths are an :class:`InputError` naming the first row whose length
    differs from the first non-null cell's, and its star (``ids()`` gives the ids, or
    ``None``); so is a column whose cells are all null or hold no numbers.

    ``width`` and ``first``: the length and row of the whole file's first non-null
    cell, when ``col`` is a batch of the file's rows (see :func:`arrow_to_table`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    present = ~np.asarray(col.is_null(), dtype=bool) if n else np.zeros(0, bool)
    value_type = col.type.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
            or pa.types.is_boolean(value_type) or pa.types.is_null(value_type)):
        raise InputError(f"list column holds {value_type} values, not numbers", source=source, field=name)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        # values under null cells are present (unspecified) in a fixed-size list: take all
        flat = col.values.slice(col.offset * width, n * width)
    else:
        lengths = np.asarray(pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False))
        if width is None:
            if n and not present.any():
                raise InputError("list column has only null cells", source=source, field=name)
            width = int(lengths[present][0]) if n else 0
            first = int(np.flatnonzero(present)[0]) if n else 0
        differs = present & (lengths != width)
        if differs.any():
            row = int(np.flatnonzero(differs)[0])
            ids_ = ids()
            raise InputError(f"list column has rows of different lengths: row {row} has "
                             f"{int(lengths[row])} values, row {first} has {width}", source=source,
                             field=name, row=row, star=None if ids_ is None else str(ids_[row]))
        flat = col.flatten()  # the values of the non-null cells only
    values = pc.fill_null(pc.cast(flat, pa.float64()), float("nan")).to_numpy(zero_copy_only=False)
    out = np.full((n, width), np.nan)
    if pa.types.is_fixed_size_list(col.type):
        out[present] = np.asarray(values, dtype=float).reshape(n, width)[present]
    else:
        out[present] = np.asarray(values, dtype=float).reshape(int(present.sum()), width)
    return out


def read_catalogue(path: str | Path) -> Table:
    """Read a catalogue (or any table) written by kielnet, keeping units."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "parquet":
        return _read_parquet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)  # 'dex' in TUNITn of files written by older kielnets
        tab = Table.read(path, format=fmt)
    for name in tab.colnames:  # FITS units outside the standard (dex) come back unrecognised
        unit = tab[name].unit
        if isinstance(unit, u.UnrecognizedUnit):
            parsed = u.Unit(unit.to_string(), parse_strict="silent")
            if not isinstance(parsed, u.UnrecognizedUnit):
                tab[name].unit = parsed
    if fmt == "fits":
        _units_from_tcomm(path, tab)
    return tab


def _units_from_tcomm(path: Path, tab: Table) -> None:
    """Units a FITS file states in TCOMMn (``"[dex] ..."``, :func:`_write_fits`) onto the columns
    that have none; the TCOMMn cards astropy left in the table metadata are removed."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            header = next(h.header for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU)))
    except Exception:  # noqa: BLE001 - the table was read; units stay as they are
        return
    for i, name in enumerate(tab.colnames, start=1):
        tab.meta.pop(f"TCOMM{i}", None)
        m = _TCOMM_UNIT.match(str(header.get(f"TCOMM{i}", "")))
        if m and tab[name].unit is None:
            parsed = u.Unit(m["unit"], parse_strict="silent")
            if not isinstance(parsed, u.UnrecognizedUnit):
                tab[name].unit = parsed


def write_table(st: StarTable, path: str | Path) -> Path:
    """Write a star table (FITS / Parquet / ECSV; CSV cannot hold spectra) atomically."""
    return atomic_write_table(startable_to_table(st), path)


def read_reference_columns(path: str | Path) -> dict[str, np.ndarray]:
    """The 1-D columns of a reference-label catalogue (FITS, Parquet, CSV/ECSV, VOTable,
    HDF5; e.g. APOGEE allStar, GALAH, a seismic catalogue) by name, masked cells as
    masked arrays — what :func:`kielnet.data.label_columns.join_labels` joins to the
    spectra. Multi-dimensional columns are left out. Errors name the file."""
    source = check_readable(path)
    try:
        tab = read_catalogue(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read the reference catalogue ({type(exc).__name__}: {exc})",
                         source=source) from exc
    out: dict[str, np.ndarray] = {}
    for n in tab.colnames:
        col = tab[n]
        if col.ndim != 1:
            continue
        data = np.asarray(np.ma.getdata(col))
        mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) or hasattr(col, "mask") else None
        if data.dtype.kind in "SU":
            data = np.char.strip(as_text(col, source=source, field=n))
        if mask is not None and mask.any():
            if data.dtype.kind == "f":
                data = np.where(mask, np.nan, data)
            elif data.dtype.kind in "iu":  # ids keep every digit as text; empty cells are ""
                data = np.where(mask, "", data.astype(str))
            else:
                data = np.where(mask, "", data.astype(str))
        out[n] = data
    return out


register_writer("parquet", suffixes=(".parquet", ".pq"), write=_write_parquet, description="Parquet")
register_writer("fits", suffixes=(".fits", ".fit", ".fz"), write=_write_fits, description="a FITS binary table")
