"""The one network factory: :func:`build_network` builds the network a config
describes, and :func:`member_networks` builds a bundle's members and checks their
weights against that architecture (with errors that name the setting that disagrees).

Imports config, data, models and errors only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from kielnet.config import KielnetConfig
from kielnet.data.preprocess import Preprocessor
from kielnet.errors import BundleError
from kielnet.models.hybrid import HybridNet

__all__ = ["build_network", "member_networks"]


def _spectrum_length(spec_cfg, n_pix: int) -> int:
    """Length of the conv stack's output for ``n_pix`` input pixels (as SpectrumBranch)."""
    length = n_pix
    for layer in spec_cfg.conv:
        if layer.padding != "same":
            pad = 0 if layer.padding == "valid" else int(layer.padding)
            length = length + 2 * pad - layer.kernel + 1
        if layer.pool > 1:
            length //= layer.pool
        if length <= 0:
            return 0
    return length


def _pixels_for_length(spec_cfg, target: int) -> tuple[int, int] | None:
    """Range of spectrum lengths whose conv stack output has ``target`` positions."""
    if target <= 0:
        return None
    f = lambda n: _spectrum_length(spec_cfg, n)  # noqa: E731 - non-decreasing in n, steps of 0 or 1
    hi = 1
    while f(hi) <= target:
        hi *= 2
        if hi > 1 << 40:
            return None

    def first(at_least: int) -> int:
        lo, up = 1, hi
        while lo < up:
            mid = (lo + up) // 2
            if f(mid) >= at_least:
                up = mid
            else:
                lo = mid + 1
        return lo

    a, b = first(target), first(target + 1) - 1
    return (a, b) if a <= b and f(a) == target else None


def _fmt_shape(t) -> str:
    return "(" + ", ".join(str(int(s)) for s in t.shape) + ")"


def _mismatch_message(where: str, fname: str, cfg: KielnetConfig, pre: Preprocessor, net: HybridNet,
                      state: Mapping, expected: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot be loaded into ``net`` (None if it can)."""
    spec = cfg.model.spectrum
    flat_param = None
    if spec is not None:
        flat_param = "spectrum.dense.0.weight" if spec.dense else "head.0.weight"
    conv_ok = all(k not in state or tuple(state[k].shape) == tuple(v.shape)
                  for k, v in expected.items() if k.startswith("spectrum.conv."))
    for k, exp in expected.items():
        if k not in state:
            continue
        got = state[k]
        if tuple(got.shape) == tuple(exp.shape):
            if got.dtype != exp.dtype:
                return (f"{where}: {fname}: parameter '{k}' is {got.dtype} in the file but the network "
                        f"bundle.json describes uses {exp.dtype}")
            continue
        shapes = f"parameter '{k}' has shape {_fmt_shape(got)} in the file but {_fmt_shape(exp)}"
        if (k == flat_param and conv_ok and got.ndim == 2 and exp.ndim == 2 and got.shape[0] == exp.shape[0]
                and net.spectrum is not None):
            n_pix = pre.n_pix or 0
            flat_saved = int(got.shape[1]) - (int(exp.shape[1]) - net.spectrum.flat_features)
            channels = spec.conv[-1].channels
            rng = _pixels_for_length(spec, flat_saved // channels) if flat_saved % channels == 0 else None
            if rng is None:
                trained = "spectra of another length"
            elif rng[0] == rng[1]:
                trained = f"{rng[0]}-pixel spectra"
            else:
                trained = f"spectra of {rng[0]} to {rng[1]} pixels"
            return (f"{where}: bundle.json says {n_pix}-pixel spectra (preprocessing.n_pix) but {fname} was "
                    f"trained on {trained} ({shapes} for {n_pix} pixels): the bundle is inconsistent "
                    "(preprocessing.n_pix, or the padding / pooling of config.model.spectrum.conv, "
                    "does not match the weights)")
        if k.startswith("spectrum.conv."):
            setting = "config.model.spectrum.conv"
        elif k.startswith("spectrum.dense."):
            setting = ("the spectrum length (preprocessing.n_pix) or config.model.spectrum"
                       if k == flat_param else "config.model.spectrum.dense")
        elif k.startswith("branches."):
            name = k.split(".")[1]
            if k == f"branches.{name}.net.0.weight" and got.ndim == 2 and got.shape[0] == exp.shape[0]:
                setting = (f"the {int(exp.shape[1])} inputs of scalar branch '{name}' (config.features / "
                           f"config.model.scalar_branches)")
            else:
                setting = f"scalar branch '{name}' (config.model.scalar_branches)"
        elif k.startswith("head."):
            last = f"head.{len(net.head) - 1}."
            if k.startswith(last) and got.shape[0] != exp.shape[0]:
                setting = (f"{len(cfg.labels)} labels (config.labels)"
                           + (", each with a σ output (config.model.heteroscedastic)"
                              if cfg.model.heteroscedastic else ""))
            else:
                setting = "config.model.head"
        else:
            setting = "config.model"
        return f"{where}: {fname} does not match the architecture bundle.json describes: {shapes} for {setting}"
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"parameters {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} "
                         "are missing from the file")
        if extra:
            parts.append(f"the file holds parameters {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''} "
                         "that config.model does not describe")
        return (f"{where}: {fname} does not match the architecture bundle.json describes (config.model): "
                + "; ".join(parts))
    return None


def build_network(config: KielnetConfig, n_pix: int, branch_widths: Mapping[str, int], *,
                  seed: int | None = None) -> HybridNet:
    """The network ``config.model`` describes for ``n_pix``-pixel spectra and scalar
    branches of ``branch_widths`` inputs, for ``len(config.labels)`` labels; channels-last
    where ``config.model.channels_last_2d``. ``seed`` seeds its initialisation (torch's
    global generator, as training always has); None leaves the generator alone. The one
    place kielnet builds a network: training, loading bundles and importing weights."""
    if seed is not None:
        torch.manual_seed(seed)
    net = HybridNet(config.model, n_pix, dict(branch_widths), len(config.labels))
    if config.model.channels_last_2d:
        net = net.to(memory_format=torch.channels_last)
    return net


def member_networks(config: KielnetConfig, preprocessor: Preprocessor, states: Sequence[Mapping[str, torch.Tensor]],
                    *, where: str = "bundle", names: Sequence[str] | None = None) -> list[HybridNet]:
    """Eval-mode networks with the weights ``states``, each built from ``config`` and the
    preprocessor's ``n_pix`` and branch widths. A :class:`BundleError` (starting with
    ``where`` and naming the member by ``names``) if a state does not fit the
    architecture the config describes, saying which setting disagrees."""
    names = [f"member {i}" for i in range(len(states))] if names is None else list(names)
    pre = preprocessor
    nets = []
    for sd, fname in zip(states, names):
        try:
            net = build_network(config, pre.n_pix or 0, pre.branch_widths())
        except (ValueError, KeyError) as exc:
            raise BundleError(f"{where}: the network that bundle.json describes cannot be built "
                              f"(config.model, preprocessing.n_pix = {pre.n_pix}): {exc}") from exc
        msg = _mismatch_message(where, fname, config, pre, net, sd, net.state_dict())
        if msg is not None:
            raise BundleError(msg)
        try:
            net.load_state_dict(sd)
        except RuntimeError as exc:  # pragma: no cover - the comparison above should catch it
            raise BundleError(f"{where}: {fname} does not match the architecture bundle.json describes: "
                              f"{exc}") from exc
        nets.append(net.eval())
    return nets
