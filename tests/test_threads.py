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
            assert len(parts) <= max(3, -(-n // hi) if hi else 1)
            assert all(b - a >= min(lo, n) for a, b in parts) or hi is not None
            if hi:
                assert all(b - a <= hi for a, b in parts)
    assert len(threads.thread_parts(3000, 256)) == 3 and len(threads.thread_parts(10000, 1, 4096)) == 3
    assert len(threads.thread_parts(100, 256)) == 1
