"""Star sources: stars delivered in batches of a chosen size, so that any number of
stars flows through bounded memory.

A :class:`StarSource` is what a streaming run reads from. Its batches are
consecutive, in input order, and each holds exactly ``size`` stars except the last,
whatever the layout of the underlying files (row groups, files of a directory), so
that chunk ``k`` of a run always holds input rows ``[k*size, (k+1)*size)``. The
file-backed sources live in :mod:`kielnet.io` (``kielnet.io.open_stars``);
:class:`TableSource` wraps a :class:`StarTable` already in memory.

Sources must be picklable (paths and options only, no open file handles), so that a
Dask worker can read its own partition.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from kielnet.data.startable import StarTable

__all__ = ["StarSource", "TableSource", "MappedSource", "rebatch"]


@runtime_checkable
class StarSource(Protocol):
    """Stars in batches (see module docstring)."""

    #: what the user named (a path, ``xp-library``, ``<memory>``)
    spec: str

    @property
    def n_rows(self) -> int | None:
        """Number of stars if known without reading the data, else ``None``."""

    def batches(self, size: int, start: int = 0) -> Iterator[StarTable]:
        """Consecutive batches of ``size`` stars (the last may be shorter) starting at
        input row ``start`` (a multiple of ``size``), in input order."""

    def identity(self) -> dict:
        """Cheap description for messages and run stamps (kind, paths, sizes, row count);
        not a content digest — run identity digests each batch's content."""

    def read_all(self) -> StarTable:
        """Every star in one table (for inputs that fit in memory)."""


def rebatch(tables: Iterator[StarTable], size: int, start: int = 0) -> Iterator[StarTable]:
    """Turn tables of any lengths (row groups, files) into consecutive batches of exactly
    ``size`` rows (the last may be shorter), skipping the first ``start`` rows."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    pending: list[StarTable] = []
    n_pending = 0
    skip = start
    for t in tables:
        if skip:
            if len(t) <= skip:
                skip -= len(t)
                continue
            t = t.take(np.arange(skip, len(t)))
            skip = 0
        pending.append(t)
        n_pending += len(t)
        del t
        while n_pending >= size:
            # the pieces and their concatenation are dropped before the batch is handed
            # out: while the caller works on it, only the batch and the rest are held
            whole = pending[0] if len(pending) == 1 else StarTable.concat(pending)
            pending = []
            if len(whole) == size:
                head, rest = whole, None
            else:
                head, rest = whole.take(np.arange(size)), whole.take(np.arange(size, len(whole)))
            del whole
            pending, n_pending = ([rest] if rest is not None else []), (0 if rest is None else len(rest))
            del rest
            yield head
            del head
    if n_pending:
        yield pending[0] if len(pending) == 1 else StarTable.concat(pending)


class TableSource:
    """A :class:`StarSource` over a table already in memory."""

    def __init__(self, table: StarTable, spec: str | None = None) -> None:
        self.table = table
        self.spec = spec or table.source

    @property
    def n_rows(self) -> int:
        return len(self.table)

    def batches(self, size: int, start: int = 0) -> Iterator[StarTable]:
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        for s in range(start, len(self.table), size):
            yield self.table.take(np.arange(s, min(s + size, len(self.table))))

    def identity(self) -> dict:
        return {"kind": "memory", "source": self.table.source, "n_rows": len(self.table)}

    def read_all(self) -> StarTable:
        return self.table


class MappedSource:
    """A source whose every batch passes through ``fn`` (e.g. a join of metadata by id).

    ``fn`` must be picklable for distributed runs (a module-level function or a
    :func:`functools.partial` of one)."""

    def __init__(self, base: StarSource, fn: Callable[[StarTable], StarTable], what: str = "") -> None:
        self.base, self.fn, self.what = base, fn, what
        self.spec = base.spec

    @property
    def n_rows(self) -> int | None:
        return self.base.n_rows

    def batches(self, size: int, start: int = 0) -> Iterator[StarTable]:
        for t in self.base.batches(size, start):
            yield self.fn(t)

    def identity(self) -> dict:
        return dict(self.base.identity(), mapped=self.what)

    def read_all(self) -> StarTable:
        return self.fn(self.base.read_all())
