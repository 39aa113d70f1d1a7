"""Payne-format per-pixel neural-network spectral emulator and spectrum simulation.

A *Payne-format* emulator (Ting et al. 2019; the APOGEE "binspec" network of El-Badry
et al. 2018) predicts a continuum-normalised spectrum from ``k`` stellar labels with
one tiny network per pixel. For pixel ``p`` with ``H`` hidden units:

* labels are scaled to ``s = (x - x_min) / (x_max - x_min) - 0.5`` (shape ``(k,)``);
* ``h[p, i] = sigmoid(sum_j w0[p, i, j] * s[j] + b0[p, i])`` (``i`` a hidden unit,
  ``j`` a label — the axis order of The Payne's ``einsum('ijk,k->ij', ...)``);
* ``flux[p] = sum_i w1[p, i] * h[p, i] + b1[p]``.

Units: labels are physical — by default ``teff`` (K), ``logg`` (dex, cgs), ``fe_h``
and ``mg_fe`` (dex), ``vmacro`` (km s⁻¹); flux is continuum-normalised
(dimensionless, ~1 in the continuum). The emulated pixels are a subset of a *full*
survey grid, addressed by ``pixel_index`` — for APOGEE the 8575-pixel apStar grid,
log10(λ/Å) = 4.179 + 6·10⁻⁶·i, of which the three detector chips are emulated.

Everything here is numpy only and vectorised over stars and pixels; nothing reads
files (:func:`kielnet.io.emulator.load_payne_emulator` builds a
:class:`PayneEmulator`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import astropy.units as u
import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError

__all__ = ["DEFAULT_LABEL_NAMES", "APSTAR_N_PIXELS", "APSTAR_LOG10_LAMBDA0", "APSTAR_DLOG10_LAMBDA",
           "apstar_wavelength", "PayneEmulator", "noise_sigma", "sample_labels", "simulate"]

#: Label order of the APOGEE Payne emulator: Teff (K), log g (dex), [Fe/H], [Mg/Fe] (dex),
#: macroturbulence (km/s).
DEFAULT_LABEL_NAMES: tuple[str, ...] = ("teff", "logg", "fe_h", "mg_fe", "vmacro")

#: The apStar grid: 8575 pixels, log10(λ/Å) = 4.179 + 6e-6 · i.
APSTAR_N_PIXELS = 8575
APSTAR_LOG10_LAMBDA0 = 4.179
APSTAR_DLOG10_LAMBDA = 6e-6

#: Stars evaluated at once (bounds the (n, n_pix, H) temporaries to ~100 MB).
_CHUNK = 256

SigmaModel = Literal["continuum", "proportional"]


def apstar_wavelength(n_pixels: int = APSTAR_N_PIXELS) -> u.Quantity:
    """The apStar vacuum wavelength grid, ``10**(4.179 + 6e-6 * i)`` Å, ``i = 0 … n_pixels-1``."""
    return 10.0 ** (APSTAR_LOG10_LAMBDA0 + APSTAR_DLOG10_LAMBDA * np.arange(int(n_pixels))) * u.AA


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # tanh form: no overflow for large |z|
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(eq=False)
class PayneEmulator:
    """Weights of a per-pixel Payne network (``P`` pixels, ``H`` hidden units, ``k`` labels).

    Attributes
    ----------
    w0
        First-layer weights, shape ``(P, H, k)`` (pixel, hidden unit, label).
    b0
        First-layer biases, shape ``(P, H)``.
    w1
        Second-layer weights, shape ``(P, H)``.
    b1
        Output biases, shape ``(P,)``.
    x_min, x_max
        Label scaling bounds, shape ``(k,)``, physical units; the training range.
    label_names
        Names of the ``k`` labels in input order.
    pixel_index
        For each emulated pixel, its index into the full survey grid (``(P,)`` ints,
        strictly increasing).
    box
        Optional validity ranges ``{label: (low, high)}`` (physical units) narrower
        than the training range, e.g. the stated dwarf-only range; labels absent from
        it are bounded by ``x_min``/``x_max`` only.
    n_full_pixels
        Length of the full survey grid ``pixel_index`` points into.
    source
        Where the weights came from (file path or ``<memory>``).
    """

    w0: np.ndarray
    b0: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    x_min: np.ndarray
    x_max: np.ndarray
    label_names: tuple[str, ...] = DEFAULT_LABEL_NAMES
    pixel_index: np.ndarray | None = None
    box: Mapping[str, tuple[float, float]] | None = None
    n_full_pixels: int = APSTAR_N_PIXELS
    source: str = "<memory>"
    _w0_flat: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        src = self.source
        self.w0 = np.ascontiguousarray(self.w0, dtype=np.float64)
        self.b0 = np.ascontiguousarray(self.b0, dtype=np.float64)
        self.w1 = np.ascontiguousarray(self.w1, dtype=np.float64)
        self.b1 = np.ascontiguousarray(self.b1, dtype=np.float64)
        self.x_min = np.asarray(self.x_min, dtype=np.float64).ravel()
        self.x_max = np.asarray(self.x_max, dtype=np.float64).ravel()
        self.label_names = tuple(str(n) for n in self.label_names)
        if self.w0.ndim != 3:
            raise InputError(f"w0 must have shape (n_pix, n_hidden, n_labels), got {self.w0.shape}",
                             source=src, field="w0")
        n_pix, n_hid, k = self.w0.shape
        expect = {"b0": (n_pix, n_hid), "w1": (n_pix, n_hid), "b1": (n_pix,),
                  "x_min": (k,), "x_max": (k,)}
        for name, shape in expect.items():
            got = getattr(self, name).shape
            if got != shape:
                raise InputError(f"{name} has shape {got}, expected {shape} for w0 of shape "
                                 f"{self.w0.shape}", source=src, field=name)
        if len(self.label_names) != k:
            raise InputError(f"{len(self.label_names)} label names {list(self.label_names)} given "
                             f"for an emulator with {k} inputs", source=src, field="label_names")
        if not np.all(self.x_max > self.x_min):
            raise InputError("x_max must exceed x_min for every label", source=src, field="x_max")
        if self.pixel_index is None:
            self.pixel_index = np.arange(n_pix)
        pix = np.asarray(self.pixel_index)
        if pix.shape != (n_pix,) or not np.issubdtype(pix.dtype, np.integer):
            raise InputError(f"pixel_index must be {n_pix} integers, got shape {pix.shape} "
                             f"dtype {pix.dtype}", source=src, field="pixel_index")
        self.pixel_index = pix.astype(np.int64)
        if n_pix and (self.pixel_index[0] < 0 or self.pixel_index[-1] >= self.n_full_pixels
                      or np.any(np.diff(self.pixel_index) <= 0)):
            raise InputError(f"pixel_index must be strictly increasing within 0…{self.n_full_pixels - 1}",
                             source=src, field="pixel_index")
        if self.box is not None:
            box = {}
            for name, lim in dict(self.box).items():
                if name not in self.label_names:
                    continue
                lo, hi = (float(v) for v in lim)
                box[name] = (lo, hi)
            self.box = box
        lo, hi = self.valid_box
        if not np.all(hi > lo):
            bad = [n for n, a, b in zip(self.label_names, lo, hi) if not b > a]
            raise InputError(f"the validity box is empty for {bad} (box ∩ [x_min, x_max])",
                             source=src, field="box")
        self._w0_flat = self.w0.reshape(n_pix * n_hid, k)

    # ------------------------------------------------------------------ shape
    @property
    def n_pix(self) -> int:
        """Number of emulated pixels ``P``."""
        return int(self.w0.shape[0])

    @property
    def n_hidden(self) -> int:
        """Hidden units per pixel ``H``."""
        return int(self.w0.shape[1])

    @property
    def n_labels(self) -> int:
        """Number of input labels ``k``."""
        return int(self.w0.shape[2])

    @property
    def valid_box(self) -> np.ndarray:
        """Validity box, shape ``(2, k)``: row 0 lower, row 1 upper bounds (physical units).

        The intersection of ``[x_min, x_max]`` with :attr:`box` where given.
        """
        lo, hi = self.x_min.copy(), self.x_max.copy()
        for j, name in enumerate(self.label_names):
            if self.box and name in self.box:
                lo[j] = max(lo[j], self.box[name][0])
                hi[j] = min(hi[j], self.box[name][1])
        return np.stack([lo, hi])

    @property
    def box_centre(self) -> np.ndarray:
        """Centre of :attr:`valid_box`, shape ``(k,)``."""
        return self.valid_box.mean(axis=0)

    # ------------------------------------------------------------------ labels
    def _labels_2d(self, labels: np.ndarray | Sequence[float]) -> tuple[np.ndarray, bool]:
        x = np.asarray(labels, dtype=np.float64)
        single = x.ndim == 1
        x = np.atleast_2d(x)
        if x.ndim != 2 or x.shape[1] != self.n_labels:
            raise InputError(f"labels must have shape (n, {self.n_labels}) or ({self.n_labels},) in the "
                             f"order {list(self.label_names)}, got {np.shape(labels)}",
                             source=self.source, field="labels")
        return x, single

    def labels_from_dict(self, labels: Mapping[str, np.ndarray | float]) -> np.ndarray:
        """Stack a ``{name: values}`` mapping into an ``(n, k)`` array in emulator order."""
        missing = [n for n in self.label_names if n not in labels]
        if missing:
            raise InputError(f"labels {missing} are missing; the emulator needs {list(self.label_names)}",
                             source=self.source, field=missing[0])
        return np.stack([np.atleast_1d(np.asarray(labels[n], dtype=np.float64))
                         for n in self.label_names], axis=-1)

    def in_box(self, labels: np.ndarray | Sequence[float]) -> np.ndarray:
        """Boolean mask, shape ``(n,)`` (or a scalar for one star): labels inside :attr:`valid_box`."""
        x, single = self._labels_2d(labels)
        lo, hi = self.valid_box
        ok = np.all((x >= lo) & (x <= hi), axis=1)
        return ok[0] if single else ok

    def scale(self, labels: np.ndarray) -> np.ndarray:
        """Scaled inputs ``s = (x - x_min) / (x_max - x_min) - 0.5``."""
        return (np.asarray(labels, dtype=np.float64) - self.x_min) / (self.x_max - self.x_min) - 0.5

    # ------------------------------------------------------------------ network
    def _hidden(self, s: np.ndarray) -> np.ndarray:
        # s (n, k) -> h (n, P, H)
        z = (s @ self._w0_flat.T).reshape(len(s), self.n_pix, self.n_hidden) + self.b0
        return _sigmoid(z)

    def evaluate(self, labels: np.ndarray | Sequence[float]) -> np.ndarray:
        """Emulated normalised flux.

        Parameters
        ----------
        labels
            Shape ``(n, k)`` or ``(k,)``, physical units, order :attr:`label_names`.

        Returns
        -------
        numpy.ndarray
            Shape ``(n, P)`` (``(P,)`` for 1-D input), float64, on the emulated pixels.
        """
        x, single = self._labels_2d(labels)
        out = np.empty((len(x), self.n_pix))
        for a in range(0, len(x), _CHUNK):
            h = self._hidden(self.scale(x[a:a + _CHUNK]))
            out[a:a + _CHUNK] = np.einsum("nph,ph->np", h, self.w1) + self.b1
        return out[0] if single else out

    def jacobian(self, labels: np.ndarray | Sequence[float], *,
                 return_flux: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Analytic derivative of the flux with respect to the *physical* labels.

        ``d flux[p] / d x[j] = sum_i w1[p,i] h[p,i] (1 - h[p,i]) w0[p,i,j] / (x_max[j] - x_min[j])``.

        Parameters
        ----------
        labels
            Shape ``(n, k)`` or ``(k,)``.
        return_flux
            Also return the flux (computed from the same hidden activations).

        Returns
        -------
        numpy.ndarray
            Shape ``(n, P, k)`` (``(P, k)`` for 1-D input), flux per label unit
            (per K for Teff, per dex for log g and abundances, per km/s for vmacro);
            with ``return_flux`` a tuple ``(jacobian, flux)``.
        """
        x, single = self._labels_2d(labels)
        jac = np.empty((len(x), self.n_pix, self.n_labels))
        flux = np.empty((len(x), self.n_pix)) if return_flux else None
        inv_width = 1.0 / (self.x_max - self.x_min)
        for a in range(0, len(x), _CHUNK):
            h = self._hidden(self.scale(x[a:a + _CHUNK]))
            g = h * (1.0 - h) * self.w1                                   # (n, P, H)
            jac[a:a + _CHUNK] = np.einsum("nph,phk->npk", g, self.w0) * inv_width
            if flux is not None:
                flux[a:a + _CHUNK] = np.einsum("nph,ph->np", h, self.w1) + self.b1
        if single:
            jac = jac[0]
            flux = None if flux is None else flux[0]
        return (jac, flux) if return_flux else jac

    def to_full_grid(self, flux: np.ndarray, fill: float = np.nan,
                     n_full_pixels: int | None = None) -> np.ndarray:
        """Place emulated-pixel arrays ``(..., P)`` on the full grid ``(..., n_full)``, ``fill`` elsewhere."""
        n_full = self.n_full_pixels if n_full_pixels is None else int(n_full_pixels)
        flux = np.asarray(flux)
        out = np.full(flux.shape[:-1] + (n_full,), fill, dtype=np.float64)
        out[..., self.pixel_index] = flux
        return out


# ---------------------------------------------------------------------- simulation
def noise_sigma(flux: np.ndarray, snr: np.ndarray | float,
                sigma_model: SigmaModel = "continuum") -> np.ndarray:
    """Per-pixel Gaussian noise σ for continuum-normalised flux at signal-to-noise ``snr``.

    Parameters
    ----------
    flux
        Noiseless normalised flux, shape ``(n, P)``.
    snr
        S/N per pixel, a scalar or one value per star ``(n,)``.
    sigma_model
        ``"continuum"`` (default): ``σ = 1 / snr`` — S/N quoted at the continuum level,
        constant across the spectrum (as for APOGEE's normalised error arrays);
        ``"proportional"``: ``σ = flux / snr`` — constant S/N in every pixel.
    """
    flux = np.asarray(flux, dtype=np.float64)
    snr = np.asarray(snr, dtype=np.float64)
    if snr.ndim == 1:
        snr = snr[:, None]
    if np.any(~np.isfinite(snr)) or np.any(snr <= 0):
        raise InputError("snr must be finite and positive", field="snr")
    if sigma_model == "continuum":
        return np.broadcast_to(1.0 / snr, flux.shape).astype(np.float64)
    if sigma_model == "proportional":
        return np.abs(flux) / snr
    raise InputError(f"unknown sigma_model {sigma_model!r}; use 'continuum' or 'proportional'",
                     field="sigma_model")


def _box_array(emulator: PayneEmulator,
               box: Mapping[str, tuple[float, float]] | np.ndarray | None) -> np.ndarray:
    """Resolve ``box`` (mapping by label name or ``(2, k)`` array) intersected with the valid box."""
    lo, hi = emulator.valid_box
    if box is None:
        return np.stack([lo, hi])
    if isinstance(box, Mapping):
        unknown = set(box) - set(emulator.label_names)
        if unknown:
            raise InputError(f"box names unknown labels {sorted(unknown)}; the emulator has "
                             f"{list(emulator.label_names)}", field="box")
        blo, bhi = lo.copy(), hi.copy()
        for j, name in enumerate(emulator.label_names):
            if name in box:
                blo[j], bhi[j] = (float(v) for v in box[name])
    else:
        arr = np.asarray(box, dtype=np.float64)
        if arr.shape != (2, emulator.n_labels):
            raise InputError(f"box array must have shape (2, {emulator.n_labels}), got {arr.shape}",
                             field="box")
        blo, bhi = arr
    out = np.stack([np.maximum(lo, blo), np.minimum(hi, bhi)])
    if not np.all(out[1] >= out[0]):
        raise InputError("the requested box does not overlap the emulator's valid box", field="box")
    return out


def sample_labels(emulator: PayneEmulator, n: int, rng: np.random.Generator, *,
                  box: Mapping[str, tuple[float, float]] | np.ndarray | None = None) -> np.ndarray:
    """Draw ``n`` label vectors uniformly inside the emulator's validity box.

    Parameters
    ----------
    emulator
        The emulator whose :attr:`~PayneEmulator.valid_box` bounds the draw.
    n
        Number of stars.
    rng
        Random generator.
    box
        Optional narrower box, ``{label: (low, high)}`` or a ``(2, k)`` array; it is
        intersected with the valid box (the emulator is never extrapolated).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, k)``, physical units, order :attr:`~PayneEmulator.label_names`.
    """
    lo, hi = _box_array(emulator, box)
    return lo + (hi - lo) * rng.random((int(n), emulator.n_labels))


def simulate(emulator: PayneEmulator, labels: np.ndarray | Mapping[str, np.ndarray],
             snr: np.ndarray | float | None, rng: np.random.Generator, *,
             n_full_pixels: int | None = None, sigma_model: SigmaModel = "continuum",
             id_prefix: str = "sim_") -> StarTable:
    """Simulate noisy normalised spectra on the full survey grid.

    Parameters
    ----------
    emulator
        The spectral emulator.
    labels
        ``(n, k)`` array (or ``(k,)``) in emulator order, or a ``{name: (n,)}`` mapping.
    snr
        S/N per pixel: a scalar or ``(n,)``; ``None`` or ``inf`` gives noiseless spectra
        (``flux_err`` is then 0 on the emulated pixels).
    rng
        Random generator for the noise.
    n_full_pixels
        Length of the output grid; default ``emulator.n_full_pixels`` (8575 for apStar).
    sigma_model
        Noise model, see :func:`noise_sigma`; default ``σ = 1/snr``.
    id_prefix
        Star ids are ``f"{id_prefix}{i:06d}"`` for ``i = 1 … n``.

    Returns
    -------
    StarTable
        ``flux``/``flux_err`` of shape ``(n, n_full_pixels)``: pixels outside the emulated
        range have NaN flux *and* NaN ``flux_err`` (the star-table convention for a
        missing pixel); ``wavelength`` is the apStar grid ``10**(4.179 + 6e-6 i)`` Å;
        ``labels`` holds the true labels by name; ``extra['snr']`` the S/N used;
        ``meta['sigma_model']`` the noise model.
    """
    if isinstance(labels, Mapping):
        x = emulator.labels_from_dict(labels)
    else:
        x, _ = emulator._labels_2d(labels)
    n = len(x)
    n_full = emulator.n_full_pixels if n_full_pixels is None else int(n_full_pixels)
    if emulator.pixel_index[-1] >= n_full:
        raise InputError(f"the emulator addresses pixel {emulator.pixel_index[-1]} but the grid "
                         f"has only {n_full}", source=emulator.source, field="n_full_pixels")
    clean = emulator.evaluate(x)
    if snr is None or np.all(np.isinf(np.asarray(snr, dtype=float))):
        sigma = np.zeros_like(clean)
        snr_col = np.full(n, np.inf)
        noisy = clean
    else:
        snr_arr = np.asarray(snr, dtype=np.float64)
        if snr_arr.ndim > 1 or (snr_arr.ndim == 1 and len(snr_arr) != n):
            raise InputError(f"snr must be a scalar or have shape ({n},), got {snr_arr.shape}",
                             field="snr")
        sigma = noise_sigma(clean, snr_arr, sigma_model)
        noisy = clean + sigma * rng.standard_normal(clean.shape)
        snr_col = np.broadcast_to(snr_arr, (n,)).astype(np.float64)
    flux = emulator.to_full_grid(noisy, n_full_pixels=n_full)
    flux_err = emulator.to_full_grid(sigma, n_full_pixels=n_full)
    ids = np.array([f"{id_prefix}{i:06d}" for i in range(1, n + 1)])
    return StarTable(
        ids=ids, flux=flux, flux_err=flux_err, wavelength=apstar_wavelength(n_full),
        labels={name: x[:, j] for j, name in enumerate(emulator.label_names)},
        extra={"snr": snr_col},
        meta={"source": "<simulation>", "loader": "simulation.simulate",
              "emulator": emulator.source, "sigma_model": sigma_model},
    )
