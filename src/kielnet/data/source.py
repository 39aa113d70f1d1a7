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

import queue
import threading
from typing import Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

import numpy as np

from kielnet.data.startable import StarTable

__all__ = ["StarSource", "TableSource", "MappedSource", "rebatch", "read_ahead"]

T = TypeVar("T")


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


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items`` in order, produced by a background thread that runs up to ``depth``
    items ahead of the consumer: while the caller labels batch k, batch k + 1 is read
    (decompression, text parsing and calibration release the GIL, as do the networks).

    An exception raised while producing an item is raised here, at that item, with its
    original type and message. When the caller stops early (``break``, an exception,
    ``close()``), the thread stops at its next item and the items it holds are dropped.
    ``depth`` 0 iterates in the caller's thread (no thread).
    """
    if depth < 1:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(x) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for it in items:
                if not put((it, None)):
                    return
                del it  # not held while the consumer works on it
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put((None, exc))

    worker = threading.Thread(target=produce, name="kielnet-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            it, exc = q.get()
            if exc is not None:
                raise exc
            if it is done:
                return
            yield it
            del it
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)
        close = getattr(items, "close", None)
        if close is not None:  # a generator's finally blocks (open files) run now
            close()


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
