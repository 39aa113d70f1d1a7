"""Format ``apstar``: APOGEE apStar files (one star per file) — a file whose name starts
with ``apStar``, a directory holding such files, or a glob pattern of them.

Read by :func:`kielnet.io.apstar.read_apstar`. Streamed one file (one star) at a time
(:func:`~kielnet.io.apstar.iter_apstar`); ``start`` skips files unread; row count =
number of files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.apstar import read_apstar
from kielnet.io.registry import ReaderSpec, register_reader, safe_iterdir

__all__ = ["READER"]


def _is_apstar(f: Path) -> bool:
    return f.name.startswith("apStar")


def identify(path: Path) -> bool:
    """apStar* files, or a directory holding them"""
    if path.is_dir():
        return any(f.is_file() and _is_apstar(f) for f in safe_iterdir(path))
    return _is_apstar(path)


def read(path: Any) -> StarTable:
    """Every star (file) of ``path``: a file, a directory or a list of files."""
    return read_apstar(path)


def list_files(target: Any) -> list[Path]:
    """The apStar files of ``target``, in reading order."""
    from kielnet.io.apstar import apstar_files

    return apstar_files(target)


def count_rows(path: Any) -> int | None:
    """The number of apStar files (one star each)."""
    try:
        return len(list_files(path))
    except InputError:
        return None


def iter_files(files: list[Path], first: int) -> Iterator[StarTable]:
    """The stars of ``files[first:]``, one file at a time (the grid of ``files[0]`` is
    checked against each, as :func:`read` does)."""
    from kielnet.io.apstar import iter_apstar

    return iter_apstar(files, start=first)


READER = register_reader(ReaderSpec(
    "apstar", identify=identify, read=read, directories=True, priority=20, description="an apStar file",
    count_rows=count_rows, list_files=list_files, iter_files=iter_files, one_star_per_file=True,
    hint="apStar*.fits files, or a directory of them"))
