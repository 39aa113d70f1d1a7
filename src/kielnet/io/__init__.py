"""Readers and writers of survey file formats; readers build :class:`~kielnet.data.StarTable`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from kielnet.data.startable import StarTable
from kielnet.errors import InputError, KielnetError
from kielnet.io.apstar import read_apstar
from kielnet.io.emulator import load_payne_emulator
from kielnet.io.paths import check_readable
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
    except Exception:  # noqa: BLE001 - unreadable: let the reader report it with its own error
        return set()
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


_RVS_SUFFIXES = (".csv", ".ecsv", ".fits", ".fit", ".vot", ".votable", ".xml")
_RVS_GZ = (".csv.gz", ".ecsv.gz", ".fits.gz", ".fit.gz")
#: Reader names used in messages, by :func:`sniff_format` kind.
_READER_NAMES = {"apstar": "an apStar file", "gaia_rvs": "Gaia RVS mean spectra",
                 "gaia_xp": "Gaia XP continuous spectra", "xp_library": "the XP library",
                 "table": "a star table"}


def _reading(kind: str, path: Path, reader: Callable[..., StarTable], *args: Any) -> StarTable:
    """Call ``reader(*args)``; an exception that is not kielnet's own becomes an
    :class:`InputError` naming the file and the reader, with the original as ``__cause__``."""
    try:
        return reader(*args)
    except KielnetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reader bug or library error on a bad file
        raise InputError(f"cannot read as {_READER_NAMES[kind]}: {type(exc).__name__}: {exc}",
                         source=str(path)) from exc


def read_stars(spec: str | Path) -> StarTable:
    """Read stars from ``spec``: ``"xp-library"`` (the embedded library), an XP-library
    ``.npz`` subset, APOGEE apStar files (a file named ``apStar*`` or a directory of
    them, see :mod:`kielnet.io.apstar`), Gaia DR3 RVS mean spectra in the archive's
    datalink form (a file or a directory of them, :mod:`kielnet.io.gaia_rvs`), Gaia
    XP continuous coefficients (:mod:`kielnet.io.gaia_xp`), or a FITS / Parquet / CSV /
    ECSV table (see :mod:`kielnet.io.tables`). CSV and FITS files are recognised by
    their column names.

    Raises
    ------
    InputError
        For anything wrong with the input, naming the file: a path that does not
        exist, a directory without readable files, an empty or unreadable file, and
        every failure inside a reader — an error that is not kielnet's own becomes
        ``cannot read as <reader>: <type>: <message>`` with the original as
        ``__cause__``.
    """
    from kielnet.io.gaia_rvs import read_rvs_spectra
    from kielnet.io.gaia_xp import read_xp_continuous

    if str(spec) == XP_LIBRARY:
        return _reading("xp_library", Path(XP_LIBRARY), load_xp_library)
    path = Path(spec)
    if not path.exists():
        raise InputError("file does not exist", source=str(path))
    if path.is_dir():
        try:
            files = [p for p in path.iterdir() if p.is_file()]
        except OSError as exc:
            raise InputError(f"cannot list the directory: {type(exc).__name__}: {exc}",
                             source=str(path)) from exc
        if any(p.name.startswith("apStar") for p in files):
            return _reading("apstar", path, read_apstar, path)
        if not any(p.suffix.lower() in _RVS_SUFFIXES or p.name.lower().endswith(_RVS_GZ) for p in files):
            raise InputError("directory holds no files to read: neither apStar*.fits files nor "
                             "Gaia RVS spectra (.csv, .ecsv, .fits, .vot)"
                             + ("" if files else "; it is empty"), source=str(path))
        return _reading("gaia_rvs", path, read_rvs_spectra, path)
    check_readable(path)
    if path.suffix == ".npz":
        return _reading("xp_library", path, load_xp_library, path)
    if path.name.endswith(".fits.gz") and path.name.startswith("apogee_library_spectra"):
        return _reading("xp_library", path, load_xp_library, path)
    kind = sniff_format(path)
    reader = {"apstar": read_apstar, "gaia_rvs": read_rvs_spectra, "gaia_xp": read_xp_continuous,
              "table": read_table}[kind]
    return _reading(kind, path, reader, path)
