"""The trainer's callbacks: early stopping stops, the moving average averages, a
checkpoint restores what it saved."""

from __future__ import annotations

import torch
from torch import nn

from kielnet.training.callbacks import Checkpoint, EarlyStopping, WeightAverage, checkpoint_file


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    net = _net()
    stop = EarlyStopping(2, net)
    assert not stop.after_epoch(0, 1.0, net)
    best = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert not stop.after_epoch(1, 1.5, net)
    assert stop.after_epoch(2, 1.2, net) and stop.stopped
    assert (stop.best_epoch, stop.best_val, stop.bad_epochs) == (0, 1.0, 2)
    torch.testing.assert_close(stop.best_state["0.weight"], best["0.weight"])


def test_weight_average_is_the_exponential_moving_average():
    net = _net()
    avg = WeightAverage(net, 0.5)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    avg.after_step(net)  # the first step copies the weights
    torch.testing.assert_close(avg.module[0].weight, w0 + 2.0)
    with torch.no_grad():
        net[0].weight.add_(2.0)
    avg.after_step(net)  # then 0.5 * (w0 + 2) + 0.5 * (w0 + 4)
    torch.testing.assert_close(avg.module[0].weight, w0 + 3.0)
    assert avg.module is not net


def test_checkpoint_resumes_model_optimiser_average_and_stopping(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    avg, stop = WeightAverage(net, 0.9), EarlyStopping(5, net)
    x = torch.randn(8, 3)
    net(x).pow(2).mean().backward()
    opt.step()
    avg.after_step(net)
    stop.after_epoch(0, 0.7, avg.module)
    saver = Checkpoint(tmp_path / "ck" / "m0", "fp")
    saver.after_epoch(0, [{"epoch": 0}], net, opt, sched, avg, stop)
    assert checkpoint_file(tmp_path / "ck" / "m0").is_file()

    net2 = _net(1)
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2)
    avg2, stop2 = WeightAverage(net2, 0.9), EarlyStopping(5, net2)
    assert Checkpoint(tmp_path / "ck" / "m0", "fp").restore(net2, opt2, sched2, avg2, stop2) == (1, [{"epoch": 0}])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(avg.module[0].weight, avg2.module[0].weight)
    assert (stop2.best_val, stop2.best_epoch) == (0.7, 0)
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert Checkpoint(tmp_path / "none", "fp").restore(net2, opt2, sched2, avg2, stop2) is None


def test_checkpoint_of_another_run_is_refused(tmp_path):
    import pytest

    from kielnet.errors import RunMismatchError

    net = _net()
    opt = torch.optim.Adam(net.parameters())
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    stop = EarlyStopping(2, net)
    Checkpoint(tmp_path / "m", "a").after_epoch(0, [], net, opt, sched, None, stop)
    with pytest.raises(RunMismatchError, match="different training run"):
        Checkpoint(tmp_path / "m", "b").restore(net, opt, sched, None, stop)
