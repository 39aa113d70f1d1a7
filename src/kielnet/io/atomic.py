"""Atomic file writes: a reader (or a resumed run) never sees a half-written file.

Everything kielnet writes — catalogues, prediction parts, bundles, checkpoints,
run stamps — goes to a temporary name in the destination's directory first and is
then renamed into place with :func:`os.replace`, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``,
    on error remove it. The temporary name keeps ``path``'s suffixes (writers that
    pick a format from the suffix still work)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{''.join(path.suffixes)}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
