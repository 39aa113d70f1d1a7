"""Input checks at file level before a bundle labels stars.

* :func:`fill_absent_inputs`: a scalar input the bundle reads but the whole file lacks
  (an archive XP file carries only G: no BP/RP, no 2MASS) is the per-star "missing
  input" case for every star, *when the bundle's σ model has a calibrated factor for an
  input group covering it* (``uncertainty.missing_inputs: calibrate``): the column is
  added as NaN, each star is flagged ``missing_input`` and gets the calibrated σ of that
  group, and one warning names the columns. Where no group covers them the file is
  refused, naming the columns (as before).
* :func:`duplicate_id_mask`: stars whose id occurs more than once in the input; the
  catalogue marks them in ``duplicate_id`` and a warning gives the count.
"""

from __future__ import annotations

import warnings

import numpy as np

from kielnet.artifact import Bundle
from kielnet.data.input_columns import resolve_inputs
from kielnet.data.startable import StarTable
from kielnet.quality.sigma import UNCOVERED

__all__ = ["absent_inputs", "covering_group", "fill_absent_inputs", "duplicate_id_mask", "warn_duplicates"]


def absent_inputs(bundle: Bundle, table: StarTable) -> list[str]:
    """Scalar columns the bundle reads that ``table`` does not hold at all (a column
    present but holding text that is not a number is *not* absent: it stays an error)."""
    non_numeric = table.meta.get("non_numeric_columns") or {}
    return [c for c in bundle.config.scalar_columns() if c not in table.scalars and c not in non_numeric]


def covering_group(bundle: Bundle, columns: list[str]) -> str | None:
    """The input group whose calibrated σ factor covers ``columns`` all missing (the
    smallest such group), or ``None`` if the bundle has none."""
    sm = bundle.sigma_model
    if sm is None or not columns or sm.rule != "calibrate":
        return None
    mask = np.array([[c in columns for c in sm.columns]])
    if not mask.any() or set(columns) - set(sm.columns):
        return None
    g = int(sm.group_index(mask)[0])
    return None if g == UNCOVERED else list(sm.groups)[g]


def fill_absent_inputs(bundle: Bundle, table: StarTable) -> StarTable:
    """``table`` with every absent input column (:func:`absent_inputs`) added as NaN when
    the bundle's σ model covers them (module docstring), with one :class:`UserWarning`
    naming them and the group; unchanged when none is absent. When no group covers them
    the table is returned unchanged and :meth:`StarTable.require` refuses it, naming the
    first missing column."""
    table = resolve_inputs(table, bundle.config.scalar_columns())
    absent = absent_inputs(bundle, table)
    if not absent:
        return table
    group = covering_group(bundle, absent)
    if group is None:
        return table
    warnings.warn(f"{table.source}: input column(s) {', '.join(absent)} absent from the file: treated as missing "
                  f"for every star (flag missing_input; sigma calibrated for input group '{group}' missing)",
                  UserWarning, stacklevel=2)
    scalars = dict(table.scalars)
    for c in absent:
        scalars[c] = np.full(len(table), np.nan)
    meta = dict(table.meta)
    meta["absent_inputs"] = list(absent)
    return StarTable(ids=table.ids, flux=table.flux, flux_err=table.flux_err, wavelength=table.wavelength,
                     scalars=scalars, labels=table.labels, label_errs=table.label_errs, extra=table.extra,
                     meta=meta)


def duplicate_id_mask(ids: np.ndarray) -> np.ndarray:
    """True for every star whose id occurs more than once in ``ids``."""
    ids = np.asarray(ids)
    if len(ids) < 2:
        return np.zeros(len(ids), dtype=bool)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def warn_duplicates(n_rows: int, n_ids: int, source: str) -> None:
    """One warning: ``n_rows`` rows share ``n_ids`` ids that occur more than once."""
    if n_rows:
        warnings.warn(f"{source}: {n_rows} stars share {n_ids} ids that occur more than once in the input; every "
                      "row is labelled, and the catalogue column duplicate_id marks them", UserWarning, stacklevel=2)
