"""The trained-ensemble type: :class:`Bundle` (config, preprocessing, member weights,
uncertainty and quality fits) and :class:`MemberInfo`, with the member networks built
and checked against the config, and the bundle's content fingerprint.

It lives in the compute core so that training (which makes bundles) and inference
(which applies, saves and loads them: :mod:`kielnet.inference.bundle`) both import it
without training importing inference. Imports config, data, models and errors only;
the quality and uncertainty fits are held duck-typed (``to_dict``, ``_meta``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from kielnet.config import KielnetConfig
from kielnet.data.fingerprint import array_digest
from kielnet.data.preprocess import Preprocessor
from kielnet.errors import BundleError
from kielnet.models.hybrid import HybridNet

if TYPE_CHECKING:  # annotations only: the fits are made by inference / quality
    from kielnet.quality.sigma import SigmaModel
    from kielnet.quality.uncertainty import RunningDispersion
    from kielnet.quality.embedding import EmbeddingOOD
    from kielnet.quality.spread import EnsembleSpread
    from kielnet.quality.neighbours import NeighbourModel

__all__ = ["Bundle", "MemberInfo", "state_dict_digest", "build_nets"]


@dataclass
class MemberInfo:
    """Provenance of one ensemble member."""

    split: int
    seed: int
    best_epoch: int
    best_val_loss: float
    n_train: int
    n_val: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- digests
def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def state_dict_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a member's tensors: names in sorted order, each with its dtype,
    shape and raw bytes (C order). Independent of memory layout (channels-last or not)
    and of how the tensors were stored, so a member saved and loaded again has the same
    digest."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode("utf-8"))
        h.update(b"\0")
        _hash_tensor(h, state[k])
    return h.hexdigest()


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True)


def _content_meta(bundle: "Bundle") -> dict:
    """The JSON parts of ``bundle.json`` that determine predictions."""
    return {
        "config": bundle.config.model_dump(mode="json"),
        "preprocessing": bundle.preprocessor.to_dict(),
        "running_dispersion": {k: v.to_dict() for k, v in bundle.running_dispersion.items()},
        "label_ranges": {k: list(v) for k, v in bundle.label_ranges.items()},
        "feature_ranges": {k: list(v) for k, v in bundle.feature_ranges.items()},
        "ensemble_spread": None if bundle.spread is None else bundle.spread.to_dict(),
        "sigma_model": None if bundle.sigma_model is None else bundle.sigma_model.to_dict(),
        "neighbours": None if bundle.neighbours is None else bundle.neighbours._meta(),
    }


# ----------------------------------------------------------------------------- networks
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


def _mismatch_message(where: str, fname: str, bundle: "Bundle", net: HybridNet, state: Mapping,
                      expected: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot be loaded into ``net`` (None if it can)."""
    cfg, pre = bundle.config, bundle.preprocessor
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


def _build_nets(bundle: "Bundle", where: str, names: list[str]) -> list[HybridNet]:
    """Eval-mode member networks; a :class:`BundleError` if config and weights disagree."""
    cfg, pre = bundle.config, bundle.preprocessor
    nets = []
    for sd, fname in zip(bundle.members, names):
        try:
            net = HybridNet(cfg.model, pre.n_pix or 0, pre.branch_widths(), len(cfg.labels))
        except (ValueError, KeyError) as exc:
            raise BundleError(f"{where}: the network that bundle.json describes cannot be built "
                              f"(config.model, preprocessing.n_pix = {pre.n_pix}): {exc}") from exc
        if cfg.model.channels_last_2d:
            net = net.to(memory_format=torch.channels_last)
        msg = _mismatch_message(where, fname, bundle, net, sd, net.state_dict())
        if msg is not None:
            raise BundleError(msg)
        try:
            net.load_state_dict(sd)
        except RuntimeError as exc:  # pragma: no cover - the comparison above should catch it
            raise BundleError(f"{where}: {fname} does not match the architecture bundle.json describes: "
                              f"{exc}") from exc
        nets.append(net.eval())
    return nets


# ----------------------------------------------------------------------------- bundle
@dataclass
class Bundle:
    """A trained ensemble: config + preprocessing + member weights + uncertainty fits."""

    config: KielnetConfig
    preprocessor: Preprocessor
    members: list[dict[str, torch.Tensor]]
    member_info: list[MemberInfo]
    running_dispersion: dict[str, RunningDispersion]
    label_ranges: dict[str, tuple[float, float]]
    feature_ranges: dict[str, tuple[float, float]]
    training_data: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    #: fast out-of-distribution score fitted on the training stars (config.quality.embedding_ood)
    ood: EmbeddingOOD | None = None
    #: (n_ref, n_pix) float32 training spectra as the network sees them (config.quality.tsne)
    tsne_reference: np.ndarray | None = None
    #: ensemble-disagreement calibration on the training stars (config.quality.ensemble_spread)
    spread: EnsembleSpread | None = None
    #: how sigma_X is made and calibrated (kielnet.quality.sigma); None: e_X (+) running dispersion
    sigma_model: SigmaModel | None = None
    #: label support, local σ factor, 95 % intervals, outlier score (config.quality.neighbours)
    neighbours: NeighbourModel | None = None
    # built networks and what they were built from (see build_members)
    _nets: list | None = field(default=None, init=False, repr=False, compare=False)
    _nets_key: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def _state_key(self) -> tuple | None:
        """What the member networks are built from, by identity (and tensor versions)."""
        try:
            return (self.config, self.preprocessor, self.preprocessor.n_pix,
                    tuple(sorted(self.preprocessor.branch_widths().items())),
                    tuple((sd, tuple((k, t, t._version) for k, t in sd.items())) for sd in self.members))
        except (RuntimeError, AttributeError):  # e.g. inference tensors have no version counter
            return None

    def _cached_nets(self) -> list[HybridNet] | None:
        old, new = self._nets_key, self._state_key()
        if self._nets is None or old is None or new is None:
            return None
        if old[0] is not new[0] or old[1] is not new[1] or old[2:4] != new[2:4] or len(old[4]) != len(new[4]):
            return None
        for (sd_a, items_a), (sd_b, items_b) in zip(old[4], new[4]):
            if sd_a is not sd_b or len(items_a) != len(items_b):
                return None
            for (ka, ta, va), (kb, tb, vb) in zip(items_a, items_b):
                if ka != kb or ta is not tb or va != vb:
                    return None
        return self._nets

    def build_members(self) -> list[HybridNet]:
        """The member networks in eval mode (for inference only: do not modify them).

        Built once and reused while ``config``, ``preprocessor``, the member dicts and
        their tensors are the same objects, unmodified (tensor version counters; a change
        made through ``tensor.data`` is not seen). A bundle from :func:`load_bundle` has
        them built already. A :class:`BundleError` if the weights do not fit the
        architecture the config describes.
        """
        cached = self._cached_nets()
        if cached is not None:
            return [net.eval() for net in cached]
        key = self._state_key()
        nets = _build_nets(self, "bundle", [f"member {i}" for i in range(len(self.members))])
        self._nets, self._nets_key = nets, key
        return list(nets)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that determines this bundle's predictions.

        Covers the config, the preprocessing state, the label and input ranges, the
        running-dispersion fits, the quality calibrations (ensemble spread, OOD
        reference, t-SNE reference) and every member's tensors (in member order), but
        not provenance (``member_info``, ``training_data``, ``validation``) nor
        ``versions``. Computed from memory: the same for a bundle and the same bundle
        saved and loaded again; a bundle whose predictions could differ has another one.
        """
        parts = {
            "kind": "kielnet-bundle-fingerprint", "version": 1,
            "meta": hashlib.sha256(_canonical_json(_content_meta(self)).encode("ascii")).hexdigest(),
            "members": [state_dict_digest(sd) for sd in self.members],
            "embedding_ood": None, "tsne_reference": None,
        }
        if self.neighbours is not None:
            parts["neighbours"] = {k: array_digest(v) for k, v in self.neighbours.arrays().items()}
        if self.ood is not None:
            parts["embedding_ood"] = {"meta": _canonical_json(self.ood._meta()),
                                      "references": [array_digest(np.asarray(r, dtype=np.float32))
                                                     for r in self.ood.references]}
        if self.tsne_reference is not None:
            parts["tsne_reference"] = array_digest(np.asarray(self.tsne_reference, dtype=np.float32))
        return hashlib.sha256(_canonical_json(parts).encode("ascii")).hexdigest()


build_nets = _build_nets
