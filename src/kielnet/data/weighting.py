"""Loss weights that counter the uneven density of training labels.

APOGEE Net II §3.2.1: estimate the density ``d_i`` of each training star in the
standardised (Teff, log g) plane with a Gaussian KDE and weight its loss by
``min(c / d_i, cap · c)`` with ``c`` chosen so that the mean weight is 1. ``d_i`` is
the density relative to the sample's mean density (dimensionless), so a star at the
mean density has ``c / d_i = c`` and ``cap`` bounds the weight to ``cap`` times that.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kde_inverse_density_weights"]


def kde_inverse_density_weights(points: np.ndarray, *, bandwidth: float = 0.7671,
                                cap: float = 5.0, max_fit: int = 20000,
                                seed: int = 0) -> np.ndarray:
    """Inverse-density weights, capped at ``cap`` and normalised to mean 1.

    Parameters
    ----------
    points
        (n, d) coordinates, e.g. (log10 Teff, log g); each column is standardised
        (z-scored) here before the KDE. Rows with a NaN get weight 1.
    bandwidth
        Gaussian KDE bandwidth in standardised units (paper: 0.7671).
    cap
        Maximum weight, in units of the normalising constant ``c`` (paper: 5).
    max_fit
        The KDE is fitted on at most this many random rows (for speed).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    ok = np.isfinite(pts).all(axis=1)
    w = np.ones(len(pts))
    if ok.sum() < 2:
        return w
    z = pts[ok]
    std = z.std(axis=0)
    std[~(std > 0)] = 1.0
    z = (z - z.mean(axis=0)) / std
    rng = np.random.default_rng(seed)
    fit_rows = z if len(z) <= max_fit else z[rng.choice(len(z), max_fit, replace=False)]
    from sklearn.neighbors import KernelDensity  # here: `predict` never needs scikit-learn

    kde = KernelDensity(bandwidth=bandwidth).fit(fit_rows)
    dens = np.exp(kde.score_samples(z))
    # d_i is the density *relative to the mean density* of the sample, so that ``cap``
    # is dimensionless: the absolute KDE density of standardised points is at most
    # (2 pi h^2)^(-dim/2) (0.27 for h = 0.7671 in 2-D), so 1/d >= 3.7 everywhere and a
    # cap of 5 on the absolute 1/d would clip (nearly) every star and flatten all weights.
    dens = dens / dens.mean()
    inv = 1.0 / np.maximum(dens, 1e-300)
    # find c with mean(min(c*inv, cap*c)) == 1 -> c = 1 / mean(min(inv, cap))
    raw = np.minimum(inv, cap)
    c = 1.0 / raw.mean()
    w_ok = np.minimum(c * inv, cap * c)
    w[ok] = w_ok
    return w / w.mean()
