"""The 8-digit boundary flag of the Gaia-RVS hybrid CNN catalogue.

Guiglion et al. (2024, A&A, "Beyond Gaia DR3"), §5.2 and Table 2 (``flag_boundary``):
one character per criterion, in this order,

=====  ============  ================================================================
digit  name          '1' when …
=====  ============  ================================================================
1      ``teff``      predicted Teff (K) outside the training-sample range
2      ``logg``      predicted log g (dex, cgs) outside the training-sample range
3      ``m_h``       predicted [M/H] (dex) outside the training-sample range
4      ``alpha_m``   predicted [α/M] (dex) outside the training-sample range
5      ``fe_h``      predicted [Fe/H] (dex) outside the training-sample range
6      ``g``         Gaia G (mag) outside the training-sample range
7      ``parallax``  Gaia parallax (mas) outside the training-sample range
8      ``tsne``      the t-SNE classification calls the spectrum training-unlike
=====  ============  ================================================================

and '0' otherwise. Note the paper's digit order: [α/M] comes *before* [Fe/H].
``"00000000"`` marks a star within the training-sample limits, similar to the
training spectra, and is the paper's recommended selection for science; e.g.
``"10000000"`` means only Teff is outside the training limits.

A value is inside its range when ``lo <= value <= hi`` (the training range is the
closed interval of Table 1, e.g. Teff [3705, 6395] K). A missing value (NaN or
masked) or a missing t-SNE classification gives '1': it cannot be shown to lie
within the training limits, so such a star never gets ``"00000000"``. The paper
defines only the digits '0' and '1'.

The flag is a string (leading zeros matter); Table 2 lists its format as ``int``,
but §5.4 selects it as ``flag_boundary="00000000"``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import astropy.units as u
import numpy as np

from kielnet.labels import astropy_unit, label_info
from kielnet.errors import InputError

__all__ = ["BOUNDARY_DIGITS", "BOUNDARY_LABELS", "TABLE1_LABEL_RANGES", "TABLE1_G_RANGE",
           "TABLE1_PARALLAX_RANGE", "IN_TRAINING", "boundary_flags", "parse_boundary_flags",
           "describe_boundary_flag"]

#: Labels of digits 1–5, in flag order (kielnet label names).
BOUNDARY_LABELS: tuple[str, ...] = ("teff", "logg", "m_h", "alpha_m", "fe_h")
#: Names of the 8 digits, in flag order.
BOUNDARY_DIGITS: tuple[str, ...] = BOUNDARY_LABELS + ("g", "parallax", "tsne")
#: The flag of a star inside every training limit and training-like.
IN_TRAINING = "0" * len(BOUNDARY_DIGITS)

#: Table 1 of the paper: effective training-sample ranges (K for Teff, dex otherwise).
TABLE1_LABEL_RANGES: dict[str, tuple[float, float]] = {
    "teff": (3705.0, 6395.0),
    "logg": (0.58, 4.70),
    "m_h": (-2.29, 0.55),
    "alpha_m": (-0.18, 0.46),
    "fe_h": (-2.20, 0.54),
}
#: Table 1: Gaia G range of the training sample (mag).
TABLE1_G_RANGE: tuple[float, float] = (9.01, 14.21)
#: Table 1: parallax range of the training sample (mas).
TABLE1_PARALLAX_RANGE: tuple[float, float] = (0.05, 7.00)

_DIGIT_TEXT = {
    "teff": "Teff outside the training range",
    "logg": "log g outside the training range",
    "m_h": "[M/H] outside the training range",
    "alpha_m": "[alpha/M] outside the training range",
    "fe_h": "[Fe/H] outside the training range",
    "g": "Gaia G outside the training range",
    "parallax": "parallax outside the training range",
    "tsne": "t-SNE calls the spectrum training-unlike",
}


def describe_boundary_flag() -> str:
    """Plain-ASCII description of the flag, one line per digit and at most 72
    characters a line (``--help`` texts, FITS ``COMMENT`` cards)."""
    lines = [f"flag_boundary (Guiglion et al. 2024, Sect. 5.2): {len(BOUNDARY_DIGITS)} digits, "
             "'1' or '0'"]
    lines += [f"digit {i}: {name} - '1' if {_DIGIT_TEXT[name]}"
              for i, name in enumerate(BOUNDARY_DIGITS, start=1)]
    lines.append("ranges are closed intervals [lo, hi]")
    lines.append("a missing (NaN or masked) value gives '1'")
    lines.append(f"'{IN_TRAINING}': within all training limits and training-like")
    return "\n".join(lines)


def _values(x, unit: u.UnitBase | None, name: str, n: int | None) -> np.ndarray:
    """Float array (NaN for masked), converted to ``unit`` if ``x`` is a Quantity."""
    if isinstance(x, u.Quantity):
        if unit is None:
            raise InputError(f"expected plain numbers, got a quantity in {x.unit}", field=name)
        if unit == u.dex and x.unit.to_string().startswith("dex"):  # dex or dex(cm s-2): same numbers
            x = x.value
    if isinstance(x, u.Quantity):
        try:
            x = x.to_value(unit)
        except u.UnitConversionError as exc:
            raise InputError(f"cannot convert {x.unit} to {unit}", field=name) from exc
    try:
        arr = np.ma.filled(np.ma.asarray(x, dtype=np.float64), np.nan)
    except (TypeError, ValueError):
        raise InputError("values are not numeric", field=name) from None
    arr = np.atleast_1d(arr)
    if arr.ndim != 1 or (n is not None and arr.shape != (n,)):
        raise InputError(f"expected shape ({n if n is not None else 'n'},), got {arr.shape}", field=name)
    return arr


def _range(r, unit: u.UnitBase | None, name: str) -> tuple[float, float]:
    if not isinstance(r, u.Quantity) and isinstance(r, Sequence) and any(isinstance(v, u.Quantity) for v in r):
        r = u.Quantity(list(r))
    lo, hi = _values(r, unit, f"{name} range", 2)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise InputError(f"range must be two finite numbers lo <= hi, got ({lo}, {hi})", field=name)
    return float(lo), float(hi)


def _outside(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """True where ``v`` is NaN or outside the closed interval [lo, hi]."""
    with np.errstate(invalid="ignore"):
        return ~((v >= lo) & (v <= hi))


def boundary_flags(labels: Mapping[str, np.ndarray], label_ranges: Mapping[str, Sequence[float]],
                   g: np.ndarray, parallax: np.ndarray, g_range: Sequence[float],
                   parallax_range: Sequence[float], tsne_unlike: np.ndarray) -> np.ndarray:
    """The 8-digit boundary flag of every star (see module docstring).

    Parameters
    ----------
    labels
        Predicted labels, one array per name of :data:`BOUNDARY_LABELS` (``teff`` in K,
        ``logg``, ``m_h``, ``alpha_m``, ``fe_h`` in dex); extra keys are ignored.
    label_ranges
        Training range ``(lo, hi)`` per label (e.g. :data:`TABLE1_LABEL_RANGES` or a
        bundle's ``label_ranges``).
    g, parallax
        Gaia G (mag) and parallax (mas) per star; astropy Quantities are converted.
    g_range, parallax_range
        Training ranges ``(lo, hi)`` of G (mag) and parallax (mas).
    tsne_unlike
        Bool per star: True where the t-SNE classification calls the spectrum
        training-unlike (0/1 integers accepted; masked = unknown → '1').

    Returns
    -------
    numpy.ndarray
        ``<U8`` strings of '0'/'1', one per star, in input order. NaN or masked
        values give '1'.
    """
    missing = [name for name in BOUNDARY_LABELS if name not in labels]
    if missing:
        raise InputError(f"labels needed for the boundary flag are missing: {missing}", field=missing[0])
    missing = [name for name in BOUNDARY_LABELS if name not in label_ranges]
    if missing:
        raise InputError(f"training ranges are missing for {missing}", field=missing[0])
    units = {name: astropy_unit(label_info(name).unit) for name in BOUNDARY_LABELS}
    first = _values(labels[BOUNDARY_LABELS[0]], u.K, BOUNDARY_LABELS[0], None)
    n = len(first)
    digits = np.empty((n, len(BOUNDARY_DIGITS)), dtype=np.uint8)
    for j, name in enumerate(BOUNDARY_LABELS):
        v = first if j == 0 else _values(labels[name], units[name], name, n)
        lo, hi = _range(label_ranges[name], units[name], name)
        digits[:, j] = _outside(v, lo, hi)
    j = len(BOUNDARY_LABELS)
    digits[:, j] = _outside(_values(g, u.mag, "g", n), *_range(g_range, u.mag, "g"))
    digits[:, j + 1] = _outside(_values(parallax, u.mas, "parallax", n),
                                *_range(parallax_range, u.mas, "parallax"))
    digits[:, j + 2] = _tsne_digit(tsne_unlike, n)
    chars = np.ascontiguousarray(digits + ord("0"), dtype=np.uint8)
    return chars.view(f"S{len(BOUNDARY_DIGITS)}").ravel().astype(f"U{len(BOUNDARY_DIGITS)}")


def _tsne_digit(tsne_unlike, n: int) -> np.ndarray:
    mask = np.ma.getmaskarray(tsne_unlike)
    data = np.atleast_1d(np.asarray(np.ma.getdata(tsne_unlike)))
    mask = np.broadcast_to(mask, data.shape)
    if data.shape != (n,):
        raise InputError(f"expected shape ({n},), got {data.shape}", field="tsne_unlike")
    if data.dtype.kind == "b":
        unlike = data.astype(bool)
    elif data.dtype.kind in "iu":
        if not np.isin(data[~mask], (0, 1)).all():
            raise InputError("t-SNE classification must be boolean (or 0/1)", field="tsne_unlike")
        unlike = data == 1
    else:
        raise InputError(f"t-SNE classification must be boolean, got dtype {data.dtype}", field="tsne_unlike")
    return unlike | mask


def parse_boundary_flags(flags: np.ndarray | Sequence[str]) -> dict[str, np.ndarray]:
    """Inverse of :func:`boundary_flags`: one bool array per digit name.

    Raises :class:`InputError` (naming the row) for a flag that is not 8 characters
    of '0'/'1'.
    """
    arr = np.atleast_1d(np.asarray(flags))
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "ascii", errors="replace")
    if arr.dtype.kind != "U":
        raise InputError(f"boundary flags must be strings, got dtype {arr.dtype}", field="flag_boundary")
    width = len(BOUNDARY_DIGITS)
    ok = (np.char.str_len(arr) == width) & (np.char.strip(arr, "01") == "")
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise InputError(f"boundary flag '{arr[row]}' is not {width} digits of 0/1", field="flag_boundary",
                         row=row)
    codes = np.asarray(arr, dtype=f"U{width}").astype(f"S{width}").view(np.uint8).reshape(len(arr), width)
    return {name: codes[:, j] == ord("1") for j, name in enumerate(BOUNDARY_DIGITS)}
