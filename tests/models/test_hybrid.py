"""HybridNet: shapes for all branch layouts, and Conv2d-1xk (channels_last) == Conv1d."""

from __future__ import annotations

import pytest
import torch

from kielnet.config import ModelConfig
from kielnet.models.hybrid import ACTIVATIONS, HybridNet, SpectrumBranch, make_activation

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

CONV = [{"channels": 3, "kernel": 5, "pool": 2},
        {"channels": 4, "kernel": 4, "padding": "same"},
        {"channels": 5, "kernel": 3, "padding": "valid", "pool": 3},
        {"channels": 2, "kernel": 3, "padding": 2}]


def _model_cfg(**kw) -> ModelConfig:
    d = {"spectrum": {"conv": CONV, "dense": [7], "activation": "gelu"},
         "scalar_branches": [{"name": "phot", "features": ["g"], "layers": [6, 5]},
                             {"name": "astro", "features": ["plx"], "layers": [3], "activation": "tanh"}],
         "head": {"layers": [9], "dropout": 0.0}}
    d.update(kw)
    return ModelConfig.model_validate(d)


def test_output_shape_spectrum_and_branches():
    torch.manual_seed(0)
    net = HybridNet(_model_cfg(), 60, {"phot": 4, "astro": 2}, 4).eval()
    out = net(torch.randn(7, 60), [torch.randn(7, 4), torch.randn(7, 2)])
    assert out.shape == (7, 4)
    assert torch.isfinite(out).all()
    assert net.branch_names == ["phot", "astro"]


def test_branch_order_matters():
    torch.manual_seed(0)
    net = HybridNet(_model_cfg(), 60, {"phot": 3, "astro": 3}, 2).eval()
    s, a, b = torch.randn(4, 60), torch.randn(4, 3), torch.randn(4, 3)
    assert not torch.allclose(net(s, [a, b]), net(s, [b, a]))


def test_scalar_only_config():
    net = HybridNet(_model_cfg(spectrum=None), 0, {"phot": 4, "astro": 2}, 3).eval()
    assert net.spectrum is None
    assert net(None, [torch.randn(5, 4), torch.randn(5, 2)]).shape == (5, 3)


def test_spectrum_only_config():
    net = HybridNet(_model_cfg(scalar_branches=[]), 50, {}, 2).eval()
    assert len(net.branches) == 0
    assert net(torch.randn(3, 50)).shape == (3, 2)


def test_flat_feature_count_follows_the_conv_stack():
    # 60 -> same(5) 60 -> pool2 30 -> same(4) 30 -> valid(3) 28 -> pool3 9 -> pad2,k3 11
    from kielnet.config import SpectrumBranchConfig

    br = SpectrumBranch(SpectrumBranchConfig.model_validate({"conv": CONV}), 60, as_2d=False)
    assert br.flat_features == 2 * 11
    assert br(torch.randn(2, 60)).shape == (2, 22)


def test_too_short_spectrum_is_rejected():
    with pytest.raises(ValueError, match="too short"):
        HybridNet(_model_cfg(), 4, {"phot": 1, "astro": 1}, 1)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_channels_last_2d_equals_conv1d_with_copied_weights(batchnorm):
    cfg2 = _model_cfg(channels_last_2d=True)
    spec = dict(cfg2.spectrum.model_dump(), batchnorm=batchnorm)
    cfg2 = cfg2.model_copy(update={"spectrum": type(cfg2.spectrum).model_validate(spec)})
    cfg1 = cfg2.model_copy(update={"channels_last_2d": False})
    torch.manual_seed(1)
    net2 = HybridNet(cfg2, 60, {"phot": 4, "astro": 2}, 4).to(memory_format=torch.channels_last)
    torch.manual_seed(2)
    net1 = HybridNet(cfg1, 60, {"phot": 4, "astro": 2}, 4)
    assert any(isinstance(m, torch.nn.Conv2d) for m in net2.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net1.modules())
    assert net1.spectrum.flat_features == net2.spectrum.flat_features

    sd2 = net2.state_dict()
    assert set(sd2) == set(net1.state_dict())
    n_conv = 0
    for k, v in sd2.items():
        if v.ndim == 4:                               # conv weight (out, in, 1, k)
            assert v.shape[2] == 1
            n_conv += 1
    assert n_conv == len(CONV)
    # 2-D -> 1-D
    net1.load_state_dict({k: (v.reshape(v.shape[0], v.shape[1], v.shape[3]) if v.ndim == 4 else v)
                          for k, v in sd2.items()})
    if batchnorm:  # make the running statistics non-trivial and identical
        for m1, m2 in zip(net1.modules(), net2.modules()):
            if isinstance(m1, torch.nn.modules.batchnorm._BatchNorm):
                stats = torch.rand(m1.num_features) + 0.5
                m1.running_var.copy_(stats), m2.running_var.copy_(stats)
                m1.running_mean.copy_(stats - 1), m2.running_mean.copy_(stats - 1)
    net1.eval(), net2.eval()
    torch.manual_seed(3)
    x, p, a = torch.randn(9, 60), torch.randn(9, 4), torch.randn(9, 2)
    with torch.no_grad():
        y1, y2 = net1(x, [p, a]), net2(x, [p, a])
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)

    # and 1-D -> 2-D with fresh 1-D weights
    torch.manual_seed(4)
    net1b = HybridNet(cfg1, 60, {"phot": 4, "astro": 2}, 4).eval()
    net2.load_state_dict({k: (v[:, :, None, :] if v.ndim == 3 else v) for k, v in net1b.state_dict().items()})
    if batchnorm:
        for m1, m2 in zip(net1b.modules(), net2.modules()):
            if isinstance(m1, torch.nn.modules.batchnorm._BatchNorm):
                m2.running_var.copy_(m1.running_var), m2.running_mean.copy_(m1.running_mean)
    with torch.no_grad():
        torch.testing.assert_close(net1b(x, [p, a]), net2(x, [p, a]), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net1b(x, [p, a]), y1)  # different weights really do differ


def test_channels_last_gradients_match_conv1d():
    cfg2 = _model_cfg(channels_last_2d=True, scalar_branches=[])
    cfg1 = cfg2.model_copy(update={"channels_last_2d": False})
    torch.manual_seed(0)
    net2 = HybridNet(cfg2, 60, {}, 2).to(memory_format=torch.channels_last)
    net1 = HybridNet(cfg1, 60, {}, 2)
    net1.load_state_dict({k: (v.squeeze(2) if v.ndim == 4 else v) for k, v in net2.state_dict().items()})
    x = torch.randn(6, 60)
    net1(x).pow(2).sum().backward()
    net2(x).pow(2).sum().backward()
    for (n1, p1), (n2, p2) in zip(net1.named_parameters(), net2.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1.grad, p2.grad.reshape(p1.grad.shape), rtol=1e-4, atol=1e-5)


def test_activation_registry():
    for name, cls in ACTIVATIONS.items():
        assert isinstance(make_activation(name), cls)
    with pytest.raises(KeyError):
        make_activation("swish")
