"""Reader for Gaia DR3 RVS mean spectra in the archive's forms → :class:`StarTable`.

Gaia DR3 publishes ~1 million time-averaged, normalised, rest-frame RVS spectra
(Seabroke et al. 2022): 2,401 pixels, 846–870 nm in 0.01 nm steps, flux normalised
to the pseudo-continuum (dimensionless). The archive's datalink service writes them

* in *long* form — one row per pixel, columns ``source_id, solution_id, ra, dec,
  wavelength, flux, flux_error, combined_transits, combined_ccds, deblended_ccds``,
  one or many stars per file — as CSV, ECSV, FITS or VOTable; empty CSV cells
  (masked / NaN values elsewhere) mark pixels without data, usually at the edges;
* or, in user tables, in *wide* form — one row per star with array columns ``flux``
  and ``flux_error`` (2,401 values; ``(…)`` / ``[…]`` strings are accepted in CSV)
  and optionally an array column ``wavelength``.

Formats are chosen by suffix: ``.csv``, ``.ecsv``, ``.fits``/``.fit`` (optionally
``.gz``), ``.vot``/``.votable``/``.xml``.

Star-table fields (units) built by :func:`read_rvs_spectra`:

* ids: ``source_id`` as a string; extra ``source_id`` (int64);
* spectrum: flux and flux error (dimensionless, normalised) on the common grid
  :data:`RVS_WAVELENGTH_NM` as an astropy Quantity in nm. The wavelength column is
  taken in nm unless it carries a unit; a star is usable when it has exactly 2,401
  pixels on that grid (to 0.001 nm), see *Stars with unusable data* below;
* extra: per-star columns of the long form present in every file read
  (``solution_id``, ``ra``, ``dec`` in deg, ``combined_transits``, ``combined_ccds``,
  ``deblended_ccds``), ``file`` (basename) and ``n_filled_pixels``;
* scalars and labels: none.

NaN flux pixels are filled as in the Gaia-RVS hybrid CNN paper (§2.1): by the upper
quartile (Q3, numpy's linear-interpolation 75th percentile) of the star's finite flux
in the three continuum windows :data:`RVS_Q3_WINDOWS_NM` (8475–8495, 8561–8582 and
8627–8648 Å, pooled, limits inclusive). ``n_filled_pixels`` counts the filled pixels.
Their ``flux_err`` stays NaN (no measurement), so they remain identifiable; a star
without any finite flux in the windows is left unfilled (NaN, reported by
:meth:`StarTable.missing_report`).

Stars with unusable data. Nothing is silently dropped: when a file's structure is
intact but one star's data cannot be used — the wrong pixel count or a wavelength grid
other than the DR3 grid (long form); an empty, unparseable (``"(1.0, abc, …)"``) or
wrong-length ``flux`` / ``flux_error`` / ``wavelength`` cell or the wrong grid (wide
form) — that star is *kept* with flux and flux error NaN at all 2,401 pixels (the
preprocessing then flags it ``bad_spectrum`` and its labels are NaN).
``meta["bad_rows"]`` (present only when there are such stars) maps its id to
``"field: problem"`` (problems joined by ``"; "``), and each such file emits one
:class:`UserWarning`: ``"2 of 6 stars in FILE have unusable data and are kept with
NaN: ID1 (flux: 2396 pixels, expected 2401 …), …"`` (at most 5 named). What remains an
:class:`InputError` naming the file (and field, star, row where there is one) is a
problem of the file itself: it is missing, empty, unreadable or truncated (a CSV cut
inside a line, or a last star whose pixels stop short of the grid's end and end the
file), a column is missing or holds a cell that is not a number (the column cannot be
read), a ``source_id`` is empty or not an integer, or *no* star in the file is usable.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import astropy.units as u
import numpy as np
from astropy.table import Table

from kielnet.data.spectra import fill_nan_window_quantile
from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.checks import (as_floats, as_text, check_csv_complete, read_error_message, shown,
                               truncation_as_error)
from kielnet.io.paths import TEXT_ENCODING, check_readable, expand_paths
from kielnet.io.tables import _read_fits

__all__ = ["RVS_N_PIX", "RVS_WAVELENGTH_NM", "RVS_Q3_WINDOWS_NM", "fill_nan_q3",
           "read_rvs_spectra", "read_rvs_wavelength", "rvs_files"]

#: Pixels per Gaia DR3 RVS mean spectrum.
RVS_N_PIX = 2401
#: The DR3 RVS grid: 846–870 nm in 0.01 nm steps.
RVS_WAVELENGTH_NM = np.round(np.linspace(846.0, 870.0, RVS_N_PIX), 2)
#: Continuum windows (nm) whose pooled flux Q3 fills NaN pixels (§2.1: 8475–8495,
#: 8561–8582, 8627–8648 Å).
RVS_Q3_WINDOWS_NM = ((847.5, 849.5), (856.1, 858.2), (862.7, 864.8))
#: Largest accepted difference (nm) between a file's wavelengths and the DR3 grid.
GRID_TOLERANCE_NM = 1e-3

_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
            ".vot": "votable", ".votable": "votable", ".xml": "votable"}
#: Per-star columns of the datalink long form carried into ``extra``.
_STAR_COLUMNS = ("solution_id", "ra", "dec", "combined_transits", "combined_ccds", "deblended_ccds")


# ------------------------------------------------------------------ shared table helpers
def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in _FORMATS:
        raise InputError(f"unknown file format '{''.join(path.suffixes)}'; use one of "
                         f"{sorted(_FORMATS)}", source=str(path))
    return _FORMATS[suffixes[-1]]


def _read_archive_table(path: str | os.PathLike) -> tuple[Table, str]:
    """Read a CSV / ECSV / FITS / VOTable file into an astropy table (no rows → error)."""
    path = Path(path)
    source = check_readable(path)
    fmt = _format_of(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's unit / VOTable spec chatter
        if fmt == "fits":  # data read in memory here: a truncated file fails here
            tab = _read_fits(path, source)
        else:
            try:
                with truncation_as_error():
                    # "#" lines before a CSV header: an ECSV header (the Gaia bulk files)
                    text = {"encoding": TEXT_ENCODING} if fmt.startswith("ascii") else {}
                    tab = Table.read(path, format=fmt, **text, **({"comment": "#"} if fmt == "ascii.csv" else {}))
            except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
                raise InputError(read_error_message(path, fmt, exc), source=source) from exc
    if fmt == "ascii.csv":
        check_csv_complete(path, source, len(tab))
    if len(tab) == 0:
        raise InputError("table has no rows", source=source)
    return tab, fmt


def _find(tab: Table, *names: str) -> str | None:
    lower = {c.lower(): c for c in tab.colnames}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _need(tab: Table, source: str, *names: str) -> str:
    col = _find(tab, *names)
    if col is None:
        raise InputError(f"column '{names[0]}' is missing; columns: {tab.colnames}",
                         source=source, field=names[0])
    return col


def _floats(col: Any, source: str, name: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Numeric column → float64 with masked / empty cells as NaN; a cell that is not a
    number is an :class:`InputError` naming its row (and star, with per-row ``ids``)."""
    return as_floats(col, source=source, field=name, ids=ids)


def _source_ids(col: Any, source: str, name: str = "source_id") -> np.ndarray:
    """Gaia source ids as int64 (floats would lose digits and are refused)."""
    if np.ma.is_masked(col) and np.ma.getmaskarray(col).any():
        row = int(np.flatnonzero(np.ma.getmaskarray(col))[0])
        raise InputError("source_id is empty", source=source, field=name, row=row)
    arr = np.asarray(np.ma.getdata(col))
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind in "USO":
        text = np.char.strip(as_text(col, source=source, field=name))
        try:
            return text.astype(np.int64)
        except (ValueError, OverflowError):
            pass
        for row, value in enumerate(text):  # only after the vectorised parse failed
            try:
                int(value)
            except ValueError:
                raise InputError(f"source_id holds a value that is not an integer ({shown(value)!r})",
                                 source=source, field=name, row=row) from None
        raise InputError("source_id holds a value out of the int64 range", source=source, field=name)
    raise InputError(f"source_id must be an integer column, got dtype {arr.dtype} (floating-point "
                     "ids lose digits)", source=source, field=name)


def _star_values(col: Any, source: str, name: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Per-star column: int64 when integer without empty cells (ids, counts), else float64."""
    data = np.asarray(np.ma.getdata(col))
    if data.dtype.kind in "iu" and not np.ma.getmaskarray(col).any():
        return data.astype(np.int64)
    return _floats(col, source, name, ids)


def _parse_array_cell(value: Any) -> np.ndarray | None:
    """One array cell (ndarray, masked, '(1, 2)' / '[1, 2]' string, None) → float64 or None."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    if isinstance(value, (str, np.str_)):
        s = str(value).strip()
        if not s:
            return None
        if s[0] in "([" and s[-1] in ")]":
            s = s[1:-1]
        if not s.strip():
            return np.zeros(0)
        parts = [v.strip() for v in s.split(",")]
        try:
            return np.array(parts, dtype=np.float64)
        except ValueError:
            for i, v in enumerate(parts):  # name the first value that is not a number
                try:
                    float(v)
                except ValueError:
                    raise ValueError(f"value {i} of the cell is {shown(v)!r}, not a number") from None
            raise
    if np.isscalar(value):
        v = float(value)
        return None if np.isnan(v) else np.array([v])
    arr = np.ma.asarray(value).astype(np.float64)
    return np.ma.filled(arr, np.nan)


def _array_column(col: Any, source: str, name: str, ids: np.ndarray | None = None,
                  bad: BadStars | None = None) -> list[np.ndarray | None]:
    """An array column (2-D numeric, object / variable-length, or strings) → per-row arrays.

    A cell that cannot be parsed (``"(1.0, abc, …)"``, bytes that are not UTF-8) is an
    :class:`InputError` naming the file, column, row and (with ``ids``) star — or, with
    ``bad``, recorded there as that row's problem (see :func:`_note_bad`) and returned
    as ``None``, so that the caller keeps the star with NaN.
    """
    data = np.ma.asarray(col) if np.ma.isMaskedArray(col) else np.asarray(col)
    if data.dtype.kind in "fiu" and data.ndim >= 2:
        filled = _floats(col, source, name, ids)
        return [filled[i] for i in range(len(filled))]
    out: list[np.ndarray | None] = []
    mask = np.ma.getmaskarray(col) if data.ndim == 1 else np.zeros(len(data), bool)
    for i in range(len(data)):
        if mask[i]:
            out.append(None)
            continue
        try:
            out.append(_parse_array_cell(data[i]))
        except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            if bad is None:
                raise InputError(f"cannot parse array cell: {exc}", source=source, field=name,
                                 star=None if ids is None else str(ids[i]), row=i) from None
            _note_bad(bad, i, name, f"cannot parse the cell: {exc}", i)
            out.append(None)
    return out


# ------------------------------------------------------------------ stars with unusable data
#: Per output star (index) with unusable data: its first file row and its problems as
#: ``(field, problem)`` pairs, in the order found.
BadStars = dict[int, tuple[int, list[tuple[str, str]]]]
#: Stars named in the per-file warning (the rest are counted).
_N_SHOWN_BAD = 5


def _note_bad(bad: BadStars, star: int, field: str, problem: str, row: int) -> None:
    """Record that output star ``star`` (first file row ``row``) is unusable: ``field``
    holds ``problem``."""
    bad.setdefault(star, (row, []))[1].append((field, problem))


def _noted(bad: BadStars, star: int, field: str) -> bool:
    """Whether a problem of ``field`` is already recorded for output star ``star``."""
    return star in bad and any(f == field for f, _ in bad[star][1])


def _settle_bad_stars(bad: BadStars, ids: np.ndarray, source: str, refuse_all: bool = True
                      ) -> tuple[dict[str, str], str | None]:
    """Stars kept with NaN data → ``({star_id: "field: problem; …"}, warning text)``.

    A file in which *no* star is usable is refused (unless ``refuse_all`` is false: a
    slice of a file): an :class:`InputError` naming the file (and, for a one-star file,
    the field, star and row with the problem as the message). ``({}, None)`` when every
    star is usable.
    """
    if not bad:
        return {}, None
    order = sorted(bad)
    reasons = {k: "; ".join(f"{field}: {problem}" for field, problem in bad[k][1]) for k in order}
    listing = ", ".join(f"{ids[k]} ({reasons[k]})" for k in order[:_N_SHOWN_BAD])
    if len(order) > _N_SHOWN_BAD:
        listing += f", and {len(order) - _N_SHOWN_BAD} more (meta['bad_rows'])"
    n = len(ids)
    if len(order) == n and refuse_all:
        row, problems = bad[order[0]]
        field, problem = problems[0]
        if n == 1:
            raise InputError(f"the file's only star has unusable data: {problem}", source=source,
                             field=field, star=str(ids[order[0]]), row=row)
        raise InputError(f"no star has usable data (all {n} unusable): {listing}", source=source,
                         field=field)
    text = (f"{len(order)} of {n} stars in {source} have unusable data and are kept with NaN: "
            f"{listing}")
    return {str(ids[k]): reasons[k] for k in order}, text


# ------------------------------------------------------------------ public helpers
def fill_nan_q3(flux: np.ndarray, wavelength_nm: np.ndarray,
                windows_nm: Sequence[tuple[float, float]] = RVS_Q3_WINDOWS_NM
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """§2.1 fill: NaN flux → Q3 of the star's flux in :data:`RVS_Q3_WINDOWS_NM`
    (see :func:`kielnet.data.spectra.fill_nan_window_quantile`)."""
    return fill_nan_window_quantile(flux, wavelength_nm, windows_nm, 75.0)


def read_rvs_wavelength(path: str | os.PathLike) -> u.Quantity:
    """Read a wavelength grid stored as a 1-D FITS primary array (nm), e.g.
    ``gaia_rvs_wavelength.fits``; unit from ``BUNIT``/``CUNIT1`` if present."""
    from astropy.io import fits

    source = str(path)
    if not Path(path).is_file():
        raise InputError("file does not exist", source=source)
    try:
        with fits.open(path, memmap=False) as hdul:
            data = hdul[0].data
            hdr = hdul[0].header
            unit = hdr.get("BUNIT") or hdr.get("CUNIT1") or "nm"
            data = None if data is None else np.array(data, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read FITS file: {exc}", source=source) from exc
    if data is None or data.ndim != 1:
        raise InputError("expected a 1-D wavelength array in the primary HDU", source=source)
    try:
        return (data * u.Unit(unit)).to(u.nm)
    except (ValueError, u.UnitsError) as exc:
        raise InputError(f"unusable wavelength unit {unit!r}: {exc}", source=source) from None


def rvs_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand ``paths`` (a file, a directory or a list of them) into files to read.

    A directory contributes its files with a known suffix (sorted); FITS files in it
    that hold no table (such as a wavelength-grid image) are skipped by
    :func:`read_rvs_spectra`.
    """
    def known_format(f: Path) -> bool:
        try:
            _format_of(f)
            return True
        except InputError:
            return False

    return expand_paths(paths, accept=known_format, what="CSV / ECSV / FITS / VOTable files")


# ------------------------------------------------------------------ reading
def _wavelength_nm(tab: Table, col: str, source: str, ids: np.ndarray | None = None) -> np.ndarray:
    unit = getattr(tab[col], "unit", None)
    values = _floats(tab[col], source, col, ids)
    if unit is not None and str(unit) not in ("", "None"):
        try:
            values = (values * u.Unit(unit)).to_value(u.nm)
        except (ValueError, u.UnitsError):
            raise InputError(f"wavelength unit '{unit}' is not a length", source=source,
                             field=col) from None
    return values


def _grid_problem(wl: np.ndarray) -> str | None:
    """What is wrong with one star's wavelengths (nm, in the order of its flux values)
    against the DR3 grid, or None."""
    if wl.shape != (RVS_N_PIX,):
        return f"{wl.size} pixels, expected {RVS_N_PIX} (846-870 nm in 0.01 nm steps)"
    dev = np.abs(wl - RVS_WAVELENGTH_NM)
    if not (dev <= GRID_TOLERANCE_NM).all():
        i = int(np.argmax(np.where(np.isfinite(dev), dev, np.inf)))
        return (f"grid differs from the DR3 RVS grid (846-870 nm, 0.01 nm steps; wavelengths "
                f"in nm unless a unit is given): pixel {i} is at {float(wl[i])!r}, expected "
                f"{float(RVS_WAVELENGTH_NM[i])}")
    return None


def _cut_off(wl: np.ndarray, last: float) -> bool:
    """Whether a star's (sorted) wavelengths look cut off: a proper contiguous start of
    the DR3 grid whose last row in the file is its longest wavelength (or, for a star
    written in descending order, an end of the grid whose last row is its shortest) —
    what the last star of a file cut off at a line end looks like."""
    k = wl.size
    if not 0 < k < RVS_N_PIX:
        return False
    start = bool((np.abs(wl - RVS_WAVELENGTH_NM[:k]) <= GRID_TOLERANCE_NM).all())
    end = bool((np.abs(wl - RVS_WAVELENGTH_NM[-k:]) <= GRID_TOLERANCE_NM).all())
    return (start and last == wl[-1]) or (end and last == wl[0])


def _read_long(tab: Table, source: str) -> dict[str, Any]:
    sid_col = _need(tab, source, "source_id")
    wl_col = _need(tab, source, "wavelength")
    fl_col = _need(tab, source, "flux")
    er_col = _need(tab, source, "flux_error", "flux_err")
    sid = _source_ids(tab[sid_col], source, sid_col)
    wl = _wavelength_nm(tab, wl_col, source, sid)
    flux = _floats(tab[fl_col], source, fl_col, sid)
    err = _floats(tab[er_col], source, er_col, sid)
    order = np.argsort(sid, kind="stable")
    uniq, start, counts = np.unique(sid[order], return_index=True, return_counts=True)
    first_row = order[start]  # first file row of each star
    star_order = np.argsort(first_row, kind="stable")
    n = len(uniq)
    out_flux = np.full((n, RVS_N_PIX), np.nan)
    out_err = np.full((n, RVS_N_PIX), np.nan)
    bad: BadStars = {}
    for k, j in enumerate(star_order):
        rows = order[start[j]:start[j] + counts[j]]
        rows = rows[np.argsort(wl[rows], kind="stable")]
        problem = _grid_problem(wl[rows])
        if problem is None:
            out_flux[k], out_err[k] = flux[rows], err[rows]
            continue
        if rows.max() == len(sid) - 1 and _cut_off(wl[rows], float(wl[-1])):
            # the star that ends the file stops short of the grid's end: the file was cut off
            raise InputError(f"file is truncated: its last star has {len(rows)} of {RVS_N_PIX} "
                             f"pixels, {wl[rows][0]:.2f}-{wl[rows][-1]:.2f} nm, and nothing follows",
                             source=source, field=wl_col, star=str(uniq[j]), row=int(rows.max()))
        # a wrong count or grid for this star alone: kept with NaN flux and error
        field = fl_col if wl[rows].shape != (RVS_N_PIX,) else wl_col
        _note_bad(bad, k, field, problem, int(first_row[j]))
    firsts = first_row[star_order]
    extra: dict[str, np.ndarray] = {}
    for name in _STAR_COLUMNS:
        col = _find(tab, name)
        if col is not None:
            extra[name] = _star_values(tab[col], source, col, sid)[firsts]
    ids = uniq[star_order]
    bad_rows, warning = _settle_bad_stars(bad, ids, source)
    return {"source_id": ids, "flux": out_flux, "flux_err": out_err, "extra": extra,
            "bad_rows": bad_rows, "warning": warning}


def _stack_rows(cells: list[np.ndarray | None], field: str, bad: BadStars) -> np.ndarray:
    """Per-star cells → ``(n, 2401)``; an empty cell or a wrong count is noted in ``bad``
    (the row stays NaN), as is a row already there (a cell that could not be parsed)."""
    out = np.full((len(cells), RVS_N_PIX), np.nan)
    for i, c in enumerate(cells):
        if c is None:
            if not _noted(bad, i, field):  # not a cell that could not be parsed
                _note_bad(bad, i, field, "spectrum cell is empty", i)
        elif c.shape != (RVS_N_PIX,):
            _note_bad(bad, i, field, f"{c.size} values, expected {RVS_N_PIX} (846-870 nm in "
                      "0.01 nm steps)", i)
        else:
            out[i] = c
    return out


def _read_wide(tab: Table, source: str) -> dict[str, Any]:
    sid_col = _need(tab, source, "source_id")
    fl_col = _need(tab, source, "flux")
    er_col = _need(tab, source, "flux_error", "flux_err")
    sid = _source_ids(tab[sid_col], source, sid_col)
    bad: BadStars = {}
    flux = _stack_rows(_array_column(tab[fl_col], source, fl_col, sid, bad), fl_col, bad)
    err = _stack_rows(_array_column(tab[er_col], source, er_col, sid, bad), er_col, bad)
    wl_col = _find(tab, "wavelength")
    if wl_col is not None:
        unit = getattr(tab[wl_col], "unit", None)
        scale = 1.0
        if unit is not None and str(unit) not in ("", "None"):
            try:
                scale = float((1.0 * u.Unit(unit)).to_value(u.nm))
            except (ValueError, u.UnitsError):
                raise InputError(f"wavelength unit '{unit}' is not a length", source=source,
                                 field=wl_col) from None
        for i, c in enumerate(_array_column(tab[wl_col], source, wl_col, sid, bad)):
            if c is None:
                if not _noted(bad, i, wl_col):  # not a cell that could not be parsed
                    _note_bad(bad, i, wl_col, "wavelength cell is empty", i)
                continue
            problem = _grid_problem(c * scale)  # in the flux cells' order: not sorted
            if problem is not None:
                _note_bad(bad, i, wl_col, problem, i)
    rows = np.array(sorted(bad), dtype=np.int64)
    flux[rows] = np.nan  # a star unusable in one column is unusable in all
    err[rows] = np.nan
    extra: dict[str, np.ndarray] = {}
    for name in _STAR_COLUMNS:
        col = _find(tab, name)
        if col is not None and np.asarray(tab[col]).ndim == 1:
            extra[name] = _star_values(tab[col], source, col, sid)
    bad_rows, warning = _settle_bad_stars(bad, sid, source)
    return {"source_id": sid, "flux": flux, "flux_err": err, "extra": extra,
            "bad_rows": bad_rows, "warning": warning}


def _is_wide(tab: Table) -> bool:
    col = _find(tab, "flux")
    if col is None:
        return False
    data = np.asarray(tab[col])
    if data.ndim >= 2 or data.dtype.kind == "O":
        return True
    if data.dtype.kind in "US" and len(data):
        first = str(data[0]).strip()
        return first[:1] in "([" and len(first) > 0
    return False


def read_rvs_spectra(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                     fill_nan: bool = True) -> StarTable:
    """Read Gaia DR3 RVS mean spectra (one or many stars per file) into a StarTable.

    Parameters
    ----------
    paths
        A file, a directory of files or a list of them (CSV, ECSV, FITS, VOTable; long
        or wide form, see the module docstring).
    fill_nan
        Fill NaN flux pixels with the §2.1 continuum Q3 (:func:`fill_nan_q3`);
        ``n_filled_pixels`` is 0 everywhere when ``False``.

    Returns
    -------
    StarTable
        ``(n_stars, 2401)`` flux and flux error on :data:`RVS_WAVELENGTH_NM` (nm), stars
        in file order and, within a file, in order of first appearance.

    Raises
    ------
    InputError
        Naming the file (and field, star and row where there is one) for a missing,
        empty, truncated or unreadable file, a missing column, a cell of a long-form
        column that is not a number, a source id that is empty or not an integer, or a
        file in which no star is usable.

    Warns
    -----
    UserWarning
        Once per file that holds stars with unusable data (wrong pixel count or grid,
        an empty or unparseable wide-form cell), naming up to 5 of them with the reason.

    Notes
    -----
    A star with unusable data in a file whose structure is intact is kept, not
    refused: its flux and flux error are NaN at every pixel (never filled), and
    ``meta["bad_rows"]`` maps its id to ``"field: problem"``, so every input star has
    an output row whose flag says why it has no labels. The other stars of the file are
    read as usual. Empty flux cells are missing pixels (NaN, filled as above), not
    errors.
    """
    files = rvs_files(paths)
    explicit = {Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)}
    parts: list[dict[str, Any]] = []
    skipped: list[str] = []
    bad_rows: dict[str, str] = {}
    for path in files:
        source = str(path)
        if path not in explicit and _format_of(path) == "fits" and not _fits_has_table(path):
            skipped.append(source)  # e.g. the wavelength-grid image next to the spectra
            continue
        tab, fmt = _read_archive_table(path)
        part = _read_wide(tab, source) if _is_wide(tab) else _read_long(tab, source)
        if part["warning"]:
            warnings.warn(part["warning"], stacklevel=2)
        for star, reason in part["bad_rows"].items():  # the same star bad in two files: both
            bad_rows[star] = f"{bad_rows[star]}; {path.name}: {reason}" if star in bad_rows else reason
        part["file"] = np.full(len(part["source_id"]), path.name)
        part["format"] = fmt
        parts.append(part)
    if not parts:
        raise InputError("no RVS spectra found", source=",".join(str(f) for f in files))
    common = set.intersection(*(set(p["extra"]) for p in parts))
    flux = np.concatenate([p["flux"] for p in parts])
    err = np.concatenate([p["flux_err"] for p in parts])
    if fill_nan:
        flux, n_filled, _ = fill_nan_q3(flux, RVS_WAVELENGTH_NM)
    else:
        n_filled = np.zeros(len(flux), dtype=np.int64)
    source_id = np.concatenate([p["source_id"] for p in parts]).astype(np.int64)
    extra = {"source_id": source_id}
    for name in _STAR_COLUMNS:
        if name in common:
            extra[name] = np.concatenate([p["extra"][name] for p in parts])
    extra["file"] = np.concatenate([p["file"] for p in parts])
    extra["n_filled_pixels"] = n_filled
    meta = {"source": ",".join(str(f) for f in files if str(f) not in skipped),
            "loader": "gaia_rvs", "formats": sorted({p["format"] for p in parts}),
            "nan_fill": ("Q3 of flux in 847.5-849.5, 856.1-858.2, 862.7-864.8 nm (section 2.1)"
                         if fill_nan else "none")}
    dropped = sorted(set().union(*(set(p["extra"]) for p in parts)) - common)
    if dropped:
        meta["dropped_columns"] = dropped
    if skipped:
        meta["skipped_files"] = skipped
    if bad_rows:
        meta["bad_rows"] = bad_rows
    return StarTable(ids=source_id.astype(str), flux=flux, flux_err=err,
                     wavelength=RVS_WAVELENGTH_NM * u.nm, extra=extra, meta=meta)


def _fits_has_table(path: Path) -> bool:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            return any(isinstance(h, (fits.BinTableHDU, fits.TableHDU)) for h in hdul)
    except Exception:  # noqa: BLE001 - unreadable files are reported when read
        return True
