"""Reader for APOGEE ``apStar`` files (one star per file) → :class:`StarTable`.

An apStar file (SDSS data model ``APOGEE_REDUX/.../stars/.../apStar``) holds, for one
star, the combined and visit spectra on a common log-linear wavelength grid:

* HDU 0: header only — ``OBJID`` (APOGEE id), ``J``/``H``/``K`` (2MASS, mag),
  ``SNR`` (median S/N per apStar pixel), ``NVISITS``;
* HDU 1: flux (10⁻¹⁷ erg s⁻¹ cm⁻² Å⁻¹), HDU 2: flux uncertainty (same unit),
  HDU 3: pixel bitmask (integer);
* shape ``(nvisits + 2, n_pix)`` — rows 0 and 1 are the two combined spectra, then
  one row per visit — or 1-D ``(n_pix,)`` for a single visit (DR13-era files);
  DR17 files of single-visit stars are 2-D with ``NVISITS = 1`` and an empty row 1;
* wavelength: ``log10(λ / Å) = CRVAL1 + CDELT1 · (i + 1 − CRPIX1)`` for pixel ``i``
  (zero-based; ``CRPIX1 = 1`` in practice, giving 15,100.8–16,999.8 Å for 8,575 px).

Star-table fields (units) built by :func:`read_apstar`:

* ids: ``OBJID`` (stripped), else parsed from the name ``apStar-<release>-<id>.fits``;
* spectrum: flux and flux error of one row of each file, in the file's flux unit;
  wavelength as an astropy Quantity in Å;
* scalars: ``j``, ``h``, ``k`` (mag) and ``snr`` (per pixel); APOGEE's missing-value
  sentinels (``99.999``, ``-9999``, …) and absent keys become NaN;
* extra: ``file`` (basename), ``row_used``, ``n_visits``, ``n_clipped_err``,
  ``n_bad_err`` and ``n_flagged_mask`` (see below).

Flux errors follow APOGEE Net II (Sprague et al. 2022, §3.2.3): errors larger than
``clip_factor`` (5) times the median of the spectrum's finite positive errors are
clipped to that limit (``n_clipped_err`` counts them — this includes the ``1e10``
"no data" errors of DR13-era files). Errors that are zero, negative or non-finite
(``n_bad_err`` counts them) carry no information and are set to the same limit, i.e.
treated as the noisiest allowed pixel. The pixel bitmask is *not* used to drop or
alter pixels; ``n_flagged_mask`` counts the pixels with any bit set. Non-finite flux
pixels stay NaN (kielnet's preprocessing interpolates and counts them); note that
DR13-era files write flux ``0`` (with error ``1e10``) where DR17 files write NaN.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import astropy.units as u
import numpy as np

from kielnet.data.spectra import clip_flux_errors
from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.checks import is_truncation, truncation_as_error
from kielnet.io.paths import check_readable, expand_paths

__all__ = ["read_apstar", "iter_apstar", "clip_flux_errors", "apstar_files"]

#: HDU index of each array in an apStar file.
_HDU_FLUX, _HDU_ERR, _HDU_MASK = 1, 2, 3
_HDU_NAMES = {_HDU_FLUX: "flux", _HDU_ERR: "flux_err", _HDU_MASK: "bitmask"}
#: Header keys → star-table scalar names.
_MAG_KEYS = {"j": "J", "h": "H", "k": "K"}
#: Magnitudes outside this open interval are APOGEE sentinels (99.999, -9999, ...).
_MAG_VALID = (-50.0, 50.0)
_NAME_RE = re.compile(r"^apStar-[^-]+-(?P<id>.+?)\.fits(?:\.gz)?$")


# ------------------------------------------------------------------ helpers
def apstar_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand ``paths`` (a file, a directory or a list of them) into apStar files.

    A directory contributes its ``apStar*.fits`` (and ``apStar*.fits.gz``) files in
    sorted order; files are taken as given. Raises :class:`InputError` for a missing
    path, an empty list or a directory without apStar files.
    """
    return expand_paths(paths, what="apStar*.fits files",
                        accept=lambda f: f.name.startswith("apStar") and f.name.endswith((".fits", ".fits.gz")))


def _header_float(header: Any, key: str) -> float:
    """Header value as float; NaN when absent or not a number."""
    value = header.get(key)
    if value is None or isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _magnitude(header: Any, key: str) -> float:
    m = _header_float(header, key)
    return m if np.isfinite(m) and _MAG_VALID[0] < m < _MAG_VALID[1] else float("nan")


def _star_id(header: Any, path: Path) -> str:
    objid = header.get("OBJID")
    if isinstance(objid, str) and objid.strip():
        return objid.strip()
    match = _NAME_RE.match(path.name)
    return match.group("id") if match else path.name.split(".fits")[0]


def _grid(header0: Any, header1: Any, source: str) -> tuple[float, float, float]:
    """(CRVAL1, CDELT1, CRPIX1) from the flux HDU header, else the primary header."""
    values = []
    for key, default in (("CRVAL1", None), ("CDELT1", None), ("CRPIX1", 1.0)):
        v = _header_float(header1, key)
        if not np.isfinite(v):
            v = _header_float(header0, key)
        if not np.isfinite(v):
            if default is None:
                raise InputError(f"header keyword {key} (log10 wavelength grid) is missing",
                                 source=source, field=key)
            v = default
        values.append(v)
    if values[1] <= 0:
        raise InputError(f"CDELT1 must be positive, got {values[1]}", source=source, field="CDELT1")
    return values[0], values[1], values[2]


def _read_file(path: Path, row: int) -> dict[str, Any]:
    """Raw arrays and header values of one apStar file (``row`` selected)."""
    from astropy.io import fits

    source = check_readable(path)
    try:
        with truncation_as_error():
            with fits.open(path, memmap=False) as hdul:
                n_hdu = len(hdul)
                for idx, name in _HDU_NAMES.items():
                    if n_hdu <= idx:
                        raise InputError(f"HDU {idx} ({name}) is missing: the file has only "
                                         f"{n_hdu} HDU(s); is this an apStar file?",
                                         source=source, field=f"HDU{idx}")
                header0 = hdul[0].header.copy()
                header1 = hdul[_HDU_FLUX].header.copy()
                arrays = {}
                for idx, name in _HDU_NAMES.items():
                    data = hdul[idx].data
                    if data is None or not hasattr(data, "ndim") or data.ndim not in (1, 2) or data.size == 0:
                        shape = None if data is None else getattr(data, "shape", None)
                        raise InputError(f"HDU {idx} ({name}) holds no 1-D or 2-D image "
                                         f"(shape {shape})", source=source, field=f"HDU{idx}")
                    arrays[name] = np.array(data)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - report any unreadable file uniformly
        what = "file is truncated" if is_truncation(exc) else "file is corrupt or not FITS"
        raise InputError(f"cannot read apStar FITS file: {what} ({type(exc).__name__}: {exc})",
                         source=source) from exc

    flux, err, mask = arrays["flux"], arrays["flux_err"], arrays["bitmask"]
    if err.shape == mask.shape != flux.shape:  # the flux HDU is the odd one out
        raise InputError(f"HDU 1 (flux) has shape {flux.shape} but HDU 2 (flux_err) and HDU 3 "
                         f"(bitmask) have {err.shape}", source=source, field=f"HDU{_HDU_FLUX}")
    for idx, name in ((_HDU_ERR, "flux_err"), (_HDU_MASK, "bitmask")):
        if arrays[name].shape != flux.shape:
            raise InputError(f"HDU {idx} ({name}) has shape {arrays[name].shape} but the flux "
                             f"(HDU 1) has shape {flux.shape}", source=source, field=f"HDU{idx}")

    nvisits_hdr = _header_float(header0, "NVISITS")
    if flux.ndim == 1:
        n_rows, single = 1, True
    else:
        n_rows = flux.shape[0]
        # DR17 writes single-visit stars as 2 rows, the second one empty.
        single = n_rows == 1 or nvisits_hdr == 1
    if single:
        row_used = 0
    else:
        if row >= n_rows:
            raise InputError(f"row {row} requested but the file has only {n_rows} rows "
                             f"(0 and 1: combined spectra, 2…: visits)", source=source, field="row")
        row_used = row
    if flux.ndim == 2:
        flux, err, mask = flux[row_used], err[row_used], mask[row_used]

    if np.isfinite(nvisits_hdr) and nvisits_hdr >= 1:
        n_visits = int(nvisits_hdr)
    else:
        n_visits = 1 if single else max(n_rows - 2, 1)

    n_pix = flux.shape[-1]
    return {
        "path": path,
        "id": _star_id(header0, path),
        "flux": flux.astype(np.float64),
        "err": err.astype(np.float64),
        "n_flagged": int(np.count_nonzero(mask)),
        "grid": _grid(header0, header1, source),
        "n_pix": n_pix,
        "row_used": row_used,
        "n_visits": n_visits,
        "scalars": {**{k: _magnitude(header0, key) for k, key in _MAG_KEYS.items()},
                    "snr": _snr(header0)},
    }


def _snr(header: Any) -> float:
    s = _header_float(header, "SNR")
    return s if np.isfinite(s) and s >= 0 else float("nan")


def _wavelength(grid: tuple[float, float, float], n_pix: int) -> np.ndarray:
    crval, cdelt, crpix = grid
    return 10.0 ** (crval + cdelt * (np.arange(n_pix) + 1.0 - crpix))


# ------------------------------------------------------------------ reader
def _check_options(row: Any, clip_factor: Any) -> None:
    if isinstance(row, (bool, np.bool_)) or not isinstance(row, (int, np.integer)) or row < 0:
        raise InputError(f"row must be a non-negative integer, got {row!r}", field="row")
    if not (isinstance(clip_factor, (int, float, np.number)) and np.isfinite(clip_factor)
            and clip_factor > 0):
        raise InputError(f"clip_factor must be a positive number, got {clip_factor!r}",
                         field="clip_factor")


def _check_grid(rec: dict[str, Any], first: dict[str, Any], wave: np.ndarray) -> None:
    """Refuse a file whose pixel count or wavelength grid differs from the first file's."""
    src = str(rec["path"])
    if rec["n_pix"] != first["n_pix"]:
        raise InputError(f"spectrum has {rec['n_pix']} pixels but {first['path'].name} has "
                         f"{first['n_pix']}; all files must share one grid", source=src, field="flux")
    if rec["grid"] != first["grid"] and not np.allclose(
            _wavelength(rec["grid"], rec["n_pix"]), wave, rtol=1e-9, atol=0.0):
        raise InputError(f"wavelength grid (CRVAL1, CDELT1, CRPIX1) = {rec['grid']} differs "
                         f"from {first['grid']} of {first['path'].name}", source=src, field="CRVAL1")


def _table(records: list[dict[str, Any]], wave: np.ndarray, clip_factor: float) -> StarTable:
    """Star table of checked records (errors clipped; a row without usable error refused)."""
    err, n_clipped, n_bad = clip_flux_errors(np.stack([r["err"] for r in records]), clip_factor)
    for i in np.flatnonzero(n_bad == err.shape[1]):
        rec = records[i]
        raise InputError(f"row {rec['row_used']} holds no usable flux error (all zero or "
                         "non-finite): the spectrum is empty", source=str(rec["path"]), field="row",
                         star=rec["id"], row=rec["row_used"])

    return StarTable(
        ids=np.array([r["id"] for r in records]),
        flux=np.stack([r["flux"] for r in records]),
        flux_err=err,
        wavelength=wave * u.AA,
        scalars={k: np.array([r["scalars"][k] for r in records], dtype=np.float64)
                 for k in ("j", "h", "k", "snr")},
        extra={"file": np.array([r["path"].name for r in records]),
               "row_used": np.array([r["row_used"] for r in records], dtype=np.int64),
               "n_visits": np.array([r["n_visits"] for r in records], dtype=np.int64),
               "n_clipped_err": n_clipped,
               "n_bad_err": n_bad,
               "n_flagged_mask": np.array([r["n_flagged"] for r in records], dtype=np.int64)},
        meta={"source": ",".join(str(r["path"]) for r in records), "loader": "apstar", "id_kind": "apogee_id"},
    )


def read_apstar(paths: str | os.PathLike | Sequence[str | os.PathLike], *, row: int = 0,
                clip_factor: float = 5.0) -> StarTable:
    """Read apStar files into a :class:`StarTable` (one star per file).

    Parameters
    ----------
    paths
        One apStar file, a list of files, or a directory (all ``apStar*.fits`` in it,
        sorted by name); lists may mix files and directories.
    row
        Row of the 2-D arrays to read: 0 and 1 are the two combined spectra, ``2 +
        v`` is visit ``v``. Single-visit files (1-D arrays, or ``NVISITS = 1``) always
        give their one spectrum; extra column ``row_used`` records what was read.
    clip_factor
        Errors above ``clip_factor`` × the spectrum's median error are clipped to
        that limit (APOGEE Net II: 5); see :func:`clip_flux_errors`.

    Returns
    -------
    StarTable
        ``flux``/``flux_err`` (n_files, n_pix), wavelength in Å, scalars ``j h k
        snr`` (NaN where missing), extra ``file row_used n_visits n_clipped_err
        n_bad_err n_flagged_mask``, meta ``{"source": joined paths, "loader": "apstar"}``.

    Raises
    ------
    InputError
        Naming the file (and HDU / header keyword / ``row``) for a missing, empty,
        corrupt or truncated file, a missing HDU, a row index beyond the file, a
        row without any usable flux error, a pixel count or wavelength grid that
        differs from the first file's. A flux HDU whose shape differs from the error
        and mask HDUs is named as ``HDU1``. One bad file refuses the whole read,
        naming that file: an apStar file holds one star, so a corrupt file is not a
        bad row that could be kept as NaN.

    See Also
    --------
    iter_apstar : the same stars one file at a time (bounded memory).
    """
    _check_options(row, clip_factor)
    files = apstar_files(paths)
    records = [_read_file(p, int(row)) for p in files]
    first = records[0]
    wave = _wavelength(first["grid"], first["n_pix"])
    for rec in records[1:]:
        _check_grid(rec, first, wave)
    return _table(records, wave, clip_factor)


def iter_apstar(paths: str | os.PathLike | Sequence[str | os.PathLike], *, row: int = 0,
                clip_factor: float = 5.0, start: int = 0) -> Iterator[StarTable]:
    """The stars of :func:`read_apstar`, one file (one star) at a time, from file
    number ``start`` on (files in :func:`apstar_files` order).

    Each file is checked against the grid of the first file (read once, also when
    ``start`` skips it), so that concatenating the tables gives ``read_apstar(paths)``
    exactly. Errors are those of :func:`read_apstar`; a bad file is reported when it
    is reached (the files before it have been yielded).
    """
    _check_options(row, clip_factor)
    files = apstar_files(paths)
    if start >= len(files):
        return
    first = _read_file(files[0], int(row))
    wave = _wavelength(first["grid"], first["n_pix"])
    for i in range(max(int(start), 0), len(files)):
        rec = first if i == 0 else _read_file(files[i], int(row))
        if i:
            _check_grid(rec, first, wave)
        yield _table([rec], wave, clip_factor)
