"""Readers and writers of survey file formats; readers build :class:`~kielnet.data.StarTable`."""

from __future__ import annotations

from pathlib import Path

from kielnet.data.startable import StarTable
from kielnet.io.apstar import read_apstar
from kielnet.io.emulator import load_payne_emulator
from kielnet.io.tables import ColumnMap, atomic_write_table, read_catalogue, read_table, write_table
from kielnet.io.xp_library import default_library_path, load_xp_library

__all__ = ["read_apstar", "load_payne_emulator", "read_stars", "read_catalogue", "read_table", "write_table", "atomic_write_table", "load_xp_library",
           "default_library_path", "ColumnMap", "XP_LIBRARY", "sniff_format"]

#: Name that stands for the embedded APOGEE DR17 x Gaia XP library.
XP_LIBRARY = "xp-library"


def _column_names(path: Path) -> set[str]:
    """Lower-case column names of a table file, read cheaply (header only where possible)."""
    name = path.name.lower()
    try:
        if name.endswith((".csv", ".csv.gz")):
            import gzip

            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", errors="replace") as fh:
                for line in fh:
                    if line.strip() and not line.startswith("#"):
                        return {c.strip().strip('"').lower() for c in line.split(",")}
            return set()
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            from astropy.io import fits

            with fits.open(path) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                        return {c.lower() for c in hdu.columns.names}
            return set()
    except (OSError, ValueError):
        return set()  # unreadable: let the reader report it with its own error
    return set()


def sniff_format(path: str | Path) -> str:
    """Which reader a file needs: ``"apstar"``, ``"gaia_rvs"`` (archive RVS mean
    spectra), ``"gaia_xp"`` (archive XP continuous coefficients) or ``"table"``."""
    path = Path(path)
    if path.name.startswith("apStar"):
        return "apstar"
    cols = _column_names(path)
    if {"bp_coefficients", "rp_coefficients"} & cols:
        return "gaia_xp"
    if "source_id" in cols and "flux" in cols and ("wavelength" in cols or "solution_id" in cols):
        return "gaia_rvs"
    return "table"


def read_stars(spec: str | Path) -> StarTable:
    """Read stars from ``spec``: ``"xp-library"`` (the embedded library), an XP-library
    ``.npz`` subset, APOGEE apStar files (a file named ``apStar*`` or a directory of
    them, see :mod:`kielnet.io.apstar`), Gaia DR3 RVS mean spectra in the archive's
    datalink form (a file or a directory of them, :mod:`kielnet.io.gaia_rvs`), Gaia
    XP continuous coefficients (:mod:`kielnet.io.gaia_xp`), or a FITS / Parquet / CSV /
    ECSV table (see :mod:`kielnet.io.tables`). CSV and FITS files are recognised by
    their column names."""
    from kielnet.io.gaia_rvs import read_rvs_spectra
    from kielnet.io.gaia_xp import read_xp_continuous

    if str(spec) == XP_LIBRARY:
        return load_xp_library()
    path = Path(spec)
    if path.is_dir():
        if any(p.name.startswith("apStar") for p in path.iterdir()):
            return read_apstar(path)
        return read_rvs_spectra(path)
    if path.suffix == ".npz":
        return load_xp_library(path)
    if path.name.endswith(".fits.gz") and path.name.startswith("apogee_library_spectra"):
        return load_xp_library(path)
    kind = sniff_format(path)
    if kind == "apstar":
        return read_apstar(path)
    if kind == "gaia_rvs":
        return read_rvs_spectra(path)
    if kind == "gaia_xp":
        return read_xp_continuous(path)
    return read_table(path)
