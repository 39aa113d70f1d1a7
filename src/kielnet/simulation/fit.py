"""χ² fits of stellar labels to normalised spectra with a spectral emulator.

Each spectrum is fitted by minimising ``χ² = Σ_p ((f_p - model_p(x)) / σ_p)²`` over
the usable pixels with :func:`scipy.optimize.least_squares` (trust-region reflective,
analytic Jacobian), bounded to the emulator's validity box and started from the box
centre plus a few points spread in the first label (Teff); the lowest χ² wins.

Label uncertainties are ``sqrt(diag((Jᵀ Σ⁻¹ J)⁻¹))`` at the solution (the local
covariance; not rescaled by the reduced χ² unless no errors were given). Units: labels
as in the emulator (Teff in K, log g and abundances in dex, vmacro in km s⁻¹); flux
continuum-normalised; ``rms_residual`` (inverse-variance weighted) in those flux
units (≈ fractional).

A pixel is used when its flux and error are finite, its error is positive and it is not
masked (``mask`` True = excluded, the convention of ``apogee_mask.npz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import least_squares

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.simulation.crb import cramer_rao_bound
from kielnet.simulation.emulator import PayneEmulator

__all__ = ["FitResult", "fit_spectrum", "fit_spectra"]


@dataclass
class FitResult:
    """Result of label fits: one star (1-D ``labels``) or ``n`` stars (leading axis ``n``).

    Attributes
    ----------
    labels
        Best-fitting labels, ``(k,)`` or ``(n, k)``, order :attr:`label_names`.
    labels_err
        One-σ uncertainties from the covariance at the solution, same shape.
    cov
        Covariance ``(k, k)`` or ``(n, k, k)``.
    chi2
        χ² over the used pixels.
    n_used
        Number of pixels used.
    rms_residual
        Inverse-variance-weighted root-mean-square of ``flux - model`` over the used
        pixels, ``sqrt(Σ r²/σ² / Σ 1/σ²)`` (the plain rms for equal errors; pixels
        flagged by an inflated error do not dominate it).
    success
        Optimiser converged and the covariance is finite.
    at_bound
        Boolean ``(…, k)``: label sits on the validity-box edge (its error is then
        only indicative).
    label_names
        Names of the labels.
    """

    labels: np.ndarray
    labels_err: np.ndarray
    cov: np.ndarray
    chi2: np.ndarray | float
    n_used: np.ndarray | int
    rms_residual: np.ndarray | float
    success: np.ndarray | bool
    at_bound: np.ndarray
    label_names: tuple[str, ...]

    @property
    def reduced_chi2(self) -> np.ndarray | float:
        """χ² / (n_used − k)."""
        return self.chi2 / np.maximum(np.asarray(self.n_used) - len(self.label_names), 1)

    def as_dicts(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``({name: labels}, {name: errors})``, e.g. for :class:`StarTable` labels."""
        lab = np.atleast_2d(self.labels)
        err = np.atleast_2d(self.labels_err)
        return ({n: lab[:, j] for j, n in enumerate(self.label_names)},
                {n: err[:, j] for j, n in enumerate(self.label_names)})


def _on_emulated_grid(emulator: PayneEmulator, arr: np.ndarray | None, name: str) -> np.ndarray | None:
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.shape[-1] == emulator.n_pix:
        return a
    if a.shape[-1] == emulator.n_full_pixels:
        return a[..., emulator.pixel_index]
    raise InputError(f"{name} has {a.shape[-1]} pixels; the emulator covers {emulator.n_pix} pixels "
                     f"of a {emulator.n_full_pixels}-pixel grid", field=name)


def _starts(emulator: PayneEmulator, x0: np.ndarray | None, n_starts: int) -> list[np.ndarray]:
    lo, hi = emulator.valid_box
    inner_lo, inner_hi = lo + 1e-6 * (hi - lo), hi - 1e-6 * (hi - lo)
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.shape != (emulator.n_labels,):
            raise InputError(f"x0 must have shape ({emulator.n_labels},), got {x0.shape}", field="x0")
        return [np.clip(x0, inner_lo, inner_hi)]
    centre = 0.5 * (lo + hi)
    starts = [centre]
    # further starts spread along the first label (Teff for the APOGEE emulator)
    for q in np.linspace(0.0, 1.0, max(int(n_starts), 1) + 1)[1:-1]:
        if np.isclose(q, 0.5):
            continue
        s = centre.copy()
        s[0] = lo[0] + q * (hi[0] - lo[0])
        starts.append(s)
    return [np.clip(s, inner_lo, inner_hi) for s in starts[:max(int(n_starts), 1)]]


def fit_spectrum(emulator: PayneEmulator, flux: np.ndarray, flux_err: np.ndarray | None, *,
                 x0: np.ndarray | Sequence[float] | None = None, mask: np.ndarray | None = None,
                 n_starts: int = 3) -> FitResult:
    """Fit the emulator's labels to one normalised spectrum by least squares.

    Parameters
    ----------
    emulator
        The spectral emulator.
    flux
        Normalised flux on the emulated pixels ``(P,)`` or the full grid ``(n_full,)``.
    flux_err
        Its 1-σ errors (same shape); ``None`` for equal weights, in which case the
        uncertainties are scaled to the residual scatter (σ = rms residual).
    x0
        Start labels ``(k,)``; default the box centre plus ``n_starts - 1`` further
        starts spread in the first label.
    mask
        Boolean, same grid as ``flux``; True excludes the pixel.
    n_starts
        Number of starts when ``x0`` is ``None``.

    Returns
    -------
    FitResult
        For one star (1-D fields).
    """
    f = _on_emulated_grid(emulator, np.asarray(flux, dtype=np.float64), "flux")
    if f.ndim != 1:
        raise InputError(f"flux must be one spectrum (1-D), got shape {np.shape(flux)}; use fit_spectra",
                         field="flux")
    no_err = flux_err is None
    e = np.ones_like(f) if no_err else _on_emulated_grid(emulator, np.asarray(flux_err, dtype=np.float64),
                                                         "flux_err")
    if e.shape != f.shape:
        raise InputError(f"flux_err shape {np.shape(flux_err)} differs from flux shape {np.shape(flux)}",
                         field="flux_err")
    use = np.isfinite(f) & np.isfinite(e) & (e > 0)
    if mask is not None:
        m = _on_emulated_grid(emulator, np.asarray(mask, dtype=bool), "mask")
        if m.shape != f.shape:
            raise InputError(f"mask shape {np.shape(mask)} differs from flux shape {np.shape(flux)}",
                             field="mask")
        use &= ~m
    k = emulator.n_labels
    names = tuple(emulator.label_names)
    if use.sum() <= k:
        nan = np.full(k, np.nan)
        return FitResult(nan, nan.copy(), np.full((k, k), np.nan), np.nan, int(use.sum()), np.nan,
                         False, np.zeros(k, dtype=bool), names)

    fu, iw = f[use], 1.0 / e[use]
    lo, hi = emulator.valid_box

    def resid(x: np.ndarray) -> np.ndarray:
        return (emulator.evaluate(x)[use] - fu) * iw

    def jac(x: np.ndarray) -> np.ndarray:
        return emulator.jacobian(x)[use] * iw[:, None]

    best = None
    for start in _starts(emulator, None if x0 is None else np.asarray(x0, dtype=float), n_starts):
        res = least_squares(resid, start, jac=jac, bounds=(lo, hi), x_scale=hi - lo, method="trf")
        if best is None or res.cost < best.cost:
            best = res
    x = best.x
    J, model = emulator.jacobian(x, return_flux=True)
    r = model[use] - fu
    chi2 = float(np.sum((r * iw) ** 2))
    rms = float(np.sqrt(np.sum(r ** 2 * iw ** 2) / np.sum(iw ** 2)))
    sigma = e[use] * (rms if no_err else 1.0)
    err, cov = cramer_rao_bound(J[use], sigma, return_cov=True)
    if no_err:
        chi2 = float(np.sum((r / sigma) ** 2))
    at_bound = (x <= lo + 1e-6 * (hi - lo)) | (x >= hi - 1e-6 * (hi - lo))
    ok = bool(best.success) and bool(np.all(np.isfinite(err)))
    return FitResult(labels=x, labels_err=err, cov=cov, chi2=chi2, n_used=int(use.sum()),
                     rms_residual=rms, success=ok, at_bound=at_bound, label_names=names)


def fit_spectra(emulator: PayneEmulator, table: StarTable, *, mask: np.ndarray | None = None,
                x0: np.ndarray | None = None, n_starts: int = 3) -> FitResult:
    """Fit every star of ``table`` (spectra on the emulated or the full grid).

    Parameters
    ----------
    emulator
        The spectral emulator.
    table
        Star table with ``flux`` (and ideally ``flux_err``); NaN pixels are skipped.
    mask
        Boolean pixel mask common to all stars (True = excluded), ``(P,)`` or ``(n_full,)``.
    x0
        Start labels, ``(k,)`` for all stars or ``(n, k)``; default as in :func:`fit_spectrum`.
    n_starts
        Starts per star when ``x0`` is ``None``.

    Returns
    -------
    FitResult
        With a leading star axis ``n`` on every field.
    """
    if table.flux is None:
        raise InputError("the table holds no spectra", source=table.source, field="flux")
    n, k = len(table), emulator.n_labels
    if x0 is not None:
        x0 = np.broadcast_to(np.asarray(x0, dtype=np.float64), (n, k))
    flux = _on_emulated_grid(emulator, table.flux, "flux")
    err = None if table.flux_err is None else _on_emulated_grid(emulator, table.flux_err, "flux_err")
    results = []
    for i in range(n):
        results.append(fit_spectrum(emulator, flux[i], None if err is None else err[i],
                                    x0=None if x0 is None else x0[i], mask=mask, n_starts=n_starts))
    stack = lambda attr: np.asarray([getattr(r, attr) for r in results])  # noqa: E731
    return FitResult(labels=stack("labels").reshape(n, k), labels_err=stack("labels_err").reshape(n, k),
                     cov=stack("cov").reshape(n, k, k), chi2=stack("chi2"), n_used=stack("n_used"),
                     rms_residual=stack("rms_residual"), success=stack("success").astype(bool),
                     at_bound=stack("at_bound").reshape(n, k).astype(bool),
                     label_names=tuple(emulator.label_names))
