"""Gaia XP calibration as a batched linear map: coefficients → sampled spectra.

A Gaia DR3 XP mean spectrum is 55 BP and 55 RP coefficients ``c`` (e⁻ s⁻¹) of a
basis-function expansion. Sampled on a fixed wavelength grid, each band's absolute
flux is linear in its coefficients, ``f_b = A_b c_b`` with a fixed *design matrix*
``A_b`` (``n_pix × 55``, W m⁻² nm⁻¹ per e⁻ s⁻¹: basis functions, instrument
response and dispersion folded in), and the two bands are merged with fixed weights
over their overlap (635–643 nm): ``f = w_bp f_bp + w_rp f_rp``. The flux covariance
follows from the coefficient covariance ``Σ_b = D R D`` (``D`` = diag of the
coefficient errors, ``R`` the correlation matrix), so the error of pixel ``p`` is
``sqrt(Σ_jk A_pj A_pk Σ_jk)`` per band and
``sqrt(w_bp² e_bp² + w_rp² e_rp²)`` merged (the bands are independent). This is what
GaiaXPy's ``calibrate`` does star by star; here it is a few matrix products per batch.

The error uses the correlations in the archive's packed form (the strict lower
triangle, row-major, 1,485 values; see :func:`kielnet.data.xp.correlation_matrix`)::

    e_p² = Σ_j A_pj² σ_j² + Σ_{j>k} 2 A_pj A_pk · (ρ_jk σ_j σ_k)

i.e. ``σ² @ (A²)ᵀ + (ρ σ_j σ_k) @ Cᵀ`` with the fixed ``C`` (``n_pix × 1485``) of
products ``2 A_pj A_pk``: no per-star 55×55 matrix is formed. (GaiaXPy divides the
covariance by the solution's standard deviation squared and multiplies the error by
it again, so the standard deviation cancels and is not needed.)

Missing bands follow GaiaXPy: a band whose coefficients are all NaN is absent; with
one band, the flux is that band's *unweighted* flux where its merge weight is > 0
(BP alone: λ < 643 nm; RP alone: λ > 635 nm on the default grid) and NaN elsewhere;
with neither, NaN. Truncation (``n_bases``) keeps only the first ``k`` bases of a band,
as GaiaXPy's ``truncation=True`` does with ``n_relevant_bases``.

The map also runs backwards (:meth:`XPSampling.coefficients`, :func:`with_xp_coefficients`):
a merged sampled spectrum of both bands has 343 pixels for 110 coefficients and the
stacked matrix ``[w_bp A_bp, w_rp A_rp]`` has full column rank (condition number ~3e7 on
the default grid), so least squares returns coefficients that reproduce it — from a
spectrum divided by its median, the coefficients divided by the same number. From the
library's float32 spectra of the real archive stars, the coefficients over the band's
first one agree with the archive's to < 1e-3 (median 0.14 of the coefficient errors); the
high orders, which the spectrum barely constrains (the directions that make the condition
number), differ most (up to ~8 coefficient errors). This gives a coefficient-input model
its training inputs from a library that ships sampled spectra only.

The matrices come from :mod:`kielnet.io.xp_matrices` (derived once from GaiaXPy and
cached); this module reads no files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from kielnet.data.startable import StarTable
from kielnet.data.xp import N_XP_COEFFICIENTS, coefficient_names
from kielnet.errors import InputError
from kielnet.threads import thread_map

__all__ = ["XPSampling", "sample_band", "with_xp_coefficients"]

#: Stars per block in the error products (bounds memory: a few (block × 1485) arrays).
_BLOCK = 2048
#: Stars per part of :meth:`XPSampling.sample` (the parts run on the pool's threads).
_PART_ROWS = 256


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The process's thread pools, found once (``threadpoolctl.threadpool_limits`` looks
    them up again on every call: ~1.4 ms, once per piece of an XP file)."""
    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """A context in which the BLAS libraries loaded when it was first asked for (NumPy's
    among them, which computes the products here) run on one thread."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _rows(name: str, x: Any, width: int, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width or (n is not None and a.shape[0] != n):
        want = f"({'n_stars' if n is None else n}, {width})"
        raise InputError(f"{name} must have shape {want}, got {a.shape}", field=name)
    return a


def _truncate(n_bases: Any, n: int, k: int) -> np.ndarray | None:
    """``(n, k)`` 0/1 mask of the bases kept per star, or None for no truncation.
    GaiaXPy's rule: a finite count > 0 keeps that many bases; anything else keeps all."""
    if n_bases is None:
        return None
    counts = np.broadcast_to(np.asarray(n_bases, dtype=np.float64), (n,))
    keep = np.where(np.isfinite(counts) & (counts > 0), counts, k)
    return (np.arange(k)[None, :] < keep[:, None]).astype(np.float64)


def sample_band(design: np.ndarray, coef: Any, err: Any = None, corr: Any = None, *,
                n_bases: Any = None, with_errors: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """One band's sampled flux and error for a batch of stars.

    Parameters
    ----------
    design
        ``(n_pix, k)`` design matrix (flux per unit coefficient; for the default XP
        calibration W m⁻² nm⁻¹ per e⁻ s⁻¹).
    coef
        ``(n, k)`` coefficients (e⁻ s⁻¹); a NaN row gives a NaN spectrum.
    err
        ``(n, k)`` coefficient errors (same unit); needed when ``with_errors``.
    corr
        ``(n, k·(k−1)/2)`` correlations, strict lower triangle row-major (as stored by
        the archive); needed when ``with_errors``.
    n_bases
        Optional ``(n,)`` numbers of bases to keep (truncation); NaN or ≤ 0 keeps all.
    with_errors
        Also propagate the coefficient covariance to the pixel errors.

    Returns
    -------
    flux, flux_err
        ``(n, n_pix)`` float64 each in the design matrix's flux unit; ``flux_err`` is
        ``None`` without ``with_errors``.

    Notes
    -----
    The matrix products run on one BLAS thread: multi-threaded OpenBLAS splits a product
    by rows, so a star's flux could change in its last bit with its place in the batch
    and with the number of threads — a Dask worker would not reproduce one process's
    rows. On one thread a star's bits depend on its place in the batch only (OpenBLAS
    computes the rows past a multiple of its kernel's unroll differently), never on the
    number of threads.
    """
    band = _band_map(design)
    with _one_blas_thread():
        return _sample_band(band, coef, err, corr, n_bases, with_errors)


@dataclass(frozen=True, eq=False)
class _BandMap:
    """One band's design matrix on the pixels it is computed at, with the fixed products
    its variance needs (made once per design and pixels, not per batch)."""

    design: np.ndarray            #: (n computed pixels, k)
    a_sq: np.ndarray              #: (n computed pixels, k): ``design²``
    a_cross: np.ndarray           #: (n computed pixels, k(k−1)/2): ``2 A_pj A_pk``, packed as the archive
    pixels: np.ndarray | None     #: the computed pixels of the ``n_pix``; None: all
    n_pix: int


def _band_map(design: Any, pixels: np.ndarray | None = None) -> _BandMap:
    a = np.asarray(design, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"design matrix must be 2-D (n_pix, k), got shape {a.shape}",
                         field="design")
    n_pix, k = a.shape
    if pixels is not None:
        a = a[pixels]
    lo_row, lo_col = np.tril_indices(k, k=-1)  # the archive's packing order
    return _BandMap(a, a * a, 2.0 * a[:, lo_row] * a[:, lo_col], pixels, n_pix)


def _sample_band(band: _BandMap, coef: Any, err: Any, corr: Any, n_bases: Any, with_errors: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`sample_band` on one BLAS thread. Where ``band`` leaves pixels out, they
    hold 0 for a star whose inputs are all finite and NaN otherwise (what the product
    gives there, up to a sign, once multiplied by a merge weight of 0:
    :meth:`XPSampling.sample` computes each band only where its weight is > 0)."""
    a = band.design
    k = a.shape[1]
    c = _rows("coef", coef, k)
    n = len(c)
    mask = _truncate(n_bases, n, k)
    if mask is not None:
        c = c * mask
    flux = _all_pixels(c @ a.T, np.isfinite(c).all(axis=1), band)
    if not with_errors:
        return flux, None
    if err is None or corr is None:
        raise InputError("errors and correlations are needed for with_errors=True", field="err")
    s = _rows("err", err, k, n)
    r = _rows("corr", corr, k * (k - 1) // 2, n)
    if mask is not None:
        s = s * mask
    var = _variance(band, s, r)
    finite = np.isfinite(s).all(axis=1) & np.isfinite(r).all(axis=1)
    return flux, _all_pixels(np.sqrt(np.maximum(var, 0.0)), finite, band)


def _all_pixels(values: np.ndarray, finite: np.ndarray, band: _BandMap) -> np.ndarray:
    """``values`` (n, computed pixels) placed into (n, n_pix): 0 at the other pixels of a
    row whose inputs are all ``finite`` (n,), NaN in the rest of a row with a non-finite input."""
    if band.pixels is None:
        return values
    out = np.zeros((len(values), band.n_pix))
    out[~finite] = np.nan
    out[:, band.pixels] = values
    return out


def _variance(band: _BandMap, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(n, computed pixels) flux variance from the band's products, the coefficient errors
    ``s`` (n, k) and the packed correlations ``r`` (n, k(k-1)/2)."""
    n, k = s.shape
    lo_row, lo_col = np.tril_indices(k, k=-1)  # the archive's packing order
    var = np.empty((n, band.design.shape[0]))
    for lo in range(0, n, _BLOCK):
        hi = min(lo + _BLOCK, n)
        sb = s[lo:hi]
        # np.take, not fancy indexing: the same numbers, 4× faster on (2048, 1485) blocks
        pairs = r[lo:hi] * np.take(sb, lo_row, axis=1) * np.take(sb, lo_col, axis=1)
        var[lo:hi] = (sb * sb) @ band.a_sq.T + pairs @ band.a_cross.T
    return var


@dataclass(frozen=True, eq=False)
class XPSampling:
    """Fixed linear map from BP/RP coefficients to a merged sampled spectrum.

    Attributes
    ----------
    wavelength_nm
        ``(n_pix,)`` sample wavelengths (nm).
    bp_design, rp_design
        ``(n_pix, 55)`` design matrices (W m⁻² nm⁻¹ per e⁻ s⁻¹).
    bp_weight, rp_weight
        ``(n_pix,)`` merge weights (1 / 0 outside the BP/RP overlap, linear within).
    origin
        Where the matrices come from (e.g. ``"gaiaxpy 2.1.5 default sampling"``).

    Arrays are stored read-only as float64.
    """

    wavelength_nm: np.ndarray
    bp_design: np.ndarray
    rp_design: np.ndarray
    bp_weight: np.ndarray
    rp_weight: np.ndarray
    origin: str = ""

    def __post_init__(self) -> None:
        for name in ("wavelength_nm", "bp_design", "rp_design", "bp_weight", "rp_weight"):
            a = np.array(getattr(self, name), dtype=np.float64)
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        n_pix = self.wavelength_nm.shape[0] if self.wavelength_nm.ndim == 1 else -1
        for name in ("bp_design", "rp_design"):
            if getattr(self, name).shape != (n_pix, N_XP_COEFFICIENTS):
                raise InputError(f"{name} must have shape ({n_pix}, {N_XP_COEFFICIENTS}), got "
                                 f"{getattr(self, name).shape}", field=name)
        for name in ("bp_weight", "rp_weight"):
            if getattr(self, name).shape != (n_pix,):
                raise InputError(f"{name} must have shape ({n_pix},), got "
                                 f"{getattr(self, name).shape}", field=name)

    def __eq__(self, other: object) -> bool:
        """Equal matrices, weights and grid (``origin`` is not compared)."""
        if not isinstance(other, XPSampling):
            return NotImplemented
        mine, theirs = self.arrays(), other.arrays()
        return all(np.array_equal(mine[k], theirs[k]) for k in mine)

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    @property
    def n_pix(self) -> int:
        return int(self.wavelength_nm.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The matrices and weights by field name (for saving; ``XPSampling(**arrays)``)."""
        return {name: getattr(self, name) for name in
                ("wavelength_nm", "bp_design", "rp_design", "bp_weight", "rp_weight")}

    def coefficients(self, flux: Any) -> tuple[np.ndarray, np.ndarray]:
        """BP and RP coefficients that give the merged sampled spectra ``flux``.

        Parameters
        ----------
        flux
            ``(n, n_pix)`` merged sampled spectra of both bands on this grid, in the
            design matrices' flux unit or divided by a per-star number (e.g. the
            median flux: the coefficients are then divided by it too).

        Returns
        -------
        bp, rp
            ``(n, 55)`` float64 each (e⁻ s⁻¹ for absolute flux): the least-squares
            solution of ``flux = w_bp A_bp bp + w_rp A_rp rp``. A star with a
            non-finite pixel (a missing band, a bad sample) gets NaN rows.
        """
        f = _rows("flux", flux, self.n_pix)
        stacked = np.hstack([self.bp_weight[:, None] * self.bp_design,
                             self.rp_weight[:, None] * self.rp_design])
        inverse = np.linalg.pinv(stacked, rcond=1e-15)      # (110, n_pix)
        good = np.isfinite(f).all(axis=1)
        coef = np.full((len(f), 2 * N_XP_COEFFICIENTS), np.nan)
        coef[good] = f[good] @ inverse.T
        return coef[:, :N_XP_COEFFICIENTS], coef[:, N_XP_COEFFICIENTS:]

    def sample(self, bp_coef: Any, rp_coef: Any, bp_err: Any = None, rp_err: Any = None,
               bp_corr: Any = None, rp_corr: Any = None, *, with_errors: bool = True,
               bp_n_bases: Any = None, rp_n_bases: Any = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Merged sampled spectra for a batch of stars.

        Parameters
        ----------
        bp_coef, rp_coef
            ``(n, 55)`` coefficients (e⁻ s⁻¹); an all-NaN row is a missing band.
        bp_err, rp_err
            ``(n, 55)`` coefficient errors (e⁻ s⁻¹); needed when ``with_errors``.
        bp_corr, rp_corr
            ``(n, 1485)`` packed correlations (strict lower triangle, row-major);
            needed when ``with_errors``.
        with_errors
            Also compute the flux errors.
        bp_n_bases, rp_n_bases
            Optional ``(n,)`` truncation (e.g. ``n_relevant_bases``); NaN keeps all.

        Returns
        -------
        flux, flux_err
            ``(n, n_pix)`` float64 (W m⁻² nm⁻¹ for GaiaXPy's matrices); NaN where no
            band covers a pixel (see the module docstring); ``flux_err`` is ``None``
            without ``with_errors``.
        """
        bp = _rows("bp_coef", bp_coef, N_XP_COEFFICIENTS)
        rp = _rows("rp_coef", rp_coef, N_XP_COEFFICIENTS, len(bp))
        n = len(bp)
        k, k_corr = N_XP_COEFFICIENTS, N_XP_COEFFICIENTS * (N_XP_COEFFICIENTS - 1) // 2
        per_star = {  # (n, ...) arrays, cut into parts below; a single count of bases holds for all
            "bp_err": None if bp_err is None else _rows("bp_err", bp_err, k, n),
            "rp_err": None if rp_err is None else _rows("rp_err", rp_err, k, n),
            "bp_corr": None if bp_corr is None else _rows("bp_corr", bp_corr, k_corr, n),
            "rp_corr": None if rp_corr is None else _rows("rp_corr", rp_corr, k_corr, n),
            "bp_n_bases": None if bp_n_bases is None else np.broadcast_to(np.asarray(bp_n_bases, float), (n,)),
            "rp_n_bases": None if rp_n_bases is None else np.broadcast_to(np.asarray(rp_n_bases, float), (n,))}
        flux = np.empty((n, self.n_pix))
        err = np.empty((n, self.n_pix)) if with_errors else None

        def part(bounds: tuple[int, int]) -> None:
            lo, hi = bounds
            cut = {name: None if v is None else v[lo:hi] for name, v in per_star.items()}
            f, e = self._sample_rows(bp[lo:hi], rp[lo:hi], with_errors=with_errors, **cut)
            flux[lo:hi] = f
            if err is not None:
                err[lo:hi] = e

        # parts of _PART_ROWS stars on the pool's threads, each both bands and their merge on
        # one BLAS thread. The parts are cut by the stars' places alone, never by the number of
        # threads: a star's last bits depend on its place in the product (OpenBLAS computes the
        # rows beyond a multiple of its kernel's unroll differently), so a Dask worker on one
        # thread reproduces one process's rows on two
        with _one_blas_thread():
            thread_map(part, [(lo, min(lo + _PART_ROWS, n)) for lo in range(0, n, _PART_ROWS)] or [(0, 0)])
        return flux, err

    @functools.cached_property
    def _bands(self) -> tuple[_BandMap, _BandMap]:
        """BP and RP, each only where its merge weight is > 0 (BP below, RP above the
        overlap): half the products of computing both bands at every pixel, the same
        merged numbers."""
        return (_band_map(self.bp_design, np.flatnonzero(self.bp_weight > 0)),
                _band_map(self.rp_design, np.flatnonzero(self.rp_weight > 0)))

    def _sample_rows(self, bp: np.ndarray, rp: np.ndarray, *, with_errors: bool, bp_err: Any, rp_err: Any,
                     bp_corr: Any, rp_corr: Any, bp_n_bases: Any, rp_n_bases: Any
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`sample` of some stars in the calling thread."""
        band_bp, band_rp = self._bands
        (f_bp, e_bp), (f_rp, e_rp) = [
            _sample_band(band, coef, e, c, nb, with_errors=with_errors)
            for band, coef, e, c, nb in ((band_bp, bp, bp_err, bp_corr, bp_n_bases),
                                         (band_rp, rp, rp_err, rp_corr, rp_n_bases))]
        has_bp = ~np.isnan(bp).all(axis=1)[:, None]
        has_rp = ~np.isnan(rp).all(axis=1)[:, None]
        w_bp, w_rp = self.bp_weight[None, :], self.rp_weight[None, :]
        only_bp = has_bp & ~has_rp & (w_bp > 0)
        only_rp = has_rp & ~has_bp & (w_rp > 0)
        both = has_bp & has_rp
        with np.errstate(invalid="ignore"):
            flux = np.where(both, w_bp * f_bp + w_rp * f_rp,
                            np.where(only_bp, f_bp, np.where(only_rp, f_rp, np.nan)))
            if not with_errors:
                return flux, None
            assert e_bp is not None and e_rp is not None
            err = np.where(both, np.sqrt((w_bp * e_bp) ** 2 + (w_rp * e_rp) ** 2),
                           np.where(only_bp, e_bp, np.where(only_rp, e_rp, np.nan)))
        return flux, err


def with_xp_coefficients(table: StarTable, sampling: XPSampling) -> StarTable:
    """``table`` with the XP coefficients of its sampled spectra as scalars ``bp_0 … rp_54``
    (:meth:`XPSampling.coefficients`; in the unit of the spectra, e.g. e⁻ s⁻¹ over the
    median flux for the XP library). The spectra stay. A table whose spectra are not on
    ``sampling``'s grid is refused."""
    if table.flux is None or table.flux.shape[1] != sampling.n_pix:
        got = None if table.flux is None else table.flux.shape[1]
        raise InputError(f"XP coefficients need sampled spectra of {sampling.n_pix} pixels, got {got}",
                         source=table.source, field="flux")
    bp, rp = sampling.coefficients(table.flux)
    scalars = dict(table.scalars)
    for band, values in (("bp", bp), ("rp", rp)):
        for i, name in enumerate(coefficient_names(band)):
            scalars[name] = values[:, i]
    return replace(table, scalars=scalars)
