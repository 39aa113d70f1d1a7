"""Process-level settings for long labelling runs.

Bottom layer: imports the standard library only.

:func:`keep_large_allocations` tunes glibc's allocator for kielnet's pattern of many
large, short-lived arrays (a chunk's spectra, errors and correlation products, tens of
MB each, made and freed per piece): by default an array above the dynamic ``mmap``
threshold is mapped afresh and its pages faulted in again every time — always so in a
thread other than the main one (a Dask task, the XP calibration's band threads), and
Dask's workers also trim freed memory back to the OS at once
(``MALLOC_TRIM_THRESHOLD_=65536``). It also keeps every thread on one heap
(``M_ARENA_MAX`` = :data:`ARENA_MAX`): by default each thread that allocates (the
readers' and the calibration's pool threads) gets an arena of its own, and each arena
keeps its own freed memory, so a chunk's arrays freed in one arena are not reused by the
next chunk's made in another and the peak grows chunk after chunk. Measured with
``kielnet predict`` on 2 cores (a KVM guest), peak RSS at 10^4 / 4×10^4 Gaia XP archive
stars: 1.19–1.27 / 1.33–1.37 GiB → 1.07–1.09 / 1.19–1.25 GiB (set from the process's
start, ``MALLOC_ARENA_MAX=1``: 1.07 / 1.16–1.17 GiB); the wall time did not change within this
machine's noise (its allocations are few and large) and the numbers written do not
change. ``kielnet predict`` sets it for its own process
and in every Dask worker that runs a chunk; every Dask worker that trains a member sets
it too.

It also turns transparent huge pages off for the process (Linux
``prctl(PR_SET_THP_DISABLE)``, :func:`no_huge_pages`). NumPy asks for huge pages on
every array above 4 MB and pyarrow's mimalloc on its arenas; where the kernel grants
them on request (``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``), every
fresh 2 MB page is zeroed whole when first touched, and a labelling run frees and
faults such memory again chunk after chunk. Measured with ``kielnet predict`` on 4 Gaia
XP bulk files (4×10^4 stars, 2 cores, a KVM guest): system time 11.8 s → 4.4 s, wall
48 s → 41 s; the numbers written do not change.

A command run as its own process (the ``kielnet`` console script) imports torch, SciPy,
scikit-learn and astropy first: ~3×10^5 Python objects that live until the process
ends. Python's cyclic garbage collector traversed all of them in five full collections
while they were imported (0.4 s) and again at interpreter shutdown (~0.9 s: a
``kielnet`` command took a second to exit). :func:`startup_objects_frozen` keeps the
collector off during the start-up and then moves what it made into the permanent
generation (:func:`gc.freeze`); the console script freezes everything again before the
interpreter shuts down. Nothing is freed differently while the command runs: objects
made after the start-up are collected as always.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["keep_large_allocations", "no_huge_pages", "startup_objects_frozen", "MMAP_THRESHOLD", "TRIM_THRESHOLD",
           "ARENA_MAX"]

#: glibc ``mallopt`` parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: allocations up to this many bytes come from the heap (not a fresh mmap)
MMAP_THRESHOLD = 256 << 20
#: freed heap kept by the process before it is returned to the OS (bytes)
TRIM_THRESHOLD = 1 << 30
#: most glibc arenas (heaps) the process's threads share; arenas made before the setting stay
ARENA_MAX = 1
#: Linux ``prctl`` option that turns transparent huge pages off for the process (linux/prctl.h)
_PR_SET_THP_DISABLE = 41
_done = False
_no_thp = False


def keep_large_allocations() -> bool:
    """Once per process, on glibc (elsewhere nothing): serve allocations up to
    :data:`MMAP_THRESHOLD` from the heap, keep up to :data:`TRIM_THRESHOLD` of freed
    heap, and let threads made from then on share :data:`ARENA_MAX` arena(s); on Linux
    also :func:`no_huge_pages`. Measured on 2 cores, 4 Gaia XP bulk files
    (4×10^4 stars): ``--cluster local:2`` 88 s → 58 s (system time 54 s → 12 s), one
    process 45–49 s → 40 s; peak memory is still bounded by the chunk. Returns whether
    the allocator setting is in force."""
    global _done
    no_huge_pages()
    if _done:
        return True
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    _done = all([bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)), bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)),
                 bool(mallopt(_M_ARENA_MAX, ARENA_MAX))])
    return _done


def no_huge_pages() -> bool:
    """Once per process, on Linux (elsewhere nothing): no transparent huge pages for this
    process and the processes it starts (``prctl(PR_SET_THP_DISABLE, 1)``; module
    docstring). Memory already mapped keeps its pages. Returns whether the setting is in
    force."""
    global _no_thp
    if _no_thp:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return False
    _no_thp = prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    return _no_thp


@contextlib.contextmanager
def startup_objects_frozen(enabled: bool = True) -> Iterator[None]:
    """With ``enabled``: no cyclic garbage collection inside the block, and on leaving it
    every object made so far is moved to the collector's permanent generation
    (:func:`gc.freeze`, not traversed by later collections) and the collector is on
    again if it was on before (module docstring). For a process that runs one command
    and ends; a caller that goes on running other work in the same process passes
    ``enabled=False`` (nothing is changed)."""
    was_on = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            if was_on:
                gc.enable()
