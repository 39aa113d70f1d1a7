"""Teff / log g training labels from literature spectral types (``kielnet spectral-labels``).

APOGEE Net II (Sprague et al. 2022, §3.1) labels hot stars, whose direct Teff / log g
measurements are rare, from a literature spectral type and luminosity class through a
calibration fitted on stars with both. This workflow joins the pieces: a star table
with a spectral-type column (read by :func:`kielnet.io.tables.read_reference_columns`),
one or more calibration tables (:mod:`kielnet.io.calibration`: Mamajek's dwarf sequence
and/or a literature CSV), the fitted :class:`~kielnet.data.spectral_types.SpTCalibration`
and :func:`~kielnet.data.spectral_types.labels_from_spectral_types`. The output has one
row per input star under the input's id column, so ``kielnet train --labels OUT`` joins
it by id (:func:`kielnet.data.label_columns.join_labels`).

Like :mod:`kielnet.pipeline` this is an orchestration layer: it imports io and data;
nothing but the CLI imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import astropy.units as u
import numpy as np
from astropy.table import Column, Table

from kielnet.data.label_columns import ID_KEYS
from kielnet.data.spectral_types import SpTCalibration, StarSpTLabels, labels_from_spectral_types
from kielnet.errors import InputError, UsageError
from kielnet.io.calibration import read_calibration, stack_calibrations
from kielnet.io.tables import atomic_write_table, read_reference_columns

__all__ = ["SPTYPE_COLUMNS", "PROVENANCE", "pick_column", "fit_calibration", "spectral_labels_table",
           "run_spectral_labels"]

#: spectral-type column names looked for (case-insensitive), in order
SPTYPE_COLUMNS: tuple[str, ...] = ("sptype", "spt", "spectral_type", "sp_type")
PROVENANCE = "APOGEE Net II (Sprague et al. 2022, AJ 163, 152) Sect. 3.1: Teff, log g from spectral type + class"


def pick_column(columns: Sequence[str], explicit: str | None, candidates: Sequence[str], what: str, *,
                source: str) -> str:
    """The column of ``columns`` to use: ``explicit`` (exact, else case-insensitive), or
    the first of ``candidates`` present (case-insensitive). Raises :class:`InputError`
    naming the columns when there is none."""
    lower = {c.lower(): c for c in reversed(list(columns))}  # first of equal lower-case names wins
    if explicit is not None:
        if explicit in columns:
            return explicit
        if explicit.lower() in lower:
            return lower[explicit.lower()]
        raise InputError(f"no {what} column {explicit!r} (columns: {', '.join(columns)})", source=source,
                         field=explicit)
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    raise InputError(f"no {what} column: none of {', '.join(candidates)} (columns: {', '.join(columns)}); "
                     f"name it explicitly", source=source, field=what)


def fit_calibration(calibrations: Sequence[str | Path] = (), mamajek: Sequence[str | Path] = (), *,
                    lc_tolerance: float = 0.5, max_gap: float = 5.0) -> tuple[SpTCalibration, Table]:
    """Read the calibration tables and fit one :class:`SpTCalibration` on all their rows.

    Parameters
    ----------
    calibrations
        Files of either kind (Mamajek's dwarf sequence or a CSV, told apart by content).
    mamajek
        Files read as Mamajek's dwarf sequence.
    lc_tolerance, max_gap
        The calibration's support settings (luminosity classes; SpT subclasses).

    Returns
    -------
    (SpTCalibration, astropy.table.Table)
        The fitted calibration and the rows it was fitted on (``teff`` in K, ``logg`` in dex).
    """
    tables = [read_calibration(p) for p in calibrations] + [read_calibration(p, "mamajek") for p in mamajek]
    if not tables:
        raise UsageError("no calibration table: give --calibration FILE or --mamajek FILE")
    rows = stack_calibrations(tables)
    cal = SpTCalibration(lc_tolerance=lc_tolerance, max_gap=max_gap)
    cal.fit(rows["spt"], rows["lum_class"], rows["teff"], rows["logg"])
    return cal, rows


def _column(data: np.ndarray, unit: u.UnitBase | None, description: str) -> Column:
    return Column(data, unit=unit, description=description)


def spectral_labels_table(columns: Mapping[str, np.ndarray], calibration: SpTCalibration, *,
                          sptype_column: str | None = None, id_column: str | None = None,
                          source: str = "stars") -> tuple[Table, StarSpTLabels]:
    """Label every star of a table from its spectral type.

    Parameters
    ----------
    columns
        The star table's 1-D columns by name (:func:`kielnet.io.tables.read_reference_columns`).
    calibration
        A fitted :class:`SpTCalibration`.
    sptype_column
        Column of spectral-type strings (default: the first of :data:`SPTYPE_COLUMNS`).
    id_column
        Star-id column, kept under its name (default: the first of source_id, apogee_id, id).
    source
        The table's name, for messages.

    Returns
    -------
    (astropy.table.Table, StarSpTLabels)
        One row per input star, input order: the id column, ``sptype`` (the input text),
        ``spt``, ``lum_class`` (numeric codes), ``multiple``, ``teff``, ``teff_err`` [K],
        ``logg``, ``logg_err`` [dex] (NaN unless ``spt_status`` is ``ok``) and
        ``spt_status``; and the per-star result.
    """
    names = list(columns)
    sp_name = pick_column(names, sptype_column, SPTYPE_COLUMNS, "spectral-type", source=source)
    id_name = pick_column(names, id_column, ID_KEYS, "star-id", source=source)
    text = np.asarray(columns[sp_name])
    if text.dtype.kind not in "USO":
        raise InputError(f"column {sp_name!r} holds {text.dtype} values, not spectral-type strings such as 'B2.5V'",
                         source=source, field=sp_name)
    res = labels_from_spectral_types(text.tolist(), calibration)
    tab = Table()
    tab[id_name] = np.asarray(columns[id_name])
    tab["sptype"] = _column(np.asarray(text, dtype=str), None, f"spectral type as given ({sp_name})")
    tab["spt"] = _column(res.spt, None, "numeric spectral type: O0 = 0, B0 = 10, A0 = 20, ... (B2.5 = 12.5)")
    tab["lum_class"] = _column(res.lum_class, None, "numeric luminosity class: I = 1 ... V = 5, VI = 6")
    tab["multiple"] = _column(res.multiple, None, "the type names several stars; the first one is used")
    tab["teff"] = _column(res.teff, u.K, "effective temperature from the spectral type")
    tab["teff_err"] = _column(res.teff_err, u.K, "1-sigma GP predictive uncertainty of teff")
    tab["logg"] = _column(res.logg, u.dex, "surface gravity log10(g / cm s-2) from the spectral type")
    tab["logg_err"] = _column(res.logg_err, u.dex, "1-sigma GP predictive uncertainty of logg")
    tab["spt_status"] = _column(res.status, None, "ok, outside_support, no_luminosity_class or unparsed: reason")
    tab.meta["provenance"] = PROVENANCE
    tab.meta["stars"] = source
    tab.meta["sptype_column"] = sp_name
    return tab, res


def run_spectral_labels(stars: str | Path, out: str | Path, *, calibrations: Sequence[str | Path] = (),
                        mamajek: Sequence[str | Path] = (), sptype_column: str | None = None,
                        id_column: str | None = None, lc_tolerance: float = 0.5, max_gap: float = 5.0,
                        log=print) -> StarSpTLabels:
    """Read ``stars``, fit the calibration, label every star and write ``out`` (Parquet /
    FITS / CSV / ECSV by suffix, atomically); ``log`` gets the counts. See
    :func:`fit_calibration` and :func:`spectral_labels_table`."""
    cal, rows = fit_calibration(calibrations, mamajek, lc_tolerance=lc_tolerance, max_gap=max_gap)
    classes = ", ".join(f"{c:g}" for c in cal.lum_classes)
    log(f"calibration: {len(rows)} rows (luminosity classes {classes}) from {', '.join(rows.meta['sources'])}")
    tab, res = spectral_labels_table(read_reference_columns(stars), cal, sptype_column=sptype_column,
                                     id_column=id_column, source=str(stars))
    tab.meta["calibration"] = ", ".join(rows.meta["sources"])
    tab.meta["calibration_rows"] = len(rows)
    tab.meta["lc_tolerance"] = lc_tolerance
    tab.meta["max_gap"] = max_gap
    atomic_write_table(tab, out)
    c = res.counts()
    log(f"{c['total']} stars: {c['parsed']} parsed ({c['unparsed']} not), {c['no_luminosity_class']} without a "
        f"luminosity class, {c['outside_support']} outside the calibration's support, {c['labelled']} labelled; "
        f"written to {out}")
    return res
