"""kielnet.threads: the shared pool keeps order, honours KIELNET_THREADS and runs a single
item, or a pool of one, in the calling thread."""

from __future__ import annotations

import threading

from kielnet import threads


def test_results_in_order_on_the_pool(monkeypatch):
    monkeypatch.setenv("KIELNET_THREADS", "3")
    names = []

    def work(x):
        names.append(threading.current_thread().name)
        return x * x

    assert threads.thread_map(work, range(20)) == [x * x for x in range(20)]
    assert threads.n_threads() == 3
    assert all(n.startswith("kielnet") for n in names)


def test_one_thread_or_one_item_runs_here(monkeypatch):
    here = threading.current_thread().name
    monkeypatch.setenv("KIELNET_THREADS", "1")
    assert threads.thread_map(lambda x: threading.current_thread().name, [1, 2]) == [here, here]
    monkeypatch.setenv("KIELNET_THREADS", "4")
    assert threads.thread_map(lambda x: threading.current_thread().name, [1]) == [here]


def test_bad_setting_falls_back_to_the_cpu_count(monkeypatch):
    import os

    for value in ("0", "-2", "many", ""):
        monkeypatch.setenv("KIELNET_THREADS", value)
        assert threads.n_threads() == max(1, os.cpu_count() or 1)


def test_a_call_from_a_pool_thread_runs_there_without_deadlock(monkeypatch):
    """fn calling thread_map (e.g. a reader part that computes plausibility statistics):
    the inner calls run in the pool thread that makes them instead of waiting for a pool
    whose threads are all busy waiting."""
    import concurrent.futures

    monkeypatch.setenv("KIELNET_THREADS", "2")

    def outer(x):
        here = threading.current_thread().name
        inner = threads.thread_map(lambda y: (threading.current_thread().name, x * y), range(3))
        assert all(name == here for name, _ in inner)
        return sum(v for _, v in inner)

    with concurrent.futures.ThreadPoolExecutor(1) as guard:  # a deadlock fails the test, not the run
        assert guard.submit(threads.thread_map, outer, range(6)).result(timeout=30) == [3 * x for x in range(6)]


def test_parts_cover_the_items_once_within_their_bounds(monkeypatch):
    monkeypatch.setenv("KIELNET_THREADS", "3")
    for n, lo, hi in ((0, 1, None), (5, 1, None), (10, 4, None), (3000, 256, None), (10000, 1, 4096), (7, 100, 2)):
        parts = threads.thread_parts(n, lo, hi)
        assert [i for a, b in parts for i in range(a, b)] == list(range(n))  # consecutive, each item once
        if n:
            assert len(parts) <= max(3, -(-(-(-n // hi)) // 3) * 3 if hi else 1)
            assert all(b - a >= min(lo, n) for a, b in parts) or hi is not None
            if hi:
                assert all(b - a <= hi for a, b in parts)
    assert len(threads.thread_parts(3000, 256)) == 3 and len(threads.thread_parts(10000, 1, 4096)) == 3
    assert len(threads.thread_parts(100, 256)) == 1
    # more parts than threads: a multiple of the threads, so that each thread gets as many
    assert len(threads.thread_parts(13000, 1, 4096)) == 6 and len(threads.thread_parts(7, 100, 2)) == 6
    monkeypatch.setenv("KIELNET_THREADS", "2")
    assert len(threads.thread_parts(10000, 1, 4096)) == 4 and len(threads.thread_parts(3, 1, 1)) == 3


# ------------------------------------------------------------------ prefetch
def _made(log, n, fail_at=None, closed=None):
    """Items 0..n-1, logging "made i" and the thread that made them."""
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            log.append(("made", i, threading.current_thread().name))
            yield i
    finally:
        if closed is not None:
            closed.append(threading.current_thread().name)


def test_prefetch_keeps_order_and_makes_items_on_its_own_thread(monkeypatch):
    monkeypatch.setenv("KIELNET_THREADS", "2")
    log = []
    assert list(threads.prefetch(_made(log, 50))) == list(range(50))
    here = threading.current_thread().name
    assert {name for _, _, name in log} == {"kielnet-prefetch"} != {here}


def test_prefetch_raises_where_the_bad_item_would_come(monkeypatch):
    monkeypatch.setenv("KIELNET_THREADS", "2")
    got = []
    import pytest

    with pytest.raises(ValueError, match="bad item 3"):
        for item in threads.prefetch(_made([], 10, fail_at=3)):
            got.append(item)
    assert got == [0, 1, 2]


def test_prefetch_closed_early_stops_and_closes_the_items(monkeypatch):
    monkeypatch.setenv("KIELNET_THREADS", "2")
    log, closed = [], []
    before = threading.active_count()
    it = threads.prefetch(_made(log, 1000, closed=closed))
    assert [next(it), next(it)] == [0, 1]
    it.close()
    assert closed == ["kielnet-prefetch"]          # the items were closed in the thread that made them
    assert len(log) <= 3                            # one item ahead at most, not the whole input
    assert threading.active_count() == before       # the thread has ended


def test_prefetch_makes_depth_ahead_but_nothing_after_a_pause(monkeypatch):
    """The item after one that ``pause`` marks (a complete batch of stars: the caller
    then runs the networks on every core) is made only once the caller asks for it;
    otherwise ``depth`` items are made ahead while the caller works (the XP archive reader
    makes two blocks' worth of pieces ahead)."""
    import time

    monkeypatch.setenv("KIELNET_THREADS", "2")

    def made_during_work(pause, depth=1):
        log = []
        it = threads.prefetch(_made(log, 10), depth=depth, pause=pause)
        assert next(it) == 0
        assert next(it) == 1
        time.sleep(0.3)                             # the caller works on item 1
        made = [i for _, i, _ in log]
        assert list(it) == list(range(2, 10))
        return made

    assert made_during_work(None) == [0, 1, 2]          # item 2 made ahead
    assert made_during_work(lambda i: i == 1) == [0, 1]  # item 1 completes a batch: nothing ahead
    assert made_during_work(None, depth=3) == [0, 1, 2, 3, 4]
    assert made_during_work(lambda i: i == 3, depth=3) == [0, 1, 2, 3]  # not past item 3


def test_prefetch_on_one_thread_runs_here(monkeypatch):
    monkeypatch.setenv("KIELNET_THREADS", "1")
    log = []
    assert list(threads.prefetch(_made(log, 5))) == list(range(5))
    assert {name for _, _, name in log} == {threading.current_thread().name}
