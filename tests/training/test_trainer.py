"""Training one member: masked loss, determinism, resumable checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kielnet.data.preprocess import Preprocessor
from kielnet.errors import RunMismatchError
from kielnet.artifact import build_network
from kielnet.training.trainer import checkpoint_file, masked_loss, train_member


# ------------------------------------------------------------------ masked loss
def test_masked_loss_ignores_nan_targets_hand_example():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]])
    # known pairs: (0,0) residual 1, (1,1) residual 4
    assert masked_loss(pred, target, torch.ones(2), "mse").item() == pytest.approx((1 + 16) / 2)
    assert masked_loss(pred, target, torch.tensor([2.0, 1.0]), "mse").item() == pytest.approx((2 * 1 + 16) / 3)
    assert masked_loss(pred, target, torch.ones(2), "l1").item() == pytest.approx((1 + 4) / 2)
    # huber with delta 1: 0.5*1^2 for |r|=1, 4-0.5 for |r|=4
    assert masked_loss(pred, target, torch.ones(2), "huber").item() == pytest.approx((0.5 + 3.5) / 2)
    # delta 0.5: |r| = 1 and 4 are both linear, 0.5 * (|r| - 0.25)
    assert masked_loss(pred, target, torch.ones(2), "huber", 0.5).item() == pytest.approx((0.375 + 1.875) / 2)


def test_star_missing_one_label_still_trains_the_others():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])
    loss = masked_loss(pred, target, torch.ones(2), "mse")
    assert torch.isfinite(loss)
    loss.backward()
    g = pred.grad
    assert g[0, 1] == 0.0                      # the missing label gets no gradient
    assert g[0, 0] != 0.0 and g[0, 2] != 0.0   # the known labels of the same star do
    assert torch.isfinite(g).all()


def test_all_targets_missing_gives_zero_not_nan():
    pred = torch.ones(3, 2, requires_grad=True)
    loss = masked_loss(pred, torch.full((3, 2), float("nan")), torch.ones(3), "mse")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_zero_weight_star_does_not_count():
    pred = torch.tensor([[1.0], [10.0]])
    target = torch.zeros(2, 1)
    assert masked_loss(pred, target, torch.tensor([1.0, 0.0]), "mse").item() == pytest.approx(1.0)


# ------------------------------------------------------------------ train_member
@pytest.fixture
def setup(make_table, tiny_config):
    table = make_table(n=96, n_pix=40, seed=11)
    pre = Preprocessor(tiny_config).fit(table)
    prep = pre.transform(table)
    tr, va = np.arange(72), np.arange(72, 96)
    kw = dict(n_pix=pre.n_pix, branch_widths=pre.branch_widths(), progress=False)
    return prep, tr, va, np.ones(len(table)), kw


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_weights(tiny_config, setup):
    prep, tr, va, w, kw = setup
    r1 = train_member(tiny_config, prep, tr, va, w, seed=5, **kw)
    r2 = train_member(tiny_config, prep, tr, va, w, seed=5, **kw)
    assert len(r1.history) == 2
    assert _same_weights(r1.state_dict, r2.state_dict)
    assert r1.history == r2.history
    r3 = train_member(tiny_config, prep, tr, va, w, seed=6, **kw)
    assert not _same_weights(r1.state_dict, r3.state_dict)


def test_training_reduces_the_validation_loss(tiny_config, setup):
    prep, tr, va, w, kw = setup
    cfg = tiny_config.with_overrides(training={"max_epochs": 8})
    res = train_member(cfg, prep, tr, va, w, seed=1, **kw)
    losses = [h["val_loss"] for h in res.history]
    assert res.best_val_loss == min(losses) < losses[0]
    assert res.history[res.best_epoch]["val_loss"] == res.best_val_loss
    # the returned weights are those of the best epoch
    net = build_network(cfg, kw["n_pix"], kw["branch_widths"], seed=0)
    net.load_state_dict(res.state_dict)
    from kielnet.training.trainer import _evaluate
    assert _evaluate(net, prep, va, w.astype(np.float32), "mse")[0] == pytest.approx(res.best_val_loss, rel=1e-5)


def test_early_stopping_respects_patience(tiny_config, setup):
    prep, tr, va, w, kw = setup
    # a learning rate so large that validation stops improving quickly
    cfg = tiny_config.with_overrides(training={"max_epochs": 30, "patience": 2, "lr": 5.0, "optimizer": "sgd"})
    res = train_member(cfg, prep, tr, va, w, seed=1, **kw)
    assert len(res.history) < 30
    assert len(res.history) - 1 - res.best_epoch == 2


class _Interrupt(Exception):
    pass


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    from kielnet.config import TrainingConfig
    from kielnet.training.trainer import lr_factor

    cfg = TrainingConfig(schedule="cosine", lr=1e-3, min_lr=1e-5, max_epochs=12, warmup_epochs=2)
    f = [lr_factor(e, cfg) for e in range(12)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)        # linear warm-up
    assert f[2] == pytest.approx(1.0)                                      # the decay starts at lr
    assert all(a > b for a, b in zip(f[2:], f[3:]))                        # then falls every epoch
    assert f[-1] == pytest.approx(0.01)                                    # to min_lr at the last epoch
    assert f[7] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 5 / 9)))


def test_cosine_schedule_sets_each_epochs_learning_rate(tiny_config, setup):
    prep, tr, va, w, kw = setup
    from kielnet.training.trainer import lr_factor

    cfg = tiny_config.with_overrides(training={"max_epochs": 5, "schedule": "cosine", "warmup_epochs": 1,
                                               "lr": 2e-3, "min_lr": 1e-5, "patience": 10})
    res = train_member(cfg, prep, tr, va, w, seed=2, **kw)
    # history records the lr after each epoch's step, i.e. the next epoch's
    got = [h["lr"] for h in res.history[:-1]]
    want = [2e-3 * lr_factor(e + 1, cfg.training) for e in range(4)]
    assert got == pytest.approx(want, rel=1e-9)


def test_weight_average_is_what_validation_judges_and_returns(tiny_config, setup):
    prep, tr, va, w, kw = setup
    from kielnet.training.trainer import _evaluate

    cfg = tiny_config.with_overrides(training={"max_epochs": 3, "patience": 10})
    raw = train_member(cfg, prep, tr, va, w, seed=4, **kw)
    # a decay of ~0 averages nothing: the average is the last step's weights
    near0 = train_member(cfg.with_overrides(training={"ema_decay": 1e-12}), prep, tr, va, w, seed=4, **kw)
    assert near0.best_epoch == raw.best_epoch
    for k in raw.state_dict:
        assert torch.allclose(near0.state_dict[k], raw.state_dict[k], atol=1e-6)
    avg = train_member(cfg.with_overrides(training={"ema_decay": 0.9}), prep, tr, va, w, seed=4, **kw)
    assert not _same_weights(avg.state_dict, raw.state_dict)
    # the returned weights are the average whose validation loss was recorded as best
    net = build_network(cfg, kw["n_pix"], kw["branch_widths"], seed=0)
    net.load_state_dict(avg.state_dict)
    got = _evaluate(net, prep, va, w.astype(np.float32), cfg.training.loss, delta=cfg.training.huber_delta)[0]
    assert got == pytest.approx(avg.best_val_loss, rel=1e-5)
    # the raw trajectory is the same (the average does not feed back into training)
    assert [h["train_loss"] for h in avg.history] == pytest.approx([h["train_loss"] for h in raw.history])


@pytest.mark.parametrize("channels_last,schedule,ema", [(False, "plateau", 0.0), (True, "plateau", 0.0),
                                                        (False, "cosine", 0.0), (False, "cosine", 0.9)])
def test_interrupted_training_resumes_to_identical_weights(tiny_config, setup, tmp_path, channels_last, schedule,
                                                           ema):
    prep, tr, va, w, kw = setup
    cfg = tiny_config.with_overrides(
        training={"max_epochs": 4, "lr_patience": 1, "schedule": schedule, "warmup_epochs": 1, "ema_decay": ema},
        model={"channels_last_2d": channels_last})
    straight = train_member(cfg, prep, tr, va, w, seed=3, **kw)

    def crash_after_epoch_1(rec):
        if rec["epoch"] == 1:
            raise _Interrupt

    ckpt = tmp_path / "ckpt_000"
    with pytest.raises(_Interrupt):
        train_member(cfg, prep, tr, va, w, seed=3, checkpoint=ckpt, on_epoch=crash_after_epoch_1, **kw)
    assert ckpt.with_suffix(".safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000.safetensors"]  # one file, no temp left
    seen = []
    resumed = train_member(cfg, prep, tr, va, w, seed=3, checkpoint=ckpt, on_epoch=seen.append, **kw)
    assert [r["epoch"] for r in seen] == [2, 3]      # only the missing epochs were run
    assert _same_weights(resumed.state_dict, straight.state_dict)
    assert resumed.history == straight.history
    assert resumed.best_epoch == straight.best_epoch
    # a finished checkpoint is not trained again
    again = train_member(cfg, prep, tr, va, w, seed=3, checkpoint=ckpt, on_epoch=seen.append, **kw)
    assert len(seen) == 2 and _same_weights(again.state_dict, straight.state_dict)


def test_continue_checkpoint_with_larger_max_epochs(tiny_config, setup, tmp_path):
    prep, tr, va, w, kw = setup
    cfg4 = tiny_config.with_overrides(training={"max_epochs": 4})
    straight = train_member(cfg4, prep, tr, va, w, seed=3, **kw)
    ckpt = tmp_path / "ckpt"
    first = train_member(cfg4.with_overrides(training={"max_epochs": 2}), prep, tr, va, w, seed=3,
                         checkpoint=ckpt, **kw)
    assert len(first.history) == 2
    cont = train_member(cfg4, prep, tr, va, w, seed=3, checkpoint=ckpt, **kw)
    assert len(cont.history) == 4
    assert _same_weights(cont.state_dict, straight.state_dict)


def test_checkpoint_stems_with_dots_keep_separate_files(tiny_config, setup, tmp_path):
    # `noise_0.25` and `noise_0` once shared `noise_0.safetensors`: the second run silently
    # "resumed" the first one's finished training and returned its weights
    prep, tr, va, w, kw = setup
    cfg = tiny_config.with_overrides(training={"max_epochs": 2})
    a = train_member(cfg.with_overrides(training={"noise_augmentation": 0.25}), prep, tr, va, w, seed=3,
                     checkpoint=tmp_path / "noise_0.25", **kw)
    b = train_member(cfg.with_overrides(training={"noise_augmentation": 0.0}), prep, tr, va, w, seed=3,
                     checkpoint=tmp_path / "noise_0", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise_0.25.safetensors", "noise_0.safetensors"]
    assert not _same_weights(a.state_dict, b.state_dict)
    assert checkpoint_file(tmp_path / "noise_0.25") == tmp_path / "noise_0.25.safetensors"


@pytest.mark.parametrize("change", ["config", "seed", "rows"])
def test_checkpoint_of_another_run_is_refused_not_resumed(tiny_config, setup, tmp_path, change):
    prep, tr, va, w, kw = setup
    cfg = tiny_config.with_overrides(training={"max_epochs": 2})
    ckpt = tmp_path / "ckpt"
    train_member(cfg, prep, tr, va, w, seed=3, checkpoint=ckpt, **kw)
    other = {"config": dict(config=cfg.with_overrides(training={"lr": cfg.training.lr * 2}), train_idx=tr, seed=3),
             "seed": dict(config=cfg, train_idx=tr, seed=4),
             "rows": dict(config=cfg, train_idx=tr[:-1], seed=3)}[change]
    with pytest.raises(RunMismatchError, match="different training run") as err:
        train_member(other["config"], prep, other["train_idx"], va, w, seed=other["seed"], checkpoint=ckpt, **kw)
    assert "ckpt.safetensors" in str(err.value)
    # a larger max_epochs is the same run, continued
    cont = train_member(cfg.with_overrides(training={"max_epochs": 3}), prep, tr, va, w, seed=3, checkpoint=ckpt,
                        **kw)
    assert len(cont.history) == 3
