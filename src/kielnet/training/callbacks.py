"""The trainer's callbacks (:func:`kielnet.training.trainer.train_member`): early
stopping, the exponential moving average of the weights, and per-epoch checkpoints.

Each holds its own state; the trainer calls ``after_step`` after every optimiser step
and ``after_epoch`` after every validation, in the order early stopping → checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kielnet.config import TrainingConfig
from kielnet.errors import RunMismatchError
from kielnet.io.atomic import atomic_path

__all__ = ["EarlyStopping", "WeightAverage", "Checkpoint", "checkpoint_file"]


def checkpoint_file(stem: Path) -> Path:
    """The file of the checkpoint with path stem ``stem``: ``<stem>.safetensors``.

    The suffix is appended, never substituted, so that stems with a dot in their name
    (``noise_0.25``, ``noise_0.5``) keep distinct files."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".safetensors")


def _save_checkpoint(path: Path, model, best_state, opt, sched, state: dict, ema=None) -> None:
    """One file per member (``<path>.safetensors``): weights, best weights, the weights'
    moving average (``training.ema_decay``), optimiser tensors, and the JSON state in the
    file's metadata, replaced atomically — a kill at any moment leaves either the previous
    epoch's checkpoint or this one."""
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
    tensors.update({f"best.{k}": v.contiguous() for k, v in best_state.items()})
    opt_sd = opt.state_dict()
    for pid, st in opt_sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val.contiguous()
    meta = dict(state)
    meta["param_groups"] = opt_sd["param_groups"]
    meta["scheduler"] = {k: v for k, v in sched.state_dict().items()}
    with atomic_path(checkpoint_file(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta, default=float)})


def _load_checkpoint(path: Path, model, opt, sched, ema=None, fingerprint: str | None = None
                     ) -> tuple[dict, dict] | None:
    st_path = checkpoint_file(path)
    if not st_path.is_file():
        return None
    try:
        with safe_open(str(st_path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["checkpoint"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, never half-used
        raise RunMismatchError(f"checkpoint is unreadable ({type(exc).__name__}: {exc}); use --fresh to start "
                               "afresh", source=str(st_path)) from exc
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise RunMismatchError("checkpoint was written by a different training run (config, seed, inputs or "
                               "training/validation rows differ"
                               + ("" if "fingerprint" in meta else ", or by an older kielnet")
                               + "); use --fresh to start afresh or choose another checkpoint path",
                               source=str(st_path), field="fingerprint")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        opt_state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
        sched.load_state_dict(meta.pop("scheduler"))
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, never half-used
        raise RunMismatchError(f"checkpoint is unreadable or does not fit this network "
                               f"({type(exc).__name__}: {exc}); use --fresh to start afresh",
                               source=str(st_path)) from exc
    return meta, best


class EarlyStopping:
    """Keep the weights of the best validation epoch; stop after ``patience`` epochs
    without improvement (``bad_epochs >= patience``)."""

    def __init__(self, patience: int, model: nn.Module) -> None:
        self.patience = int(patience)
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.best_val, self.best_epoch, self.bad_epochs = math.inf, -1, 0
        self.stopped = False

    def after_epoch(self, epoch: int, val: float, judged: nn.Module) -> bool:
        """Record epoch ``epoch``'s validation loss ``val`` of the weights ``judged``;
        True when training should stop."""
        if val < self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = val, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience
        return self.stopped

    def state(self) -> dict:
        return {"best_val": self.best_val, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "early_stopped": self.stopped}

    def restore(self, meta: dict, best_state: dict) -> None:
        self.best_state = best_state
        self.best_val, self.best_epoch, self.bad_epochs = meta["best_val"], meta["best_epoch"], meta["bad_epochs"]
        self.stopped = bool(meta.get("early_stopped"))


class WeightAverage:
    """The exponential moving average of the model's weights and buffers with decay
    ``ema_decay`` per optimiser step (:class:`torch.optim.swa_utils.AveragedModel`); the
    averaged weights are the ones judged and shipped."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @classmethod
    def from_config(cls, model: nn.Module, cfg: TrainingConfig) -> "WeightAverage | None":
        return None if cfg.ema_decay <= 0 else cls(model, cfg.ema_decay)

    def after_step(self, model: nn.Module) -> None:
        self.ema.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        return self.ema.module


class Checkpoint:
    """Per-epoch checkpoint of one member at path stem ``path``
    (``<path>.safetensors``: weights, best weights, moving average, optimiser and
    scheduler state, early-stopping state, history), refused when written under another
    ``fingerprint``. A run resumed from it follows the uninterrupted run's path."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def restore(self, model, opt, sched, average: WeightAverage | None, stopping: EarlyStopping
                ) -> tuple[int, list[dict]] | None:
        """Load the checkpoint into the objects given; (next epoch, history), or None
        when there is none."""
        loaded = _load_checkpoint(self.path, model, opt, sched, None if average is None else average.ema,
                                  self.fingerprint)
        if loaded is None:
            return None
        meta, best = loaded
        stopping.restore(meta, best)
        return meta["epoch"] + 1, meta["history"]

    def after_epoch(self, epoch: int, history: list[dict], model, opt, sched, average: WeightAverage | None,
                    stopping: EarlyStopping) -> None:
        # only early stopping is final; a run that reached max_epochs can be continued
        # by resuming with a larger max_epochs
        _save_checkpoint(self.path, model, stopping.best_state, opt, sched,
                         {"epoch": epoch, "history": history, **stopping.state(), "fingerprint": self.fingerprint},
                         None if average is None else average.ema)
