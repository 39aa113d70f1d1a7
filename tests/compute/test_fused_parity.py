"""The fused oneDNN CPU path (private torch operators) against ``HybridNet.forward`` for
every shipped preset and each precision it offers, and its automatic fallback to the
plain path when an operator is missing or gives wrong numbers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from kielnet import presets
from kielnet.compute import EnsembleRunner, fused_supported
from kielnet.compute import plan
from kielnet.compute.plan import PROBE_TOLERANCE, FusedExecutor, ModuleExecutor, bf16_supported, make_executor
from kielnet.config import load_config
from kielnet.data.preprocess import Preprocessor
from kielnet.models.hybrid import HybridNet

pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
              pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")]

#: spectrum length of each preset's survey (pixels); a preset not listed gets DEFAULT_N_PIX
N_PIX = {"xp_hybrid": 343, "apogee_net_2": 8575, "apogee_net_2_official": 8575, "gaia_rvs_hybrid": 2401}
DEFAULT_N_PIX = 1024
#: the fused bf16 cases need a CPU with oneDNN bf16 kernels (an AVX2-only CPU has none:
#: there the fallback is tested instead, test_a_cpu_without_bf16_kernels_falls_back)
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no oneDNN bf16 kernels")
#: precisions whose fused path this CPU can run
FUSED_PRECISIONS = ["fp32", pytest.param("bf16", marks=needs_bf16)]
#: rows per fused convolution pass in these tests: 20 rows = two full chunks and a partial one
CHUNK, N_ROWS = 8, 20


def _net(preset: str, seed: int = 0) -> HybridNet:
    """A random-init network of the preset's architecture, as the preset lays it out."""
    cfg = load_config(preset)
    torch.manual_seed(seed)
    net = HybridNet(cfg.model, N_PIX.get(preset, DEFAULT_N_PIX), Preprocessor(cfg).branch_widths(),
                    len(cfg.labels)).eval()
    return net.to(memory_format=torch.channels_last) if cfg.model.channels_last_2d else net


def _inputs(net: HybridNet, n: int = N_ROWS, seed: int = 1) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    spec = None if net.spectrum is None else torch.randn(n, net.spectrum.n_pix, generator=g)
    return spec, [torch.randn(n, net.branches[b].net[0].in_features, generator=g) for b in net.branch_names]


def _plain(net: HybridNet, spec, branches) -> tuple[np.ndarray, np.ndarray]:
    """``HybridNet.forward`` in fp32 and the fusion vector of the same pass."""
    with torch.no_grad():
        z = net.fusion(spec, branches)
        return net.head_outputs(z).numpy(), z.numpy()


def _dev(a, b) -> float:
    """max |a - b| as a fraction of max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def test_every_preset_is_tested():
    assert set(presets.available()) >= {"xp_hybrid", "apogee_net_2", "gaia_rvs_hybrid"}


@needs_bf16
@pytest.mark.parametrize("preset", presets.available())
def test_fused_fp32_and_bf16_equal_the_plain_forward(preset):
    net = _net(preset)
    assert fused_supported(net), f"{preset}: the default CPU path would not be the fused one"
    spec, br = _inputs(net)
    y_ref, z_ref = _plain(net, spec, br)
    assert np.abs(y_ref).max() > 0 and np.abs(z_ref).max() > 0  # a test that can fail

    # fp32: the same numbers up to float rounding (BatchNorm folding, summation order)
    with torch.no_grad():
        y, z = FusedExecutor(net, precision="fp32", conv_chunk=CHUNK)(spec, br, True)
    assert _dev(y, y_ref) < 1e-5 and _dev(z, z_ref) < 1e-5, (_dev(y, y_ref), _dev(z, z_ref))

    # bf16 against plain fp32: within bf16's 8-bit mantissa (a wrong operator is off by order one)
    with torch.no_grad():
        y16, z16 = FusedExecutor(net, precision="bf16", conv_chunk=CHUNK)(spec, br, True)
    assert y16.dtype == torch.float32 and not np.array_equal(y16.numpy(), y_ref)  # it did run in bf16
    assert _dev(y16, y_ref) < PROBE_TOLERANCE["bf16"] and _dev(z16, z_ref) < PROBE_TOLERANCE["bf16"]

    # bf16 against the plain forward under bf16 autocast (what the fused graph stands for)
    with torch.no_grad():
        ya, za = ModuleExecutor(net, precision="bf16")(spec, br, True)
    assert _dev(y16, ya) < 2e-2 and _dev(z16, za) < 2e-2, (_dev(y16, ya), _dev(z16, za))


@pytest.mark.parametrize("precision", FUSED_PRECISIONS)
@pytest.mark.parametrize("preset", presets.available())
def test_the_fused_path_passes_its_probe_on_this_torch(preset, precision):
    """No silent fallback where the fused path works: make_executor keeps it."""
    ex = make_executor(_net(preset), layout="fused", precision=precision)
    assert ex.layout == "fused" and isinstance(ex, FusedExecutor)


# ------------------------------------------------------------------ fallback
@pytest.fixture
def fresh_log(monkeypatch, caplog):
    monkeypatch.setattr(plan, "_fallback_logged", False)
    caplog.set_level(logging.WARNING, logger="kielnet.compute.plan")
    return caplog


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fused oneDNN CPU path is not used" in r.getMessage()]


def _check_fallback(caplog, precision: str, why: str) -> None:
    nets = [_net("xp_hybrid", seed=s) for s in range(2)]
    spec, br = _inputs(nets[0])
    runner = EnsembleRunner(nets, layout="fused", precision=precision, threads=1, batch_size=7)
    assert runner.layout == "conv1d"
    assert all(ex.layout == "conv1d" and isinstance(ex, ModuleExecutor) for ex in runner.executors)
    preds, _ = runner.predict(spec.numpy(), {b: x.numpy() for b, x in zip(nets[0].branch_names, br)})
    for m, net in enumerate(nets):
        if precision == "fp32":  # the plain forward, up to the conv1d copy's float rounding
            assert _dev(preds[m], _plain(net, spec, br)[0]) < 1e-5
        else:
            with torch.no_grad():
                ya, _ = ModuleExecutor(net.to_conv1d(), precision="bf16")(spec, br)
            np.testing.assert_allclose(preds[m], ya.numpy(), rtol=0, atol=1e-6)
    lines = _fallback_lines(caplog)
    assert len(lines) == 1 and why in lines[0], lines  # two members, one line


@pytest.mark.parametrize("precision", FUSED_PRECISIONS)
def test_a_missing_operator_falls_back_to_the_plain_path(monkeypatch, fresh_log, precision):
    monkeypatch.delattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    _check_fallback(fresh_log, precision, "AttributeError")


@pytest.mark.parametrize("precision", FUSED_PRECISIONS)
def test_an_operator_that_fails_falls_back(monkeypatch, fresh_log, precision):
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    torch.ops.mkldnn._convolution_pointwise  # resolved once, so that monkeypatch can restore it
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", broken)
    _check_fallback(fresh_log, precision, "RuntimeError: no such kernel")


@pytest.mark.parametrize("precision", FUSED_PRECISIONS)
def test_an_operator_with_wrong_numbers_falls_back(monkeypatch, fresh_log, precision):
    real = torch.ops.mkldnn._convolution_pointwise

    def no_activation(x, w, b, pad, stride, dilation, groups, attr, scalars, algo):
        """The convolution without its fused activation: what a changed operator might do."""
        return real(x, w, b, pad, stride, dilation, groups, "none", [], "")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", no_activation)
    _check_fallback(fresh_log, precision, "differ from the plain forward")


def test_a_cpu_without_bf16_kernels_falls_back(monkeypatch, fresh_log):
    """bf16 on an AVX2-only CPU: the plain path under bf16 autocast, one warning naming the CPU."""
    monkeypatch.setattr(plan, "bf16_supported", lambda: False)
    _check_fallback(fresh_log, "bf16", "no oneDNN bf16 kernels")


def test_the_fp32_fused_path_does_not_need_bf16_kernels(monkeypatch):
    monkeypatch.setattr(plan, "bf16_supported", lambda: False)
    ex = make_executor(_net("xp_hybrid"), layout="fused", precision="fp32")
    assert ex.layout == "fused" and isinstance(ex, FusedExecutor)


def test_the_probe_sees_a_wrong_operator_directly(monkeypatch):
    net = _net("gaia_rvs_hybrid")
    ex = FusedExecutor(net)
    assert plan.probe_fused(ex, net) is None
    real = torch.ops.mkldnn._convolution_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise",
                        lambda x, w, *rest: real(x, w, *rest).mul_(1.1))  # 10 % off per convolution
    assert "differ from the plain forward" in plan.probe_fused(ex, net)
