"""Training of one network: masked, weighted loss; ReduceLROnPlateau or cosine schedule;
early stopping, the weights' moving average and per-epoch checkpoints (so that an
interrupted run resumes where it stopped) as callbacks (:mod:`kielnet.training.callbacks`).

Determinism: the model initialisation, every epoch's shuffling and every epoch's
dropout draw are seeded from ``(seed, epoch)``, so a resumed run follows exactly the
same path as an uninterrupted one and the same seed gives the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from kielnet.artifact import build_network
from kielnet.compute import EnsembleRunner
from kielnet.config import KielnetConfig, TrainingConfig
from kielnet.data.fingerprint import array_digest
from kielnet.data.preprocess import Prepared
from kielnet.models.hybrid import HybridNet, split_outputs
from kielnet.stats import robust_sigma
from kielnet.training.callbacks import Checkpoint, EarlyStopping, WeightAverage, checkpoint_file

__all__ = ["TrainResult", "robust_score", "masked_loss", "sigma_loss", "member_loss",
           "InputDropout", "checkpoint_file", "member_fingerprint", "train_member"]


@dataclass
class TrainResult:
    """Best-validation weights and the loss history of one member."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf


class _TrainTensors:
    """The training arrays of a :class:`Prepared` as torch tensors (zero-copy views of
    the numpy arrays), gathered batch by batch with ``index_select``."""

    def __init__(self, prep: Prepared, weights: np.ndarray, branch_names: list[str]) -> None:
        self.spectrum = None if prep.spectrum is None else torch.from_numpy(np.ascontiguousarray(prep.spectrum))
        self.spectrum_err = None if prep.spectrum_err is None else torch.from_numpy(
            np.ascontiguousarray(prep.spectrum_err))
        self.branches = [torch.from_numpy(np.ascontiguousarray(prep.branches[name])) for name in branch_names]
        self.targets = torch.from_numpy(np.ascontiguousarray(prep.targets))
        self.weights = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))

    def batch(self, idx: torch.Tensor):
        """(spectrum or None, [branches], targets, weights) of rows ``idx`` (new tensors)."""
        spec = None if self.spectrum is None else self.spectrum.index_select(0, idx)
        return (spec, [b.index_select(0, idx) for b in self.branches], self.targets.index_select(0, idx),
                self.weights.index_select(0, idx))


def masked_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str,
                delta: float = 1.0) -> torch.Tensor:
    """Weighted mean of the per-label loss over known labels (NaN targets are skipped).

    ``weight`` is per star; each (star, label) pair with a finite target counts with
    that star's weight, so a star missing one label still trains the others. ``delta``
    is the Huber loss's quadratic-to-linear switch, in scaled label units.
    """
    mask = torch.isfinite(target)
    t = torch.where(mask, target, torch.zeros_like(target))
    diff = pred - t
    if kind == "mse":
        per = diff.pow(2)
    elif kind == "l1":
        per = diff.abs()
    else:
        per = nn.functional.huber_loss(pred, t, reduction="none", delta=delta)
    w = weight[:, None] * mask
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def sigma_loss(mean: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
               kind: str = "laplace", beta: float = 0.5) -> torch.Tensor:
    """Weighted mean negative log-likelihood of the σ outputs over known labels (scaled units).

    * ``"laplace"``: √2 |r| / σ + log σ, a Laplace likelihood whose standard deviation is
      σ, with the residual ``r`` of the *detached* means: only the σ outputs (and the
      layers below them) learn from it; robust to the catastrophic reference labels a
      survey holds (its gradient grows like |r|, a Gaussian's like r²);
    * ``"nll"``: ½ (r / σ)² + log σ, Gaussian, detached means;
    * ``"beta_nll"``: the Gaussian NLL with ``r`` attached, each term weighted by the
      detached σ^(2β) (Seitzer et al. 2022), which trains the means as well.
    """
    mask = torch.isfinite(target)
    t = torch.where(mask, target, torch.zeros_like(target))
    r = (mean if kind == "beta_nll" else mean.detach()) - t
    if kind == "laplace":
        per = math.sqrt(2.0) * r.abs() * torch.exp(-log_sigma) + log_sigma
    else:
        per = 0.5 * (r * torch.exp(-log_sigma)).pow(2) + log_sigma
    if kind == "beta_nll":
        per = per * torch.exp(2.0 * beta * log_sigma).detach()
    w = weight[:, None] * mask
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def member_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, cfg: TrainingConfig
                ) -> torch.Tensor:
    """The training loss of one batch: :func:`masked_loss` of the means (``cfg.loss``)
    plus, for a heteroscedastic network, :func:`sigma_loss` of its σ outputs; with
    ``sigma_loss = beta_nll`` the β-NLL alone trains means and σ."""
    mean, log_s = split_outputs(pred, target.shape[1])
    if log_s is None:
        return masked_loss(mean, target, weight, cfg.loss, cfg.huber_delta)
    nll = sigma_loss(mean, log_s, target, weight, cfg.sigma_loss, cfg.sigma_beta)
    if cfg.sigma_loss == "beta_nll":
        return nll
    return masked_loss(mean, target, weight, cfg.loss, cfg.huber_delta) + nll


class InputDropout:
    """Hide whole input groups at random during training (``training.input_dropout``):
    for each star of a batch and each group of ``config.groups()``, with probability
    ``p``, the group's features take the value a missing feature gets and their missing
    indicators are set — so that members learn to label a star honestly without them."""

    def __init__(self, p: float, plans: list[list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]]) -> None:
        self.p = float(p)
        self.plans = plans

    @classmethod
    def from_config(cls, config: KielnetConfig, preprocessor, branch_names: list[str]) -> "InputDropout | None":
        p = config.training.input_dropout
        if p <= 0 or not config.features:
            return None
        plans = []
        for cols in config.groups().values():
            plan = []
            for br, vals, fills, inds in preprocessor.masking_plan(cols):
                plan.append((branch_names.index(br), torch.from_numpy(vals), torch.from_numpy(fills),
                             torch.from_numpy(inds)))
            if plan:
                plans.append(plan)
        return cls(p, plans) if plans else None

    def __call__(self, branches: list[torch.Tensor], generator: torch.Generator | None = None) -> None:
        """Apply in place to one batch's branch tensors."""
        if not branches:
            return
        n = branches[0].shape[0]
        for plan in self.plans:
            hit = torch.rand(n, generator=generator) < self.p
            if not bool(hit.any()):
                continue
            rows = hit.nonzero().squeeze(1)
            for b, vals, fills, inds in plan:
                x = branches[b]
                x[rows[:, None], vals[None, :]] = fills
                if len(inds):
                    x[rows[:, None], inds[None, :]] = 1.0


def _make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    opts = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "adamax": torch.optim.Adamax, "sgd": torch.optim.SGD}
    return opts[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(epoch: int, cfg: TrainingConfig) -> float:
    """The 'cosine' schedule's learning-rate multiplier for 0-based ``epoch``: linear warm-up
    to 1 over ``warmup_epochs``, then a half cosine down to ``min_lr / lr`` at the last epoch."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    floor = min(1.0, cfg.min_lr / cfg.lr)
    span = max(1, cfg.max_epochs - cfg.warmup_epochs - 1)
    t = min(1.0, (epoch - cfg.warmup_epochs) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainingConfig):
    """The learning-rate scheduler of ``cfg.schedule`` (stepped once per epoch; 'plateau'
    with the validation loss). Its state is plain numbers, kept in the checkpoint."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lr_factor(e, cfg))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor, patience=cfg.lr_patience,
                                                      min_lr=cfg.min_lr)


def _evaluate(model: HybridNet, prep: Prepared, idx: np.ndarray, weights: np.ndarray,
              kind: str, batch: int = 512, delta: float = 1.0) -> tuple[float, float]:
    """Weighted validation loss of ``model`` on rows ``idx`` (eval mode; the batched
    inference path of :class:`kielnet.compute.EnsembleRunner`, accumulated in float64),
    and the mean over labels of the robust σ (1.4826 MAD) of the scaled residuals — a
    score that does not depend on the loss function (:mod:`kielnet.training.tuning`)."""
    model.eval()
    if len(idx) == 0:
        return 0.0, 0.0
    pred, _ = EnsembleRunner([model], batch_size=batch).predict(prep.spectrum, prep.branches, rows=idx)
    tgt = torch.from_numpy(prep.targets[idx]).double()
    w = torch.from_numpy(np.asarray(weights[idx], dtype=np.float32)).double()
    mean = pred[0][:, :tgt.shape[1]].astype(np.float64)
    with torch.no_grad():  # early stopping judges the means (σ outputs are recalibrated out of fold)
        loss = masked_loss(torch.from_numpy(mean), tgt, w, kind, delta)
    return float(loss), robust_score(mean, prep.targets[idx])


def robust_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over labels of the robust σ (:func:`kielnet.stats.robust_sigma`)
    of ``pred − target`` (scaled units; NaN targets skipped; inf if a prediction is not
    finite or no label has a residual)."""
    if not np.isfinite(pred).all():
        return float("inf")
    r = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    per = robust_sigma(r, axis=0)
    per = per[np.isfinite(per)]
    return float(np.mean(per)) if per.size else float("inf")


# ---------------------------------------------------------------- checkpoints
def member_fingerprint(config: KielnetConfig, train_idx: np.ndarray, val_idx: np.ndarray, n_pix: int,
                       branch_widths: dict[str, int], seed: int) -> str:
    """SHA-256 of everything that decides one member's training path except its length.

    The model and training sections of the config (``max_epochs``, ``patience`` and
    ``threads`` left out: a finished run may be continued with a larger ``max_epochs``,
    and the thread count is a property of the machine, not of the run), the seed, the
    input widths and the training / validation rows. A checkpoint written under another
    fingerprint is refused instead of being resumed as if it were this run."""
    tcfg = config.training.model_dump(mode="json", exclude={"max_epochs", "patience", "threads"})
    payload = {"model": config.model.model_dump(mode="json"), "training": tcfg, "seed": int(seed),
               "n_pix": int(n_pix), "branch_widths": {k: int(v) for k, v in sorted(branch_widths.items())},
               "train": array_digest(np.asarray(train_idx, dtype=np.int64)),
               "val": array_digest(np.asarray(val_idx, dtype=np.int64))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def train_member(config: KielnetConfig, prep: Prepared, train_idx: np.ndarray, val_idx: np.ndarray,
                 weights: np.ndarray, *, n_pix: int, branch_widths: dict[str, int], seed: int,
                 checkpoint: Path | None = None, progress: bool = True,
                 on_epoch: Callable[[dict], None] | None = None, preprocessor=None) -> TrainResult:
    """Train one network and return its best-validation weights.

    Parameters
    ----------
    prep
        Preprocessed inputs and scaled targets for all rows; ``train_idx`` / ``val_idx``
        select the rows of each side.
    weights
        Per-row loss weights (mean 1 over the training rows, e.g. KDE weights).
    checkpoint
        Path stem of the per-epoch checkpoint (``<checkpoint>.safetensors``, state in
        its metadata); if it exists, training resumes from it. A checkpoint of another
        run (:func:`member_fingerprint` differs) raises
        :class:`~kielnet.errors.RunMismatchError`.
    preprocessor
        The fitted :class:`~kielnet.data.preprocess.Preprocessor` of ``prep``; needed for
        ``training.input_dropout`` (which inputs a hidden group changes).
    """
    tcfg = config.training
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    model = build_network(config, n_pix, branch_widths, seed=seed)
    opt = _make_optimizer(model, tcfg)
    sched = make_scheduler(opt, tcfg)
    average = WeightAverage.from_config(model, tcfg)
    stopping = EarlyStopping(tcfg.patience, model)
    saver = None
    start_epoch, history = 0, []
    if checkpoint is not None:
        saver = Checkpoint(checkpoint, member_fingerprint(config, train_idx, val_idx, n_pix, branch_widths, seed))
        resumed = saver.restore(model, opt, sched, average, stopping)
        if resumed is not None:
            start_epoch, history = resumed
            if stopping.stopped:
                return TrainResult(stopping.best_state, history, stopping.best_epoch, stopping.best_val)

    w_all = weights.astype(np.float32)
    # the training arrays as tensors once (zero-copy views); batches are gathered with
    # index_select, augmentation noise is added in place, and the running loss stays a
    # tensor (no per-step conversion to a Python float)
    data = _TrainTensors(prep, w_all, model.branch_names)
    augment = float(tcfg.noise_augmentation) if prep.spectrum_err is not None else 0.0
    dropout = None
    if tcfg.input_dropout > 0:
        if preprocessor is None:
            raise ValueError("training.input_dropout needs the preprocessor (train_member(preprocessor=...))")
        dropout = InputDropout.from_config(config, preprocessor, model.branch_names)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=tcfg.max_epochs, initial=start_epoch, desc=f"member seed {seed}",
                   leave=False, unit="epoch")
    for epoch in range(start_epoch, tcfg.max_epochs):
        torch.manual_seed(seed * 100003 + epoch)
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(train_idx).astype(np.int64))
        model.train()
        run = torch.zeros((), dtype=torch.float64)
        nb = 0
        for s in range(0, len(order), tcfg.batch_size):
            b = order[s:s + tcfg.batch_size]
            spec, br, tgt, wb = data.batch(b)
            if augment > 0:
                noise = torch.randn_like(spec)
                if augment != 1.0:
                    noise.mul_(augment)
                spec.add_(noise.mul_(data.spectrum_err.index_select(0, b)))
            if dropout is not None:
                dropout(br)
            pred = model(spec, br)
            loss = member_loss(pred, tgt, wb, tcfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.after_step(model)
            run += loss.detach()
            nb += 1
        judged = model if average is None else average.module  # the weights this epoch would ship
        val, val_robust = _evaluate(judged, prep, val_idx, w_all, tcfg.loss, delta=tcfg.huber_delta)
        sched.step(val) if tcfg.schedule == "plateau" else sched.step()
        rec = {"epoch": epoch, "train_loss": float(run) / max(nb, 1), "val_loss": val,
               "val_robust": val_robust, "lr": opt.param_groups[0]["lr"]}
        history.append(rec)
        stopped = stopping.after_epoch(epoch, val, judged)
        if saver is not None:
            saver.after_epoch(epoch, history, model, opt, sched, average, stopping)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{rec['train_loss']:.4f}", val=f"{val:.4f}", lr=f"{rec['lr']:.1e}")
        if on_epoch is not None:
            on_epoch(rec)
        if stopped:
            break
    if bar is not None:
        bar.close()
    return TrainResult(stopping.best_state, history, stopping.best_epoch, stopping.best_val)
