"""File-system helpers shared by the readers: expanding path arguments, the common
checks every reader makes before parsing a file, and the encoding of text tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from kielnet.errors import InputError

__all__ = ["expand_paths", "check_readable", "TEXT_ENCODING"]

#: How every CSV / ECSV / text table is decoded: UTF-8, with a byte-order mark at the start
#: of the file ignored. Spreadsheets write one ("CSV UTF-8" in Excel); read as plain UTF-8
#: it would become part of the first column's name (``'\ufeffsource_id'``), so that the
#: id column or the file's format would not be recognised.
TEXT_ENCODING = "utf-8-sig"


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike], *, accept: Callable[[Path], bool],
                 what: str) -> list[Path]:
    """Expand a file, a directory or a list of them into files.

    A directory contributes its files for which ``accept`` is true, sorted; files named
    explicitly are taken as given. ``what`` names the files in error messages (e.g.
    ``"apStar*.fits files"``). Raises :class:`InputError` for an empty list, a missing
    path or a directory without matching files.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError(f"no {what} given", field="paths")
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            try:
                found = [f for f in sorted(p.iterdir()) if f.is_file() and accept(f)]
            except OSError as exc:
                raise InputError(f"cannot list the directory: {type(exc).__name__}: {exc}",
                                 source=str(p)) from exc
            if not found:
                raise InputError(f"directory holds no {what}", source=str(p))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("file does not exist", source=str(p))
    return files


def check_readable(path: str | os.PathLike) -> str:
    """Raise :class:`InputError` if ``path`` is missing, not a file, unreadable
    (permissions) or empty; return it as a string."""
    source = str(path)
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory, not a file", source=source)
    if not p.is_file():
        raise InputError("file does not exist", source=source)
    if not os.access(p, os.R_OK):
        raise InputError("file is not readable (permission denied)", source=source)
    if p.stat().st_size == 0:
        raise InputError("file is empty", source=source)
    return source
