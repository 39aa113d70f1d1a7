"""The ``gaia_rvs_hybrid`` preset builds the network of Guiglion, Nepal et al. (2024) §3.1.

Reference: a torch transcription of the paper's Keras model (Conv1D with 'valid' padding,
MaxPooling1D(2)); shapes and parameter counts are compared. (Keras' LeakyReLU slope is 0.3,
torch's 0.01; the paper does not state its slope.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kielnet.config import load_config
from kielnet.models.hybrid import HybridNet

N_PIX = 2401


class KerasLikeRVS(nn.Module):
    """RVS: Conv1D(32,8) -> Conv1D(16,8) -> pool 2 -> Conv1D(8,8) -> pool 2 -> Dense 128;
    photometry (4) -> 32; XP (110) -> 64; concat 224 -> 128 -> 32 -> 5."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv1d(1, 32, 8), nn.Conv1d(32, 16, 8), nn.Conv1d(16, 8, 8)
        n = ((N_PIX - 7 - 7) // 2 - 7) // 2
        self.flat = 8 * n
        self.d_rvs = nn.Linear(self.flat, 128)
        self.d_phot = nn.Linear(4, 32)
        self.d_xp = nn.Linear(110, 64)
        self.h1, self.h2, self.out = nn.Linear(224, 128), nn.Linear(128, 32), nn.Linear(32, 5)


@pytest.fixture(scope="module")
def nets():
    cfg = load_config("gaia_rvs_hybrid")
    torch.manual_seed(0)
    return cfg, HybridNet(cfg.model, N_PIX, {"photometry": 4, "xp": 110}, len(cfg.labels)), KerasLikeRVS()


def test_parameter_count_and_flatten_size(nets):
    cfg, net, ref = nets
    assert cfg.label_names == ["teff", "logg", "m_h", "alpha_m", "fe_h"]
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
    assert net.spectrum.flat_features == ref.flat == 8 * 593


def test_layer_shapes(nets):
    _, net, ref = nets
    convs = [m for m in net.spectrum.conv if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    pools = [m for m in net.spectrum.conv if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d))]
    assert [c.out_channels for c in convs] == [32, 16, 8] and len(pools) == 2
    for c, r in zip(convs, (ref.c1, ref.c2, ref.c3)):
        assert c.weight.numel() == r.weight.numel() and c.weight.shape[-1] == 8
    dense = [m for m in net.spectrum.dense if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(ref.flat, 128)]
    assert [(m.in_features, m.out_features) for m in net.branches["photometry"].net
            if isinstance(m, nn.Linear)] == [(4, 32)]
    assert [(m.in_features, m.out_features) for m in net.branches["xp"].net
            if isinstance(m, nn.Linear)] == [(110, 64)]
    assert [(m.in_features, m.out_features) for m in net.head if isinstance(m, nn.Linear)] == \
        [(224, 128), (128, 32), (32, 5)]
    acts = [m for m in net.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.Tanh))]
    assert acts and all(isinstance(m, nn.LeakyReLU) for m in acts)


def test_forward_shape(nets):
    _, net, _ = nets
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(3, N_PIX), [torch.randn(3, 4), torch.randn(3, 110)])
    assert out.shape == (3, 5)


def test_preset_training_and_quality_settings():
    cfg = load_config("gaia_rvs_hybrid")
    assert (cfg.ensemble.n_splits, cfg.ensemble.members_per_split) == (7, 4)
    assert cfg.training.val_fraction == 0.25 and cfg.training.patience == 20
    assert all(lab.scaling == "minmax" for lab in cfg.labels)
    q = cfg.quality
    assert q.boundary_flag.enabled and q.boundary_flag.training_like == "tsne"
    assert q.tsne.perplexities == [30, 50, 75, 100] and q.embedding_ood.enabled
