"""One process-wide thread pool for kernels that release the GIL (pyarrow compute,
single-threaded BLAS products), shared by the readers and the XP calibration.

Bottom layer: imports the standard library only, so that every other module can use it.
The pool has ``os.cpu_count()`` threads, or ``KIELNET_THREADS`` where that is set (a
Dask worker given one core sets it to 1: the work then runs in the calling thread), and
it is made again in a forked child (a parent's threads do not survive a fork).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

__all__ = ["n_threads", "thread_map", "thread_parts"]

T = TypeVar("T")
R = TypeVar("R")
_pool: tuple[int, int, ThreadPoolExecutor] | None = None
_inside = threading.local()


def _mark_pool_thread() -> None:
    _inside.pool = True


def n_threads() -> int:
    """Threads of the pool: ``KIELNET_THREADS`` when set to a positive integer, else
    the machine's CPU count."""
    env = os.environ.get("KIELNET_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` with the items run on the pool's threads, results in
    order; a single item, a pool of one thread, or a call made from one of the pool's
    threads (``fn`` itself calling :func:`thread_map`) runs in the calling thread. ``fn``
    should spend its time in GIL-releasing kernels, else nothing is gained."""
    items = list(items)
    n = n_threads()
    if len(items) <= 1 or n == 1 or getattr(_inside, "pool", False):
        return [fn(x) for x in items]  # a call from one of the pool's own threads runs here: no deadlock
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != n:
        if _pool is not None and _pool[0] == os.getpid():  # KIELNET_THREADS changed: let the old threads go
            _pool[2].shutdown(wait=False)
        _pool = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="kielnet", initializer=_mark_pool_thread))
    return list(_pool[2].map(fn, items))


def thread_parts(n: int, min_part: int = 1, max_part: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges cutting ``n`` items into consecutive parts for
    :func:`thread_map`: one per thread at most, each of at least ``min_part`` items (one
    part when there are fewer), and more parts where that keeps each within ``max_part``."""
    if n <= 0:
        return []
    parts = max(1, min(n_threads(), n // max(min_part, 1)))
    if max_part:
        parts = max(parts, -(-n // max_part))
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
