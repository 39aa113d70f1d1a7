"""The trainer's streamlined loop (tensors made once, in-place augmentation noise, no
per-step float()) takes exactly the steps of the plain loop it replaced, and its
validation loss (the batched inference path) equals a per-batch module evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kielnet.data.preprocess import Preprocessor
from kielnet.artifact import build_network
from kielnet.training.trainer import _evaluate, _make_optimizer, masked_loss, train_member


@pytest.fixture
def setup(make_table, tiny_config_factory):
    cfg = tiny_config_factory(training={"batch_size": 16, "max_epochs": 1, "noise_augmentation": 0.7,
                                        "threads": 1, "weighting": {"kind": "none"}},
                              model={"channels_last_2d": True})
    table = make_table(n=80, n_pix=40, seed=12)
    pre = Preprocessor(cfg).fit(table)
    prep = pre.transform(table)
    assert prep.spectrum_err is not None and prep.spectrum_err.any()
    return cfg, pre, prep, np.arange(60), np.arange(60, 80)


def _reference_epoch(cfg, pre, prep, tr, seed):
    """The loop train_member ran before kielnet.compute (numpy batches, out-of-place noise)."""
    tcfg = cfg.training
    model = build_network(cfg, pre.n_pix, pre.branch_widths(), seed=seed)
    opt = _make_optimizer(model, tcfg)
    w_all = np.ones(len(prep), np.float32)
    epoch = 0
    torch.manual_seed(seed * 100003 + epoch)
    order = np.random.default_rng([seed, epoch]).permutation(tr)
    model.train()
    run = 0.0
    for s in range(0, len(order), tcfg.batch_size):
        b = order[s:s + tcfg.batch_size]
        spec = torch.from_numpy(prep.spectrum[b])
        br = [torch.from_numpy(prep.branches[n][b]) for n in model.branch_names]
        spec = spec + tcfg.noise_augmentation * torch.randn_like(spec) * torch.from_numpy(prep.spectrum_err[b])
        loss = masked_loss(model(spec, br), torch.from_numpy(prep.targets[b]), torch.from_numpy(w_all[b]), tcfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run += float(loss.detach())
    return model, run / len(range(0, len(order), tcfg.batch_size))


def test_trainer_takes_the_reference_steps(setup):
    cfg, pre, prep, tr, va = setup
    res = train_member(cfg, prep, tr, va, np.ones(len(prep)), n_pix=pre.n_pix,
                       branch_widths=pre.branch_widths(), seed=4, progress=False)
    ref, ref_loss = _reference_epoch(cfg, pre, prep, tr, seed=4)
    for k, v in ref.state_dict().items():
        assert torch.equal(res.state_dict[k], v), k
    assert res.history[0]["train_loss"] == ref_loss


def test_validation_loss_equals_a_per_batch_module_evaluation(setup):
    cfg, pre, prep, tr, va = setup
    model = build_network(cfg, pre.n_pix, pre.branch_widths(), seed=2)
    w = np.linspace(0.5, 2.0, len(prep)).astype(np.float32)
    tot = norm = 0.0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(va), 7):
            b = va[s:s + 7]
            pred = model(torch.from_numpy(prep.spectrum[b]), [torch.from_numpy(prep.branches[n][b])
                                                               for n in model.branch_names])
            tgt, wb = torch.from_numpy(prep.targets[b]), torch.from_numpy(w[b])
            n_eff = float((wb[:, None] * torch.isfinite(tgt)).sum())
            tot += float(masked_loss(pred, tgt, wb, "huber")) * n_eff
            norm += n_eff
    assert _evaluate(model, prep, va, w, "huber")[0] == pytest.approx(tot / norm, rel=1e-5)
    assert _evaluate(model, prep, va[:0], w, "huber") == (0.0, 0.0)
