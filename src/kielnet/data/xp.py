"""Array work on Gaia DR3 XP spectra: coefficient access, correlation matrices,
median normalisation and the §3.1 coefficient normalisation of the Gaia-RVS hybrid CNN.

Gaia DR3 describes each BP and RP mean spectrum by 55 coefficients of a projection on
Hermite-like basis functions (De Angeli et al. 2023), in the internal flux unit
(e⁻ s⁻¹). :func:`kielnet.io.gaia_xp.read_xp_continuous` stores them as
star-table *scalars* ``bp_0 … bp_54`` and ``rp_0 … rp_54`` (NaN for a missing band),
so that they can be model features and a star with a missing band is flagged by
:meth:`StarTable.missing_report`; :func:`xp_coefficients` turns them back into
``(n, 55)`` arrays.

Correlations are stored as the archive writes them: the 1,485 = 55·54/2
off-diagonal elements of the symmetric correlation matrix, i.e. the strict lower
triangle in row-major order (= the strict upper triangle in column-major order, the
GaiaXPy convention). :func:`correlation_matrix` rebuilds the 55×55 matrix (unit
diagonal) and :func:`pack_correlations` goes back.

:class:`XPNormaliser` implements §3.1 of the Gaia-RVS hybrid CNN paper: each set of
55 coefficients is divided by that set's first coefficient, then every coefficient
is min-max scaled with the minimum and maximum of the training set. Its state is a
small JSON-able dict.

:func:`normalise_by_median` divides sampled spectra (W m⁻² nm⁻¹) by each star's
median flux — the convention of the APOGEE DR17 × Gaia XP library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.stats import row_nanmedian

__all__ = ["N_XP_COEFFICIENTS", "N_XP_CORRELATIONS", "XP_BANDS", "coefficient_names",
           "xp_coefficients", "correlation_matrix", "pack_correlations",
           "normalise_by_median", "XPNormaliser"]

#: Coefficients per band in Gaia DR3.
N_XP_COEFFICIENTS = 55
#: Stored (off-diagonal) correlations per band: 55·54/2.
N_XP_CORRELATIONS = N_XP_COEFFICIENTS * (N_XP_COEFFICIENTS - 1) // 2
XP_BANDS = ("bp", "rp")


def coefficient_names(band: str, n: int = N_XP_COEFFICIENTS) -> list[str]:
    """Scalar names of one band's coefficients: ``['bp_0', …, 'bp_54']``."""
    if band not in XP_BANDS:
        raise ValueError(f"band must be one of {XP_BANDS}, got {band!r}")
    return [f"{band}_{i}" for i in range(n)]


def xp_coefficients(table: StarTable, n: int = N_XP_COEFFICIENTS) -> tuple[np.ndarray, np.ndarray]:
    """BP and RP coefficient arrays ``(n_stars, n)`` (float64) from a table's scalars.

    Raises :class:`InputError` naming the table's source if a ``bp_i`` / ``rp_i``
    scalar is absent. Missing bands are rows of NaN.
    """
    out = []
    for band in XP_BANDS:
        names = coefficient_names(band, n)
        absent = [c for c in names if c not in table.scalars]
        if absent:
            raise InputError(f"XP coefficient scalars are missing (e.g. '{absent[0]}'); read the "
                             "table with kielnet.io.gaia_xp.read_xp_continuous",
                             source=table.source, field=absent[0])
        out.append(np.column_stack([table.scalars[c] for c in names]).astype(np.float64)
                   if len(table) else np.zeros((0, n)))
    return out[0], out[1]


def correlation_matrix(packed: np.ndarray, n: int = N_XP_COEFFICIENTS) -> np.ndarray:
    """Full symmetric correlation matrices from the archive's packed form.

    Parameters
    ----------
    packed
        Shape ``(..., n·(n−1)/2)``: the strict lower triangle in row-major order
        (GaiaXPy's ``array_to_symmetric_matrix`` convention). NaN stays NaN.
    n
        Matrix size (55 for Gaia DR3).

    Returns
    -------
    numpy.ndarray
        Shape ``(..., n, n)``, unit diagonal (NaN diagonal where the input row is all NaN).
    """
    packed = np.asarray(packed, dtype=np.float64)
    m = n * (n - 1) // 2
    if packed.shape[-1:] != (m,):
        raise ValueError(f"packed correlations must have {m} elements on the last axis, "
                         f"got shape {packed.shape}")
    out = np.zeros(packed.shape[:-1] + (n, n))
    lo = np.tril_indices(n, k=-1)
    out[(...,) + lo] = packed
    out = out + np.swapaxes(out, -1, -2)
    diag = np.where(np.all(np.isnan(packed), axis=-1), np.nan, 1.0)
    idx = np.arange(n)
    out[..., idx, idx] = diag[..., None]
    return out


def pack_correlations(matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`correlation_matrix`: ``(..., n, n)`` → ``(..., n·(n−1)/2)``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"expected square matrices, got shape {matrix.shape}")
    lo = np.tril_indices(matrix.shape[-1], k=-1)
    return matrix[(...,) + lo]


def normalise_by_median(flux: np.ndarray, flux_err: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Divide each spectrum (and its errors) by its median flux.

    Parameters
    ----------
    flux, flux_err
        Shape ``(n_stars, n_pix)``, any flux unit (XP sampled spectra: W m⁻² nm⁻¹).

    Returns
    -------
    flux_norm, err_norm, medflux
        Normalised arrays (float64) and the median used, shape ``(n_stars,)``, in the
        input unit. The median is taken over the finite pixels; a star whose median is
        not finite and positive gets NaN spectra (reported downstream as missing).
    """
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    med = row_nanmedian(f)  # all-NaN rows → NaN
    ok = np.isfinite(med) & (med > 0)
    scale = np.where(ok, med, np.nan)[:, None]
    err = None if flux_err is None else np.atleast_2d(np.asarray(flux_err, dtype=np.float64)) / scale
    return f / scale, err, med


def _as_coeffs(name: str, x: Any, n: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != n:
        raise InputError(f"{name} coefficients must have shape (n_stars, {n}), got {a.shape}",
                         field=name)
    return a


@dataclass
class XPNormaliser:
    """§3.1 normalisation of XP coefficients with a fitted, serialisable min-max state.

    ``transform``: ``r_i = c_i / c_0`` within each band (so ``r_0 = 1``), then
    ``y_i = (r_i − min_i) / (max_i − min_i)`` with the per-coefficient minimum and
    maximum of the training set (``fit``). Conventions:

    * a band whose first coefficient is not finite and positive, or that is missing,
      gives NaN for all its coefficients (the star is then flagged as missing input);
    * ``fit`` ignores non-finite values; a coefficient with zero range (``r_0``
      always, since it is 1 for every star) is mapped with scale 1, i.e. to 0;
    * values outside the training range are *not* clipped (they leave [0, 1]).

    Attributes
    ----------
    n_coefficients
        Coefficients per band (55).
    bp_min, bp_max, rp_min, rp_max
        Training minimum and maximum of ``c_i / c_0`` per coefficient, or ``None``
        before ``fit``.
    """

    n_coefficients: int = N_XP_COEFFICIENTS
    bp_min: np.ndarray | None = None
    bp_max: np.ndarray | None = None
    rp_min: np.ndarray | None = None
    rp_max: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return all(getattr(self, a) is not None for a in ("bp_min", "bp_max", "rp_min", "rp_max"))

    @staticmethod
    def ratios(coeffs: np.ndarray) -> np.ndarray:
        """``c_i / c_0`` per row; NaN rows where ``c_0`` is not finite and positive."""
        c = np.asarray(coeffs, dtype=np.float64)
        c0 = c[:, :1]
        good = np.isfinite(c0) & (c0 > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(good, c / np.where(good, c0, 1.0), np.nan)

    def fit(self, bp: np.ndarray, rp: np.ndarray) -> "XPNormaliser":
        """Learn the per-coefficient min/max of ``c_i / c_0`` on training coefficients.

        Parameters
        ----------
        bp, rp
            Shape ``(n_stars, n_coefficients)``; NaN rows (missing bands) are ignored.
        """
        n = self.n_coefficients
        for band, x in (("bp", bp), ("rp", rp)):
            r = self.ratios(_as_coeffs(band, x, n))
            finite = np.isfinite(r)
            if not finite.any(axis=0).all():
                raise InputError(f"cannot fit the XP normaliser: some {band.upper()} coefficient "
                                 "has no finite value in the training set", field=band)
            lo = np.where(finite, r, np.inf).min(axis=0)
            hi = np.where(finite, r, -np.inf).max(axis=0)
            setattr(self, f"{band}_min", lo)
            setattr(self, f"{band}_max", hi)
        return self

    def _scale(self, band: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.fitted:
            raise InputError("the XP normaliser is not fitted; call fit() first", field=band)
        lo = np.asarray(getattr(self, f"{band}_min"), dtype=np.float64)
        rng = np.asarray(getattr(self, f"{band}_max"), dtype=np.float64) - lo
        return lo, np.where(rng > 0, rng, 1.0)

    def transform(self, bp: np.ndarray, rp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised coefficients ``(y_bp, y_rp)``, each ``(n_stars, n_coefficients)``."""
        out = []
        for band, x in (("bp", bp), ("rp", rp)):
            lo, rng = self._scale(band)
            out.append((self.ratios(_as_coeffs(band, x, self.n_coefficients)) - lo) / rng)
        return out[0], out[1]

    def fit_transform(self, bp: np.ndarray, rp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.fit(bp, rp).transform(bp, rp)

    def inverse_transform(self, y_bp: np.ndarray, y_rp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Undo the min-max step: returns the ratios ``c_i / c_0`` (``c_0`` itself is lost)."""
        out = []
        for band, y in (("bp", y_bp), ("rp", y_rp)):
            lo, rng = self._scale(band)
            r = _as_coeffs(band, y, self.n_coefficients) * rng + lo
            r[:, 0] = np.where(np.isfinite(r[:, 0]), 1.0, np.nan)
            out.append(r)
        return out[0], out[1]

    def fit_table(self, table: StarTable) -> "XPNormaliser":
        """:meth:`fit` on the ``bp_i`` / ``rp_i`` scalars of a star table."""
        return self.fit(*xp_coefficients(table, self.n_coefficients))

    def transform_table(self, table: StarTable) -> StarTable:
        """A copy of ``table`` whose ``bp_i`` / ``rp_i`` scalars are normalised."""
        y_bp, y_rp = self.transform(*xp_coefficients(table, self.n_coefficients))
        out = table.take(np.arange(len(table)))
        for band, y in (("bp", y_bp), ("rp", y_rp)):
            for i, name in enumerate(coefficient_names(band, self.n_coefficients)):
                out.scalars[name] = y[:, i]
        out.meta["xp_normalised"] = "section 3.1: c_i/c_0 then training min-max"
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (lists of floats)."""
        if not self.fitted:
            raise InputError("the XP normaliser is not fitted; nothing to serialise")
        return {"kind": "xp_minmax_first_coefficient", "n_coefficients": int(self.n_coefficients),
                **{k: [float(v) for v in getattr(self, k)]
                   for k in ("bp_min", "bp_max", "rp_min", "rp_max")}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "XPNormaliser":
        """Restore from :meth:`to_dict` output; raises :class:`InputError` if malformed."""
        try:
            n = int(d["n_coefficients"])
            arrays = {k: np.asarray(d[k], dtype=np.float64)
                      for k in ("bp_min", "bp_max", "rp_min", "rp_max")}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed XP normaliser state: {exc!r}", field="xp_normaliser") from None
        for k, v in arrays.items():
            if v.shape != (n,):
                raise InputError(f"XP normaliser '{k}' has shape {v.shape}, expected ({n},)",
                                 field=k)
        return cls(n_coefficients=n, **arrays)
