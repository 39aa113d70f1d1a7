"""Format ``gaia-rvs``: Gaia DR3 RVS mean spectra as the archive writes them — a CSV /
ECSV / FITS / VOTable file with columns ``source_id``, ``flux`` and ``wavelength`` or
``solution_id`` (long or wide form), a directory of such files, or a glob pattern.

Read by :func:`kielnet.io.gaia_rvs.read_rvs_spectra`. Streamed one file at a time
(a file may hold many stars, so the row count is unknown). FITS files of a directory
that hold no table (e.g. a wavelength-grid image) are skipped, as ``read_rvs_spectra``
skips them. Files whose extra columns differ keep the first file's columns (NaN where
a file lacks one) where ``read_rvs_spectra`` keeps only the columns every file has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.io.registry import ReaderSpec, column_names, register_reader, safe_iterdir

__all__ = ["READER"]

_SUFFIXES = (".csv", ".ecsv", ".fits", ".fit", ".vot", ".votable", ".xml")
_GZ = (".csv.gz", ".ecsv.gz", ".fits.gz", ".fit.gz")
_FITS = (".fits", ".fit", ".fits.gz", ".fit.gz")


def identify(path: Path) -> bool:
    """a file with columns source_id, flux, wavelength or solution_id; a directory of .csv/.ecsv/.fits/.vot files"""
    if path.is_dir():
        return any(f.is_file() and (f.suffix.lower() in _SUFFIXES or f.name.lower().endswith(_GZ))
                   for f in safe_iterdir(path))
    cols = column_names(path)
    return "source_id" in cols and "flux" in cols and ("wavelength" in cols or "solution_id" in cols)


def read(path: Any) -> StarTable:
    """Every star of ``path``: a file, a directory or a list of files."""
    from kielnet.io.gaia_rvs import read_rvs_spectra

    return read_rvs_spectra(path)


def _fits_without_table(path: Path) -> bool:
    """A FITS file that holds no table (e.g. an RVS wavelength grid)."""
    if not path.name.lower().endswith(_FITS):
        return False
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            return not any(isinstance(h, (fits.BinTableHDU, fits.TableHDU)) for h in hdul)
    except Exception:  # noqa: BLE001 - unreadable files are reported when read
        return False


def list_files(target: Any) -> list[Path]:
    """The files of ``target`` to read, without the table-less FITS files of a directory."""
    from kielnet.io.gaia_rvs import rvs_files

    explicit = set(target) if isinstance(target, list) else {target}
    return [f for f in rvs_files(target) if f in explicit or not _fits_without_table(f)]


def iter_files(files: list[Path], first: int = 0) -> Iterator[StarTable]:
    """The stars of ``files[first:]``, one file at a time, with the first file's extra columns."""
    from kielnet.io.gaia_rvs import read_rvs_spectra

    keys: list[str] | None = None
    for f in files[first:]:
        table = read_rvs_spectra(f)
        if keys is None:
            keys = list(table.extra)
        elif list(table.extra) != keys:  # keep the first file's columns (see the module docstring)
            table.extra = {k: table.extra[k] if k in table.extra else np.full(len(table), np.nan) for k in keys}
        yield table


READER = register_reader(ReaderSpec(
    "gaia-rvs", identify=identify, read=read, directories=True, priority=10, description="Gaia RVS mean spectra",
    list_files=list_files, iter_files=iter_files, shared_meta=("nan_fill",),
    hint="archive RVS mean spectra (columns source_id, flux, wavelength), or a directory of "
         ".csv/.ecsv/.fits/.vot files"))
