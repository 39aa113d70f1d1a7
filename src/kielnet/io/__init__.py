"""Readers and writers of survey file formats; readers build :class:`~kielnet.data.StarTable`."""

from __future__ import annotations

from pathlib import Path

from kielnet.data.startable import StarTable
from kielnet.io.apstar import read_apstar
from kielnet.io.emulator import load_payne_emulator
from kielnet.io.tables import ColumnMap, atomic_write_table, read_catalogue, read_table, write_table
from kielnet.io.xp_library import default_library_path, load_xp_library

__all__ = ["read_apstar", "load_payne_emulator", "read_stars", "read_catalogue", "read_table", "write_table", "atomic_write_table", "load_xp_library",
           "default_library_path", "ColumnMap", "XP_LIBRARY"]

#: Name that stands for the embedded APOGEE DR17 x Gaia XP library.
XP_LIBRARY = "xp-library"


def read_stars(spec: str | Path) -> StarTable:
    """Read stars from ``spec``: ``"xp-library"`` (the embedded library), an XP-library
    ``.npz`` subset, APOGEE apStar files (a file named ``apStar*`` or a directory of
    them, see :mod:`kielnet.io.apstar`), or a FITS / Parquet / CSV / ECSV table (see
    :mod:`kielnet.io.tables`)."""
    if str(spec) == XP_LIBRARY:
        return load_xp_library()
    path = Path(spec)
    if path.is_dir() or path.name.startswith("apStar"):
        return read_apstar(path)
    if path.suffix == ".npz":
        return load_xp_library(path)
    if path.name.endswith(".fits.gz") and path.name.startswith("apogee_library_spectra"):
        return load_xp_library(path)
    return read_table(path)
