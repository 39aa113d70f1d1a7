"""The trained-ensemble type: :class:`Bundle` (config, preprocessing, member weights,
uncertainty and quality fits) and :class:`MemberInfo`, with the member networks built
and checked against the config (:mod:`kielnet.artifact.network`) and the bundle's
content fingerprint (:mod:`kielnet.artifact.digest`). Saving and loading:
:mod:`kielnet.artifact.store`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from kielnet.artifact.digest import canonical_json, state_dict_digest
from kielnet.artifact.network import member_networks
from kielnet.config import KielnetConfig
from kielnet.data.fingerprint import array_digest
from kielnet.data.preprocess import Preprocessor
from kielnet.models.hybrid import HybridNet
from kielnet.quality.embedding import EmbeddingOOD
from kielnet.quality.neighbours import NeighbourModel
from kielnet.quality.tails import TailRegimes
from kielnet.quality.sigma import SigmaModel
from kielnet.quality.spread import EnsembleSpread
from kielnet.quality.uncertainty import RunningDispersion

__all__ = ["Bundle", "MemberInfo", "content_meta"]


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


def content_meta(bundle: "Bundle") -> dict:
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
        "tail_regimes": None if bundle.tail_regimes is None else bundle.tail_regimes.to_dict(),
    }


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
    #: predicted-label intervals where a label is withheld (config.quality.tail_regimes)
    tail_regimes: TailRegimes | None = None
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
        made through ``tensor.data`` is not seen). A bundle from :func:`~kielnet.artifact.store.load_bundle` has
        them built already. A :class:`BundleError` if the weights do not fit the
        architecture the config describes.
        """
        cached = self._cached_nets()
        if cached is not None:
            return [net.eval() for net in cached]
        key = self._state_key()
        nets = member_networks(self.config, self.preprocessor, self.members)
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
            "meta": hashlib.sha256(canonical_json(content_meta(self)).encode("ascii")).hexdigest(),
            "members": [state_dict_digest(sd) for sd in self.members],
            "embedding_ood": None, "tsne_reference": None,
        }
        if self.neighbours is not None:
            parts["neighbours"] = {k: array_digest(v) for k, v in self.neighbours.arrays().items()}
        if self.ood is not None:
            parts["embedding_ood"] = {"meta": canonical_json(self.ood._meta()),
                                      "references": [array_digest(np.asarray(r, dtype=np.float32))
                                                     for r in self.ood.references]}
        if self.tsne_reference is not None:
            parts["tsne_reference"] = array_digest(np.asarray(self.tsne_reference, dtype=np.float32))
        return hashlib.sha256(canonical_json(parts).encode("ascii")).hexdigest()

