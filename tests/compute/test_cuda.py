"""The CUDA path of :class:`kielnet.compute.EnsembleRunner` against the CPU's (runs
only where torch sees a GPU; ``benchmarks/gpu_check.py`` measures it on whole
catalogues)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kielnet.compute import EnsembleRunner, ieee_fp32
from kielnet.config import load_config
from kielnet.models.hybrid import HybridNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PRESETS = {"xp_hybrid": (343, {"photometry": 16}), "apogee_net_2": (8575, {"metadata": 7}),
           "gaia_rvs_hybrid": (2401, {"photometry": 4, "xp": 110})}


def _net(name: str, seed: int = 0) -> HybridNet:
    cfg = load_config(name)
    n_pix, widths = PRESETS[name]
    torch.manual_seed(seed)
    return HybridNet(cfg.model, n_pix, widths, len(cfg.labels)).eval()


def _inputs(n: int, name: str):
    n_pix, widths = PRESETS[name]
    rng = np.random.default_rng(1)
    return (rng.standard_normal((n, n_pix)).astype(np.float32),
            {k: rng.standard_normal((n, w)).astype(np.float32) for k, w in widths.items()})


@pytest.mark.parametrize("name", list(PRESETS))
def test_fp32_on_the_gpu_is_the_cpu_to_float32_rounding_even_with_tf32_allowed(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    nets = [_net(name, 0), _net(name, 1)]
    spec, br = _inputs(70, name)
    cpu, e_cpu = EnsembleRunner(nets, batch_size=32, device="cpu").predict(spec, br, embeddings=True)
    gpu, e_gpu = EnsembleRunner(nets, batch_size=32, device="cuda").predict(spec, br, embeddings=True)
    scale = float(np.abs(cpu).max())
    # TF32 convolutions (10-bit mantissa) give ~1e-3 of the scale here; IEEE float32, ~1e-6
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=2e-5 * scale)
    for a, b in zip(e_cpu, e_gpu):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * float(np.abs(a).max()))
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored


def test_ieee_fp32_restores_the_switches():
    torch.backends.cudnn.allow_tf32, before = False, torch.backends.cudnn.allow_tf32
    try:
        with ieee_fp32(torch.device("cuda")):
            assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = before


def test_bf16_on_the_gpu_stays_near_fp32():
    nets = [_net("xp_hybrid")]
    spec, br = _inputs(64, "xp_hybrid")
    fp32, _ = EnsembleRunner(nets, device="cuda").predict(spec, br)
    bf16, _ = EnsembleRunner(nets, device="cuda", precision="bf16").predict(spec, br)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, rtol=0, atol=0.05 * float(np.abs(fp32).max()))


def test_a_partial_last_batch_and_no_rows():
    nets = [_net("xp_hybrid")]
    spec, br = _inputs(21, "xp_hybrid")
    runner = EnsembleRunner(nets, batch_size=8, device="cuda")
    whole, _ = EnsembleRunner(nets, batch_size=64, device="cuda").predict(spec, br)
    parts, _ = runner.predict(spec, br)
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-5 * float(np.abs(whole).max()))
    empty, _ = runner.predict(spec[:0], {k: v[:0] for k, v in br.items()})
    assert empty.shape == (1, 0, whole.shape[2])
