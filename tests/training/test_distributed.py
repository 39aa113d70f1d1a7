"""Ensemble members trained as Dask tasks give the same bundle as serial training."""

from __future__ import annotations

import pytest
import torch

from kielnet.errors import UsageError
from kielnet.training.ensemble import train_ensemble

pytest.importorskip("distributed")


def test_local_cluster_training_equals_serial(make_table, tiny_config_factory, tmp_path):
    table = make_table(n=120, n_pix=48, seed=50)
    cfg = tiny_config_factory(ensemble={"n_splits": 2, "members_per_split": 1, "seed": 3},
                              training={"threads": 1})
    serial = train_ensemble(table, cfg, progress=False, log=lambda *_: None)
    logs = []
    dist = train_ensemble(table, cfg, workdir=tmp_path / "work", progress=False, log=logs.append,
                          cluster="local:2")
    assert any("Dask tasks" in line for line in logs)
    assert len(dist.members) == len(serial.members) == 2
    for a, b in zip(serial.members, dist.members):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [i.seed for i in dist.member_info] == [i.seed for i in serial.member_info]
    assert dist.validation == serial.validation
    # the members were saved in the work directory: a serial rerun resumes them all
    again = []
    train_ensemble(table, cfg, workdir=tmp_path / "work", progress=False, log=again.append)
    assert sum("resumed" in line for line in again) == 2


def test_bad_cluster_spec_is_refused_before_training(make_table, tiny_config):
    with pytest.raises(UsageError, match="local:N"):
        train_ensemble(make_table(n=60, n_pix=48), tiny_config, progress=False, log=lambda *_: None,
                       cluster="nonsense")


def test_training_task_keeps_large_allocations(tiny_config, monkeypatch):
    """A member trained as a Dask task (in a worker thread) first tells glibc to keep large
    arrays on the heap; without it ~45 % of the task's CPU went to remapping them."""
    import numpy as np

    import kielnet.runtime as runtime
    from kielnet.training import distributed

    calls = []
    monkeypatch.setattr(runtime, "keep_large_allocations", lambda: calls.append("kept") or True)
    monkeypatch.setattr(distributed, "train_member", lambda *a, **k: calls.append("trained") or "result")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    job = distributed.MemberJob(0, 0, 7, np.arange(3), np.arange(3, 5), None)
    assert distributed._train_task(tiny_config, None, None, job, 48, {}) == (0, "result")
    assert calls == ["kept", "trained"]
