"""Format ``xp-library``: the embedded APOGEE DR17 × Gaia XP library (the name
``xp-library``), its ``.npz`` subset form, or a file ``apogee_library_spectra*.fits[.gz]``.

Read by :func:`kielnet.io.xp_library.load_xp_library`. Streamed: read whole, then
sliced (one gzipped FITS table of 40,226 rows); row count from its header (the
``.npz`` array header).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kielnet.data.startable import StarTable
from kielnet.io.registry import ReaderSpec, files_of, register_reader

__all__ = ["XP_LIBRARY", "READER"]

#: Name that stands for the embedded APOGEE DR17 x Gaia XP library.
XP_LIBRARY = "xp-library"


def _library(path: Any) -> Path | None:
    """``None`` (the embedded library) for the alias, else the path."""
    return None if str(path) == XP_LIBRARY else Path(path)


def identify(path: Path) -> bool:
    """.npz subset, apogee_library_spectra*.fits[.gz]"""
    from kielnet.io.xp_library import is_xp_library_file

    return path.is_file() and is_xp_library_file(path)


def read(path: Any) -> StarTable:
    """Every star of the library (or of the file)."""
    from kielnet.io.xp_library import load_xp_library

    return load_xp_library(_library(path))


def count_rows(path: Any) -> int | None:
    """Rows from the FITS / ``.npz`` header, without reading the data."""
    from kielnet.io.xp_library import xp_library_rows

    return xp_library_rows(_library(path))


def list_files(target: Any) -> list[Path]:
    """The library file behind the alias, else the file given."""
    if _library(target) is None:
        from kielnet.io.xp_library import default_library_path

        return [default_library_path()]
    return files_of(target)


READER = register_reader(ReaderSpec(
    XP_LIBRARY, identify=identify, read=read, priority=30, description="the XP library", aliases=(XP_LIBRARY,),
    count_rows=count_rows, list_files=list_files,
    hint="the name 'xp-library', an .npz subset, apogee_library_spectra*.fits[.gz]"))
