"""The statistics kielnet shares across layers, on scipy and scikit-learn.

Bottom layer: imports numpy, scipy and scikit-learn only, so that every other module
(:mod:`kielnet.data` included) can use it.

* :func:`robust_sigma` — the normal-consistent median absolute deviation
  (``scipy.stats.median_abs_deviation(scale="normal")``, i.e. 1.482602… × MAD) of the
  finite values, in the unit of its input;
* :func:`row_nanmedian` — ``numpy.nanmedian(x, axis=1)`` of a 2-D array, with rows
  that hold no NaN taken by ``numpy.median`` (a partition) and the others sorted once
  (``nanmedian`` masks and sorts row by row), in the unit of its input;
* :func:`cohen_kappa` — Cohen's κ of two boolean classifications
  (``sklearn.metrics.cohen_kappa_score``), dimensionless.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["NORMAL_MAD_SCALE", "robust_sigma", "row_nanmedian", "cohen_kappa"]

#: The MAD of a normal distribution in units of its σ, Φ⁻¹(0.75): what
#: ``scipy.stats.median_abs_deviation(scale="normal")`` divides by (its own constant, so that a
#: MAD a caller already holds the absolute deviations for gives scipy's numbers to the bit).
NORMAL_MAD_SCALE: float = 0.6744897501960817


def robust_sigma(x: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Robust σ: ``scipy.stats.median_abs_deviation(x, scale="normal")`` of the finite
    values (NaN and ±inf are left out), in the unit of ``x``.

    ``axis=None`` (default): over all values, a float (NaN if none is finite); an
    integer axis: an array of one σ per slice along it (NaN for a slice without a
    finite value).
    """
    from scipy.stats import median_abs_deviation  # here: scipy.stats costs ~0.4 s of start-up

    v = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.all():
        v = np.where(finite, v, np.nan)
    if v.size == 0 or not finite.any():
        return float("nan") if axis is None else np.full(np.delete(v.shape, axis), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a slice without a finite value: NaN
        out = median_abs_deviation(v, axis=axis, scale="normal", nan_policy="omit")
    return float(out) if axis is None else np.asarray(out, dtype=np.float64)


def row_nanmedian(x: np.ndarray) -> np.ndarray:
    """Median of each row of the 2-D ``x`` over its non-NaN values: the numbers of
    ``numpy.nanmedian(x, axis=1)`` (NaN for a row without one, silently), in the unit of
    ``x``. Rows without a NaN go through ``numpy.median`` (a partition); the others are
    sorted once (``numpy.sort`` puts NaN last) and their middle value(s) taken, the
    mean of two as ``numpy.median`` takes it — ``numpy.nanmedian`` masks and sorts row by row,
    several times slower on the 343-pixel XP spectra with a band missing."""
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"row_nanmedian needs a 2-D array, got shape {v.shape}")
    if v.shape[1] == 0:
        return np.full(len(v), np.nan)
    nan = np.isnan(v).any(axis=1)
    out = np.empty(len(v))
    if not nan.all():
        out[~nan] = np.median(v[~nan] if nan.any() else v, axis=1)
    if nan.any():
        s = np.sort(v[nan], axis=1)
        k = v.shape[1] - np.isnan(s).sum(axis=1)  # values per row
        r = np.arange(len(s))
        lo, hi = np.maximum((k - 1) // 2, 0), k // 2
        with np.errstate(invalid="ignore"):
            med = np.mean(np.stack([s[r, lo], s[r, hi]]), axis=0)  # odd k: lo == hi
        med[k == 0] = np.nan
        out[nan] = med
    return out


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two boolean classifications of the same items
    (``sklearn.metrics.cohen_kappa_score``): ``(p_o − p_e) / (1 − p_e)``; NaN where it is
    undefined (``p_e = 1``: both put every item in the same single class) or without items."""
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # where κ is undefined: sklearn's warning (or 0/0's), and NaN
        return float(cohen_kappa_score(a, b, labels=[False, True]))
