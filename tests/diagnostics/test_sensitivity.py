"""Sensitivity maps (paper §3.5): a linear model's maps are its weights; a tiny
HybridNet's maps match finite differences; physical units; npz and figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kielnet.config import ModelConfig
from kielnet.data.preprocess import Prepared
from kielnet.data.transforms import LabelTransform, Scaler
from kielnet.diagnostics.sensitivity import (SensitivityMaps, gradient_maps, plot_branch_sensitivity,
                                             plot_sensitivity)
from kielnet.models.hybrid import HybridNet

N_PIX, N_PHOT, N_LAB = 40, 4, 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class LinearHybrid(nn.Module):
    """HybridNet's call signature, linear in both inputs."""

    branch_names = ["phot"]

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.spec = nn.Linear(N_PIX, N_LAB)
        self.phot = nn.Linear(N_PHOT, N_LAB)
        self.n_labels = N_LAB

    def forward(self, spectrum, branches=()):
        return self.spec(spectrum) + self.phot(branches[0])


def _prepared(n: int = 30, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    return Prepared(rng.normal(size=(n, N_PIX)).astype(np.float32), None,
                    {"phot": rng.normal(size=(n, N_PHOT)).astype(np.float32)}, None,
                    np.zeros(n, np.int64), np.zeros(n, bool), np.zeros((n, N_PHOT), bool), None)


def test_linear_model_maps_equal_weights():
    nets = [LinearHybrid(0), LinearHybrid(1)]
    prep = _prepared()
    maps = gradient_maps(nets, prep, batch_size=7)
    w_spec = np.mean([n.spec.weight.detach().numpy() for n in nets], axis=0)
    w_phot = np.mean([n.phot.weight.detach().numpy() for n in nets], axis=0)
    np.testing.assert_allclose(maps.pixel, w_spec, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps.branches["phot"], w_phot, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps.pixel_members[1], nets[1].spec.weight.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert maps.pixel.shape == (N_LAB, N_PIX) and maps.branch_members["phot"].shape == (2, N_LAB, N_PHOT)
    assert (maps.n_stars, maps.n_members, maps.units) == (30, 2, "scaled")
    assert maps.label_names == ["label_0", "label_1", "label_2"]


def test_linear_model_physical_units():
    net = LinearHybrid(2)
    prep = _prepared(n=20)
    lts = [LabelTransform("teff", "log10", Scaler("zscore", 3.7, 0.05)),
           LabelTransform("logg", "none", Scaler("zscore", 2.5, 1.2)),
           LabelTransform("fe_h", "none", Scaler("minmax", -2.0, 2.5))]
    idx = np.arange(3, 17)
    maps = gradient_maps(net, prep, idx, label_transforms=lts)
    assert maps.units == "physical" and maps.label_names == ["teff", "logg", "fe_h"] and maps.n_stars == 14
    with torch.no_grad():
        y = net(torch.from_numpy(prep.spectrum[idx]), [torch.from_numpy(prep.branches["phot"][idx])]).double().numpy()
    teff = 10 ** (y[:, 0] * 0.05 + 3.7)
    factor = np.array([np.log(10) * 0.05 * teff.mean(), 1.2, 2.5])
    w = net.spec.weight.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(maps.pixel, factor[:, None] * w, rtol=1e-4)
    np.testing.assert_allclose(maps.branches["phot"], factor[:, None] * net.phot.weight.detach().numpy(), rtol=1e-4)


def _hybrid(channels_last: bool) -> HybridNet:
    cfg = ModelConfig.model_validate({
        "spectrum": {"conv": [{"channels": 3, "kernel": 5, "pool": 2}, {"channels": 4, "kernel": 3, "pool": 2}],
                     "dense": [12], "activation": "leaky_relu", "batchnorm": True},
        "scalar_branches": [{"name": "phot", "features": ["a", "b", "c", "d"], "layers": [6]}],
        "head": {"layers": [10], "dropout": 0.3, "activation": "gelu"},
        "channels_last_2d": channels_last})
    torch.manual_seed(5)
    net = HybridNet(cfg, N_PIX, {"phot": N_PHOT}, N_LAB).double()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


@pytest.mark.parametrize("channels_last", [False, True])
def test_tiny_hybrid_matches_finite_differences(channels_last):
    net = _hybrid(channels_last)
    net.train()  # dropout/batchnorm on: gradient_maps must use eval mode and restore this
    prep = _prepared(n=25, seed=1)
    idx = np.array([0, 3, 4, 9, 17, 24])
    maps = gradient_maps([net], prep, idx)
    assert net.training
    assert maps.pixel.shape == (N_LAB, N_PIX) and maps.branches["phot"].shape == (N_LAB, N_PHOT)
    net.eval()

    def mean_out(spec, phot):
        with torch.no_grad():
            return net(torch.from_numpy(spec), [torch.from_numpy(phot)]).numpy().mean(axis=0)

    spec = prep.spectrum[idx].astype(np.float64)
    phot = prep.branches["phot"][idx].astype(np.float64)
    h, p, k = 1e-6, 17, 2
    up, dn = spec.copy(), spec.copy()
    up[:, p] += h
    dn[:, p] -= h
    fd_pix = (mean_out(up, phot) - mean_out(dn, phot)) / (2 * h)
    np.testing.assert_allclose(maps.pixel[:, p], fd_pix, rtol=1e-5, atol=1e-8)
    up, dn = phot.copy(), phot.copy()
    up[:, k] += h
    dn[:, k] -= h
    fd_br = (mean_out(spec, up) - mean_out(spec, dn)) / (2 * h)
    np.testing.assert_allclose(maps.branches["phot"][:, k], fd_br, rtol=1e-5, atol=1e-8)


def test_selection_default_mask_and_errors():
    net = LinearHybrid(0)
    prep = _prepared(n=10)
    prep.bad_spectrum[[1, 2]] = True
    assert gradient_maps(net, prep).n_stars == 8
    mask = np.zeros(10, bool)
    mask[[0, 5]] = True
    assert gradient_maps(net, prep, mask).n_stars == 2
    with pytest.raises(ValueError, match="no stars"):
        gradient_maps(net, prep, np.zeros(10, bool))
    with pytest.raises(ValueError, match="label names"):
        gradient_maps(net, prep, label_names=["a"])


def test_save_load_and_figures(tmp_path):
    nets = [LinearHybrid(0), LinearHybrid(1)]
    maps = gradient_maps(nets, _prepared(), label_names=["teff", "logg", "fe_h"])
    back = SensitivityMaps.load(maps.save(tmp_path / "sens.npz"))
    np.testing.assert_array_equal(back.pixel, maps.pixel)
    np.testing.assert_array_equal(back.branch_members["phot"], maps.branch_members["phot"])
    assert back.label_names == maps.label_names and back.units == "scaled" and back.n_members == 2
    wl = np.linspace(8460.0, 8700.0, N_PIX)
    out = plot_sensitivity(maps, wl, 1.0 - 0.3 * np.exp(-((wl - 8542) / 2.0) ** 2), tmp_path / "fig9.png",
                           lines={"Ca II": 8542.1, "Fe I": 8621.6})
    assert out.read_bytes()[:8] == PNG_MAGIC
    out = plot_branch_sensitivity(maps, "phot", tmp_path / "fig10.png", input_names=["g", "bp", "rp", "j"])
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="pixels"):
        plot_sensitivity(maps, wl[:-1], None, tmp_path / "bad.png")
