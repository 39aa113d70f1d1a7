"""The published Gaia-RVS CNN catalogue format (Guiglion et al. 2024, Table 2).

:func:`to_rvs_catalogue` turns a kielnet catalogue (see
:mod:`kielnet.inference.predict`: columns ``X``, ``e_X``, ``sigma_X`` per label) into
exactly the 17 columns of Table 2, in this order:

* ``source_id`` — Gaia source ID, as text (Table 2 format: char);
* ``teff``, ``eteff``, ``sigma_teff`` [K] — from ``teff``, ``e_teff``, ``sigma_teff``;
* ``logg``, ``elogg``, ``sigma_logg`` [dex(cm s-2)] — from ``logg``, ``e_logg``,
  ``sigma_logg``;
* ``mh``, ``emh``, ``sigma_mh`` [dex] — from ``m_h``, ``e_m_h``, ``sigma_m_h``;
* ``feh``, ``efeh``, ``sigma_feh`` [dex] — from ``fe_h``, ``e_fe_h``, ``sigma_fe_h``;
* ``alpham``, ``ealpham``, ``sigma_alpham`` [dex] — from ``alpha_m``, ``e_alpha_m``,
  ``sigma_alpha_m``;
* ``flag_boundary`` — the 8-digit boundary flag, text (see
  :mod:`kielnet.quality.boundary`).

For each label the three columns are the value, the model-to-model dispersion
(``e``: kielnet's ``e_X``, the ensemble standard deviation, which also holds the
noise-realisation variance when predictions used noise realisations) and the overall
dispersion (``sigma_``: ``sigma_X`` = ``e_X`` ⊕ the running dispersion of the
training sample, §3.4 and §4.2). The first column is ``source_id``, the Gaia archive's
name (the paper's text extraction prints it as ``sourceid``). Table 2 orders [Fe/H] before [α/M], whereas the boundary flag's digits put
[α/M] first.

Deliberate departures from the letter of Table 2:

* Table 2 gives "cm s−2" as unit of log g; the values are log10(g / cm s−2), so the
  unit is the logarithmic ``dex(cm s-2)`` (written as that text to FITS ``TUNIT``).
* Table 2 gives ``int`` as format of ``flag_boundary``; it is stored as an
  8-character string because leading zeros matter (§5.4 selects
  ``flag_boundary="00000000"``).
* Descriptions spell [α/M] as ``[alpha/M]`` (FITS headers are ASCII).

The table's header comments describe the boundary flag.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Table

from kielnet.labels import astropy_unit, label_info
from kielnet.errors import InputError
from kielnet.io.tables import atomic_write_table
from kielnet.quality.boundary import describe_boundary_flag, parse_boundary_flags

__all__ = ["RVS_COLUMNS", "RVS_LABELS", "LOGG_UNIT", "to_rvs_catalogue", "write_rvs_catalogue"]

#: log g unit: Table 2's "cm s-2", as the logarithmic unit the values are in.
LOGG_UNIT = u.dex(u.cm / u.s ** 2)

#: Table 2 name, kielnet label, unit and the quantity's name in descriptions, in column order.
RVS_LABELS: tuple[tuple[str, str, u.UnitBase, str], ...] = (
    ("teff", "teff", u.K, "Teff"),
    ("logg", "logg", LOGG_UNIT, "log(g)"),
    ("mh", "m_h", u.dex, "[M/H]"),
    ("feh", "fe_h", u.dex, "[Fe/H]"),
    ("alpham", "alpha_m", u.dex, "[alpha/M]"),
)
_VALUE_TEXT = {"teff": "Effective temperature", "logg": "Surface gravity", "mh": "Overall metallicity",
               "feh": "[Fe/H] ratio", "alpham": "[alpha/M] ratio"}

#: The 17 column names of Table 2, in order.
RVS_COLUMNS: tuple[str, ...] = ("source_id",) + tuple(
    c for name, *_ in RVS_LABELS for c in (name, f"e{name}", f"sigma_{name}")) + ("flag_boundary",)

# units of kielnet's own columns that are accepted as the same numbers
# (kielnet's label vocabulary, plus the published log g unit); the Table-2 names and descriptions
# are the paper's published schema and stay as published
_ACCEPTED_UNITS = {label: tuple(x for x in dict.fromkeys((astropy_unit(label_info(label).unit), unit)) if x is not None)
                   for _, label, unit, _ in RVS_LABELS}


def _source_ids(source_id, n: int) -> np.ndarray:
    """Gaia source ids as text; floats (which cannot hold 19 digits) and blanks are refused."""
    mask = np.ma.getmaskarray(source_id)
    data = np.atleast_1d(np.asarray(np.ma.getdata(source_id)))
    if data.shape != (n,):
        raise InputError(f"source_id has shape {data.shape}, the catalogue has {n} rows", field="source_id")
    if mask.any():
        raise InputError("source_id is missing", field="source_id", row=int(np.flatnonzero(mask)[0]))
    if data.dtype.kind in "iu":
        ids = data.astype(str)
    elif data.dtype.kind in "US":
        ids = np.char.strip(np.char.decode(data, "ascii") if data.dtype.kind == "S" else data)
    else:
        raise InputError(f"source_id must be integers or text, got dtype {data.dtype} (floating point "
                         "cannot hold 19-digit Gaia ids exactly)", field="source_id")
    blank = ids == ""
    if blank.any():
        raise InputError("source_id is blank", field="source_id", row=int(np.flatnonzero(blank)[0]))
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = int(np.flatnonzero(counts > 1)[0])
        raise InputError("source_id appears more than once (Table 2 has one row per Gaia source)",
                         field="source_id", star=str(uniq[k]), row=int(first[k]))
    return ids.astype(f"U{max(1, int(np.char.str_len(ids).max(initial=1)))}")


def _label_column(cat: Table, name: str, label: str) -> np.ndarray:
    if name not in cat.colnames:
        raise InputError(f"catalogue column '{name}' needed for Table 2 is missing; columns: {cat.colnames}",
                         field=name)
    col = cat[name]
    unit = getattr(col, "unit", None)
    if unit is not None and not any(unit == ok for ok in _ACCEPTED_UNITS[label]):
        raise InputError(f"column has unit {unit}, expected one of "
                         f"{[str(x) for x in _ACCEPTED_UNITS[label]]}", field=name)
    try:
        values = np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
    except (TypeError, ValueError):
        raise InputError("column is not numeric", field=name) from None
    if values.ndim != 1:
        raise InputError(f"column must be 1-D, got shape {values.shape}", field=name)
    return values


def to_rvs_catalogue(cat: Table, source_id=None, flag_boundary=None) -> Table:
    """Reformat a kielnet catalogue as Table 2 of the Gaia-RVS CNN paper.

    Parameters
    ----------
    cat
        kielnet catalogue with ``X``, ``e_X``, ``sigma_X`` for ``teff`` (K), ``logg``,
        ``m_h``, ``fe_h`` and ``alpha_m`` (dex), one row per star.
    source_id
        Gaia DR3 ``source_id`` per row (integers or text); default: ``cat['source_id']``.
    flag_boundary
        8-digit boundary flag per row (from
        :func:`kielnet.quality.boundary.boundary_flags`); default: ``cat['flag_boundary']``.

    Returns
    -------
    astropy.table.Table
        Exactly the columns :data:`RVS_COLUMNS`, in order, with Table 2 units and
        descriptions; rows in input order; missing labels stay NaN. ``meta`` keeps
        the scalar provenance keys of ``cat`` and holds the boundary-flag
        description as header comments.

    Raises
    ------
    InputError
        Naming the column (and row) of a missing column, a malformed flag, a
        missing, blank, floating-point or duplicated source id, or a label column in
        another unit.
    """
    n = len(cat)
    for arg, name in ((source_id, "source_id"), (flag_boundary, "flag_boundary")):
        if arg is None and name not in cat.colnames:
            raise InputError(f"no {name} given and the catalogue has no '{name}' column", field=name)
    ids = _source_ids(cat["source_id"] if source_id is None else source_id, n)
    flags = cat["flag_boundary"] if flag_boundary is None else flag_boundary
    flags = np.atleast_1d(np.asarray(flags))
    if flags.shape != (n,):
        raise InputError(f"flag_boundary has shape {flags.shape}, the catalogue has {n} rows",
                         field="flag_boundary")
    parse_boundary_flags(flags)  # validates: 8 characters of 0/1 each
    flags = np.char.decode(flags, "ascii") if flags.dtype.kind == "S" else flags.astype(str)

    out = Table()
    out["source_id"] = ids
    out["source_id"].description = "Gaia Source ID"
    for name, label, unit, text in RVS_LABELS:
        for col, src, desc in ((name, label, _VALUE_TEXT[name]),
                               (f"e{name}", f"e_{label}", f"Model-to-model dispersion of {text}"),
                               (f"sigma_{name}", f"sigma_{label}", f"Overall dispersion of {text}")):
            out[col] = _label_column(cat, src, label)
            out[col].unit = unit
            out[col].description = desc
    out["flag_boundary"] = flags.astype("U8")
    out["flag_boundary"].description = "Boundary flag composed of 8 digits"
    out.meta.update({k: v for k, v in cat.meta.items()
                     if k not in ("comments", "kielnet_roles") and isinstance(v, (str, int, float, bool))})
    out.meta["comments"] = describe_boundary_flag().splitlines()
    return out


def write_rvs_catalogue(table: Table, path: str | Path) -> Path:
    """Write a Table 2 catalogue atomically (format from the suffix: FITS or Parquet).

    The schema is checked first (exact columns, in order). For FITS, the log g unit
    is written as the text ``dex(cm s-2)`` (FITS has no logarithmic units);
    :func:`kielnet.io.tables.read_catalogue` reads it back as ``dex(cm / s2)``.
    """
    if tuple(table.colnames) != RVS_COLUMNS:
        raise InputError(f"not a Table 2 catalogue: columns {table.colnames}, expected {list(RVS_COLUMNS)}",
                         source=str(path))
    parse_boundary_flags(np.asarray(table["flag_boundary"]))
    path = Path(path)
    out = table
    if path.suffix.lower() in (".fits", ".fit", ".fz") or path.suffixes[-2:-1] == [".fits"]:
        out = table.copy(copy_data=False)
        for name in out.colnames:
            unit = out[name].unit
            if isinstance(unit, u.FunctionUnitBase):  # astropy cannot write these to FITS itself
                text = "dex(cm s-2)" if unit == LOGG_UNIT else unit.to_string()
                out[name].unit = u.UnrecognizedUnit(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        return atomic_write_table(out, path)
