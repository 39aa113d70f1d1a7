"""The official APOGEE Net II weights (``apogeenet2/model.pt`` of hutchresearch/ApogeeNet2,
MIT; Sprague et al. 2022) in kielnet, and kielnet's APOGEE Net II networks back in the
official format.

The official package loads its weights with ``load_state_dict(torch.load(...))``: the
file is a plain state dict of its ``APOGEENet`` module, 40 tensors named

* ``conv1.weight`` … ``conv12.bias``: 12 ``Conv1d(k=3, padding=1)``, shape (out, in, 3);
* ``metadata.l1.weight`` … ``metadata.l5.bias``: the 7 → 8 → 16 → 32 → 32 → 64 metadata MLP;
* ``fc1.*`` (8512 + 64 → 512), ``fc2.*`` (512 → 512), ``fc3.*`` (512 → 3: log g, log Teff,
  [Fe/H], z-scored with the official means and standard deviations).

These map one to one, in order, onto the preset ``apogee_net_2_official`` (the same
network with the official input handling; kielnet's 2-D channels-last convolutions hold
the kernels as (out, in, 1, 3)).

**Safety.** :func:`read_official_state` opens the file with
``torch.load(weights_only=True)``, which unpickles nothing but tensors and plain
containers — an object whose ``__reduce__`` would run code is refused before it runs —
and then accepts only a mapping of exactly the 40 expected names to floating-point,
finite tensors of exactly the expected shapes. Anything else is refused with an error
naming the file and what is wrong, before any network is built.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from kielnet.artifact import Bundle, MemberInfo, build_network, file_sha256
from kielnet.config import KielnetConfig, load_config
from kielnet.data.preprocess import Preprocessor
from kielnet.errors import InputError
from kielnet.models.hybrid import HybridNet
from kielnet.quality.sigma import SigmaModel
from kielnet.quality.uncertainty import RunningDispersion

__all__ = ["PRESET", "N_PIX", "official_shapes", "read_official_state", "to_kielnet_state", "to_official_state",
           "import_apogeenet2", "export_apogeenet2", "model_card", "ASTRA_INFLATION", "SOURCE"]

PRESET = "apogee_net_2_official"
N_PIX = 8575
N_META = 7
#: Astra's documented inflation of the APOGEE Net II realisation σ: σ → a σ + b
ASTRA_INFLATION = {"teff": (1.25, 10.0), "logg": (1.25, 0.01), "fe_h": (1.0, 0.01)}
SOURCE = {"repository": "github.com/hutchresearch/ApogeeNet2", "package": "apogeenet2 (PyPI)",
          "file": "apogeenet2/model.pt", "licence": "MIT (c) 2021 hutchresearch",
          "citation": "Sprague, D., Culhane, C., Kounkel, M., et al. 2022, AJ 163, 152 (APOGEE Net II)"}
#: the paper's training label ranges: Teff from ~3000 K to 50,000 K (Sprague et al. 2022, §1 and §4);
#: log g and [Fe/H] are not stated: the training set's mean ± 3 standard deviations (its Table 2)
PAPER_LABEL_RANGES = {"teff": (3000.0, 50000.0),
                      "logg": (2.925783395767212 - 3 * 1.1890668869018555, 2.925783395767212 + 3 * 1.1890668869018555),
                      "fe_h": (-0.13088105618953705 - 3 * 0.25668784976005554,
                               -0.13088105618953705 + 3 * 0.25668784976005554)}

_CONV = [f"conv{i}" for i in range(1, 13)]
_META = [f"metadata.l{i}" for i in range(1, 6)]
_HEAD = ["fc1", "fc2", "fc3"]


def _config() -> KielnetConfig:
    return load_config(PRESET)


def _network(cfg: KielnetConfig) -> HybridNet:
    return build_network(cfg, N_PIX, {"metadata": N_META})


def _pairs(net: HybridNet) -> list[tuple[str, str, bool]]:
    """(official prefix, kielnet prefix, is_conv) for every layer, in order."""
    names = {id(m): n for n, m in net.named_modules()}
    convs = [m for m in net.spectrum.conv if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    meta = [m for m in net.branches["metadata"].net if isinstance(m, nn.Linear)]
    head = [m for m in net.head if isinstance(m, nn.Linear)]
    if (len(convs), len(meta), len(head)) != (12, 5, 3):
        raise ValueError("the preset's network is not APOGEE Net II's (12 convolutions, 5 + 3 linear layers)")
    return ([(o, names[id(m)], True) for o, m in zip(_CONV, convs)]
            + [(o, names[id(m)], False) for o, m in zip(_META + _HEAD, meta + head)])


def official_shapes() -> dict[str, tuple[int, ...]]:
    """The 40 tensor names of the official state dict and their shapes."""
    net = _network(_config())
    sd = net.state_dict()
    out = {}
    for off, kn, conv in _pairs(net):
        for p in ("weight", "bias"):
            shape = tuple(sd[f"{kn}.{p}"].shape)
            if conv and p == "weight" and len(shape) == 4:  # (out, in, 1, 3) -> (out, in, 3)
                shape = (shape[0], shape[1], shape[3])
            out[f"{off}.{p}"] = shape
    return out


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official APOGEE Net II ``model.pt`` safely (module docstring); a
    :class:`~kielnet.errors.InputError` naming the file and the problem otherwise."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise InputError("no such file", source=src)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError("refused: the file holds pickled objects other than tensors (weights_only loading "
                         f"stopped before running them: {str(exc).splitlines()[0]}); an official model.pt is a "
                         "plain state dict", source=src) from exc
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise InputError(f"not a readable PyTorch weight file ({type(exc).__name__}: {exc})", source=src) from exc
    if not isinstance(obj, Mapping):
        raise InputError(f"refused: holds a {type(obj).__name__}, not a state dict (a mapping of tensor names to "
                         "tensors)", source=src)
    expected = official_shapes()
    missing = [k for k in expected if k not in obj]
    extra = [str(k) for k in obj if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
        raise InputError("refused: not the APOGEE Net II state dict (" + "; ".join(parts) + ")", source=src)
    out = {}
    for k, shape in expected.items():
        t = obj[k]
        if not isinstance(t, torch.Tensor):
            raise InputError(f"refused: '{k}' is a {type(t).__name__}, not a tensor", source=src, field=k)
        if tuple(t.shape) != shape:
            raise InputError(f"refused: '{k}' has shape {tuple(t.shape)}, APOGEE Net II's is {shape}",
                             source=src, field=k)
        if not t.is_floating_point():
            raise InputError(f"refused: '{k}' is {t.dtype}, not floating point", source=src, field=k)
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"refused: '{k}' holds non-finite values", source=src, field=k)
        out[k] = t.detach().to(torch.float32).clone()
    return out


def to_kielnet_state(official: Mapping[str, torch.Tensor], net: HybridNet) -> dict[str, torch.Tensor]:
    """The official state dict as ``net``'s (the ``apogee_net_2_official`` network)."""
    target = net.state_dict()
    out = {}
    for off, kn, _ in _pairs(net):
        for p in ("weight", "bias"):
            t = official[f"{off}.{p}"]
            out[f"{kn}.{p}"] = t.reshape(target[f"{kn}.{p}"].shape).contiguous()
    return out


def to_official_state(state: Mapping[str, torch.Tensor], net: HybridNet) -> dict[str, torch.Tensor]:
    """A kielnet member's state dict (``net``'s layout) in the official names and shapes."""
    shapes = official_shapes()
    out = {}
    for off, kn, _ in _pairs(net):
        for p in ("weight", "bias"):
            out[f"{off}.{p}"] = state[f"{kn}.{p}"].detach().to(torch.float32).reshape(shapes[f"{off}.{p}"]) \
                .contiguous().clone()
    return out


def import_apogeenet2(path: str | Path, *, sigma: str = "realisations") -> Bundle:
    """A verified kielnet bundle of the official weights in ``path``.

    ``sigma``: ``"realisations"`` — σ is the scatter of the paper's 20 noise realisations
    of the flux errors (§3.2.3; ``e_X`` = ``sigma_X``); ``"astra"`` — that σ with Astra's
    documented inflation (:data:`ASTRA_INFLATION`). The bundle has no out-of-fold
    calibration (no training data come with the weights): ``training_data`` says so.
    """
    if sigma not in ("realisations", "astra"):
        raise ValueError(f"sigma must be 'realisations' or 'astra', not {sigma!r}")
    official = read_official_state(path)
    base = _config()
    cfg = base.with_overrides(
        name="apogee_net_2_official",
        description=base.description + " Imported from the official APOGEE Net II weights.",
        uncertainty={"terms": ["spread"], "recalibration": {"kind": "none"}, "missing_inputs": "flag",
                     "inflation": {k: list(v) for k, v in ASTRA_INFLATION.items()} if sigma == "astra" else {}})
    net = _network(cfg)
    state = to_kielnet_state(official, net)
    pre = Preprocessor.fixed(cfg, N_PIX)
    names = cfg.label_names
    zero = {n: RunningDispersion(coeffs=[0.0], x_range=(0.0, 1.0), floor=0.0, bins=[]) for n in names}
    sm = SigmaModel(terms=["spread"], labels=names, recalibration=None, missing={}, groups=cfg.groups(),
                    columns=cfg.scalar_columns(), rule="flag",
                    inflation=dict(ASTRA_INFLATION) if sigma == "astra" else {})
    sha = file_sha256(path)
    training = {"source": "imported", "imported_from": {**SOURCE, "sha256": sha, "path": Path(path).name},
                "n_trained": None,
                "lacks": "no training data come with the weights: no out-of-fold calibration of sigma, no running "
                         "dispersion, no input ranges (input_outside_training is never set), no training spectra "
                         "for the plausibility tests (only the absolute ones run); label ranges are the paper's",
                "sigma": sigma}
    return Bundle(config=cfg, preprocessor=pre, members=[state],
                  member_info=[MemberInfo(split=0, seed=0, best_epoch=0, best_val_loss=float("nan"), n_train=0,
                                          n_val=0)],
                  running_dispersion=zero, label_ranges={n: PAPER_LABEL_RANGES[n] for n in names},
                  feature_ranges={}, training_data=training, validation={}, sigma_model=sm)


def _fold_scalings(state: dict[str, torch.Tensor], bundle: Bundle) -> dict[str, torch.Tensor]:
    """Fold the difference between the bundle's input / label scalings and the official
    ones into the first metadata layer and ``fc3`` (both affine, so exactly), so that the
    official pipeline's inputs and de-normalisation give the bundle's labels."""
    official = Preprocessor.fixed(_config(), N_PIX)
    pre = bundle.preprocessor
    cfg = bundle.config
    feats = [f.name for f in cfg.features]
    if feats != [f.name for f in official.config.features] or pre.branch_widths() != {"metadata": N_META}:
        raise ValueError(f"the bundle's metadata inputs {feats} (branch widths {pre.branch_widths()}) are not the "
                         "official 7 [parallax, g, bp, rp, j, h, k] without missing indicators")
    spec = cfg.spectrum
    if spec is None or spec.normalise != "none" or spec.log or spec.standardise:
        raise ValueError("the official pipeline feeds the raw apStar flux: a bundle that normalises, logs or "
                         "standardises its spectra cannot be exported")
    out = dict(state)
    mu_k = torch.tensor([pre.feature_scalers[f].centre for f in feats], dtype=torch.float64)
    sd_k = torch.tensor([pre.feature_scalers[f].scale for f in feats], dtype=torch.float64)
    mu_o = torch.tensor([official.feature_scalers[f].centre for f in feats], dtype=torch.float64)
    sd_o = torch.tensor([official.feature_scalers[f].scale for f in feats], dtype=torch.float64)
    w, b = out["metadata.l1.weight"].double(), out["metadata.l1.bias"].double()
    out["metadata.l1.weight"] = (w * (sd_o / sd_k)[None, :]).float()
    out["metadata.l1.bias"] = (b + w @ ((mu_o - mu_k) / sd_k)).float()
    for lt, lo in zip(pre.label_transforms, official.label_transforms):
        if lt.transform != lo.transform:
            raise ValueError(f"label {lt.name}: transform {lt.transform!r}, the official one is {lo.transform!r}")
    ratio = torch.tensor([lt.scaler.scale / lo.scaler.scale for lt, lo in
                          zip(pre.label_transforms, official.label_transforms)], dtype=torch.float64)
    shift = torch.tensor([(lt.scaler.centre - lo.scaler.centre) / lo.scaler.scale for lt, lo in
                          zip(pre.label_transforms, official.label_transforms)], dtype=torch.float64)
    out["fc3.weight"] = (out["fc3.weight"].double() * ratio[:, None]).float()
    out["fc3.bias"] = (out["fc3.bias"].double() * ratio + shift).float()
    return out


def export_apogeenet2(bundle: Bundle, path: str | Path, *, member: int = 0) -> Path:
    """Write member ``member`` of an ``apogee_net_2`` / ``apogee_net_2_official`` bundle as an
    official-format state dict (``torch.save``; the official pipeline loads it with
    ``load_state_dict(torch.load(path))``). The bundle's metadata and label scalings are
    folded into the first metadata layer and ``fc3`` so that the official input handling
    and de-normalisation give the bundle's labels (missing inputs aside: the official
    pipeline writes sentinel values); spectra must be fed raw, as the official pipeline
    does. Written atomically."""
    cfg = bundle.config
    order = [lab.name for lab in cfg.labels]
    if order != ["logg", "teff", "fe_h"] or bundle.preprocessor.n_pix != N_PIX:
        raise ValueError(f"only an APOGEE Net II bundle (labels logg, teff, fe_h in the official output order; "
                         f"8575-pixel spectra) can be exported; this one has {order}, {bundle.preprocessor.n_pix} px")
    net = bundle.build_members()[member]
    state = _fold_scalings(to_official_state(bundle.members[member], net), bundle)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def model_card(bundle: Bundle) -> str:
    """MODEL_CARD.md text of an imported bundle: provenance, inputs and labels, σ, ranges,
    and what the bundle lacks."""
    td = bundle.training_data
    src = td.get("imported_from", {})
    sm = bundle.sigma_model
    lines = ["# APOGEE Net II (official weights, imported)", "",
             "## Provenance",
             f"- Source: {src.get('repository')} ({src.get('package')}), file `{src.get('file')}` "
             f"(imported from `{src.get('path')}`, SHA-256 {src.get('sha256')}).",
             f"- Licence: {src.get('licence')}. Cite: {src.get('citation')}.",
             "- Imported with `kielnet import-weights apogeenet2`: read with torch.load(weights_only=True), exactly the "
             "official 40 tensors accepted, mapped one to one onto the preset apogee_net_2_official.", "",
             "## Inputs and labels",
             "- apStar flux (8575 px, HDU 1 row 0, raw, NaN -> 0 as the official code) + Gaia parallax [mas], G, BP, RP "
             "and 2MASS J, H, K [mag] with the official sentinels and scaling.",
             "- logg [dex], teff [K] (log Teff in the network), fe_h [dex]; fe_h is not reported above 6500 K (§3.1).", "",
             "## Uncertainties", sm.describe() if sm is not None else "e_X",
             "(e_X includes the scatter of the 20 noise realisations of the flux errors, §3.2.3.)", "",
             "## Label ranges (flags outside_training_*)",
             *[f"- {k}: {lo:.4g} .. {hi:.4g}" for k, (lo, hi) in bundle.label_ranges.items()],
             "Teff from the paper (~3000-50,000 K); log g and [Fe/H]: the training set's mean +- 3 std (Table 2).", "",
             "## What this bundle lacks", f"- {td.get('lacks')}.", ""]
    return "\n".join(lines)
