"""Self-describing model bundles.

A bundle is a directory::

    bundle/
      bundle.json                 config, preprocessing state, label transforms,
                                  training label / input ranges, running-dispersion
                                  fits, member list, versions, training-data summary
      member_000.safetensors      weights of each ensemble member (no pickle)
      member_001.safetensors
      ...
      embedding_ood.safetensors   optional: reference embeddings of the fast OOD score
      tsne_reference.safetensors  optional: training spectra for t-SNE training-likeness

The calibration of the ensemble-disagreement score (a few numbers) is stored in
``bundle.json`` under ``ensemble_spread``.

:func:`load_bundle` needs nothing but this directory: no training data, no code
execution from the files (safetensors + JSON only).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kielnet import __version__
from kielnet.config import KielnetConfig
from kielnet.data.preprocess import Preprocessor
from kielnet.errors import BundleError
from kielnet.inference.uncertainty import RunningDispersion
from kielnet.models.hybrid import HybridNet
from kielnet.quality.embedding import EmbeddingOOD
from kielnet.quality.spread import EnsembleSpread

__all__ = ["Bundle", "MemberInfo", "save_bundle", "load_bundle", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = 1


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

    def build_members(self) -> list[HybridNet]:
        """Instantiate the member networks in eval mode."""
        cfg = self.config
        nets = []
        for sd in self.members:
            net = HybridNet(cfg.model, self.preprocessor.n_pix or 0, self.preprocessor.branch_widths(),
                            len(cfg.labels))
            if cfg.model.channels_last_2d:
                net = net.to(memory_format=torch.channels_last)
            try:
                net.load_state_dict(sd)
            except RuntimeError as exc:
                raise BundleError(f"member weights do not match the bundle's architecture: {exc}") from exc
            nets.append(net.eval())
        return nets


def _versions() -> dict:
    import astropy
    import sklearn

    return {"kielnet": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "astropy": astropy.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write ``bundle`` to directory ``path`` atomically (temp dir + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        files = []
        for i, sd in enumerate(bundle.members):
            name = f"member_{i:03d}.safetensors"
            save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(tmp / name),
                      metadata={"kielnet": __version__, "member": str(i)})
            files.append(name)
        meta = {
            "format": BUNDLE_FORMAT,
            "versions": bundle.versions or _versions(),
            "config": bundle.config.model_dump(mode="json"),
            "preprocessing": bundle.preprocessor.to_dict(),
            "members": [dict(m.to_dict(), file=f) for m, f in zip(bundle.member_info, files)],
            "running_dispersion": {k: v.to_dict() for k, v in bundle.running_dispersion.items()},
            "label_ranges": {k: list(v) for k, v in bundle.label_ranges.items()},
            "feature_ranges": {k: list(v) for k, v in bundle.feature_ranges.items()},
            "training_data": bundle.training_data,
            "validation": bundle.validation,
            "quality": {},
        }
        if bundle.spread is not None:
            meta["ensemble_spread"] = bundle.spread.to_dict()
        if bundle.ood is not None:
            bundle.ood.save(tmp / "embedding_ood.safetensors")
            meta["quality"]["embedding_ood"] = "embedding_ood.safetensors"
        if bundle.tsne_reference is not None:
            from safetensors.numpy import save_file as save_np

            save_np({"spectra": np.ascontiguousarray(bundle.tsne_reference, dtype=np.float32)},
                    str(tmp / "tsne_reference.safetensors"))
            meta["quality"]["tsne_reference"] = "tsne_reference.safetensors"
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=1, allow_nan=True))
        if path.exists():
            old = path.with_name(path.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle directory written by :func:`save_bundle`."""
    path = Path(path)
    js = path / "bundle.json"
    if not js.is_file():
        raise BundleError(f"{path} is not a kielnet bundle (no bundle.json)")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{js} is not valid JSON: {exc}") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{js}: unsupported bundle format {meta.get('format')!r}")
    config = KielnetConfig.from_dict(meta["config"], source=str(js))
    pre = Preprocessor.from_dict(config, meta["preprocessing"])
    members, infos = [], []
    for m in meta["members"]:
        f = path / m["file"]
        if not f.is_file():
            raise BundleError(f"bundle {path} lacks member file {m['file']}")
        members.append(load_file(str(f)))
        infos.append(MemberInfo(**{k: v for k, v in m.items() if k != "file"}))
    ood, tsne_ref = None, None
    quality = meta.get("quality", {})
    for key in quality:
        if not (path / quality[key]).is_file():
            raise BundleError(f"bundle {path} lacks its {key} file {quality[key]}")
    if "embedding_ood" in quality:
        try:
            ood = EmbeddingOOD.load(path / quality["embedding_ood"])
        except ValueError as exc:
            raise BundleError(f"bundle {path}: {exc}") from exc
    if "tsne_reference" in quality:
        from safetensors.numpy import load_file as load_np

        tsne_ref = load_np(str(path / quality["tsne_reference"]))["spectra"]
    spread = None
    if "ensemble_spread" in meta:
        try:
            spread = EnsembleSpread.from_dict(meta["ensemble_spread"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{js}: bad ensemble_spread entry: {exc}") from exc
    return Bundle(
        config=config, preprocessor=pre, members=members, member_info=infos,
        running_dispersion={k: RunningDispersion.from_dict(v) for k, v in meta["running_dispersion"].items()},
        label_ranges={k: tuple(v) for k, v in meta["label_ranges"].items()},
        feature_ranges={k: tuple(v) for k, v in meta["feature_ranges"].items()},
        training_data=meta.get("training_data", {}), validation=meta.get("validation", {}),
        versions=meta.get("versions", {}), ood=ood, tsne_reference=tsne_ref, spread=spread,
    )
