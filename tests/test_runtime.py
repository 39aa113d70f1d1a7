"""kielnet.runtime: glibc's allocator told to keep large arrays on the heap, once."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

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
    assert sorted(calls) == sorted([(-3, runtime.MMAP_THRESHOLD), (-1, runtime.TRIM_THRESHOLD)])
    assert runtime.keep_large_allocations() is True and len(calls) == 2  # not again


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(runtime, "_done", False)

    def no_libc(name):
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert runtime.keep_large_allocations() is False
