"""kielnet.runtime: glibc's allocator told to keep large arrays on the heap, once."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import weakref

import pytest

from kielnet import runtime


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_setting_is_made_once_and_then_kept(monkeypatch):
    monkeypatch.setattr(runtime, "_done", False)
    calls = []
    real = ctypes.CDLL(ctypes.util.find_library("c")).mallopt

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return real(param, value)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    assert runtime.keep_large_allocations() is True
    assert sorted(calls) == sorted([(-3, runtime.MMAP_THRESHOLD), (-1, runtime.TRIM_THRESHOLD),
                                    (-8, runtime.ARENA_MAX)])
    assert runtime.keep_large_allocations() is True and len(calls) == 3  # not again


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(runtime, "_done", False)

    def no_libc(name):
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert runtime.keep_large_allocations() is False


@pytest.mark.skipif(platform.system() != "Linux", reason="Linux only")
def test_huge_pages_are_turned_off_for_the_process(monkeypatch):
    # in a child, so that this process keeps its own setting
    import subprocess
    import sys

    # the child inherits this process's setting (another test may have turned it off here): on first
    code = ("import ctypes; ctypes.CDLL(None).prctl(41, 0, 0, 0, 0)\n"
            "from kielnet import runtime; import pathlib, re\n"
            "def thp(): return re.search(r'THP_enabled:\\s*(\\d)', pathlib.Path('/proc/self/status').read_text())\n"
            "before = thp()\n"
            "assert runtime.keep_large_allocations() in (True, False)\n"
            "assert runtime.no_huge_pages() is True\n"
            "after = thp()\n"
            "print(before and before.group(1), after and after.group(1))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "None":  # the kernel reports it (Linux >= 5.0): on before, off after
        assert out == ["1", "0"]


def test_without_linux_huge_pages_are_left_alone(monkeypatch):
    import sys

    monkeypatch.setattr(runtime, "_no_thp", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime.no_huge_pages() is False


def test_startup_objects_are_frozen_after_the_block_and_collection_restored():
    import gc

    class Node:
        pass

    assert gc.isenabled() and gc.get_freeze_count() == 0
    try:
        with runtime.startup_objects_frozen(False):   # another caller's process: nothing changes
            assert gc.isenabled()
        assert gc.get_freeze_count() == 0
        with runtime.startup_objects_frozen():
            assert not gc.isenabled()
            made = [Node() for _ in range(100)]
        assert gc.isenabled() and gc.get_freeze_count() >= 100
        later = Node()
        later.me = later                              # made after the start-up: collected as always
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None and len(made) == 100
        with pytest.raises(RuntimeError):
            with runtime.startup_objects_frozen():
                raise RuntimeError("boom")
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("setting", [True, False])
def test_threads_share_the_main_heap_after_the_setting(setting):
    # in a child (a fresh allocator): a thread started after the setting allocates from the
    # main arena, which mallinfo2 reports; without it the thread gets an arena of its own
    import subprocess
    import sys

    code = ("import ctypes, threading, sys\n"
            "from kielnet import runtime\n"
            "class MI(ctypes.Structure):\n"
            "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
            "                'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = MI\n"
            "libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
            "libc.malloc.argtypes = [ctypes.c_size_t]\n"
            f"if {setting}: runtime.keep_large_allocations()\n"
            "else: libc.mallopt(-3, 256 << 20)  # the same mmap threshold, no arena limit\n"
            "before = libc.mallinfo2().uordblks\n"
            "seen = []\n"
            "def work():\n"
            "    p = libc.malloc(64 << 20); seen.append(libc.mallinfo2().uordblks - before); libc.free(p)\n"
            "t = threading.Thread(target=work); t.start(); t.join()\n"
            "print(seen[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    grew = int(out.split()[-1]) >= 64 << 20
    assert grew is setting
