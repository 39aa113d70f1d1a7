"""Reader for Gaia DR3 XP continuous mean spectra (``xp_continuous_mean_spectrum``)
and their conversion to the XP library's 343-pixel sampled representation.

The archive writes one row per star with, for each band ``b`` in ``bp``, ``rp``:
``b_coefficients`` (55 values, internal flux unit e⁻ s⁻¹), ``b_coefficient_errors``
(55), ``b_coefficient_correlations`` (1,485 = 55·54/2 off-diagonal elements),
``b_standard_deviation``, ``b_n_relevant_bases``, ``b_n_parameters``,
``b_basis_function_id``, ``b_degrees_of_freedom``, ``b_n_measurements``,
``b_n_rejected_measurements``, ``b_chi_squared``, ``b_relative_shrinking``, plus
``source_id`` and ``solution_id``. Arrays are ``"(c1, c2, …)"`` strings in CSV and
array columns in ECSV, FITS and VOTable; all the band's cells are empty when a band
is missing. Formats are chosen by suffix (``.csv``, ``.ecsv``, ``.fits``, ``.vot``).

Star-table fields built by :func:`read_xp_continuous`:

* ids: ``source_id`` as a string; extra ``source_id`` (int64), ``solution_id``;
* scalars: the coefficients ``bp_0 … bp_54`` and ``rp_0 … rp_54`` (e⁻ s⁻¹) — NaN
  for a missing band, so the star is reported by
  :meth:`StarTable.missing_report` and coefficient models flag it — and, when the
  file has them, ``g``, ``bp``, ``rp`` (``phot_*_mean_mag``, mag) and ``parallax``
  (mas). :func:`kielnet.data.xp.xp_coefficients` returns the ``(n, 55)`` arrays;
* extra (NaN rows for a missing band): ``bp_coefficient_errors`` ``(n, 55)``,
  ``bp_coefficient_correlations`` ``(n, 1485)`` *as stored* (strict lower triangle,
  row-major; :func:`kielnet.data.xp.correlation_matrix` rebuilds 55×55), the
  per-band numbers above as float64 (NaN where empty or absent from the file), and
  ``missing_bp`` / ``missing_rp`` (bool: the band's coefficients are NaN — absent
  from the archive, or the star's data unusable, see below);
* no spectrum.

Stars with unusable data. Nothing is silently dropped: when the file's structure is
intact but one star's cells cannot be used — a coefficient, error or correlation cell
that cannot be parsed (``"(1.0, abc, …)"``) or holds the wrong number of values, a
present band with some coefficients missing or without errors or correlations — the
star is *kept* with all its coefficients (both bands), errors, correlations and
per-band numbers NaN (downstream they are missing inputs, flagged ``missing_input``),
``missing_bp`` and ``missing_rp`` set; its magnitudes and parallax are read as usual.
``meta["bad_rows"]`` (present only when there are such stars) maps its id to
``"field: problem"`` (problems joined by ``"; "``), and the file emits one
:class:`UserWarning` naming up to 5 of them. What remains an :class:`InputError`
naming the file (and field, star, row where there is one) is a problem of the file
itself: it is missing, empty, unreadable or truncated, a required column is missing,
a numeric column holds a cell that is not a number (the column cannot be read), a
``source_id`` is empty or not an integer, or *no* star in the file is usable.

:func:`xp_sampled_spectra` calibrates the coefficients (default sampling 336–1020 nm
in 2 nm steps → 343 px, flux in W m⁻² nm⁻¹) — by default with the batched linear map
of :mod:`kielnet.data.xp_calibration` and GaiaXPy's design matrices, derived once and
cached (:mod:`kielnet.io.xp_matrices`), or with ``gaiaxpy.calibrate`` itself
(``method="gaiaxpy"``, the reference) — and divides flux and error by each star's
median flux, the convention of the APOGEE DR17 × Gaia XP library, so that models
trained on that library apply. GaiaXPy (and pandas) are optional: ``pip install
gaiaxpy``; the default method needs GaiaXPy only until its matrices are cached.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import astropy.units as u
import numpy as np
import pyarrow as pa

from kielnet.data.startable import StarTable
from kielnet.data.xp import (N_XP_COEFFICIENTS, N_XP_CORRELATIONS, XP_BANDS, coefficient_names,
                             normalise_by_median, pack_correlations, xp_coefficients)
from kielnet.errors import InputError
from kielnet.io.gaia_rvs import (BadStars, _array_column, _find, _floats, _need, _note_bad,
                                 _noted, _read_archive_table, _settle_bad_stars, _source_ids)
from kielnet.io.xp_arrays import array_strings, bad_cell_reasons, parse_array_strings
from kielnet.io.xp_library import XP_WAVELENGTH_NM
from kielnet.io.xp_matrices import _quiet_gaiaxpy, _require_gaiaxpy, xp_sampling

__all__ = ["read_xp_continuous", "xp_star_table", "to_gaiaxpy_frame", "xp_sampled_spectra", "XP_BAND_NUMBERS",
           "xp_coefficient_inputs", "needs_xp_coefficients", "add_xp_coefficients", "with_recovered_coefficients"]

#: Per-band numeric columns carried into ``extra`` as float64 (NaN where empty/absent).
XP_BAND_NUMBERS = ("standard_deviation", "n_relevant_bases", "n_parameters", "basis_function_id",
                   "degrees_of_freedom", "n_measurements", "n_rejected_measurements",
                   "chi_squared", "relative_shrinking")
#: Optional file columns → scalar names.
_SCALARS = {"g": "phot_g_mean_mag", "bp": "phot_bp_mean_mag", "rp": "phot_rp_mean_mag",
            "parallax": "parallax"}


def _band_arrays(cells: list[np.ndarray | None], expected: int, field: str, bad: BadStars,
                 square: bool = False) -> np.ndarray:
    """Stack per-row arrays into ``(n, expected)``; empty / all-NaN cells → NaN rows, and a
    cell with the wrong count is noted in ``bad`` (its row stays NaN)."""
    out = np.full((len(cells), expected), np.nan)
    for i, c in enumerate(cells):
        if c is None or c.size == 0 or np.isnan(c).all():
            continue
        if square and c.size == N_XP_COEFFICIENTS ** 2:
            c = pack_correlations(c.reshape(N_XP_COEFFICIENTS, N_XP_COEFFICIENTS))
        c = c.ravel()
        if c.size != expected:
            _note_bad(bad, i, field, f"{c.size} values, expected {expected}", i)
            continue
        out[i] = c
    return out


def _string_arrays(column: Any, expected: int, field: str, bad: BadStars,
                   square: bool = False, null_as_nan: bool = False) -> np.ndarray:
    """``"(c1, c2, …)"`` cells → ``(n, expected)``, vectorised (:mod:`kielnet.io.xp_arrays`);
    bad cells are noted in ``bad`` (their rows stay NaN) as :func:`_band_arrays` does.
    ``null_as_nan``: a ``null`` value is NaN (ECSV's JSON arrays)."""
    values, is_bad = parse_array_strings(column, expected, null_as_nan=null_as_nan)
    rows = np.flatnonzero(is_bad)
    if square and rows.size:  # full 55×55 matrices written out: pack them
        full, full_bad = parse_array_strings(array_strings(column).take(pa.array(rows)),
                                             N_XP_COEFFICIENTS ** 2, null_as_nan=null_as_nan)
        ok = ~full_bad & ~np.isnan(full).all(axis=1)
        values[rows[ok]] = pack_correlations(
            full[ok].reshape(-1, N_XP_COEFFICIENTS, N_XP_COEFFICIENTS))
        rows = rows[~ok]
    for row, reason in bad_cell_reasons(column, rows, expected, null_as_nan=null_as_nan).items():
        _note_bad(bad, row, field, reason, row)
    return values


def read_xp_continuous(path: str | os.PathLike) -> StarTable:
    """Read an archive ``xp_continuous_mean_spectrum`` file into a StarTable.

    Parameters
    ----------
    path
        CSV (``"(…)"`` strings), ECSV, FITS or VOTable (array columns) file with one
        row per star; see the module docstring for the fields.

    Returns
    -------
    StarTable
        Coefficients as scalars ``bp_i`` / ``rp_i``, errors and correlations in
        ``extra``, ``extra['missing_bp']`` / ``extra['missing_rp']`` flags.

    Raises
    ------
    InputError
        Naming the file (and field, star and row where there is one) for a missing,
        empty, truncated or unreadable file, a missing column (``source_id``,
        ``*_coefficients``, ``*_coefficient_errors``, ``*_coefficient_correlations``),
        a numeric column that cannot be read, or a file in which no star is usable.

    Warns
    -----
    UserWarning
        When stars have unusable data (a garbled or miscounted cell, an incomplete
        band), naming up to 5 of them with the reason.

    Notes
    -----
    A star whose cells are unusable is kept with NaN coefficients rather than refused,
    and ``meta["bad_rows"]`` says why (see the module docstring); the other stars are
    read as usual. A band that is *absent* (all its cells empty) is not a problem: its
    coefficients are NaN and ``missing_<band>`` is set.
    """
    path = Path(path)
    tab, fmt = _read_archive_table(path)
    return xp_star_table(tab, source=str(path), fmt=fmt)


def _is_text(column: Any) -> bool:
    """Whether an array column holds ``"(c1, c2, …)"`` strings (CSV; a pyarrow string
    array when streamed) rather than arrays (ECSV, FITS, VOTable)."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return True
    return np.asarray(column).dtype.kind in "US"


def _is_parsed(column: Any, n: int, expected: int) -> bool:
    """Whether an array column is already an ``(n, expected)`` float64 array, NaN rows for
    empty cells (:class:`kielnet.io.streams.xp_tokens.ParsedBlock`)."""
    # a plain ndarray only: an astropy (masked) column goes through the cell checks
    return type(column) is np.ndarray and column.dtype == np.float64 and column.shape == (n, expected)


def xp_star_table(tab: Any, *, source: str, fmt: str, refuse_unusable: bool = True,
                  uncertainties: bool = True, null_as_nan: bool = False) -> StarTable:
    """The star table of rows of an archive XP continuous file (see :func:`read_xp_continuous`).

    Parameters
    ----------
    tab
        The rows: an astropy table, or anything with ``colnames`` and ``tab[name]``
        giving a (masked) NumPy column or, for ``"(…)"`` array strings, a pyarrow
        string array (the streamed reader, :mod:`kielnet.io.streams.xp_continuous`) or
        the values already parsed, ``(n, values)`` float64 with NaN rows for empty cells
        (its fast path, :mod:`kielnet.io.streams.xp_tokens`; used as they are).
    source, fmt
        The file (for messages and ``meta['source']``) and its format name.
    refuse_unusable
        Refuse rows in which no star is usable (a whole file); ``False`` for a slice
        of a file, whose unusable stars are kept with NaN whatever their number.
    uncertainties
        Also read the coefficient errors and correlations (``extra``); ``False`` reads
        the coefficients alone (for a model that reads coefficients and no spectrum:
        the correlations are 27 of every 28 numbers of a row).
    null_as_nan
        In array strings, a value spelled ``null`` is NaN (the JSON arrays of an ECSV
        file read as text); otherwise it makes its cell bad.
    """
    sid = _source_ids(tab[_need(tab, source, "source_id")], source)
    n = len(sid)
    scalars: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {"source_id": sid}
    sol = _find(tab, "solution_id")
    if sol is not None:
        vals = np.asarray(np.ma.getdata(tab[sol]))
        extra["solution_id"] = (vals.astype(np.int64) if vals.dtype.kind in "iu"
                                and not np.ma.getmaskarray(tab[sol]).any()
                                else _floats(tab[sol], source, sol, sid))
    absent: list[str] = []
    bad: BadStars = {}
    arrays: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for band in XP_BANDS:
        kinds = (("coefficients", "coefficient_errors", "coefficient_correlations") if uncertainties
                 else ("coefficients",))
        cols = {kind: _need(tab, source, f"{band}_{kind}") for kind in kinds}

        def read(kind: str, expected: int, square: bool = False) -> np.ndarray:
            col = cols[kind]
            if _is_parsed(tab[col], n, expected):  # values already parsed (the streamed CSV's fast path)
                return tab[col]
            if _is_text(tab[col]):  # CSV "(c1, c2, …)" strings
                return _string_arrays(tab[col], expected, col, bad, square=square, null_as_nan=null_as_nan)
            return _band_arrays(_array_column(tab[col], source, col, sid, bad), expected, col, bad,
                                square=square)

        coef = read("coefficients", N_XP_COEFFICIENTS)
        unc = ({"coefficient_errors": read("coefficient_errors", N_XP_COEFFICIENTS),
                "coefficient_correlations": read("coefficient_correlations", N_XP_CORRELATIONS, square=True)}
               if uncertainties else {})
        # a present band needs all its coefficients, errors and correlations
        given = ~np.isnan(coef).all(axis=1)
        for i in np.flatnonzero(given & np.isnan(coef).any(axis=1)):
            _note_bad(bad, int(i), cols["coefficients"], f"{int(np.isnan(coef[i]).sum())} of "
                      f"{N_XP_COEFFICIENTS} values are missing", int(i))
        for kind, values in unc.items():
            for i in np.flatnonzero(given & np.isnan(values).all(axis=1)):
                if not _noted(bad, int(i), cols[kind]):  # not already unparseable / miscounted
                    _note_bad(bad, int(i), cols[kind], f"empty while {cols['coefficients']} "
                              "are given", int(i))
        arrays[band] = (coef, unc)
    unusable = np.zeros(n, bool)
    unusable[sorted(bad)] = True
    for band in XP_BANDS:
        coef, unc = arrays[band]
        for a in (coef, *unc.values()):  # a star unusable in one cell is NaN in all
            a[unusable] = np.nan
        missing = np.isnan(coef).all(axis=1)
        for i, name in enumerate(coefficient_names(band)):
            scalars[name] = coef[:, i]
        extra.update({f"{band}_{kind}": values for kind, values in unc.items()})
        for kind in XP_BAND_NUMBERS:
            col = _find(tab, f"{band}_{kind}")
            if col is None:
                absent.append(f"{band}_{kind}")
                extra[f"{band}_{kind}"] = np.full(n, np.nan)
            else:
                extra[f"{band}_{kind}"] = np.where(missing, np.nan, _floats(tab[col], source, col, sid))
        extra[f"missing_{band}"] = missing
    bad_rows, warning = _settle_bad_stars(bad, sid, source, refuse_all=refuse_unusable)
    for name, colname in _SCALARS.items():
        col = _find(tab, colname)
        if col is not None:
            scalars[name] = _floats(tab[col], source, col, sid)
    meta: dict[str, Any] = {"source": source, "loader": "gaia_xp", "format": fmt,
                            "xp_coefficients": "scalars bp_0..bp_54, rp_0..rp_54 (e-/s)",
                            "xp_correlations": ("packed strict lower triangle (1485), row-major" if uncertainties
                                                else "not read (coefficients only)")}
    if absent:
        meta["absent_columns"] = absent
    if bad_rows:
        meta["bad_rows"] = bad_rows
    if warning:
        warnings.warn(warning, stacklevel=2)
    return StarTable(ids=sid.astype(str), scalars=scalars, extra=extra, meta=meta)


# ------------------------------------------------------------------ GaiaXPy
def to_gaiaxpy_frame(table: StarTable) -> tuple[Any, np.ndarray]:
    """A pandas DataFrame in GaiaXPy's input layout from a :func:`read_xp_continuous` table.

    Columns ``source_id``, ``{bp,rp}_coefficients``, ``_coefficient_errors``,
    ``_coefficient_correlations`` (NumPy arrays), ``_n_parameters``,
    ``_standard_deviation`` and ``_n_relevant_bases``; a missing band has NaN cells,
    which GaiaXPy treats as absent. A present band without a standard deviation (files
    that lack the column) is given 1.0 so that GaiaXPy calibrates it; its errors are
    then not the archive's, so such stars are returned in ``no_std`` (bool, per star)
    and :func:`xp_sampled_spectra` sets their ``flux_err`` to NaN.

    Returns
    -------
    frame, no_std
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise InputError(f"building GaiaXPy input needs pandas (pip install gaiaxpy): {exc}",
                         source="pandas") from None
    if table.meta.get("xp_normalised"):
        raise InputError("the table holds normalised coefficients (XPNormaliser); GaiaXPy needs "
                         "the archive's coefficients", source=table.source, field="bp_0")
    bp, rp = xp_coefficients(table)
    need = [f"{b}_{k}" for b in XP_BANDS for k in ("coefficient_errors", "coefficient_correlations")]
    for name in need + ["source_id"]:
        if name not in table.extra:
            raise InputError(f"table lacks '{name}'; read it with read_xp_continuous",
                             source=table.source, field=name)
    n = len(table)
    cols: dict[str, Any] = {"source_id": np.asarray(table.extra["source_id"], dtype=np.int64)}
    no_std = np.zeros(n, bool)
    for band, coef in (("bp", bp), ("rp", rp)):
        missing = np.isnan(coef).all(axis=1)
        errs = np.asarray(table.extra[f"{band}_coefficient_errors"], dtype=np.float64)
        corr = np.asarray(table.extra[f"{band}_coefficient_correlations"], dtype=np.float64)
        std = np.asarray(table.extra.get(f"{band}_standard_deviation", np.full(n, np.nan)),
                         dtype=np.float64)
        nrel = np.asarray(table.extra.get(f"{band}_n_relevant_bases", np.full(n, np.nan)),
                          dtype=np.float64)
        lacks = ~missing & ~np.isfinite(std)
        no_std |= lacks
        std = np.where(lacks, 1.0, std)

        def cells(a: np.ndarray) -> list[Any]:
            return [np.nan if missing[i] else a[i].copy() for i in range(n)]

        cols[f"{band}_coefficients"] = cells(coef)
        cols[f"{band}_coefficient_errors"] = cells(errs)
        cols[f"{band}_coefficient_correlations"] = cells(corr)
        cols[f"{band}_n_parameters"] = np.where(missing, np.nan, float(N_XP_COEFFICIENTS))
        cols[f"{band}_standard_deviation"] = np.where(missing, np.nan, std)
        cols[f"{band}_n_relevant_bases"] = np.where(missing, np.nan, nrel)
    return pd.DataFrame(cols), no_std


def _no_std(table: StarTable) -> np.ndarray:
    """Stars with a present band but no standard deviation (files without the column)."""
    n = len(table)
    out = np.zeros(n, bool)
    for band, coef in zip(XP_BANDS, xp_coefficients(table)):
        std = np.asarray(table.extra.get(f"{band}_standard_deviation", np.full(n, np.nan)), float)
        out |= ~np.isnan(coef).all(axis=1) & ~np.isfinite(std)
    return out


def _calibrate_matrix(table: StarTable, sampling_nm: np.ndarray | None, truncation: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The in-house linear map (:mod:`kielnet.data.xp_calibration`) → flux, error (W m⁻² nm⁻¹),
    wavelength (nm), the matrices' origin."""
    if table.meta.get("xp_normalised"):
        raise InputError("the table holds normalised coefficients (XPNormaliser); calibration "
                         "needs the archive's coefficients", source=table.source, field="bp_0")
    bp, rp = xp_coefficients(table)
    for name in [f"{b}_{k}" for b in XP_BANDS for k in ("coefficient_errors",
                                                         "coefficient_correlations")]:
        if name not in table.extra:
            raise InputError(f"table lacks '{name}'; read it with read_xp_continuous",
                             source=table.source, field=name)
    sampling = xp_sampling(sampling_nm)
    trunc = ({f"{b}_n_bases": table.extra[f"{b}_n_relevant_bases"] for b in XP_BANDS}
             if truncation else {})
    flux, err = sampling.sample(bp, rp, *(table.extra[f"{b}_coefficient_errors"] for b in XP_BANDS),
                                *(table.extra[f"{b}_coefficient_correlations"] for b in XP_BANDS),
                                **trunc)
    assert err is not None
    return flux, err, sampling.wavelength_nm, sampling.origin


def _calibrate_gaiaxpy(table: StarTable, sampling_nm: np.ndarray | None, truncation: bool
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``gaiaxpy.calibrate`` star by star → flux, error (W m⁻² nm⁻¹), wavelength (nm), version."""
    gaiaxpy = _require_gaiaxpy()
    sampling = None if sampling_nm is None else np.asarray(sampling_nm, dtype=float)
    if sampling is not None and np.array_equal(sampling, XP_WAVELENGTH_NM):
        sampling = None  # GaiaXPy's precomputed default matrices, not a recomputed model
    frame, _ = to_gaiaxpy_frame(table)
    try:
        with _quiet_gaiaxpy():
            out, used = gaiaxpy.calibrate(frame, sampling=sampling, truncation=truncation,
                                          save_file=False)
    except Exception as exc:  # noqa: BLE001 - GaiaXPy errors become one clear error
        raise InputError(f"GaiaXPy calibration failed: {exc}", source=table.source) from exc
    got = np.asarray(out["source_id"], dtype=np.int64)
    if not np.array_equal(got, table.extra["source_id"]):
        raise InputError("GaiaXPy returned stars in a different order or number",
                         source=table.source, field="source_id")
    flux = np.vstack([np.asarray(v, dtype=np.float64) for v in out["flux"]])
    err = np.vstack([np.asarray(v, dtype=np.float64) for v in out["flux_error"]])
    return flux, err, np.asarray(used, dtype=float), getattr(gaiaxpy, "__version__", "unknown")


def xp_sampled_spectra(path_or_table: str | os.PathLike | StarTable, *,
                       sampling_nm: np.ndarray | None = None, truncation: bool = False,
                       method: Literal["matrix", "gaiaxpy"] = "matrix",
                       keep_coefficients: bool = False) -> StarTable:
    """Calibrate XP coefficients to sampled spectra, divided by the median.

    Parameters
    ----------
    path_or_table
        An archive XP continuous file (see :func:`read_xp_continuous`) or a table it
        returned.
    sampling_nm
        Wavelengths in nm; default (``None`` or an array equal to
        :data:`~kielnet.io.xp_library.XP_WAVELENGTH_NM`): GaiaXPy's default sampling,
        336–1020 nm in 2 nm steps (343 px), the XP library's grid. GaiaXPy calibrates
        its default sampling with the precomputed design matrices shipped with it; any
        other grid is computed from its instrument model, which differs by up to
        ~0.3 % per pixel (GaiaXPy 2.1.5) — so the default is passed as ``None``.
    truncation
        Use only the ``n_relevant_bases`` first bases (GaiaXPy ``truncation``); the XP
        library was built without truncation.
    method
        ``"matrix"`` (default): the batched linear map of
        :mod:`kielnet.data.xp_calibration` with GaiaXPy's matrices
        (:mod:`kielnet.io.xp_matrices`: derived once and cached, so GaiaXPy is needed
        only the first time, or for a non-default grid); equal to GaiaXPy to ~1e-14
        relative. ``"gaiaxpy"``: ``gaiaxpy.calibrate`` itself (the reference; slow).
    keep_coefficients
        Also keep the coefficient scalars ``bp_0 … rp_54`` (e⁻ s⁻¹), so that a model
        can read them as features (``features:`` entries, as the ``gaia_rvs_hybrid``
        preset does) next to the sampled spectrum.

    Returns
    -------
    StarTable
        flux and flux_err = flux / error (W m⁻² nm⁻¹) divided by the star's median
        flux (dimensionless); extra ``source_id``, ``medflux`` (W m⁻² nm⁻¹),
        ``missing_bp``, ``missing_rp``; the input's non-coefficient scalars (e.g.
        ``g``; the coefficients too with ``keep_coefficients``). Pixels covered only by
        a missing band are NaN (the median is then over the other band only); stars
        without standard deviations get NaN errors (kept from the GaiaXPy path, which
        needs them; the errors do not depend on them — GaiaXPy's standard deviation
        cancels — so this is a convention, not a necessity).
    """
    if method not in ("matrix", "gaiaxpy"):
        raise InputError(f"method must be 'matrix' or 'gaiaxpy', got {method!r}", field="method")
    table = (path_or_table if isinstance(path_or_table, StarTable)
             else read_xp_continuous(path_or_table))
    if truncation:
        for band in XP_BANDS:
            key = f"{band}_n_relevant_bases"
            present = ~table.extra.get(f"missing_{band}", np.zeros(len(table), bool))
            if key not in table.extra or np.isnan(np.asarray(table.extra[key], float)[present]).any():
                raise InputError("truncation needs n_relevant_bases for every present band",
                                 source=table.source, field=key)
    calibrate = _calibrate_matrix if method == "matrix" else _calibrate_gaiaxpy
    flux, err, used, origin = calibrate(table, sampling_nm, truncation)
    err[_no_std(table)] = np.nan
    flux_n, err_n, med = normalise_by_median(flux, err)
    coeff_names = set() if keep_coefficients else set(coefficient_names("bp")
                                                      + coefficient_names("rp"))
    scalars = {k: v for k, v in table.scalars.items() if k not in coeff_names}
    extra = {"source_id": table.extra["source_id"], "medflux": med}
    for band in XP_BANDS:
        key = f"missing_{band}"
        if key in table.extra:
            extra[key] = table.extra[key]
    meta = {"source": table.source, "loader": "gaia_xp.xp_sampled_spectra", "method": method,
            "truncation": bool(truncation)}
    if method == "gaiaxpy":
        meta.update(gaiaxpy_version=origin, flux="GaiaXPy calibrate / median flux")
    else:
        meta.update(xp_sampling=origin, flux="XP linear map (GaiaXPy matrices) / median flux")
    return StarTable(ids=table.ids, flux=flux_n, flux_err=err_n,
                     wavelength=np.asarray(used, dtype=float) * u.nm, scalars=scalars,
                     extra=extra, meta=meta)


def xp_coefficient_inputs(columns: Any) -> set[str]:
    """The XP coefficient scalars (``bp_0`` … ``rp_54``) among a model's scalar ``columns``."""
    return set(columns) & set(coefficient_names("bp") + coefficient_names("rp"))


def needs_xp_coefficients(columns: Any, table: StarTable) -> bool:
    """Whether a model reading the scalar ``columns`` needs XP coefficients that ``table``
    lacks but can give: it holds XP sampled spectra on the default grid (343 px, e.g. the
    XP library) and not those coefficient scalars."""
    wanted = xp_coefficient_inputs(columns)
    return (bool(wanted) and not wanted <= set(table.scalars) and table.flux is not None
            and table.flux.shape[1] == len(XP_WAVELENGTH_NM))


def add_xp_coefficients(table: StarTable) -> StarTable:
    """``table`` with the XP coefficients of its sampled spectra as scalars (the inverse
    of :func:`xp_sampled_spectra`'s linear map, with the cached GaiaXPy matrices:
    :func:`kielnet.data.xp_calibration.with_xp_coefficients`). Module-level, so that a
    streamed source can map its batches with it on a cluster."""
    from kielnet.data.xp_calibration import with_xp_coefficients
    from kielnet.io.xp_matrices import default_xp_sampling

    return with_xp_coefficients(table, default_xp_sampling())


def with_recovered_coefficients(table: StarTable, columns: tuple[str, ...]) -> StarTable:
    """``table`` with its XP coefficients recovered (:func:`add_xp_coefficients`) where a
    model reading the scalar ``columns`` needs them and the table can give them
    (:func:`needs_xp_coefficients`), else ``table`` as it is. For mapping a streamed
    source batch by batch (``functools.partial(with_recovered_coefficients, columns=…)``
    pickles for a cluster)."""
    return add_xp_coefficients(table) if needs_xp_coefficients(columns, table) else table
