"""Cramér–Rao bounds on stellar labels from a spectral model's Jacobian.

For a spectrum with independent Gaussian pixel noise σ_p and a model with Jacobian
``J[p, j] = d flux[p] / d label[j]``, the Fisher information is ``F = Jᵀ Σ⁻¹ J`` with
``Σ = diag(σ²)`` and the Cramér–Rao bound — the smallest standard deviation an
unbiased estimator can reach — is ``sqrt(diag(F⁻¹))`` per label, in the units of the
labels (K for Teff, dex for log g and abundances, km s⁻¹ for vmacro).

Pixels whose σ is non-finite (NaN or inf: masked or not modelled) carry no information
and are dropped, as are pixels with a non-finite Jacobian row. A label the spectrum
carries no information on gets an infinite bound. Numpy only, batched over stars.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kielnet.errors import InputError
from kielnet.simulation.emulator import PayneEmulator, SigmaModel, noise_sigma

__all__ = ["fisher_matrix", "cramer_rao_bound", "emulator_crb"]


def fisher_matrix(jacobian: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    """Fisher information ``Jᵀ diag(1/σ²) J`` over the usable pixels.

    Parameters
    ----------
    jacobian
        ``(n_pix, k)`` or ``(n, n_pix, k)``: d flux / d label.
    sigma
        Per-pixel noise σ (flux units), broadcastable to ``jacobian.shape[:-1]``:
        a scalar, ``(n_pix,)`` or ``(n, n_pix)``. Non-finite σ marks an excluded pixel.

    Returns
    -------
    numpy.ndarray
        ``(k, k)`` or ``(n, k, k)``, in 1 / (label unit × label unit).
    """
    J = np.asarray(jacobian, dtype=np.float64)
    if J.ndim not in (2, 3):
        raise InputError(f"jacobian must have shape (n_pix, k) or (n, n_pix, k), got {J.shape}",
                         field="jacobian")
    single = J.ndim == 2
    if single:
        J = J[None]
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim == 1 and single:
        s = s[None]
    try:
        s = np.broadcast_to(s, J.shape[:-1])
    except ValueError:
        raise InputError(f"sigma of shape {np.shape(sigma)} does not match the Jacobian's pixels "
                         f"{J.shape[:-1] if not single else J.shape[1:-1]}", field="sigma") from None
    ok = np.isfinite(s) & np.all(np.isfinite(J), axis=-1)
    if np.any(s[ok] <= 0):
        raise InputError("sigma must be positive (use NaN or inf to exclude a pixel)", field="sigma")
    w = np.zeros(s.shape)
    w[ok] = 1.0 / s[ok] ** 2
    Jc = np.where(ok[..., None], J, 0.0)
    F = np.einsum("npk,np,npl->nkl", Jc, w, Jc)
    return F[0] if single else F


def _invert(F: np.ndarray) -> np.ndarray:
    """Invert a stack of symmetric PSD matrices ``(n, k, k)``; labels without information → inf."""
    n, k, _ = F.shape
    d = np.sqrt(np.clip(np.einsum("nkk->nk", F), 0.0, None))
    empty = d == 0
    dd = np.where(empty, 1.0, d)
    C = F / dd[:, :, None] / dd[:, None, :]                      # unit diagonal: well scaled
    eye = np.eye(k, dtype=bool)
    C = np.where(empty[:, :, None] | empty[:, None, :], np.where(eye, 1.0, 0.0), C)
    cov = np.full_like(C, np.inf)
    try:
        inv = np.linalg.inv(C)
        good = np.ones(n, dtype=bool)
    except np.linalg.LinAlgError:
        inv = np.empty_like(C)
        good = np.zeros(n, dtype=bool)
        for i in range(n):
            try:
                inv[i] = np.linalg.inv(C[i])
                good[i] = True
            except np.linalg.LinAlgError:
                pass
    cov[good] = inv[good] / dd[good, :, None] / dd[good, None, :]
    # a label with no information at all is unconstrained
    cov = np.where(empty[:, :, None] | empty[:, None, :], np.inf, cov)
    return cov


def cramer_rao_bound(jacobian: np.ndarray, sigma: np.ndarray | float, *,
                     return_cov: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Cramér–Rao bound ``sqrt(diag((Jᵀ Σ⁻¹ J)⁻¹))`` with ``Σ = diag(σ²)``.

    Parameters
    ----------
    jacobian
        ``(n_pix, k)`` or ``(n, n_pix, k)``: d flux / d label (physical label units).
    sigma
        Per-pixel σ, broadcastable to ``jacobian.shape[:-1]`` (scalar, ``(n_pix,)`` or
        ``(n, n_pix)``); NaN/inf pixels are excluded.
    return_cov
        Also return the bound covariance ``F⁻¹`` (``(…, k, k)``).

    Returns
    -------
    numpy.ndarray
        ``(k,)`` or ``(n, k)`` one-σ bounds in label units; ``inf`` for a label the
        usable pixels do not constrain (singular Fisher matrix).
    """
    F = fisher_matrix(jacobian, sigma)
    single = F.ndim == 2
    cov = _invert(F[None] if single else F)
    diag = np.einsum("nkk->nk", cov)
    with np.errstate(invalid="ignore"):
        crb = np.where(diag >= 0, np.sqrt(np.abs(diag)), np.inf)
    if single:
        crb, cov = crb[0], cov[0]
    return (crb, cov) if return_cov else crb


def emulator_crb(emulator: PayneEmulator, labels: np.ndarray | Sequence[float],
                 snr: np.ndarray | float, *, sigma_model: SigmaModel = "continuum",
                 mask: np.ndarray | None = None) -> np.ndarray:
    """Cramér–Rao bounds for stars simulated by ``emulator`` at signal-to-noise ``snr``.

    Parameters
    ----------
    emulator
        The spectral emulator (analytic Jacobian).
    labels
        ``(k,)`` or ``(n, k)``, physical units, emulator order.
    snr
        S/N per pixel, scalar or ``(n,)``; σ follows ``sigma_model`` as in
        :func:`~kielnet.simulation.emulator.simulate` (default ``σ = 1/snr``).
    mask
        Optional boolean pixel mask, True = pixel excluded, on the emulated ``(P,)`` or
        the full ``(n_full,)`` grid.

    Returns
    -------
    numpy.ndarray
        ``(k,)`` or ``(n, k)`` bounds in label units, order ``emulator.label_names``.
    """
    jac, flux = emulator.jacobian(labels, return_flux=True)
    single = jac.ndim == 2
    if single:
        jac, flux = jac[None], flux[None]
    snr_arr = np.asarray(snr, dtype=np.float64)
    if snr_arr.ndim == 1 and single and snr_arr.shape != (1,):
        raise InputError("one star but several snr values", field="snr")
    sigma = noise_sigma(flux, snr_arr, sigma_model).copy()
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape == (emulator.n_full_pixels,) and m.shape != (emulator.n_pix,):
            m = m[emulator.pixel_index]
        if m.shape != (emulator.n_pix,):
            raise InputError(f"mask has shape {m.shape}; expected ({emulator.n_pix},) or "
                             f"({emulator.n_full_pixels},)", field="mask")
        sigma[:, m] = np.nan
    crb = cramer_rao_bound(jac, sigma)
    return crb[0] if single else crb
