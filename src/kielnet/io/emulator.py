"""Readers of Payne-format spectral emulators and the spectra / pixel masks shipped with them.

A Payne-format emulator file is an ``.npz`` (read with ``allow_pickle=False``) with

* ``w_array_0`` — ``(P, H, k)`` first-layer weights (pixel, hidden unit, label);
* ``b_array_0`` — ``(P, H)``; ``w_array_1`` — ``(P, H)``; ``b_array_1`` — ``(P,)``;
* ``x_min``, ``x_max`` — ``(k,)`` label scaling bounds in physical units;
* optionally ``label_names`` (``(k,)`` strings) and ``pixel_index`` (``(P,)`` ints into
  the full survey grid).

For the APOGEE emulator (``NN_normalized_spectra_old.npz``, El-Badry et al. 2018) P =
7214, H = 5, k = 5 with labels Teff (K), log g (dex, cgs), [Fe/H], [Mg/Fe] (dex) and
vmacro (km s⁻¹); its pixels are the apStar indices 322:3242, 3648:6048 and 6412:8306
of the 8575-pixel grid log10(λ/Å) = 4.179 + 6·10⁻⁶·i (the layout of
``apogee_wavelength.npz``, wavelengths in Å). The emulator is stated valid for dwarfs
only: Teff 4200–7000 K, log g 4.0–5.0, [Fe/H] −0.79–+0.38 (:data:`APOGEE_DWARF_BOX`).

Spectrum files in the same folder hold ``spectrum``/``spec_err`` (one star, on the
P emulated pixels, continuum-normalised) or ``spectra``/``spec_errs`` (visits, with
``snrs``, ``vhelios`` in km s⁻¹, ``hjds`` in days); mask files hold one boolean
``(P,)`` array.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import astropy.units as u
import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.simulation.emulator import (APSTAR_DLOG10_LAMBDA, APSTAR_LOG10_LAMBDA0, APSTAR_N_PIXELS,
                                         DEFAULT_LABEL_NAMES, PayneEmulator, apstar_wavelength)

__all__ = ["APOGEE_PAYNE_SEGMENTS", "APOGEE_DWARF_BOX", "apogee_payne_pixel_index",
           "wavelength_to_pixel_index", "load_payne_emulator", "load_pixel_mask", "load_payne_spectra"]

#: apStar index ranges (half-open) emulated by the APOGEE Payne network (7214 px).
APOGEE_PAYNE_SEGMENTS: tuple[tuple[int, int], ...] = ((322, 3242), (3648, 6048), (6412, 8306))

#: Stated validity range of the APOGEE dwarf emulator (Teff in K, log g and [Fe/H] in dex).
APOGEE_DWARF_BOX: dict[str, tuple[float, float]] = {
    "teff": (4200.0, 7000.0), "logg": (4.0, 5.0), "fe_h": (-0.79, 0.38)}

_WEIGHTS = ("w_array_0", "b_array_0", "w_array_1", "b_array_1", "x_min", "x_max")


def apogee_payne_pixel_index() -> np.ndarray:
    """apStar indices of the 7214 pixels emulated by the APOGEE Payne network."""
    return np.concatenate([np.arange(a, b) for a, b in APOGEE_PAYNE_SEGMENTS])


def wavelength_to_pixel_index(wavelength: u.Quantity | np.ndarray, *,
                              n_full_pixels: int = APSTAR_N_PIXELS,
                              log10_lambda0: float = APSTAR_LOG10_LAMBDA0,
                              dlog10_lambda: float = APSTAR_DLOG10_LAMBDA,
                              source: str = "<memory>") -> np.ndarray:
    """Indices of ``wavelength`` (Å if unitless) on the log-linear grid log10 λ = λ0 + dλ·i.

    Raises :class:`InputError` if a wavelength falls off the grid by more than 1 % of a
    pixel or outside ``0 … n_full_pixels-1``.
    """
    wl = wavelength.to_value(u.AA) if isinstance(wavelength, u.Quantity) else np.asarray(wavelength, float)
    wl = np.asarray(wl, dtype=np.float64).ravel()
    if np.any(~np.isfinite(wl)) or np.any(wl <= 0):
        raise InputError("wavelengths must be finite and positive", source=source, field="wavelength")
    pos = (np.log10(wl) - log10_lambda0) / dlog10_lambda
    idx = np.rint(pos).astype(np.int64)
    off = np.abs(pos - idx)
    if np.any(off > 0.01):
        raise InputError(f"wavelengths are not on the log-linear grid (worst offset {off.max():.3f} px)",
                         source=source, field="wavelength")
    if idx.size and (idx.min() < 0 or idx.max() >= n_full_pixels):
        raise InputError(f"wavelengths map to pixels {idx.min()}…{idx.max()}, outside the "
                         f"{n_full_pixels}-pixel grid", source=source, field="wavelength")
    return idx


def _open_npz(path: str | Path) -> tuple[Mapping[str, np.ndarray], str]:
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError("file does not exist", source=source)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - report any unreadable file uniformly
        raise InputError(f"cannot read npz file (pickled object arrays are refused): {exc}",
                         source=source) from exc
    return arrays, source


def _get(arrays: Mapping[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in arrays:
        raise InputError(f"array '{key}' is missing; the file holds {sorted(arrays)}",
                         source=source, field=key)
    return arrays[key]


def load_payne_emulator(path: str | Path, *,
                        pixel_index: Sequence[int] | np.ndarray | None = None,
                        wavelength: str | Path | u.Quantity | np.ndarray | None = None,
                        label_names: Sequence[str] | None = None,
                        box: Mapping[str, tuple[float, float]] | None = APOGEE_DWARF_BOX,
                        n_full_pixels: int = APSTAR_N_PIXELS) -> PayneEmulator:
    """Read a Payne-format emulator ``.npz`` (no pickle) into a :class:`PayneEmulator`.

    Parameters
    ----------
    path
        The weights file (arrays listed in the module docstring).
    pixel_index
        Indices of the emulated pixels on the full grid. When ``None`` they are taken,
        in order of preference, from a ``pixel_index`` array in the file, from
        ``wavelength``, or — for a 7214-pixel network — from the APOGEE layout
        :data:`APOGEE_PAYNE_SEGMENTS`.
    wavelength
        Wavelengths (Å) of the emulated pixels, as an array/Quantity or the path of an
        ``.npz`` holding a ``wavelength`` array (e.g. ``apogee_wavelength.npz``); mapped
        onto the apStar log-linear grid. If ``pixel_index`` is also given they must agree.
    label_names
        Names of the inputs; default a ``label_names`` array in the file, else
        ``teff, logg, fe_h, mg_fe, vmacro`` for a 5-label network.
    box
        Validity ranges ``{label: (low, high)}`` intersected with ``x_min``/``x_max``;
        default :data:`APOGEE_DWARF_BOX`; ``None`` for the training range only. Names not
        among the labels are ignored.
    n_full_pixels
        Length of the full survey grid (8575 for apStar).

    Raises
    ------
    InputError
        Missing arrays, inconsistent shapes, non-finite weights, or an undeterminable
        or inconsistent pixel layout — naming the file and the array.
    """
    arrays, source = _open_npz(path)
    w0, b0, w1, b1, x_min, x_max = (np.asarray(_get(arrays, k, source)) for k in _WEIGHTS)
    for key, arr in zip(_WEIGHTS, (w0, b0, w1, b1, x_min, x_max)):
        if not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"array '{key}' is not numeric (dtype {arr.dtype})", source=source, field=key)
    if w0.ndim != 3:
        raise InputError(f"w_array_0 must be 3-D (n_pix, n_hidden, n_labels), got shape {w0.shape}",
                         source=source, field="w_array_0")
    n_pix, n_hid, k = w0.shape
    for key, arr, shape in (("b_array_0", b0, (n_pix, n_hid)), ("w_array_1", w1, (n_pix, n_hid)),
                            ("b_array_1", b1, (n_pix,)), ("x_min", x_min, (k,)), ("x_max", x_max, (k,))):
        if arr.shape != shape:
            raise InputError(f"array '{key}' has shape {arr.shape}, expected {shape} for w_array_0 "
                             f"of shape {w0.shape}", source=source, field=key)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"array '{key}' holds non-finite values", source=source, field=key)
    if not np.all(np.isfinite(w0)):
        raise InputError("array 'w_array_0' holds non-finite values", source=source, field="w_array_0")

    if label_names is None:
        if "label_names" in arrays:
            label_names = [str(s) for s in np.asarray(arrays["label_names"]).ravel()]
        elif k == len(DEFAULT_LABEL_NAMES):
            label_names = DEFAULT_LABEL_NAMES
        else:
            raise InputError(f"the network has {k} inputs; pass label_names (no default for k != 5)",
                             source=source, field="label_names")

    from_wave = None
    if wavelength is not None:
        if isinstance(wavelength, (str, Path)):
            warrays, wsource = _open_npz(wavelength)
            wl = np.asarray(_get(warrays, "wavelength", wsource), dtype=np.float64)
        else:
            wl, wsource = wavelength, source
        from_wave = wavelength_to_pixel_index(wl, n_full_pixels=n_full_pixels, source=wsource)
        if from_wave.shape != (n_pix,):
            raise InputError(f"{from_wave.size} wavelengths for a {n_pix}-pixel emulator",
                             source=wsource, field="wavelength")
    if pixel_index is not None:
        pix = np.asarray(pixel_index)
    elif "pixel_index" in arrays:
        pix = np.asarray(arrays["pixel_index"])
    elif from_wave is not None:
        pix = from_wave
    elif n_pix == sum(b - a for a, b in APOGEE_PAYNE_SEGMENTS):
        pix = apogee_payne_pixel_index()
    else:
        raise InputError(f"cannot tell which of the {n_full_pixels} grid pixels the {n_pix} emulated "
                         "pixels are; pass pixel_index= or wavelength=", source=source, field="pixel_index")
    if pix.shape != (n_pix,) or not np.issubdtype(pix.dtype, np.integer):
        raise InputError(f"pixel_index must be {n_pix} integers, got shape {pix.shape}, dtype {pix.dtype}",
                         source=source, field="pixel_index")
    if from_wave is not None and not np.array_equal(pix, from_wave):
        raise InputError("pixel_index disagrees with the wavelengths given", source=source, field="wavelength")

    return PayneEmulator(w0=w0, b0=b0, w1=w1, b1=b1, x_min=x_min, x_max=x_max,
                         label_names=tuple(label_names), pixel_index=pix, box=box,
                         n_full_pixels=n_full_pixels, source=source)


def load_pixel_mask(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a boolean per-pixel array (e.g. ``apogee_mask.npz``: True = bad pixel;
    ``cannon_cont_pixels_apogee.npz``: True = continuum pixel).

    Parameters
    ----------
    path
        The ``.npz`` file.
    key
        Array to read; default the file's only array.
    """
    arrays, source = _open_npz(path)
    if key is None:
        if len(arrays) != 1:
            raise InputError(f"the file holds {sorted(arrays)}; say which with key=", source=source)
        key = next(iter(arrays))
    arr = np.asarray(_get(arrays, key, source))
    if arr.ndim != 1 or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"'{key}' must be a 1-D boolean array, got shape {arr.shape}, dtype {arr.dtype}",
                         source=source, field=key)
    return arr.astype(bool)


def load_payne_spectra(path: str | Path, emulator: PayneEmulator, *,
                       star_id: str | None = None) -> StarTable:
    """Read normalised spectra on the emulated pixels into a StarTable on the full grid.

    Accepts ``spectrum``/``spec_err`` (one star) or ``spectra``/``spec_errs`` (one row per
    visit; ``snrs``, ``vhelios`` (km s⁻¹) and ``hjds`` (d) become extra columns).
    Pixels the emulator does not cover are NaN in ``flux`` and ``flux_err``; pixels the
    file flags with an inflated error keep that error.

    Parameters
    ----------
    path
        The ``.npz`` file.
    emulator
        Fixes the pixel layout (``pixel_index``, ``n_full_pixels``).
    star_id
        Identifier; default parsed from a name like ``spectrum_ap_id_<ID>_.npz``.
    """
    arrays, source = _open_npz(path)
    if "spectrum" in arrays:
        flux = np.atleast_2d(_get(arrays, "spectrum", source))
        err = np.atleast_2d(_get(arrays, "spec_err", source))
    elif "spectra" in arrays:
        flux = np.atleast_2d(_get(arrays, "spectra", source))
        err = np.atleast_2d(_get(arrays, "spec_errs", source))
    else:
        raise InputError(f"no 'spectrum' or 'spectra' array; the file holds {sorted(arrays)}",
                         source=source, field="spectrum")
    for name, arr in (("flux", flux), ("flux_err", err)):
        if arr.ndim != 2 or arr.shape[1] != emulator.n_pix:
            raise InputError(f"{name} has shape {arr.shape}; the emulator has {emulator.n_pix} pixels",
                             source=source, field=name)
    if err.shape != flux.shape:
        raise InputError(f"error array shape {err.shape} differs from flux shape {flux.shape}",
                         source=source, field="flux_err")
    if star_id is None:
        m = re.search(r"ap_id_(.+?)_?$", Path(path).stem)
        star_id = m.group(1) if m else Path(path).stem
    n = len(flux)
    extra = {}
    for key, col in (("snrs", "snr"), ("vhelios", "vhelio"), ("hjds", "hjd")):
        if key in arrays and np.shape(arrays[key]) == (n,):
            extra[col] = np.asarray(arrays[key], dtype=np.float64)
    return StarTable(ids=np.array([star_id] * n),
                     flux=emulator.to_full_grid(flux), flux_err=emulator.to_full_grid(err),
                     wavelength=apstar_wavelength(emulator.n_full_pixels), extra=extra,
                     meta={"source": source, "loader": "payne_spectra"})
