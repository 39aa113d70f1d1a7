"""The compute tests check the CPU paths (fused / conv1d / native layouts, threads,
operator fallbacks), whose numbers they compare exactly or at float32 rounding: the
runner's default device is pinned to the CPU here, also where torch sees a GPU.
``test_cuda.py`` checks the CUDA path against them where a GPU is."""

from __future__ import annotations

import pytest
import torch

import kielnet.compute.forward as forward


@pytest.fixture(autouse=True)
def _cpu_by_default(request, monkeypatch):
    if request.module.__name__.endswith("test_cuda") or not torch.cuda.is_available():
        return
    resolve = forward.resolve_device
    monkeypatch.setattr(forward, "resolve_device", lambda device: resolve("cpu" if device is None else device))
