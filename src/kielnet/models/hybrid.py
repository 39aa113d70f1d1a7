"""The configurable hybrid network: a 1-D convolutional spectrum branch, any number of
dense branches over scalar inputs, and a dense fusion head.

Pure torch modules: they see tensors only. The spectrum branch can run its 1-D
convolutions as 2-D convolutions with a 1×k kernel in ``channels_last`` memory
layout, which is numerically the same operation but faster to *train* on CPU (the
weights then carry an extra singleton axis: (out, in, 1, k)); bundles store that form.
:meth:`HybridNet.to_conv1d` gives an equivalent copy with plain ``Conv1d`` layers
(squeezed weights) for inference; the fast inference paths themselves live in
:mod:`kielnet.compute`.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kielnet.config import ModelConfig, ScalarBranchConfig, SpectrumBranchConfig

__all__ = ["ACTIVATIONS", "HybridNet", "SpectrumBranch", "DenseBranch", "make_activation", "split_outputs",
           "LOG_SIGMA_RANGE"]

#: bounds of a heteroscedastic model's log σ outputs (scaled units): a smooth lower bound
#: ``lo + softplus(raw - lo)`` and a clamp at ``hi``: σ in [e^-5, e^3] of the label's scale
LOG_SIGMA_RANGE = (-5.0, 3.0)


def split_outputs(y, n_labels: int):
    """``(means, log_sigma)`` of network outputs ``y`` (…, n_outputs): the first
    ``n_labels`` columns, and the bounded log σ (:data:`LOG_SIGMA_RANGE`) of the columns
    after them (None when the model is not heteroscedastic). Works on torch tensors and
    numpy arrays."""
    if y.shape[-1] == n_labels:
        return y, None
    if y.shape[-1] != 2 * n_labels:
        raise ValueError(f"expected {n_labels} or {2 * n_labels} outputs, got {y.shape[-1]}")
    raw = y[..., n_labels:]
    lo, hi = LOG_SIGMA_RANGE
    if hasattr(raw, "clamp"):  # torch: a smooth lower bound (its gradient never vanishes)
        log_s = (lo + torch.nn.functional.softplus(raw - lo)).clamp(max=hi)
    else:
        log_s = np.minimum(lo + np.logaddexp(0.0, np.asarray(raw) - lo), hi)
    return y[..., :n_labels], log_s

#: Registry of activation functions available to configs.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate an activation from :data:`ACTIVATIONS` by name."""
    return ACTIVATIONS[name]()


def _conv_out_len(length: int, kernel: int, padding: int | str) -> int:
    if padding == "same":
        return length
    pad = 0 if padding == "valid" else int(padding)
    return length + 2 * pad - kernel + 1


class SpectrumBranch(nn.Module):
    """Stack of Conv1d(+activation)(+max-pool) layers, flatten, optional dense layers.

    Input: (batch, n_pix) flux; output: (batch, out_features).
    """

    def __init__(self, cfg: SpectrumBranchConfig, n_pix: int, *, as_2d: bool = True) -> None:
        super().__init__()
        self.as_2d = as_2d
        self.n_pix = int(n_pix)
        layers: list[nn.Module] = []
        in_ch, length = 1, n_pix
        for layer in cfg.conv:
            pad: int | str = layer.padding
            if as_2d:
                pad2 = (0, pad) if isinstance(pad, int) else pad
                layers.append(nn.Conv2d(in_ch, layer.channels, (1, layer.kernel), padding=pad2))
            else:
                layers.append(nn.Conv1d(in_ch, layer.channels, layer.kernel, padding=pad))
            if cfg.batchnorm:
                layers.append(nn.BatchNorm2d(layer.channels) if as_2d else nn.BatchNorm1d(layer.channels))
            layers.append(make_activation(cfg.activation))
            length = _conv_out_len(length, layer.kernel, layer.padding)
            if layer.pool > 1:
                layers.append(nn.MaxPool2d((1, layer.pool)) if as_2d else nn.MaxPool1d(layer.pool))
                length //= layer.pool
            in_ch = layer.channels
            if length <= 0:
                raise ValueError(f"spectrum of {n_pix} px is too short for the conv stack")
        self.conv = nn.Sequential(*layers)
        self.flat_features = in_ch * length
        dense: list[nn.Module] = []
        width = self.flat_features
        for w in cfg.dense:
            dense += [nn.Linear(width, w), make_activation(cfg.activation)]
            width = w
        self.dense = nn.Sequential(*dense)
        self.out_features = width

    def forward(self, flux: torch.Tensor) -> torch.Tensor:
        if self.as_2d:
            x = flux[:, None, None, :].contiguous(memory_format=torch.channels_last)
        else:
            x = flux[:, None, :]
        x = self.conv(x)
        # flatten in logical (channel, position) order, whatever the memory layout
        return self.dense(x.flatten(1))

    def to_conv1d(self) -> "SpectrumBranch":
        """An equivalent branch with ``Conv1d`` / ``BatchNorm1d`` / ``MaxPool1d`` layers
        (weights squeezed from (out, in, 1, k) to (out, in, k), contiguous); a copy of
        ``self`` if it already is one. The result holds its own tensors."""
        new = copy.deepcopy(self)
        if not self.as_2d:
            return new
        layers: list[nn.Module] = []
        for mod in new.conv:
            if isinstance(mod, nn.Conv2d):
                pad = mod.padding if isinstance(mod.padding, str) else mod.padding[1]
                c1 = nn.Conv1d(mod.in_channels, mod.out_channels, mod.kernel_size[1], padding=pad,
                               bias=mod.bias is not None)
                with torch.no_grad():
                    c1.weight.copy_(mod.weight[:, :, 0, :])
                    if mod.bias is not None:
                        c1.bias.copy_(mod.bias)
                layers.append(c1)
            elif isinstance(mod, nn.BatchNorm2d):
                bn = nn.BatchNorm1d(mod.num_features, eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                                    track_running_stats=mod.track_running_stats)
                bn.load_state_dict(mod.state_dict())
                layers.append(bn)
            elif isinstance(mod, nn.MaxPool2d):
                k = mod.kernel_size[1] if isinstance(mod.kernel_size, tuple) else mod.kernel_size
                layers.append(nn.MaxPool1d(k))
            else:
                layers.append(mod)
        new.conv = nn.Sequential(*layers)
        new.as_2d = False
        new.train(self.training)  # the new layers start in training mode
        return new.to(memory_format=torch.contiguous_format)


class DenseBranch(nn.Module):
    """Fully connected branch over a vector of scalar inputs."""

    def __init__(self, cfg: ScalarBranchConfig, in_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for w in cfg.layers:
            layers += [nn.Linear(width, w), make_activation(cfg.activation)]
            width = w
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HybridNet(nn.Module):
    """Spectrum branch ⊕ scalar branches → head → ``n_outputs`` outputs.

    ``n_outputs`` is ``n_labels`` (the scaled labels), or ``2 * n_labels`` for a
    heteroscedastic model (``cfg.heteroscedastic``): the scaled labels, then the natural
    log of each label's σ in scaled units (:func:`split_outputs`).

    Parameters
    ----------
    cfg
        Architecture description.
    n_pix
        Spectrum length in pixels (ignored without a spectrum branch).
    branch_inputs
        Input width of each scalar branch, in config order, keyed by branch name.
    n_labels
        Number of outputs.
    """

    def __init__(self, cfg: ModelConfig, n_pix: int, branch_inputs: dict[str, int], n_labels: int) -> None:
        super().__init__()
        self.spectrum = (SpectrumBranch(cfg.spectrum, n_pix, as_2d=cfg.channels_last_2d)
                         if cfg.spectrum is not None else None)
        self.branch_names: list[str] = [b.name for b in cfg.scalar_branches]
        self.branches = nn.ModuleDict({b.name: DenseBranch(b, branch_inputs[b.name])
                                       for b in cfg.scalar_branches})
        width = (self.spectrum.out_features if self.spectrum is not None else 0)
        width += sum(b.out_features for b in self.branches.values())
        head: list[nn.Module] = []
        for w in cfg.head.layers:
            # APOGEE Net II order: Linear -> Dropout -> activation
            head += [nn.Linear(width, w), nn.Dropout(cfg.head.dropout), make_activation(cfg.head.activation)]
            width = w
        self.heteroscedastic = bool(cfg.heteroscedastic)
        self.n_labels = n_labels
        self.n_outputs = n_labels * (2 if self.heteroscedastic else 1)
        head.append(nn.Linear(width, n_labels))
        self.head = nn.Sequential(*head)
        #: the σ head (heteroscedastic models): dense layers on the head's last hidden layer
        self.sigma_head: nn.Sequential | None = None
        self.sigma_detached = cfg.sigma_features == "detached"
        if self.heteroscedastic:
            layers: list[nn.Module] = []
            for w in cfg.sigma_head:
                layers += [nn.Linear(width, w), make_activation(cfg.head.activation)]
                width = w
            layers.append(nn.Linear(width, n_labels))
            self.sigma_head = nn.Sequential(*layers)
        if cfg.init == "kaiming":
            self._kaiming()

    def _kaiming(self) -> None:
        """Kaiming-normal weights (fan-in) and zero biases for every conv and linear layer."""
        for mod in self.modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def fusion(self, spectrum: torch.Tensor | None, branches: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The fusion-head input (the concatenated branch outputs): (batch, width)."""
        parts = []
        if self.spectrum is not None:
            parts.append(self.spectrum(spectrum))
        parts.extend(self.branches[name](x) for name, x in zip(self.branch_names, branches))
        return torch.cat(parts, dim=1)

    def head_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """The outputs (batch, n_outputs) from the fusion vector ``z``: the labels, and for a
        heteroscedastic model the σ head's raw outputs after them (:func:`split_outputs`)."""
        if self.sigma_head is None:
            return self.head(z)
        hidden = self.head[:-1](z)
        labels = self.head[-1](hidden)
        raw = self.sigma_head(hidden.detach() if self.sigma_detached else hidden)
        return torch.cat([labels, raw], dim=1)

    def forward(self, spectrum: torch.Tensor | None, branches: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``spectrum``: (batch, n_pix); ``branches``: tensors in ``branch_names`` order."""
        return self.head_outputs(self.fusion(spectrum, branches))

    @property
    def conv_layout(self) -> str:
        """``"conv2d"`` (1×k Conv2d, the training form) or ``"conv1d"``; ``"none"``
        without a spectrum branch."""
        if self.spectrum is None:
            return "none"
        return "conv2d" if self.spectrum.as_2d else "conv1d"

    def to_conv1d(self) -> "HybridNet":
        """An equivalent network whose spectrum branch uses plain ``Conv1d`` layers
        (weights squeezed, contiguous memory): the same outputs up to float rounding,
        in the same train/eval mode. A new module; ``self`` and its state dict (the
        bundle's form) are left as they are."""
        new = copy.deepcopy(self)
        if new.spectrum is not None:
            new.spectrum = new.spectrum.to_conv1d()
        return new
