"""The configurable hybrid network: a 1-D convolutional spectrum branch, any number of
dense branches over scalar inputs, and a dense fusion head.

Pure torch modules: they see tensors only. The spectrum branch can run its 1-D
convolutions as 2-D convolutions with a 1×k kernel in ``channels_last`` memory
layout, which is numerically the same operation but several times faster on CPU
(the weights then carry an extra singleton axis: (out, in, 1, k)).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kielnet.config import ModelConfig, ScalarBranchConfig, SpectrumBranchConfig

__all__ = ["ACTIVATIONS", "HybridNet", "SpectrumBranch", "DenseBranch", "make_activation"]

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
    """Spectrum branch ⊕ scalar branches → head → ``n_labels`` outputs.

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
        head.append(nn.Linear(width, n_labels))
        self.head = nn.Sequential(*head)
        self.n_labels = n_labels
        if cfg.init == "kaiming":
            self._kaiming()

    def _kaiming(self) -> None:
        """Kaiming-normal weights (fan-in) and zero biases for every conv and linear layer."""
        for mod in self.modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, spectrum: torch.Tensor | None, branches: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``spectrum``: (batch, n_pix); ``branches``: tensors in ``branch_names`` order."""
        parts = []
        if self.spectrum is not None:
            parts.append(self.spectrum(spectrum))
        parts.extend(self.branches[name](x) for name, x in zip(self.branch_names, branches))
        return self.head(torch.cat(parts, dim=1))
