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
"""

from __future__ import annotations

import json
import os
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
from kielnet.io.checks import (as_floats, as_text, check_csv_complete, parse_floats, read_error_message,
                               truncation_as_error)
from kielnet.io.paths import check_readable

__all__ = ["ColumnMap", "read_table", "write_table", "table_to_startable", "startable_to_table",
           "KNOWN_LABELS", "atomic_write_table", "read_catalogue"]

KNOWN_LABELS = ("teff", "logg", "fe_h", "m_h", "alpha_m")
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


def _read_astropy(path: Path, fmt: str, source: str) -> Table:
    """FITS / CSV / ECSV via astropy. FITS data are read into memory here (no memmap),
    so a truncated file fails inside this call; a CSV cut off inside its last line is
    an error too (astropy would read the missing cells as empty)."""
    if fmt == "fits":
        return _read_fits(path, source)
    try:
        tab = Table.read(path, format=fmt)
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
    cm = columns or ColumnMap()
    names = list(tab.colnames)
    roles_json = tab.meta.get("kielnet_roles") if columns is None else None
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

    id_col = pick(cm.id, _ID_CANDIDATES, "id", True)
    ids = _ids(tab[id_col], source, id_col)
    used = {id_col}
    flux = flux_err = None
    flux_col = pick(cm.flux, ("flux",), "flux", False)
    if flux_col is not None and np.asarray(tab[flux_col]).ndim == 2:
        flux = _filled(tab[flux_col], source, flux_col, ids)
        used.add(flux_col)
        err_col = pick(cm.flux_err, ("flux_err", "flux_error"), "flux error", False)
        if err_col is not None:
            flux_err = _filled(tab[err_col], source, err_col, ids)
            used.add(err_col)
    else:
        pix = sorted((c for c in names if re.fullmatch(r"flux_\d+", c)), key=lambda c: int(c[5:]))
        if pix:
            flux = np.stack([_filled(tab[c], source, c, ids) for c in pix], axis=1)
            used.update(pix)
            epix = [f"flux_err_{c[5:]}" for c in pix]
            if all(c in names for c in epix):
                flux_err = np.stack([_filled(tab[c], source, c, ids) for c in epix], axis=1)
                used.update(epix)
    if flux is not None:
        bad_rows = np.flatnonzero(~np.isfinite(flux).any(axis=1))
        # rows with no finite pixel are kept (flagged downstream), never dropped
        if len(bad_rows) == len(flux):
            raise InputError("no star has a single finite flux value", source=source, field=flux_col or "flux")
    wl = wavelength
    if wl is None and "wavelength_nm" in tab.meta:
        wl = np.asarray(tab.meta["wavelength_nm"], dtype=float) * u.nm
    if cm.labels is not None:
        label_cols = dict(cm.labels)
    else:
        label_cols = {lab: lower[lab] for lab in KNOWN_LABELS if lab in lower}
    labels = {}
    for lab, col in label_cols.items():
        if col not in names:
            raise InputError(f"label column '{col}' is missing", source=source, field=col)
        labels[lab] = _filled(tab[col], source, col, ids)
        used.add(col)
    errs = {}
    for lab, col in label_cols.items():
        ecol = cm.label_errs.get(lab) or lower.get(f"{col.lower()}_err")
        if ecol is not None and ecol in names:
            errs[lab] = _filled(tab[ecol], source, ecol, ids)
            used.add(ecol)
    extra = {c: _pass_through(tab[c], source, c, ids) for c in cm.extra}
    used.update(cm.extra)
    if "source_id" in lower and lower["source_id"] != id_col and "source_id" not in extra:
        extra["source_id"] = _pass_through(tab[lower["source_id"]], source, lower["source_id"], ids)
        used.add(lower["source_id"])
    non_numeric: dict[str, tuple[int, str]] = {}
    if cm.scalars is not None:
        scalars = {}
        for k, c in cm.scalars.items():
            if c not in names:
                raise InputError(f"scalar column '{c}' is missing; columns: {names}", source=source, field=c)
            scalars[k] = _filled(tab[c], source, c, ids)
    else:
        scalars = {}
        for c in names:
            col = tab[c]
            kind = np.asarray(col).dtype.kind
            if c in used or np.asarray(col).ndim != 1 or kind == "b":
                continue
            values, bad_row, bad_value = parse_floats(col)
            if bad_row is None:
                scalars[c] = values  # numbers, or text that holds only numbers
            else:
                non_numeric[c] = (bad_row, bad_value)
    meta = {"source": source, "loader": "table"}
    if non_numeric:
        meta["non_numeric_columns"] = non_numeric
    return StarTable(ids=ids, flux=flux, flux_err=flux_err, wavelength=wl, scalars=scalars, labels=labels,
                     label_errs=errs, extra=extra, meta=meta)


def _ids(col, source: str, name: str) -> np.ndarray:
    """Star ids as stripped text; an id that is not UTF-8, masked or empty is an error
    naming its row (an id cannot be kept as NaN)."""
    ids = np.char.strip(as_text(col, source=source, field=name))
    empty = np.ma.getmaskarray(col) | (ids == "")
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise InputError(f"id is empty ({int(empty.sum())} empty id(s) in all)",
                         source=source, field=name, row=row)
    return ids


#: Integers up to this magnitude are exact in float64.
_EXACT_INT = 2 ** 53


def _pass_through(col, source: str, name: str, ids: np.ndarray) -> np.ndarray:
    """A column carried unchanged into ``extra``: text decoded (UTF-8; masked → ``""``),
    masked floats → NaN, anything else as stored.

    Integers with masked cells (FITS TNULL, empty CSV cells, Parquet nulls) cannot
    hold NaN and their stored fill value would be a silent fake id: they become float64
    with NaN when every value is exact in float64 (``|v| ≤ 2**53``), else text with
    ``""`` for the empty cells, so that large ids (Gaia ``source_id``) keep every digit.
    """
    arr = np.asarray(np.ma.getdata(col))
    if arr.dtype.kind in "SUO":
        return as_text(col, source=source, field=name, ids=ids) if arr.dtype.kind != "O" else arr
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else None
    if mask is None or not mask.any():
        return arr
    if arr.dtype.kind == "f":
        return np.where(mask, np.nan, arr)
    if arr.dtype.kind in "iu":
        if (np.abs(arr[~mask].astype(np.float64)) <= _EXACT_INT).all():
            return np.where(mask, np.nan, arr.astype(np.float64))
        return np.where(mask, "", arr.astype(str))
    return arr


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
    """Write an astropy table to ``path`` (format from the suffix) atomically.

    The table is written to a temporary file in the same directory and renamed into
    place, so a reader never sees a half-written file.
    """
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{''.join(path.suffixes)}")
    try:
        if fmt == "parquet":
            _write_parquet(tab, tmp)
        elif fmt == "fits":
            _write_fits(tab, tmp)
        else:
            tab.write(tmp, format=fmt, overwrite=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_fits(tab: Table, path: Path) -> None:
    """FITS binary table; units FITS cannot express natively (dex) go into TUNITn as text."""
    from astropy.io import fits

    tab = tab.copy(copy_data=False)
    odd = {}
    for name in tab.colnames:
        unit = tab[name].unit
        if unit is not None and unit.to_string(format="generic") == "dex":
            odd[name] = "dex"
            tab[name].unit = None
    hdu = fits.table_to_hdu(tab)
    for i, name in enumerate(tab.colnames, start=1):
        if name in odd:
            hdu.header[f"TUNIT{i}"] = odd[name]
        desc = getattr(tab[name], "description", None)
        if desc:
            hdu.header.comments[f"TTYPE{i}"] = str(desc)[:47]
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def _write_parquet(tab: Table, path: Path) -> None:
    """Parquet via pyarrow (array columns as fixed-size lists); units, descriptions and
    table metadata are kept in the schema metadata as JSON."""
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
            b"kielnet_meta": json.dumps(dict(tab.meta), default=str).encode()}
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta)), path)


def _read_parquet(path: Path, id_column: str | None = None) -> Table:
    """Read Parquet with pyarrow into an astropy table (inverse of :func:`_write_parquet`).

    List columns become 2-D float arrays (see :func:`_list_values`); null cells of
    numeric columns are masked (integers stay integers) and null text cells masked
    with ``""``. ``id_column`` names the star in errors about one row (default: the
    first of the conventional id columns present).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    pt = pq.read_table(path)
    md = pt.schema.metadata or {}
    colmeta = json.loads(md.get(b"kielnet_columns", b"{}"))
    tab = Table()
    for name in pt.column_names:
        col = pt.column(name).combine_chunks()
        if (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)
                or pa.types.is_large_list(col.type)):
            values = _list_values(col, source, name, lambda: _parquet_ids(pt, id_column))
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
    lower = {n.lower(): n for n in pt.column_names}
    name = id_column if id_column in pt.column_names else next(
        (lower[c] for c in _ID_CANDIDATES if c in lower), None)
    if name is None:
        return None
    return np.asarray([str(v) for v in pt.column(name).to_pylist()])


def _list_values(col, source: str, name: str, ids: Callable[[], np.ndarray | None]) -> np.ndarray:
    """A Parquet list column (one array per row) as a ``(n_rows, width)`` float array.

    Vectorised with pyarrow: a null cell (no spectrum) becomes a row of NaN — the star
    is kept and flagged downstream — and a null value inside a cell a NaN. Cells of
    different lengths are an :class:`InputError` naming the first row whose length
    differs from the first non-null cell's, and its star (``ids()`` gives the ids, or
    ``None``); so is a column whose cells are all null or hold no numbers.
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
        if n and not present.any():
            raise InputError("list column has only null cells", source=source, field=name)
        width = int(lengths[present][0]) if n else 0
        differs = present & (lengths != width)
        if differs.any():
            row = int(np.flatnonzero(differs)[0])
            first = int(np.flatnonzero(present)[0])
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
        warnings.simplefilter("ignore", u.UnitsWarning)  # 'dex' is not a FITS-standard unit
        tab = Table.read(path, format=fmt)
    for name in tab.colnames:  # FITS units outside the standard (dex) come back unrecognised
        unit = tab[name].unit
        if isinstance(unit, u.UnrecognizedUnit):
            parsed = u.Unit(unit.to_string(), parse_strict="silent")
            if not isinstance(parsed, u.UnrecognizedUnit):
                tab[name].unit = parsed
    return tab


def write_table(st: StarTable, path: str | Path) -> Path:
    """Write a star table (FITS / Parquet / ECSV; CSV cannot hold spectra) atomically."""
    return atomic_write_table(startable_to_table(st), path)
