"""Gradient sensitivity maps of the networks (Gaia-RVS hybrid CNN paper §3.5, Figs. 9–10).

For a chosen set of stars, :func:`gradient_maps` computes the mean partial derivative
of every output label with respect to every input pixel (∂label/∂λ, Fig. 9) and to
every input of each scalar branch (e.g. ∂label/∂XP coefficient, Fig. 10), averaged
over the stars and over the ensemble members. The per-member means are kept too, so
the member-to-member spread can be shown.

Units
-----
Derivatives are always taken with respect to the **network inputs** as the
preprocessor makes them (e.g. standardised log10 flux per pixel, z-scored features;
see :mod:`kielnet.data.preprocess`). Divide a pixel map by ``Preprocessor.pixel_std``
to get it per unit of log10 flux.

* Without ``label_transforms`` the output side is the network's **scaled label space**
  (what the network is trained on): unit ∂y/∂x.
* With ``label_transforms`` (a :class:`~kielnet.data.preprocess.Preprocessor` or its
  list of :class:`~kielnet.data.transforms.LabelTransform`) each star's gradient is
  multiplied by the derivative of the inverse label transform at that star's
  predicted label before averaging (exact chain rule): a constant ``scale`` for a
  plain scaled label, ``ln(10) · scale · Teff`` for a ``log10`` label (so Teff maps are
  in K per input unit, star by star). ``units`` is then ``"physical"``.

Stars are independent in eval mode (no batch statistics, no dropout), so the gradient
of the summed output over a batch equals the per-star gradients summed; one backward
pass per label and batch suffices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from kielnet.data.preprocess import Prepared
from kielnet.diagnostics.plots import save_figure

__all__ = ["SensitivityMaps", "gradient_maps", "plot_sensitivity", "plot_branch_sensitivity"]


@dataclass
class SensitivityMaps:
    """Mean gradients of the labels w.r.t. the network inputs.

    Attributes
    ----------
    label_names : names of the outputs, in output order
    units : ``"scaled"`` (network label space) or ``"physical"`` (module docstring)
    n_stars, n_members : number of stars and ensemble members averaged over
    pixel : (n_labels, n_pix) mean ∂label/∂pixel, or None without a spectrum
    branches : branch name → (n_labels, n_inputs) mean ∂label/∂input
    pixel_members : (n_members, n_labels, n_pix) each member's mean over the stars
    branch_members : branch name → (n_members, n_labels, n_inputs)
    """

    label_names: list[str]
    units: str
    n_stars: int
    n_members: int
    pixel: np.ndarray | None
    branches: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_members: np.ndarray | None = None
    branch_members: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write as ``.npz`` (plain numeric/unicode arrays; loads with ``allow_pickle=False``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"label_names": np.asarray(self.label_names, dtype=str), "units": np.str_(self.units),
                  "n_stars": np.int64(self.n_stars), "n_members": np.int64(self.n_members),
                  "branch_names": np.asarray(list(self.branches), dtype=str)}
        if self.pixel is not None:
            arrays["pixel"] = self.pixel
            if self.pixel_members is not None:
                arrays["pixel_members"] = self.pixel_members
        for name, a in self.branches.items():
            arrays[f"branch__{name}"] = a
            if name in self.branch_members:
                arrays[f"branch_members__{name}"] = self.branch_members[name]
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityMaps":
        with np.load(path, allow_pickle=False) as z:
            names = [str(s) for s in z["branch_names"]]
            return cls(label_names=[str(s) for s in z["label_names"]], units=str(z["units"]),
                       n_stars=int(z["n_stars"]), n_members=int(z["n_members"]),
                       pixel=z["pixel"] if "pixel" in z else None,
                       branches={n: z[f"branch__{n}"] for n in names},
                       pixel_members=z["pixel_members"] if "pixel_members" in z else None,
                       branch_members={n: z[f"branch_members__{n}"] for n in names
                                       if f"branch_members__{n}" in z})


def _inverse_derivative(transforms, y: torch.Tensor) -> torch.Tensor:
    """d(physical)/d(scaled) for each star and label: (batch, n_labels)."""
    cols = []
    for j, lt in enumerate(transforms):
        s, c = float(lt.scaler.scale), float(lt.scaler.centre)
        if lt.transform == "log10":
            phys = torch.pow(10.0, y[:, j] * s + c)
            cols.append(np.log(10.0) * s * phys)
        elif lt.transform == "none":
            cols.append(torch.full_like(y[:, j], s))
        else:  # pragma: no cover - LabelTransform only knows these two
            raise ValueError(f"unknown label transform {lt.transform!r}")
    return torch.stack(cols, dim=1)


def _selection(prepared: Prepared, index) -> np.ndarray:
    if index is None:
        return np.flatnonzero(~np.asarray(prepared.bad_spectrum, dtype=bool))
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (len(prepared),):
            raise ValueError(f"boolean index must have length {len(prepared)}, got {idx.shape}")
        return np.flatnonzero(idx)
    idx = idx.astype(np.int64).ravel()
    if idx.size and (idx.min() < -len(prepared) or idx.max() >= len(prepared)):
        raise IndexError(f"index out of range for {len(prepared)} stars")
    return idx


def gradient_maps(nets, prepared: Prepared, index=None, *, label_transforms=None,
                  label_names: Sequence[str] | None = None, batch_size: int = 256) -> SensitivityMaps:
    """Mean ∂label/∂input over the chosen stars and the ensemble members (paper §3.5).

    Parameters
    ----------
    nets
        One network or a list (ensemble members). Each is called as
        ``net(spectrum, [branch tensors in net.branch_names order])`` and returns
        (batch, n_labels), like :class:`~kielnet.models.hybrid.HybridNet`. Nets are run
        in eval mode (their mode is restored afterwards); inputs are cast to the
        dtype of their parameters.
    prepared
        Network inputs (:class:`~kielnet.data.preprocess.Prepared`).
    index
        The stars to average over: integer indices or a boolean mask (e.g. red-clump
        stars with [M/H] ≈ 0 for Fig. 9). Default: every star with a usable spectrum.
    label_transforms
        ``None``: gradients in scaled label space. A ``Preprocessor`` or a list of
        ``LabelTransform``: gradients in physical label units (module docstring).
    label_names
        Output names (default: the transforms' names, else ``label_0`` …).
    batch_size
        Stars per backward pass.
    """
    nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
    if not nets:
        raise ValueError("no networks given")
    transforms = getattr(label_transforms, "label_transforms", label_transforms)
    sel = _selection(prepared, index)
    if sel.size == 0:
        raise ValueError("no stars selected for the sensitivity maps")
    branch_names = list(nets[0].branch_names)
    has_spec = prepared.spectrum is not None
    pix_members, br_members = [], {name: [] for name in branch_names}
    n_labels = None
    for net in nets:
        if list(net.branch_names) != branch_names:
            raise ValueError(f"members disagree on their branches: {net.branch_names} vs {branch_names}")
        dtype = next(net.parameters()).dtype
        was_training = net.training
        net.eval()
        pix_sum = None
        br_sum: dict[str, torch.Tensor | None] = {name: None for name in branch_names}
        try:
            with torch.enable_grad():
                for s in range(0, sel.size, batch_size):
                    rows = sel[s:s + batch_size]
                    spec = (torch.as_tensor(prepared.spectrum[rows], dtype=dtype).requires_grad_(True)
                            if has_spec else None)
                    brs = [torch.as_tensor(prepared.branches[name][rows], dtype=dtype).requires_grad_(True)
                           for name in branch_names]
                    out = net(spec, brs)
                    out = out[:, :getattr(net, "n_labels", out.shape[1])]  # not the σ outputs
                    if n_labels is None:
                        n_labels = out.shape[1]
                        if transforms is not None and len(transforms) != n_labels:
                            raise ValueError(f"{len(transforms)} label transforms for {n_labels} outputs")
                    weight = (_inverse_derivative(transforms, out.detach().double()).to(dtype)
                              if transforms is not None else None)
                    inputs = ([spec] if has_spec else []) + brs
                    pix_rows, br_rows = [], {name: [] for name in branch_names}
                    for j in range(n_labels):
                        target = out[:, j] if weight is None else out[:, j] * weight[:, j]
                        grads = torch.autograd.grad(target.sum(), inputs, retain_graph=j < n_labels - 1,
                                                    allow_unused=True)
                        k = 0
                        if has_spec:
                            g = grads[0]
                            pix_rows.append(torch.zeros(spec.shape[1], dtype=torch.float64) if g is None
                                            else g.detach().double().sum(dim=0))
                            k = 1
                        for name, g, x in zip(branch_names, grads[k:], brs):
                            br_rows[name].append(torch.zeros(x.shape[1], dtype=torch.float64) if g is None
                                                 else g.detach().double().sum(dim=0))
                    if has_spec:
                        p = torch.stack(pix_rows)
                        pix_sum = p if pix_sum is None else pix_sum + p
                    for name in branch_names:
                        b = torch.stack(br_rows[name])
                        br_sum[name] = b if br_sum[name] is None else br_sum[name] + b
        finally:
            net.train(was_training)
        if has_spec:
            pix_members.append((pix_sum / sel.size).numpy())
        for name in branch_names:
            br_members[name].append((br_sum[name] / sel.size).numpy())
    if label_names is None:
        label_names = ([lt.name for lt in transforms] if transforms is not None
                       else [f"label_{j}" for j in range(n_labels)])
    label_names = list(label_names)
    if len(label_names) != n_labels:
        raise ValueError(f"{len(label_names)} label names for {n_labels} outputs")
    pm = np.stack(pix_members) if has_spec else None
    bm = {name: np.stack(v) for name, v in br_members.items()}
    return SensitivityMaps(label_names=label_names, units="scaled" if transforms is None else "physical",
                           n_stars=int(sel.size), n_members=len(nets),
                           pixel=None if pm is None else pm.mean(axis=0),
                           branches={name: v.mean(axis=0) for name, v in bm.items()},
                           pixel_members=pm, branch_members=bm)


def _ylabel(maps: SensitivityMaps, name: str, wrt: str, units: dict[str, str] | None) -> str:
    u = (units or {}).get(name, "")
    if maps.units == "physical" and u:
        return f"∂{name}/∂{wrt} [{u}]"
    return f"∂{name}/∂{wrt}" + (" (scaled)" if maps.units == "scaled" else "")


def plot_sensitivity(maps: SensitivityMaps, wavelength: np.ndarray | None, mean_spectrum: np.ndarray | None,
                     path: str | Path, *, lines: dict[str, float] | Sequence[tuple[str, float]] | None = None,
                     units: dict[str, str] | None = None, title: str | None = None,
                     xlabel: str = "wavelength [Å]") -> Path:
    """Fig. 9-style figure: top panel the mean spectrum, then one panel per label with
    the mean ∂label/∂pixel (and the members' min–max band when there are several).

    ``wavelength`` None → pixel index. ``lines``: features to mark, ``{name: wavelength}``
    or ``[(name, wavelength), …]``, drawn as vertical lines in every panel.
    ``units``: label name → unit string for the y-axis labels (physical maps).
    """
    if maps.pixel is None:
        raise ValueError("these sensitivity maps have no spectrum (pixel) gradients")
    n_pix = maps.pixel.shape[1]
    x = np.arange(n_pix) if wavelength is None else np.asarray(wavelength, dtype=float)
    if x.shape != (n_pix,):
        raise ValueError(f"wavelength has shape {x.shape}, the maps have {n_pix} pixels")
    if mean_spectrum is not None and np.shape(mean_spectrum) != (n_pix,):
        raise ValueError(f"mean_spectrum has shape {np.shape(mean_spectrum)}, the maps have {n_pix} pixels")
    marks = list(lines.items()) if isinstance(lines, dict) else list(lines or [])
    top = mean_spectrum is not None
    n_rows = len(maps.label_names) + int(top)
    fig = Figure(figsize=(10, 1.9 * n_rows + 0.6), dpi=110)
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)
    axes = axes[:, 0]
    if top:
        axes[0].plot(x, mean_spectrum, color="k", lw=0.8)
        axes[0].set_ylabel("mean flux")
        for name, wl in marks:
            axes[0].text(wl, 1.02, name, transform=axes[0].get_xaxis_transform(), rotation=90,
                         fontsize=6, ha="center", va="bottom")
    for j, name in enumerate(maps.label_names):
        ax = axes[j + int(top)]
        if maps.pixel_members is not None and maps.n_members > 1:
            ax.fill_between(x, maps.pixel_members[:, j].min(axis=0), maps.pixel_members[:, j].max(axis=0),
                            color=f"C{j}", alpha=0.25, lw=0)
        ax.plot(x, maps.pixel[j], color=f"C{j}", lw=0.8)
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set_ylabel(_ylabel(maps, name, "λ", units), fontsize=8)
    for ax in axes:
        for _, wl in marks:
            ax.axvline(wl, color="C7", lw=0.6, ls="--", alpha=0.7)
    axes[-1].set_xlabel(xlabel if wavelength is not None else "pixel")
    fig.suptitle(title or f"sensitivity maps: mean of {maps.n_stars} stars × {maps.n_members} members")
    return save_figure(fig, path)


def plot_branch_sensitivity(maps: SensitivityMaps, branch: str, path: str | Path, *,
                            input_names: Sequence[str] | None = None, units: dict[str, str] | None = None,
                            title: str | None = None) -> Path:
    """Fig. 10-style figure: one panel per label with the mean ∂label/∂input of one
    scalar branch (e.g. XP coefficients) against the input index (or names)."""
    if branch not in maps.branches:
        raise KeyError(f"no branch {branch!r}; have {list(maps.branches)}")
    g = maps.branches[branch]
    k = g.shape[1]
    xs = np.arange(k)
    n = len(maps.label_names)
    fig = Figure(figsize=(max(6, 0.12 * k + 3), 1.9 * n + 0.6), dpi=110)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[:, 0], maps.label_names)):
        members = maps.branch_members.get(branch)
        if members is not None and maps.n_members > 1:
            ax.errorbar(xs, g[j], yerr=[g[j] - members[:, j].min(axis=0), members[:, j].max(axis=0) - g[j]],
                        fmt="none", ecolor="0.4", lw=0.6)
        ax.bar(xs, g[j], color=f"C{j}", width=0.8)
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set_ylabel(_ylabel(maps, name, "x", units), fontsize=8)
    ax = axes[-1, 0]
    if input_names is not None:
        if len(input_names) != k:
            raise ValueError(f"{len(input_names)} input names for {k} inputs")
        ax.set_xticks(xs)
        ax.set_xticklabels(list(input_names), rotation=90, fontsize=6)
    ax.set_xlabel(f"{branch} input")
    fig.suptitle(title or f"{branch} sensitivity: mean of {maps.n_stars} stars × {maps.n_members} members")
    return save_figure(fig, path)
