"""Array operations on spectra shared by readers, training and inference."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from kielnet.errors import InputError
from kielnet.stats import row_nanmedian

__all__ = ["clip_flux_errors", "noise_realisations", "fill_nan_window_quantile"]


def clip_flux_errors(flux_err: np.ndarray, clip_factor: float = 5.0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip flux errors row by row at ``clip_factor`` × the row's median error.

    Parameters
    ----------
    flux_err
        Errors, shape ``(n_pix,)`` or ``(n_stars, n_pix)``, any (positive) unit.
    clip_factor
        Multiple of the median error above which errors are clipped (APOGEE Net II: 5).

    Returns
    -------
    clipped, n_clipped, n_bad
        ``clipped`` (float64, shape of ``flux_err`` made 2-D): errors above the limit
        and bad errors (zero, negative, NaN, inf) replaced by the limit, where the
        limit is ``clip_factor`` × the median of the row's finite positive errors;
        a row without any such error is all NaN. ``n_clipped`` counts, per row, the
        finite errors that were above the limit; ``n_bad`` the bad errors.
    """
    if not (np.isfinite(clip_factor) and clip_factor > 0):
        raise InputError(f"clip_factor must be a positive number, got {clip_factor!r}",
                         field="clip_factor")
    err = np.atleast_2d(np.asarray(flux_err, dtype=np.float64))
    good = np.isfinite(err) & (err > 0)
    median = row_nanmedian(np.where(good, err, np.nan))  # rows without a good error → NaN
    limit = (clip_factor * median)[:, None]
    over = good & (err > limit)
    out = np.where(good & ~over, err, limit)
    return out, over.sum(axis=1).astype(np.int64), (~good).sum(axis=1).astype(np.int64)


def noise_realisations(flux: np.ndarray, flux_err: np.ndarray, n: int, rng: np.random.Generator
                       ) -> np.ndarray:
    """``n`` Gaussian realisations of each spectrum: ``flux + N(0, 1) · flux_err``.

    APOGEE Net II §3.2.3. ``flux_err`` should already be clipped
    (:func:`clip_flux_errors`); pixels whose error is not finite get no noise, and
    non-finite flux stays non-finite. Returns shape ``(n, n_stars, n_pix)`` float32.
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    err = np.atleast_2d(np.asarray(flux_err, dtype=np.float32))
    err = np.where(np.isfinite(err), err, 0.0).astype(np.float32)
    noise = rng.standard_normal((n,) + flux.shape, dtype=np.float32)
    return flux[None] + noise * err[None]


def fill_nan_window_quantile(flux: np.ndarray, wavelength_nm: np.ndarray,
                             windows_nm: Sequence[tuple[float, float]], percentile: float = 75.0
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace NaN flux pixels by a percentile (default Q3) of the star's flux in
    continuum windows (Gaia-RVS §2.1).

    Parameters
    ----------
    flux
        Shape ``(n_stars, n_pix)``, normalised RVS flux.
    wavelength_nm
        Shape ``(n_pix,)``, nm.
    windows_nm
        ``(lo, hi)`` limits in nm, inclusive, pooled into one set of pixels.
    percentile
        Percentile of the window flux used as the fill value (75 = Q3).

    Returns
    -------
    filled, n_filled, q3
        The filled flux (float64), the number of filled pixels per star (int64) and the
        Q3 used per star (NaN where the windows hold no finite flux — such stars keep
        their NaN pixels and ``n_filled`` is 0).
    """
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    wl = np.asarray(wavelength_nm, dtype=np.float64)
    in_win = np.zeros(wl.shape, bool)
    for lo, hi in windows_nm:
        in_win |= (wl >= lo) & (wl <= hi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows → NaN
        q3 = np.nanpercentile(f[:, in_win], percentile, axis=1) if len(f) else np.zeros(0)
    bad = np.isnan(f) & np.isfinite(q3)[:, None]
    filled = np.where(bad, q3[:, None], f)
    return filled, bad.sum(axis=1).astype(np.int64), q3
