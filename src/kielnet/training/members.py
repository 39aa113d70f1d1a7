"""The members stage of training: the plan's jobs trained one after the other or as
Dask tasks (:mod:`kielnet.training.distributed`), each finished member logged and saved
in the work directory, the finished ones (resumed or new) returned in ensemble order.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from kielnet.artifact import MemberInfo, build_network
from kielnet.training.distributed import MemberJob, train_members_on_cluster
from kielnet.training.plan import TrainingPlan, member_file, save_member
from kielnet.training.trainer import TrainResult, train_member

__all__ = ["train_members", "member_nets", "split_nets"]


def train_members(plan: TrainingPlan, *, cluster: Any = None, progress: bool = True, log=print,
                  t0: float | None = None) -> tuple[list[dict[str, torch.Tensor]], list[MemberInfo]]:
    """Train the plan's jobs (serially, or on ``cluster``: ``"local:N"``,
    ``"tcp://HOST:PORT"`` or a ``distributed.Client``; the same members for the same seeds
    and thread count) and return every member's weights and provenance in ensemble order
    (split-major), the already finished ones included. ``t0``: start time of the run
    (``time.time()``) for the logged elapsed seconds."""
    t0 = time.time() if t0 is None else t0
    cfg, pre = plan.config, plan.preprocessor
    found: dict[int, tuple[dict, MemberInfo]] = dict(plan.finished)

    def finished(job: MemberJob, res: TrainResult) -> None:
        info = MemberInfo(split=job.split, seed=job.seed, best_epoch=res.best_epoch,
                          best_val_loss=float(res.best_val_loss), n_train=len(job.train_rows),
                          n_val=len(job.val_rows))
        found[job.index] = (res.state_dict, info)
        log(f"member {job.index + 1}/{plan.n_members}: split {job.split}, best epoch {res.best_epoch}, "
            f"val loss {res.best_val_loss:.4f} ({time.time() - t0:.0f} s)")
        if plan.workdir is not None:
            save_member(member_file(plan.workdir, job.index), res.state_dict, info)

    prep = plan.rows.prep
    if cluster is not None and plan.jobs:
        log(f"training {len(plan.jobs)} members as Dask tasks on {cluster}")
        train_members_on_cluster(cluster, plan.jobs, cfg, prep, plan.weights, n_pix=plan.n_pix, widths=plan.widths,
                                 on_done=finished, preprocessor=pre)
    else:
        for job in plan.jobs:
            finished(job, train_member(cfg, prep, job.train_rows, job.val_rows, plan.weights, n_pix=plan.n_pix,
                                       branch_widths=plan.widths, seed=job.seed, checkpoint=job.checkpoint,
                                       progress=progress, preprocessor=pre))
    order = range(plan.n_members)
    return [found[i][0] for i in order], [found[i][1] for i in order]


def member_nets(plan: TrainingPlan, states: list[dict[str, torch.Tensor]]) -> list:
    """Eval-mode networks with the weights ``states`` (the plan's architecture)."""
    nets = []
    for st in states:
        net = build_network(plan.config, plan.n_pix, plan.widths, seed=0)
        net.load_state_dict(st)
        nets.append(net.eval())
    return nets


def split_nets(plan: TrainingPlan, states: list[dict[str, torch.Tensor]]) -> list[list]:
    """``member_nets`` of each split's members (``states`` in ensemble order)."""
    per = plan.config.ensemble.members_per_split
    return [member_nets(plan, states[k * per:(k + 1) * per]) for k in range(plan.config.ensemble.n_splits)]
