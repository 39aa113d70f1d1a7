"""Readers of spectral-type → (Teff, log g) calibration tables.

Both readers return an :class:`astropy.table.Table` with one row per calibration
star, ready for :meth:`kielnet.data.spectral_types.SpTCalibration.fit`:

* ``spt_label`` (str): the spectral type as written in the file;
* ``spt``: numeric spectral type (O0 = 0, B0 = 10, … see
  :func:`~kielnet.data.spectral_types.parse_spectral_type`);
* ``lum_class``: numeric luminosity class (I = 1 … V = 5);
* ``teff`` in K, ``logg`` in dex (cgs).

:func:`read_mamajek_table` reads E. Mamajek's "Modern Mean Dwarf Stellar Color and
Effective Temperature Sequence" (``EEM_dwarf_UBVIJHK_colors_Teff.txt``; Pecaut &
Mamajek 2013, ApJS 208, 9): class V, with log g = 4.438 + log10(M/M☉) − 2·log10(R/R☉)
(4.438 = log g☉). :func:`read_calibration_csv` reads a user compilation such as the
literature sample of APOGEE Net II §3.1. :func:`read_calibration` reads either, telling
them apart by content, and :func:`stack_calibrations` joins several into one table.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import Column, Table, vstack

from kielnet.data.spectral_types import parse_spectral_type
from kielnet.errors import InputError
from kielnet.io.paths import TEXT_ENCODING

__all__ = ["read_mamajek_table", "read_calibration_csv", "read_calibration", "stack_calibrations",
           "is_mamajek_table", "CALIBRATION_COLUMNS", "LOGG_SUN"]

#: log10 of the solar surface gravity in cm s⁻² (IAU 2015 nominal values).
LOGG_SUN = 4.438

#: the columns every calibration reader returns (and :func:`stack_calibrations` keeps)
CALIBRATION_COLUMNS = ("spt_label", "spt", "lum_class", "teff", "logg")
_MAMAJEK_NEEDED = ("SpT", "Teff", "R_Rsun", "Msun")
_CSV_ALIASES = {"spt": ("spt", "sptype", "sp_type", "spectral_type"),
                "lum_class": ("lum_class", "lc", "luminosity_class", "lumclass"),
                "teff": ("teff", "t_eff"),
                "logg": ("logg", "log_g")}


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError("file does not exist", source=str(p))
    return p


def _result_table(labels: list[str], spt: list[float], lc: list[float], teff: list[float],
                  logg: list[float], source: str) -> Table:
    t = Table()
    t["spt_label"] = np.array(labels, dtype=str)
    t["spt"] = np.array(spt, dtype=np.float64)
    t["lum_class"] = np.array(lc, dtype=np.float64)
    t["teff"] = Column(np.array(teff, dtype=np.float64), unit=u.K)
    t["logg"] = Column(np.array(logg, dtype=np.float64), unit=u.dex)
    t.meta["source"] = source
    return t


def _mamajek_value(token: str, name: str, source: str, row: int, line: int) -> float:
    if token.strip(".") == "":  # "...", "....", "....." mark missing values
        return math.nan
    try:
        return float(token)
    except ValueError:
        raise InputError(f"value {token!r} on line {line} is not a number", source=source, field=name,
                         row=row) from None


def read_mamajek_table(path: str | Path) -> Table:
    """Read Mamajek's mean dwarf sequence as a class-V calibration table.

    The first block of rows after the ``#SpT ...`` header line is read (the file ends
    with a repeated header and free-text notes). Rows with a missing Teff, radius or
    mass (late L, T and Y dwarfs) are skipped.

    Parameters
    ----------
    path
        ``EEM_dwarf_UBVIJHK_colors_Teff.txt``.

    Returns
    -------
    astropy.table.Table
        Columns ``spt_label``, ``spt``, ``lum_class`` (5), ``teff`` (K), ``logg`` (dex),
        ``r_rsun``, ``msun``; ``meta['source']`` is the path.

    Raises
    ------
    InputError
        Missing file or header, a row with the wrong number of fields, a non-numeric
        value or an unparsable spectral type (``row`` is the zero-based data row, the
        message names the line).
    """
    p = _check_file(path)
    source = str(p)
    lines = p.read_text(encoding=TEXT_ENCODING, errors="replace").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("#SpT")), None)
    if start is None:
        raise InputError("no '#SpT ...' header line: is this Mamajek's dwarf sequence table?", source=source)
    names = lines[start].lstrip("#").split()
    missing = [n for n in _MAMAJEK_NEEDED if n not in names]
    if missing:
        raise InputError(f"header lacks column(s) {', '.join(missing)}", source=source, field=missing[0])
    col = {n: names.index(n) for n in _MAMAJEK_NEEDED}
    labels, spt, lc, teff, logg, radius, mass = [], [], [], [], [], [], []
    row = -1
    for i in range(start + 1, len(lines)):
        text = lines[i].strip()
        if not text or text.startswith("#"):
            break  # end of the table block
        row += 1
        fields = text.split()
        if len(fields) != len(names):
            raise InputError(f"line {i + 1} has {len(fields)} fields, the header {len(names)}",
                             source=source, row=row)
        vals = {n: _mamajek_value(fields[col[n]], n, source, row, i + 1) for n in _MAMAJEK_NEEDED[1:]}
        if not all(np.isfinite(v) and v > 0 for v in vals.values()):
            continue
        label = fields[col["SpT"]]
        parsed = parse_spectral_type(label)
        if not parsed.ok:
            raise InputError(f"line {i + 1}: {parsed.reason}", source=source, field="SpT", row=row)
        labels.append(label)
        spt.append(parsed.spt)
        lc.append(5.0 if math.isnan(parsed.lum_class) else parsed.lum_class)
        teff.append(vals["Teff"])
        logg.append(LOGG_SUN + math.log10(vals["Msun"]) - 2.0 * math.log10(vals["R_Rsun"]))
        radius.append(vals["R_Rsun"])
        mass.append(vals["Msun"])
    if not labels:
        raise InputError("no complete rows (SpT, Teff, R_Rsun, Msun) after the header", source=source)
    t = _result_table(labels, spt, lc, teff, logg, source)
    t["r_rsun"] = np.array(radius)
    t["msun"] = np.array(mass)
    t.meta["reference"] = "Pecaut & Mamajek 2013, ApJS 208, 9 (EEM dwarf sequence)"
    return t


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _find_columns(header: list[str], source: str) -> dict[str, int]:
    lowered = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for key, aliases in _CSV_ALIASES.items():
        for a in aliases:
            if a in lowered:
                found[key] = lowered.index(a)
                break
    missing = [k for k in ("spt", "teff", "logg") if k not in found]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (columns: {', '.join(header)})",
                         source=source, field=missing[0])
    return found


def read_calibration_csv(path: str | Path) -> Table:
    """Read a user calibration compilation (CSV with a header line).

    Columns (case-insensitive; aliases in brackets):

    * ``spt`` [sptype, sp_type, spectral_type]: a spectral type string (``"B2.5IV-V"``)
      or a number on the numeric scale (0 ≤ spt < 100);
    * ``lum_class`` [lc, luminosity_class]: optional; a class string (``"IV-V"``) or a
      number (1 … 6). An entry here wins over a class inside the ``spt`` string; an
      empty cell falls back to it;
    * ``teff`` in K (> 0) and ``logg`` in dex.

    Lines starting with ``#`` and blank lines are skipped; other columns are ignored.
    Spectral types naming several stars (``"B2V+B3V"``) are kept (first component)
    and marked in column ``multiple``.

    Parameters
    ----------
    path
        The CSV file.

    Returns
    -------
    astropy.table.Table
        Columns ``spt_label``, ``spt``, ``lum_class``, ``teff`` (K), ``logg`` (dex),
        ``multiple``; ``meta['source']`` is the path.

    Raises
    ------
    InputError
        Missing file or column, or a bad row: unparsable spectral type or class, no
        luminosity class at all, non-numeric or non-finite Teff / log g, Teff ≤ 0.
        ``field`` names the column and ``row`` the zero-based data row.
    """
    p = _check_file(path)
    source = str(p)
    with p.open(newline="", encoding=TEXT_ENCODING) as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise InputError("file holds no header line", source=source)
    header, data = rows[0], rows[1:]
    cols = _find_columns(header, source)
    if not data:
        raise InputError("file holds no data rows", source=source)
    labels, spt, lc, teff, logg, multiple = [], [], [], [], [], []
    for row, rec in enumerate(data):
        def cell(key: str) -> str:
            idx = cols.get(key)
            return rec[idx].strip() if idx is not None and idx < len(rec) else ""

        def bad(msg: str, key: str) -> InputError:
            return InputError(msg, source=source, field=header[cols[key]].strip(), row=row)

        s_text = cell("spt")
        num = _number(s_text)
        if num is not None:
            if not (np.isfinite(num) and 0.0 <= num < 100.0):
                raise bad(f"numeric spectral type {s_text!r} is outside 0 ≤ spt < 100", "spt")
            s_val, lc_val, mult = num, math.nan, False
        else:
            parsed = parse_spectral_type(s_text)
            if not parsed.ok:
                raise bad(parsed.reason, "spt")
            s_val, lc_val, mult = parsed.spt, parsed.lum_class, parsed.multiple
        lc_text = cell("lum_class")
        if lc_text:
            lc_num = _number(lc_text)
            if lc_num is None:
                # a class string such as "IV-V": parse it behind a dummy type
                parsed_lc = parse_spectral_type(f"B0 {lc_text}")
                lc_num = parsed_lc.lum_class if parsed_lc.ok else math.nan
            if not (np.isfinite(lc_num) and 0.0 <= lc_num <= 6.0):
                raise bad(f"luminosity class {lc_text!r} is not I…VI or a number 0…6", "lum_class")
            lc_val = lc_num
        if math.isnan(lc_val):
            key = "lum_class" if "lum_class" in cols else "spt"
            raise bad(f"no luminosity class for spectral type {s_text!r} (give it in the spt string "
                      f"or a lum_class column)", key)
        values = {}
        for key in ("teff", "logg"):
            v = _number(cell(key))
            if v is None or not np.isfinite(v):
                raise bad(f"{key} {cell(key)!r} is not a finite number", key)
            values[key] = v
        if values["teff"] <= 0:
            raise bad(f"teff must be positive (K), got {values['teff']!r}", "teff")
        labels.append(s_text)
        spt.append(s_val)
        lc.append(lc_val)
        teff.append(values["teff"])
        logg.append(values["logg"])
        multiple.append(mult)
    t = _result_table(labels, spt, lc, teff, logg, source)
    t["multiple"] = np.array(multiple, dtype=bool)
    return t



def is_mamajek_table(path: str | Path) -> bool:
    """Whether ``path`` is laid out like Mamajek's dwarf sequence: a line starting with
    ``#SpT`` (its column header). Calibration CSVs have a plain header line instead."""
    p = _check_file(path)
    with p.open(encoding="utf-8", errors="replace") as fh:
        return any(line.startswith("#SpT") for line in fh)


def read_calibration(path: str | Path, kind: str = "auto") -> Table:
    """Read a spectral-type calibration table of either kind.

    Parameters
    ----------
    path
        Mamajek's dwarf sequence or a calibration CSV.
    kind
        ``"mamajek"`` (:func:`read_mamajek_table`), ``"csv"`` (:func:`read_calibration_csv`)
        or ``"auto"``: Mamajek's table when :func:`is_mamajek_table`, else CSV.

    Returns
    -------
    astropy.table.Table
        As the reader chosen returns it (``teff`` in K, ``logg`` in dex);
        ``meta['kind']`` names the kind read.
    """
    if kind not in ("auto", "mamajek", "csv"):
        raise ValueError(f"kind must be 'auto', 'mamajek' or 'csv', got {kind!r}")
    if kind == "auto":
        kind = "mamajek" if is_mamajek_table(path) else "csv"
    t = read_mamajek_table(path) if kind == "mamajek" else read_calibration_csv(path)
    t.meta["kind"] = kind
    return t


def stack_calibrations(tables: list[Table]) -> Table:
    """Several calibration tables as one: the rows of all, columns
    :data:`CALIBRATION_COLUMNS` only (``teff`` in K, ``logg`` in dex), plus ``source``
    (each row's file, ``meta['source']``); ``meta['sources']`` lists the files."""
    if not tables:
        raise ValueError("no calibration tables to stack")
    parts = []
    for t in tables:
        part = t[list(CALIBRATION_COLUMNS)]
        part["source"] = np.full(len(t), str(t.meta.get("source", "")))
        parts.append(part)
    out = vstack(parts, join_type="exact", metadata_conflicts="silent")
    out.meta = {"sources": [str(t.meta.get("source", "")) for t in tables]}
    return out
