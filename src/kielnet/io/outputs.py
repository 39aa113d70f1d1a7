"""Checks of output paths, made before any compute starts.

An hour of prediction must not end in "unknown format" or "permission denied", and
an output must never overwrite an input. These functions raise
:class:`~kielnet.errors.UsageError` naming the path and create nothing: the
writability probe is a temporary file that is removed again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from kielnet.errors import UsageError
from kielnet.io.writers import get_writer

__all__ = ["check_output_file", "check_output_dir", "check_not_input"]


def _nearest_existing(path: Path) -> Path:
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable_parent(path: Path, what: str) -> None:
    anc = _nearest_existing(path)
    if not anc.is_dir():
        raise UsageError(f"cannot write {what} {path}: {anc} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kielnet-probe-", dir=anc)
    except OSError as exc:
        raise UsageError(f"cannot write {what} {path}: directory {anc} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], what: str) -> None:
    """Refuse an output that is one of ``inputs`` (resolved paths), or lies inside an
    input bundle/directory that would be replaced."""
    out = Path(path).resolve()
    for item in inputs:
        if item is None:
            continue
        src = Path(item)
        if not src.exists():
            continue
        src = src.resolve()
        if out == src:
            raise UsageError(f"{what} {path} is also an input: it would be overwritten; choose another path")


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                      what: str = "catalogue", table: bool = True) -> Path:
    """Check a file output: not a directory, writable, not an input; for a table
    (``table=True``) also a suffix a registered writer owns (:mod:`kielnet.io.writers`), and no file blocking the
    ``<path>.parts`` resume directory. Returns the path.
    """
    p = Path(path)
    if table:
        try:
            get_writer(p)
        except Exception as exc:  # noqa: BLE001 - the registry's message names the suffix
            raise UsageError(f"{what} {p}: {exc}") from None
    if p.is_dir():
        raise UsageError(f"{what} {p} is a directory; give a file name such as {p / 'catalogue.parquet'}")
    parts = p.with_name(p.name + ".parts")
    if table and parts.exists() and not parts.is_dir():
        raise UsageError(f"{parts} exists and is not a directory; kielnet keeps resumable parts there")
    check_not_input(p, inputs, what)
    _check_writable_parent(p, what)
    return p


def check_output_dir(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                     what: str = "output directory", marker: str | None = None) -> Path:
    """Check a directory output: not an existing file, writable, not an input.

    ``marker``: if given (e.g. ``"bundle.json"``), an existing non-empty directory is
    accepted only if it holds that file — a directory that is replaced as a whole (a
    bundle) must never be somebody's unrelated directory. Returns the path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {p} exists and is a file")
    if marker is not None and p.is_dir() and any(p.iterdir()) and not (p / marker).is_file():
        raise UsageError(f"{what} {p} exists, is not empty and holds no {marker}: kielnet would replace it "
                         "as a whole; choose a new directory")
    check_not_input(p, inputs, what)
    for item in inputs:
        if item is not None and Path(item).exists():
            src = Path(item).resolve()
            if src.is_relative_to(p.resolve()) and marker is not None:
                raise UsageError(f"{what} {p} contains the input {item}, which would be deleted with it")
    _check_writable_parent(p, what)
    return p
