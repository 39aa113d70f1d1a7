"""One process-wide thread pool for kernels that release the GIL (pyarrow compute,
single-threaded BLAS products), shared by the readers and the XP calibration.

Bottom layer: imports the standard library only, so that every other module can use it.
The pool has ``os.cpu_count()`` threads, or ``KIELNET_THREADS`` where that is set (a
Dask worker given one core sets it to 1: the work then runs in the calling thread), and
it is made again in a forked child (a parent's threads do not survive a fork).
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["n_threads", "thread_map", "thread_parts", "prefetch"]

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
    part when there are fewer), and more parts where that keeps each within ``max_part`` —
    then a multiple of the number of threads (where there are items enough), so that every
    thread gets as many parts (3 parts on 2 threads take as long as 4)."""
    if n <= 0:
        return []
    threads = n_threads()
    parts = max(1, min(threads, n // max(min_part, 1)))
    needed = -(-n // max_part) if max_part else 0
    if needed > parts:
        parts = min(n, -(-needed // threads) * threads)
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def prefetch(items: Iterable[T], depth: int = 1, pause: Callable[[T], bool] | None = None) -> Iterator[T]:
    """Iterate over ``items`` with up to ``depth`` items made ahead on a thread of their
    own while the caller works on the current one: a two-stage pipeline (e.g. an archive
    file's next block decompressed and tokenised while this one is parsed and
    calibrated).

    Items come in order; an exception raised while making one is raised here, where that
    item would have come. ``pause(item)`` (called on the thread, after the item is made)
    True: make nothing more until the caller asks for the item after it — so that nothing
    runs beside what the caller does with the items so far (e.g. a batch of stars is
    complete and goes to the networks, which use every core). Closing the iterator early
    (``break``, garbage collection) stops the thread after at most the item it is making,
    and ``items`` is closed in that thread, so that a file it holds is closed. With a pool
    of one thread (``KIELNET_THREADS=1``: a Dask worker given one core) ``items`` is
    iterated here, nothing ahead. Memory: at most ``depth`` items more than the caller
    holds."""
    if n_threads() == 1 or depth < 1:
        yield from items
        return
    out: queue.Queue = queue.Queue()
    cv = threading.Condition()
    state = {"asked": 0, "stop": False}
    done = object()

    def make() -> None:
        it = iter(items)
        try:
            made, hold = 0, False
            while True:
                with cv:  # item `made` may be made once the caller asked for item made - depth
                    cv.wait_for(lambda: state["stop"] or state["asked"] > made - (0 if hold else depth))
                    if state["stop"]:
                        return
                try:
                    item = next(it)
                except StopIteration:
                    out.put((done, None))
                    return
                hold = bool(pause(item)) if pause is not None else False
                out.put((item, None))
                made += 1
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            out.put((done, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=make, name="kielnet-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            with cv:
                state["asked"] += 1
                cv.notify_all()
            item, exc = out.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        with cv:
            state["stop"] = True
            cv.notify_all()
        thread.join()
