"""The ``apogee_net_2`` preset reproduces APOGEE Net II (Sprague et al. 2022) exactly.

A literal transcription of the paper's Appendix A model code serves as the reference;
the HybridNet built from the preset must have the same layers, the same parameter
count and -- with the reference weights copied in -- the same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kielnet.config import load_config
from kielnet.data.preprocess import Preprocessor
from kielnet.data.startable import StarTable
from kielnet.models.hybrid import HybridNet

N_PIX = 8575
N_META = 7
N_LABELS = 3
BRANCH = "metadata"


# --------------------------------------------------------------- reference (Appendix A)
from apogeenet2_reference import APOGEENet  # noqa: E402 - tests/ is on sys.path (conftest)


# --------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="module")
def cfg():
    return load_config("apogee_net_2")


@pytest.fixture(scope="module")
def pair(cfg):
    torch.manual_seed(0)
    net = HybridNet(cfg.model, N_PIX, {BRANCH: N_META}, N_LABELS)
    ref = APOGEENet(drop_p=cfg.model.head.dropout)
    return net, ref


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _parts(net: HybridNet):
    convs = [m for m in net.spectrum.conv if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    pools = [m for m in net.spectrum.conv if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d))]
    meta = [m for m in net.branches[BRANCH].net if isinstance(m, nn.Linear)]
    head = [m for m in net.head if isinstance(m, nn.Linear)]
    return convs, pools, meta, head


def _copy_reference_weights(ref: APOGEENet, net: HybridNet) -> None:
    convs, _, meta, head = _parts(net)
    with torch.no_grad():
        for dst, src in zip(convs, ref.convs()):
            dst.weight.copy_(src.weight.reshape(dst.weight.shape))  # (out,in,3) -> (out,in,1,3)
            dst.bias.copy_(src.bias)
        for dst, src in zip(meta + head, ref.metadata_linears() + ref.head_linears()):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


# --------------------------------------------------------------- architecture
def test_preset_builds_channels_last_2d(cfg, pair):
    net, _ = pair
    assert cfg.name == "apogee_net_2"
    assert cfg.model.channels_last_2d is True
    assert net.spectrum.as_2d
    assert net.branch_names == [BRANCH]


def test_parameter_count_equals_appendix_model(pair):
    net, ref = pair
    assert _n_params(net) == _n_params(ref)
    assert _n_params(net.spectrum) == sum(_n_params(c) for c in ref.convs())
    assert _n_params(net.branches[BRANCH]) == _n_params(ref.metadata)
    assert _n_params(net.head) == sum(_n_params(m) for m in ref.head_linears())


def test_per_layer_shapes_match_appendix_model(pair):
    net, ref = pair
    convs, pools, meta, head = _parts(net)
    assert len(convs) == 12 and len(pools) == 6
    for c, r in zip(convs, ref.convs()):
        assert isinstance(c, nn.Conv2d)
        assert tuple(c.weight.shape) == (r.out_channels, r.in_channels, 1, 3)
        assert tuple(c.weight.shape[:2]) + tuple(c.weight.shape[3:]) == tuple(r.weight.shape)
        assert tuple(c.bias.shape) == tuple(r.bias.shape)
        assert c.kernel_size == (1, 3) and c.padding == (0, 1) and c.stride == (1, 1)
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 16, 16, 32, 32, 32, 32, 64, 64]
    # a max-pool of width 2 right after the ReLU of every second conv
    layers = list(net.spectrum.conv)
    for i, c in enumerate(convs):
        j = layers.index(c)
        assert isinstance(layers[j + 1], nn.ReLU)
        follows = layers[j + 2] if j + 2 < len(layers) else None
        if i % 2 == 1:
            assert isinstance(follows, nn.MaxPool2d) and follows.kernel_size == (1, 2)
        else:
            assert isinstance(follows, nn.Conv2d)
    assert len(net.spectrum.dense) == 0
    for mine, theirs in zip(meta + head, ref.metadata_linears() + ref.head_linears()):
        assert mine.weight.shape == theirs.weight.shape and mine.bias.shape == theirs.bias.shape
    assert [m.in_features for m in meta] == [7, 8, 16, 32, 32]
    assert [m.out_features for m in meta] == [8, 16, 32, 32, 64]
    assert [(m.in_features, m.out_features) for m in head] == [(64 * 133 + 64, 512), (512, 512), (512, 3)]
    # head order: Linear -> Dropout(0.07646) -> ReLU, twice, then the output Linear
    kinds = [type(m) for m in net.head]
    assert kinds == [nn.Linear, nn.Dropout, nn.ReLU, nn.Linear, nn.Dropout, nn.ReLU, nn.Linear]
    assert all(m.p == pytest.approx(0.07646) for m in net.head if isinstance(m, nn.Dropout))
    assert all(isinstance(m, nn.ReLU) for m in net.branches[BRANCH].net if not isinstance(m, nn.Linear))


def test_flatten_size(pair):
    net, _ = pair
    assert net.spectrum.flat_features == 64 * 133
    assert net.spectrum.out_features == 64 * 133
    assert net.branches[BRANCH].out_features == 64


def test_forward_shape(pair):
    net, _ = pair
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, N_PIX), [torch.randn(2, N_META)])
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


def test_outputs_equal_reference_with_copied_weights(pair):
    net, ref = pair
    _copy_reference_weights(ref, net)
    net.eval()
    ref.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, N_PIX, generator=g)
    m = torch.randn(2, N_META, generator=g)
    with torch.no_grad():
        theirs = ref(x[:, None, :], m)
        mine = net(x, [m])
    assert mine.shape == theirs.shape == (2, 3)
    assert theirs.abs().max() > 0
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- hyper-parameters
def test_table3_hyperparameters(cfg):
    tr = cfg.training
    assert tr.optimizer == "adamax"
    assert tr.lr == pytest.approx(0.00075)
    assert tr.batch_size == 128
    assert cfg.model.head.dropout == pytest.approx(0.07646)
    assert tr.weighting.kind == "kde"
    assert sorted(tr.weighting.labels) == ["logg", "teff"]
    assert tr.weighting.bandwidth == pytest.approx(0.7671)
    assert tr.weighting.cap == pytest.approx(5.0)
    assert {c.kernel for c in cfg.model.spectrum.conv} == {3}
    assert len(cfg.model.scalar_branches[0].layers) == 5  # "Color Model Depth" 5


def test_table2_label_standardisation(cfg):
    table2 = {"teff": (3.67057, 0.09177), "logg": (2.92578, 1.18907), "fe_h": (-0.13088, 0.25669)}
    labels = {lab.name: lab for lab in cfg.labels}
    assert set(labels) == set(table2)
    # official network output order: [logg, logTeff, FeH]
    assert cfg.label_names == ["logg", "teff", "fe_h"]
    assert labels["teff"].transform == "log10"
    assert labels["logg"].transform == labels["fe_h"].transform == "none"
    for name, (mean, std) in table2.items():
        lab = labels[name]
        assert lab.scaling == "zscore"
        assert lab.fixed_scaling is not None
        assert round(lab.fixed_scaling[0], 5) == pytest.approx(mean, abs=1e-9)
        assert round(lab.fixed_scaling[1], 5) == pytest.approx(std, abs=1e-9)
    lo, hi = labels["teff"].valid_range
    assert lo <= 3000 and hi >= 50000  # APOGEE Net II spans ~3000 to >50,000 K


# --------------------------------------------------------------- inputs
def test_metadata_inputs_and_spectrum_prep(cfg):
    assert [f.name for f in cfg.features] == ["parallax", "g", "bp", "rp", "j", "h", "k"]
    assert all(f.kind == "column" and f.columns == [f.name] and not f.missing_indicator
               for f in cfg.features)
    assert cfg.model.scalar_branches[0].features == [f.name for f in cfg.features]
    assert Preprocessor(cfg).branch_widths() == {BRANCH: N_META}
    sp = cfg.spectrum
    assert (sp.normalise, sp.log, sp.standardise) == ("none", False, False)


def test_preprocessor_feeds_raw_flux_and_seven_metadata_inputs(cfg):
    rng = np.random.default_rng(0)
    n = 6
    flux = rng.uniform(50.0, 900.0, size=(n, N_PIX))
    flux[:, :300] = np.nan  # a chip gap
    scalars = {name: rng.normal(10.0, 2.0, n) for name in ("parallax", "g", "bp", "rp", "j", "h", "k")}
    scalars["parallax"][0] = np.nan
    table = StarTable(ids=np.array([f"s{i}" for i in range(n)]), flux=flux, scalars=scalars,
                      labels={"teff": rng.uniform(3500, 30000, n), "logg": rng.uniform(0, 5, n),
                              "fe_h": rng.uniform(-1, 0.3, n)})
    prep = Preprocessor(cfg).fit(table)
    out = prep.transform(table)
    assert out.spectrum.shape == (n, N_PIX)
    assert not out.bad_spectrum.any()
    np.testing.assert_allclose(out.spectrum[:, 300:], flux[:, 300:].astype(np.float32), rtol=1e-6)
    assert out.branches[BRANCH].shape == (n, N_META)
    assert out.branches[BRANCH][0, 0] == 0.0 and out.missing_features[0, 0]
    # fixed (Table 2) label standardisation, not fitted statistics
    logg = table.labels["logg"]
    np.testing.assert_allclose(out.targets[:, 0], (logg - 2.925783395767212) / 1.1890668869018555, rtol=1e-5)
    lt = np.log10(table.labels["teff"])
    np.testing.assert_allclose(out.targets[:, 1], (lt - 3.6705732345581055) / 0.0917675793170929, rtol=1e-5)
