"""kielnet.compute: layouts (Conv1d conversion, fused oneDNN path), EnsembleRunner vs the
old per-member loop, bf16, embeddings, threads and options. No timing assertions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from kielnet.compute import EnsembleRunner, fused_supported, resolve_device, resolve_layout, thread_scope
from kielnet.compute.plan import FusedExecutor, conv_chunk_rows
from kielnet.config import ModelConfig, load_config
from kielnet.errors import UsageError
from kielnet.models.hybrid import HybridNet
from kielnet.compute.embeddings import fusion_embeddings
from kielnet.quality.embedding import FusionCapture

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

# (preset, n_pix, branch widths); random-init networks of each preset's architecture
PRESETS = [("xp_hybrid", 343, {"photometry": 16}),
           ("apogee_net_2", 8575, {"metadata": 7}),
           ("gaia_rvs_hybrid", 2401, {"photometry": 4, "xp": 110})]


def _preset_net(name: str, n_pix: int, widths: dict, seed: int = 0, channels_last: bool = True) -> HybridNet:
    cfg = load_config(name)
    mcfg = cfg.model.model_copy(update={"channels_last_2d": channels_last})
    torch.manual_seed(seed)
    net = HybridNet(mcfg, n_pix, widths, len(cfg.labels)).eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _odd_cfg(**spec) -> ModelConfig:
    """Every conv option: odd/even kernels, 'same'/'valid'/int padding, pools of 2 and 3."""
    s = {"conv": [{"channels": 3, "kernel": 5, "pool": 2},
                  {"channels": 5, "kernel": 3, "padding": "valid", "pool": 3},
                  {"channels": 4, "kernel": 3, "padding": 2}],
         "dense": [7], "activation": "gelu"}
    s.update(spec)
    return ModelConfig.model_validate({
        "spectrum": s,
        "scalar_branches": [{"name": "phot", "features": ["g"], "layers": [6, 5], "activation": "silu"},
                            {"name": "astro", "features": ["plx"], "layers": [3], "activation": "tanh"}],
        "head": {"layers": [9], "dropout": 0.2, "activation": "elu"}})


def _inputs(n: int, n_pix: int, widths: dict, seed: int = 1):
    rng = np.random.default_rng(seed)
    spec = rng.standard_normal((n, n_pix)).astype(np.float32)
    return spec, {k: rng.standard_normal((n, w)).astype(np.float32) for k, w in widths.items()}


def _old_loop(nets, spec, branches, batch_size):
    """The forward loop kielnet had before kielnet.compute (member_predictions)."""
    n = len(spec)
    out = np.empty((len(nets), n, nets[0].n_outputs), dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            sl = slice(s, min(s + batch_size, n))
            sp = torch.from_numpy(spec[sl])
            for m, net in enumerate(nets):
                out[m, sl] = net(sp, [torch.from_numpy(branches[k][sl]) for k in net.branch_names]).numpy()
    return out


def _close(a, b, rtol=1e-5):
    """|a - b| <= rtol * max|b| (+ tiny absolute floor)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max()), 1e-6)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


# ------------------------------------------------------------------ conv1d conversion
@pytest.mark.parametrize("preset,n_pix,widths", PRESETS)
def test_to_conv1d_equals_the_channels_last_net(preset, n_pix, widths):
    net = _preset_net(preset, n_pix, widths)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    c1 = net.to_conv1d()
    assert c1.conv_layout == "conv1d" and net.conv_layout == "conv2d"
    assert not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d)) for m in c1.modules())
    assert all(m.weight.dim() == 3 and m.weight.is_contiguous() for m in c1.modules() if isinstance(m, nn.Conv1d))
    spec, br = _inputs(6, n_pix, widths)
    args = (torch.from_numpy(spec), [torch.from_numpy(br[k]) for k in net.branch_names])
    with torch.inference_mode():
        _close(c1(*args).numpy(), net(*args).numpy())
        _close(c1.fusion(*args).numpy(), net.fusion(*args).numpy())
    # the bundle's form is untouched: same keys, shapes and values
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].shape == before[k].shape and torch.equal(after[k], before[k]) for k in before)
    assert any(v.dim() == 4 for v in after.values())  # still (out, in, 1, k)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_to_conv1d_every_conv_option_and_batchnorm(batchnorm):
    torch.manual_seed(3)
    net = HybridNet(_odd_cfg(batchnorm=batchnorm, conv=[
        {"channels": 3, "kernel": 5, "pool": 2}, {"channels": 4, "kernel": 4, "padding": "same"},
        {"channels": 5, "kernel": 3, "padding": "valid", "pool": 3}, {"channels": 2, "kernel": 3, "padding": 2}]),
        60, {"phot": 4, "astro": 2}, 3)
    if batchnorm:  # non-trivial running statistics
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(16, 60) * 2 + 1, [torch.randn(16, 4), torch.randn(16, 2)])
    net.eval()
    c1 = net.to_conv1d()
    x = (torch.randn(5, 60), [torch.randn(5, 4), torch.randn(5, 2)])
    with torch.inference_mode():
        _close(c1(*x).numpy(), net(*x).numpy())
    # a conv1d net converts to an equal copy
    c2 = c1.to_conv1d()
    assert c2 is not c1
    with torch.inference_mode():
        assert torch.equal(c2(*x), c1(*x))


# ------------------------------------------------------------------ runner == old loop
@pytest.mark.parametrize("preset,n_pix,widths", PRESETS)
@pytest.mark.parametrize("layout", ["native", "conv1d", "fused"])
def test_runner_equals_the_old_member_loop(preset, n_pix, widths, layout):
    n_members = 2 if preset != "apogee_net_2" else 1
    nets = [_preset_net(preset, n_pix, widths, seed=s) for s in range(n_members)]
    spec, br = _inputs(21, n_pix, widths)
    ref = _old_loop(nets, spec, br, 8)
    runner = EnsembleRunner(nets, batch_size=8, layout=layout)  # 21 = 8 + 8 + 5: a partial batch
    assert runner.layout == layout
    preds, embs = runner.predict(spec, br)
    assert embs is None and preds.shape == ref.shape and preds.dtype == np.float32
    _close(preds, ref)
    # rows: a gathered subset equals the same rows of the full prediction
    rows = np.array([20, 3, 3, 11])
    sub, _ = runner.predict(spec, br, rows=rows)
    _close(sub, preds[:, rows])


def test_fused_path_every_activation_pool_padding_and_batchnorm():
    torch.manual_seed(5)
    for bn in (False, True):
        net = HybridNet(_odd_cfg(batchnorm=bn), 64, {"phot": 4, "astro": 2}, 3)
        if bn:
            net.train()
            with torch.no_grad():
                net(torch.randn(32, 64) + 0.5, [torch.randn(32, 4), torch.randn(32, 2)])
        net.eval()
        assert fused_supported(net)
        spec, br = _inputs(13, 64, {"phot": 4, "astro": 2})
        ref = _old_loop([net], spec, br, 13)
        for chunk in (1, 4, 64):
            preds, _ = EnsembleRunner([net], batch_size=13, layout="fused", conv_chunk=chunk).predict(spec, br)
            _close(preds, ref)


def test_auto_layout_falls_back_where_fused_cannot_run():
    torch.manual_seed(0)
    even_same = _odd_cfg(conv=[{"channels": 3, "kernel": 4, "padding": "same"}])  # asymmetric padding
    net = HybridNet(even_same, 30, {"phot": 1, "astro": 1}, 2).eval()
    assert not fused_supported(net)
    assert resolve_layout("auto", [net], torch.device("cpu")) == "conv1d"
    with pytest.raises(ValueError):
        FusedExecutor(net)
    spec, br = _inputs(4, 30, {"phot": 1, "astro": 1})
    preds, _ = EnsembleRunner([net]).predict(spec, br)
    _close(preds, _old_loop([net], spec, br, 4))
    ok = _preset_net("xp_hybrid", 343, {"photometry": 16})
    assert resolve_layout("auto", [ok], torch.device("cpu")) == "fused"
    assert resolve_layout("auto", [ok], torch.device("cuda")) == "conv1d"


def test_runner_without_spectrum_branch():
    cfg = ModelConfig.model_validate({"scalar_branches": [{"name": "phot", "features": ["g"], "layers": [4]}],
                                      "head": {"layers": [3]}})
    torch.manual_seed(0)
    net = HybridNet(cfg, 0, {"phot": 2}, 2).eval()
    br = {"phot": np.random.default_rng(0).standard_normal((9, 2)).astype(np.float32)}
    with torch.inference_mode():
        ref = net(None, [torch.from_numpy(br["phot"])]).numpy()
        ref_z = net.fusion(None, [torch.from_numpy(br["phot"])]).numpy()
    for layout in ("fused", "conv1d", "native"):
        preds, embs = EnsembleRunner([net], batch_size=4, layout=layout).predict(None, br, embeddings=True)
        _close(preds[0], ref)
        _close(embs[0], ref_z)


# ------------------------------------------------------------------ precision
@pytest.mark.parametrize("preset,n_pix,widths", PRESETS)
@pytest.mark.parametrize("layout", ["fused", "conv1d"])
def test_bf16_is_close_to_fp32(preset, n_pix, widths, layout):
    net = _preset_net(preset, n_pix, widths)
    spec, br = _inputs(12, n_pix, widths)
    fp32, e32 = EnsembleRunner([net], layout=layout).predict(spec, br, embeddings=True)
    bf16, e16 = EnsembleRunner([net], layout=layout, precision="bf16").predict(spec, br, embeddings=True)
    assert bf16.dtype == np.float32 and e16[0].dtype == np.float32
    assert not np.array_equal(bf16, fp32)  # it did run in bf16
    # bf16 keeps 8 bits of mantissa: a few per cent of the output scale at most
    _close(bf16, fp32, rtol=5e-2)
    _close(e16[0], e32[0], rtol=5e-2)


def test_fused_bf16_matches_eager_autocast():
    net = _preset_net("xp_hybrid", 343, {"photometry": 16})
    spec, br = _inputs(40, 343, {"photometry": 16})
    fused, _ = EnsembleRunner([net], layout="fused", precision="bf16").predict(spec, br)
    eager, _ = EnsembleRunner([net], layout="native", precision="bf16").predict(spec, br)
    _close(fused, eager, rtol=2e-2)


# ------------------------------------------------------------------ embeddings
@pytest.mark.parametrize("layout", ["native", "conv1d", "fused"])
def test_embeddings_in_the_label_pass_equal_fusion_embeddings(layout):
    nets = [_preset_net("gaia_rvs_hybrid", 2401, {"photometry": 4, "xp": 110}, seed=s) for s in range(2)]
    spec, br = _inputs(11, 2401, {"photometry": 4, "xp": 110})
    preds, embs = EnsembleRunner(nets, batch_size=4, layout=layout).predict(spec, br, embeddings=True)
    assert len(embs) == 2 and embs[0].shape == (11, nets[0].head[0].in_features)

    class P:  # the part of Prepared that fusion_embeddings reads
        spectrum, branches = spec, br

    for m, net in enumerate(nets):
        _close(embs[m], fusion_embeddings(net, P(), batch_size=5))
        # and the hook-based capture on the module's own forward
        with FusionCapture(net) as cap, torch.inference_mode():
            net(torch.from_numpy(spec), [torch.from_numpy(br[k]) for k in net.branch_names])
        _close(embs[m], cap.embeddings())
    empty, e0 = EnsembleRunner(nets, layout=layout).predict(spec[:0], {k: v[:0] for k, v in br.items()},
                                                            embeddings=True)
    assert empty.shape == (2, 0, 5) and e0[0].shape == (0, nets[0].head[0].in_features)


def test_fusion_embeddings_leaves_the_mode_alone():
    net = _preset_net("xp_hybrid", 343, {"photometry": 16}).train()
    spec, br = _inputs(6, 343, {"photometry": 16})

    class P:
        spectrum, branches = spec, br

    a = fusion_embeddings(net, P())
    assert net.training
    net.eval()
    _close(a, fusion_embeddings(net, P()))


# ------------------------------------------------------------------ options
def test_threads_option_is_applied_and_restored():
    net = _preset_net("xp_hybrid", 343, {"photometry": 16})
    spec, br = _inputs(5, 343, {"photometry": 16})
    before = torch.get_num_threads()
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((threading.current_thread().name, torch.get_num_threads(), len(x)))
            return x

    net.head = nn.Sequential(*net.head[:-1], Spy(), net.head[-1])
    # intra-op: the calling thread runs every batch with that many torch threads
    EnsembleRunner([net], layout="native", threads=2, parallel="intra").predict(spec, br)
    assert [s[1:] for s in seen] == [(2, 5)] and torch.get_num_threads() == before
    # inter-op: 2 worker threads, one intra-op thread each, the rows split between them
    seen.clear()
    runner = EnsembleRunner([net], layout="native", threads=2)
    assert runner.parallel == "inter" and runner.workers == 2
    preds, _ = runner.predict(spec, br)
    assert sorted(s[1:] for s in seen) == [(1, 2), (1, 3)]
    assert all(s[0].startswith("kielnet-compute") for s in seen)
    assert torch.get_num_threads() == before
    seen.clear()
    intra, _ = EnsembleRunner([net], layout="native", threads=1).predict(spec, br)
    _close(preds, intra)
    with thread_scope(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("layout", ["fused", "conv1d"])
def test_inter_op_workers_give_the_serial_results_in_order(layout):
    nets = [_preset_net("xp_hybrid", 343, {"photometry": 16}, seed=s) for s in range(3)]
    spec, br = _inputs(203, 343, {"photometry": 16})
    serial, e1 = EnsembleRunner(nets, batch_size=16, layout=layout, threads=1).predict(spec, br, embeddings=True)
    par, e2 = EnsembleRunner(nets, batch_size=16, layout=layout, threads=3, parallel="inter").predict(
        spec, br, embeddings=True)
    _close(par, serial)
    for a, b in zip(e1, e2):
        _close(b, a)
    with pytest.raises(ValueError):
        EnsembleRunner(nets, parallel="both")


def test_device_and_option_checks():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "tpu", f"cuda:{torch.cuda.device_count()}"):
        with pytest.raises(UsageError, match=repr(bad)):
            resolve_device(bad)
    net = _preset_net("xp_hybrid", 343, {"photometry": 16})
    for bad in ({"precision": "fp16"}, {"layout": "nhwc"}, {"batch_size": 0}, {"threads": -1}):
        with pytest.raises(ValueError):
            EnsembleRunner([net], **bad)
    with pytest.raises(ValueError):
        EnsembleRunner([])
    with pytest.raises(ValueError):
        EnsembleRunner([net], layout="fused", device="meta")


def test_runner_sees_changed_weights_and_never_changes_the_net():
    net = _preset_net("xp_hybrid", 343, {"photometry": 16})
    spec, br = _inputs(7, 343, {"photometry": 16})
    state = {k: v.clone() for k, v in net.state_dict().items()}
    a, _ = EnsembleRunner([net]).predict(spec, br)
    b, _ = EnsembleRunner([net]).predict(spec, br)  # cached conversion: the same numbers
    assert np.array_equal(a, b)
    with torch.no_grad():
        net.head[-1].bias.add_(1.0)
        next(m for m in net.spectrum.conv if isinstance(m, nn.Conv2d)).weight.mul_(1.5)
    c, _ = EnsembleRunner([net]).predict(spec, br)
    _close(c, _old_loop([net], spec, br, 7))
    assert not np.allclose(c, a)
    assert all(v.shape == state[k].shape for k, v in net.state_dict().items())


def test_conv_chunk_rows_scales_with_the_activation_size():
    big = _preset_net("apogee_net_2", 8575, {"metadata": 7})
    small = _preset_net("xp_hybrid", 343, {"photometry": 16})
    assert 1 <= conv_chunk_rows(big, threads=1) < conv_chunk_rows(small, threads=1) <= 512
    assert conv_chunk_rows(big, threads=2) >= conv_chunk_rows(big, threads=1)
    assert conv_chunk_rows(big, threads=1, itemsize=2) >= conv_chunk_rows(big, threads=1)


def test_float64_networks_run_in_float64():
    net = _preset_net("xp_hybrid", 343, {"photometry": 16}).double()
    spec, br = _inputs(6, 343, {"photometry": 16})
    runner = EnsembleRunner([net])
    assert runner.layout == "native"
    preds, embs = runner.predict(spec, br, embeddings=True)
    with torch.inference_mode():
        ref = net(torch.from_numpy(spec).double(), [torch.from_numpy(br["photometry"]).double()]).numpy()
    np.testing.assert_allclose(preds[0], ref, rtol=1e-6, atol=1e-7)


def test_predict_passes_precision_through(synthetic_bundle, make_table):
    from kielnet.errors import UsageError
    from kielnet.inference.predict import predict

    table = make_table(n=30, n_pix=48, seed=40)
    fp32 = predict(synthetic_bundle, table)
    bf16 = predict(synthetic_bundle, table, precision="bf16")
    assert fp32.colnames == bf16.colnames
    for lab in synthetic_bundle.config.label_names:
        a, b = np.asarray(fp32[lab], float), np.asarray(bf16[lab], float)
        ok = np.isfinite(a) & np.isfinite(b)
        assert ok.sum() > 20 and not np.array_equal(a[ok], b[ok])
        sig = np.asarray(fp32[f"sigma_{lab}"], float)[ok]
        assert (np.abs(a[ok] - b[ok]) < sig).all()  # far inside the uncertainties
    with pytest.raises(UsageError):
        predict(synthetic_bundle, table, precision="fp16")
    t = make_table(n=10, n_pix=48, seed=41)
    t.flux_err = np.full_like(t.flux, 0.02)
    r = predict(synthetic_bundle, t, n_realisations=3, precision="bf16", rng=np.random.default_rng(0))
    assert np.isfinite(np.asarray(r["e_teff_noise"], float)).any()
