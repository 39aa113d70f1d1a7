"""Self-describing model bundles.

A bundle is a directory::

    bundle/
      bundle.json                 config, preprocessing state, label transforms,
                                  training label / input ranges, running-dispersion
                                  fits, member list, checksums, versions,
                                  training-data summary
      member_000.safetensors      weights of each ensemble member (no pickle)
      member_001.safetensors
      ...
      embedding_ood.safetensors   optional: reference embeddings of the fast OOD score
      tsne_reference.safetensors  optional: training spectra for t-SNE training-likeness
      neighbours.safetensors      optional: out-of-fold reference stars of label support,
                                  local σ factors and the outlier score

The calibration of the ensemble-disagreement score (a few numbers) is stored in
``bundle.json`` under ``ensemble_spread``.

:func:`load_bundle` needs nothing but this directory: no training data, no code
execution from the files (safetensors + JSON only).

Layout of ``bundle.json`` (format 2)
------------------------------------
Every key below is written by :func:`save_bundle` and required by :func:`load_bundle`
(a missing or mistyped one is a :class:`~kielnet.errors.BundleError` naming it)::

    format              2
    versions            {package: version} of the software that wrote the bundle
    config              the KielnetConfig (JSON)
    preprocessing       Preprocessor.to_dict(): n_pix, pixel_mean, pixel_std, ...
    members             [{split, seed, best_epoch, best_val_loss, n_train, n_val,
                          file: "member_000.safetensors",
                          sha256: "<64 hex digits of the file's SHA-256>",
                          storage: "float16" (optional: tensors stored in half
                          precision where lossless to 1e-3, loaded as float32)}, ...]
    running_dispersion  {label: RunningDispersion.to_dict()}, one per config label
    label_ranges        {label: [lo, hi]}, one per config label
    feature_ranges      {feature: [lo, hi]}, one per config feature (or empty)
    training_data       summary of the training table
    validation          held-out metrics
    ensemble_spread     EnsembleSpread.to_dict(), or null
    sigma_model         SigmaModel.to_dict() (kielnet.quality.sigma: σ terms, recalibration,
                        missing-input factors); optional — bundles without it give
                        sigma = e_X (+) running dispersion
    tail_regimes        TailRegimes.to_dict() (kielnet.quality.tails: predicted-label
                        intervals where a label is withheld), or null / absent
    quality             {"embedding_ood": file, "tsne_reference": file, "neighbours": file}
                        (optional entries)
    checksums           {file: sha256} for every file named in ``quality``

Integrity
---------
:func:`load_bundle` refuses (with a :class:`~kielnet.errors.BundleError` naming the
bundle and the file or key) rather than ever returning a bundle that predicts wrongly:

* every weight file's SHA-256 is checked against ``bundle.json`` before it is parsed;
* file names must be plain names of files inside the bundle directory (no absolute
  paths, no ``..``, no path separators, no symbolic links leading outside it);
* the same member file listed twice, or two members with identical weights, would
  underestimate the model-to-model spread and are refused;
* the config, the preprocessing state and the tensors must agree: every member
  network is built from the config and the preprocessor's ``n_pix`` and branch widths
  and its weights loaded; ``pixel_mean`` / ``pixel_std`` must have ``n_pix`` finite
  values; ``label_ranges`` / ``running_dispersion`` must cover exactly the config's
  labels; the quality files must belong to these members.

Format-1 bundles (written before checksums existed) still load, with a warning that
their files cannot be verified; re-save them with :func:`save_bundle` to add the
checksums. Any other format is refused.

:meth:`Bundle.fingerprint` identifies a bundle by the content that determines its
predictions (not by file names, dates or software versions).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kielnet import __version__
from kielnet.config import KielnetConfig
from kielnet.artifact.bundle import Bundle, MemberInfo, content_meta
from kielnet.artifact.digest import digest_matches, file_sha256, state_dict_digest
from kielnet.artifact.network import member_networks
from kielnet.artifact.registry import resolve_bundle
from kielnet.data.preprocess import Preprocessor
from kielnet.errors import BundleError
from kielnet.quality.sigma import SigmaModel
from kielnet.quality.tails import TailRegimes
from kielnet.quality.uncertainty import RunningDispersion
from kielnet.quality.embedding import EmbeddingOOD
from kielnet.quality.spread import EnsembleSpread

__all__ = ["save_bundle", "load_bundle", "verify_bundle", "BUNDLE_FORMAT", "READABLE_FORMATS", "storage_tensor",
           "HALF_MAX_REL_ERROR"]

#: format written by :func:`save_bundle`
BUNDLE_FORMAT = 2
#: formats :func:`load_bundle` reads (1: without checksums, loaded with a warning)
READABLE_FORMATS = (1, 2)

_SPREAD_WARNING = "the model-to-model spread would be underestimated"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_INT, _NUMBER = "an integer", "a number"
_MEMBER_FIELDS = {"split": _INT, "seed": _INT, "best_epoch": _INT, "best_val_loss": _NUMBER,
                  "n_train": _INT, "n_val": _INT}
#: top-level keys bundle.json must hold, by format
_REQUIRED = {
    1: ("format", "config", "preprocessing", "members", "running_dispersion", "label_ranges",
        "feature_ranges"),
    2: ("format", "versions", "config", "preprocessing", "members", "running_dispersion", "label_ranges",
        "feature_ranges", "training_data", "validation", "ensemble_spread", "quality", "checksums"),
}
_QUALITY_FILES = ("embedding_ood", "tsne_reference", "neighbours")


def _versions() -> dict:
    import astropy
    import scipy
    import sklearn

    return {"kielnet": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "astropy": astropy.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


def _check_members_distinct(digests: list[str], names: list[str], where: str) -> None:
    seen: dict[str, int] = {}
    for i, d in enumerate(digests):
        if d in seen:
            raise BundleError(f"{where}: {names[i]} duplicates {names[seen[d]]} (identical weights): "
                              f"{_SPREAD_WARNING}")
        seen[d] = i


#: largest relative error (max |x − half(x)| / max |x|, per tensor) at which
#: ``save_bundle(weights_dtype="float16")`` stores a tensor in half precision
HALF_MAX_REL_ERROR = 1e-3


def storage_tensor(t: torch.Tensor, weights_dtype: str) -> torch.Tensor:
    """``t`` as stored in a bundle of ``weights_dtype``: ``float16`` halves a floating
    tensor when that loses at most :data:`HALF_MAX_REL_ERROR` of its largest value (and
    keeps it finite); anything else (integer buffers, tensors with a range half precision
    cannot hold, such as tiny batch-norm variances) is stored unchanged."""
    t = t.detach().contiguous()
    if weights_dtype == "float32" or not t.is_floating_point() or t.numel() == 0:
        return t
    h = t.to(torch.float16)
    scale = float(t.abs().max())
    if not bool(torch.isfinite(h).all()):
        return t
    err = float((h.to(t.dtype) - t).abs().max())
    return h if err <= HALF_MAX_REL_ERROR * max(scale, 1e-30) else t


def _same_safetensors(a: Path, b: Path) -> bool:
    """Whether the safetensors files ``a`` and ``b`` hold the same metadata and the same
    tensors (names, dtypes, shapes, values), whatever the order their headers list them in."""
    from safetensors import safe_open

    try:
        with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
            if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
                return False
            return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())
    except Exception:  # noqa: BLE001 - an unreadable old file is simply not the same
        return False


def _keep_unchanged_files(tmp: Path, path: Path, names: list[str]) -> None:
    """Where the bundle at ``path`` already holds a file of ``names`` with the same content
    as the one just written to ``tmp``, put the old bytes back: safetensors writes its
    metadata in no fixed order, so an unchanged member would otherwise get new bytes (and
    a new SHA-256) every time a bundle is saved again, e.g. re-shipping the same weights."""
    for name in names:
        old = path / name
        if old.is_file() and _same_safetensors(tmp / name, old):
            shutil.copyfile(old, tmp / name)


def save_bundle(bundle: Bundle, path: str | Path, *, weights_dtype: str = "float32") -> Path:
    """Write ``bundle`` to directory ``path`` atomically (temp dir + rename).

    ``bundle.json`` records the SHA-256 of every weight file written (see the module
    docstring). A :class:`BundleError` (and nothing written) for a bundle without
    members, with as many provenance entries as members, or with duplicated members.

    A weight or quality file whose content equals the one already at ``path`` keeps its
    bytes (:func:`_keep_unchanged_files`), so saving the same bundle again gives the same files.

    ``weights_dtype="float16"`` stores each member's tensors in half precision where
    :func:`storage_tensor` allows it (about half the size); :func:`load_bundle` casts
    them back to float32, so the networks always run in the precision they were trained
    in. Check the catalogue change before shipping such a bundle
    (``release/package_pretrained.py`` does).
    """
    if weights_dtype not in ("float32", "float16"):
        raise ValueError(f"weights_dtype must be 'float32' or 'float16', not {weights_dtype!r}")
    path = Path(path)
    where = f"cannot save bundle {path}"
    if not bundle.members:
        raise BundleError(f"{where}: it has no members")
    if len(bundle.member_info) != len(bundle.members):
        raise BundleError(f"{where}: {len(bundle.members)} members but {len(bundle.member_info)} "
                          "member_info entries")
    _check_members_distinct([state_dict_digest(sd) for sd in bundle.members],
                            [f"member {i}" for i in range(len(bundle.members))], where)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        entries = []
        names = [f"member_{i:03d}.safetensors" for i in range(len(bundle.members))]
        for i, (name, sd) in enumerate(zip(names, bundle.members)):
            save_file({k: storage_tensor(v, weights_dtype) for k, v in sd.items()}, str(tmp / name),
                      metadata={"kielnet": __version__, "member": str(i)})
        _keep_unchanged_files(tmp, path, names)
        for name, info in zip(names, bundle.member_info):
            entry = dict(info.to_dict(), file=name, sha256=file_sha256(tmp / name))
            if weights_dtype != "float32":
                entry["storage"] = weights_dtype
            entries.append(entry)
        content = content_meta(bundle)
        meta = {
            "format": BUNDLE_FORMAT,
            "versions": bundle.versions or _versions(),
            "config": content["config"],
            "preprocessing": content["preprocessing"],
            "members": entries,
            "running_dispersion": content["running_dispersion"],
            "label_ranges": content["label_ranges"],
            "feature_ranges": content["feature_ranges"],
            "training_data": bundle.training_data,
            "validation": bundle.validation,
            "ensemble_spread": content["ensemble_spread"],
            "sigma_model": content["sigma_model"],
            "tail_regimes": content["tail_regimes"],
            "quality": {},
            "checksums": {},
        }
        if bundle.ood is not None:
            bundle.ood.save(tmp / "embedding_ood.safetensors")
            meta["quality"]["embedding_ood"] = "embedding_ood.safetensors"
        if bundle.tsne_reference is not None:
            from safetensors.numpy import save_file as save_np

            save_np({"spectra": np.ascontiguousarray(bundle.tsne_reference, dtype=np.float32)},
                    str(tmp / "tsne_reference.safetensors"))
            meta["quality"]["tsne_reference"] = "tsne_reference.safetensors"
        if bundle.neighbours is not None:
            bundle.neighbours.save(tmp / "neighbours.safetensors")
            meta["quality"]["neighbours"] = "neighbours.safetensors"
        _keep_unchanged_files(tmp, path, list(meta["quality"].values()))
        for name in meta["quality"].values():
            meta["checksums"][name] = file_sha256(tmp / name)
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


# ----------------------------------------------------------------------------- loading
class _Reader:
    """Typed access to bundle.json with errors that name the key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"bundle {path}"

    def error(self, msg: str) -> BundleError:
        return BundleError(f"{self.where}: {msg}")

    def typed(self, value: Any, kind: str, key: str, *, nullable: bool = False) -> Any:
        if value is None and nullable:
            return None
        ok = {
            "a JSON object": isinstance(value, dict),
            "a list": isinstance(value, list),
            "a string": isinstance(value, str),
            _INT: isinstance(value, int) and not isinstance(value, bool),
            _NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool),
        }[kind]
        if not ok:
            got = "null" if value is None else type(value).__name__
            raise self.error(f"bundle.json key '{key}' must be {kind}{' or null' if nullable else ''}, not {got}")
        return value

    def get(self, d: dict, key: str, kind: str, prefix: str = "", *, nullable: bool = False) -> Any:
        name = f"{prefix}{key}"
        if key not in d:
            raise self.error(f"bundle.json lacks the key '{name}'")
        return self.typed(d[key], kind, name, nullable=nullable)

    def parse(self, key: str, fn: Callable, *args) -> Any:
        """``fn(*args)``, its KeyError / TypeError / ValueError as a BundleError naming ``key``."""
        try:
            return fn(*args)
        except BundleError:
            raise
        except KeyError as exc:
            raise self.error(f"bundle.json lacks the key '{key}.{exc.args[0] if exc.args else '?'}'") from exc
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise self.error(f"bundle.json key '{key}' is malformed: {exc}") from exc

    def file_name(self, name: Any, key: str) -> Path:
        """``path / name`` for a plain file name naming a file inside the bundle."""
        name = self.typed(name, "a string", key)
        if (not name or name in (".", "..") or any(c in name for c in "/\\:\0")
                or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()):
            raise self.error(f"bundle.json key '{key}' = {name!r} is not a plain file name inside the bundle "
                             "directory (no paths allowed)")
        f = self.path / name
        if f.is_symlink():
            real = Path(os.path.realpath(f))
            if real.parent != Path(os.path.realpath(self.path)):
                raise self.error(f"bundle.json key '{key}' = {name!r} is a symbolic link to {real}, outside the "
                                 "bundle directory")
        return f

    def digest(self, value: Any, key: str) -> str:
        value = self.typed(value, "a string", key)
        if not _HEX64.match(value):
            raise self.error(f"bundle.json key '{key}' is not a SHA-256 hex digest: {value!r}")
        return value

    def verify(self, f: Path, expected: str | None) -> None:
        if expected is None:
            return
        got = file_sha256(f)
        if got != expected:
            raise self.error(f"{f.name}: SHA-256 mismatch (file changed or corrupt): bundle.json records "
                             f"{expected[:16]}..., the file has {got[:16]}...")


def _range_dict(r: _Reader, meta: dict, key: str, expected: list[str], what: str, *,
                allow_empty: bool = False) -> dict[str, tuple[float, float]]:
    d = r.get(meta, key, "a JSON object")
    if not (allow_empty and not d) and set(d) != set(expected):
        raise r.error(_key_set_message(key, d, expected, what))
    out = {}
    for name in expected if d else []:
        v = r.typed(d[name], "a list", f"{key}.{name}")
        if len(v) != 2:
            raise r.error(f"bundle.json key '{key}.{name}' must be [lo, hi], not {v!r}")
        out[name] = tuple(r.typed(x, _NUMBER, f"{key}.{name}") for x in v)
    return out


def _key_set_message(key: str, d: dict, expected: list[str], what: str) -> str:
    missing = [k for k in expected if k not in d]
    extra = [k for k in d if k not in expected]
    parts = []
    if missing:
        parts.append("lacks " + ", ".join(f"'{key}.{k}'" for k in missing))
    if extra:
        parts.append("has " + ", ".join(f"'{key}.{k}'" for k in extra) + f" that are not {what}")
    return f"bundle.json key '{key}' must have one entry per {what[:-1] if what.endswith('s') else what} " \
           f"of the config: it " + " and ".join(parts)


def _check_preprocessing(r: _Reader, config: KielnetConfig, pre: Preprocessor) -> None:
    if config.spectrum is not None:
        n_pix = pre.n_pix
        if isinstance(n_pix, bool) or not isinstance(n_pix, int) or n_pix <= 0:
            raise r.error(f"bundle.json key 'preprocessing.n_pix' must be a positive integer for a model with "
                          f"a spectrum, not {n_pix!r}")
        for name in ("pixel_mean", "pixel_std"):
            arr = getattr(pre, name)
            if arr is None:
                if config.spectrum.standardise:
                    raise r.error(f"bundle.json key 'preprocessing.{name}' is null but config.spectrum."
                                  "standardise is true")
                continue
            if arr.ndim != 1 or len(arr) != n_pix:
                raise r.error(f"bundle.json key 'preprocessing.{name}' has {arr.size} values but "
                              f"preprocessing.n_pix is {n_pix}")
            if not np.isfinite(arr).all() or (name == "pixel_std" and not (arr > 0).all()):
                raise r.error(f"bundle.json key 'preprocessing.{name}' holds non-finite"
                              f"{' or non-positive' if name == 'pixel_std' else ''} values")
    features = [f.name for f in config.features]
    if set(pre.feature_scalers) != set(features):
        raise r.error(_key_set_message("preprocessing.feature_scalers", pre.feature_scalers, features,
                                       "features"))
    got = [(lt.name, lt.transform) for lt in pre.label_transforms]
    want = [(lab.name, lab.transform) for lab in config.labels]
    if got != want:
        raise r.error(f"bundle.json key 'preprocessing.label_transforms' describes labels {got} but the config "
                      f"has {want}")


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle directory written by :func:`save_bundle`, or a shipped
    pretrained model by name (:mod:`kielnet.artifact.registry`, e.g. ``"xp-apogee-dr17"``).

    Raises :class:`~kielnet.errors.BundleError` (naming the bundle and the file or key)
    for anything missing, corrupt or inconsistent; see the module docstring. A
    format-1 bundle (no checksums) loads with a :class:`UserWarning`.
    """
    path = Path(resolve_bundle(path))
    meta, r = _read_bundle_json(path)
    js = path / "bundle.json"
    if not isinstance(meta, dict):
        raise r.error(f"bundle.json must hold a JSON object, not {type(meta).__name__}")
    if "format" not in meta:
        raise r.error("bundle.json lacks the key 'format'")
    fmt = meta["format"]
    if isinstance(fmt, bool) or fmt not in READABLE_FORMATS:
        raise BundleError(f"{js}: unsupported bundle format {fmt!r} (this kielnet {__version__} reads "
                          f"formats {', '.join(map(str, READABLE_FORMATS))})")
    missing = [k for k in _REQUIRED[fmt] if k not in meta]
    if missing:
        raise r.error("bundle.json lacks the key" + ("s " if len(missing) > 1 else " ")
                      + ", ".join(f"'{k}'" for k in missing))
    verified = fmt >= 2
    if not verified:
        warnings.warn(f"{r.where} is format {fmt}, without checksums: its weight files cannot be verified; "
                      "re-save it (save_bundle) to add them", UserWarning, stacklevel=2)

    # ---- JSON: config and preprocessing
    try:
        config = KielnetConfig.from_dict(r.get(meta, "config", "a JSON object"), source=str(js))
    except BundleError:
        raise
    except ValueError as exc:
        raise r.error(f"bundle.json key 'config' is not a valid kielnet configuration: {exc}") from exc
    pre = r.parse("preprocessing", Preprocessor.from_dict, config, r.get(meta, "preprocessing", "a JSON object"))
    _check_preprocessing(r, config, pre)
    labels = config.label_names

    # ---- JSON: fits and ranges
    rd = r.get(meta, "running_dispersion", "a JSON object")
    if set(rd) != set(labels):
        raise r.error(_key_set_message("running_dispersion", rd, labels, "labels"))
    running = {k: r.parse(f"running_dispersion.{k}", RunningDispersion.from_dict,
                          r.typed(rd[k], "a JSON object", f"running_dispersion.{k}")) for k in labels}
    label_ranges = _range_dict(r, meta, "label_ranges", labels, "labels")
    feature_ranges = _range_dict(r, meta, "feature_ranges", [f.name for f in config.features], "features",
                                 allow_empty=True)
    spread = None
    sp = meta.get("ensemble_spread")
    if sp is not None:
        spread = r.parse("ensemble_spread", EnsembleSpread.from_dict, r.typed(sp, "a JSON object",
                                                                              "ensemble_spread"))
    sigma_model = None
    sm = meta.get("sigma_model")
    if sm is not None:
        sigma_model = r.parse("sigma_model", SigmaModel.from_dict, r.typed(sm, "a JSON object", "sigma_model"))
        if sigma_model.labels != labels:
            raise r.error(f"bundle.json key 'sigma_model.labels' is {sigma_model.labels}, but the config's labels "
                          f"are {labels}")
        if sigma_model.columns != config.scalar_columns():
            raise r.error(f"bundle.json key 'sigma_model.columns' is {sigma_model.columns}, but the config's "
                          f"scalar columns are {config.scalar_columns()}")
        if "head" in sigma_model.terms and not config.model.heteroscedastic:
            raise r.error("bundle.json key 'sigma_model.terms' uses 'head' but config.model.heteroscedastic is false")
    tail_regimes = None
    tr_meta = meta.get("tail_regimes")
    if tr_meta is not None:
        tail_regimes = r.parse("tail_regimes", TailRegimes.from_dict, r.typed(tr_meta, "a JSON object",
                                                                              "tail_regimes"))
        if tail_regimes.label_names != labels:
            raise r.error(f"bundle.json key 'tail_regimes.label_names' is {tail_regimes.label_names}, but the "
                          f"config's labels are {labels}")
    extras = {}
    for key in ("training_data", "validation", "versions"):
        extras[key] = r.typed(meta.get(key, {}), "a JSON object", key)

    # ---- JSON: members, quality files, checksums
    entries = r.get(meta, "members", "a list")
    if not entries:
        raise r.error("bundle.json key 'members' is empty: a bundle needs at least one member")
    infos, files, shas, keys = [], [], [], []
    first_use: dict[str, str] = {}
    for i, m in enumerate(entries):
        key = f"members[{i}]"
        m = r.typed(m, "a JSON object", key)
        f = r.file_name(r.get(m, "file", "a string", f"{key}."), f"{key}.file")
        if f.name in first_use:
            raise r.error(f"{key} lists {f.name} again (already {first_use[f.name]}): {_SPREAD_WARNING}")
        first_use[f.name] = key
        infos.append(MemberInfo(**{k: r.get(m, k, kind, f"{key}.") for k, kind in _MEMBER_FIELDS.items()}))
        shas.append(r.digest(r.get(m, "sha256", "a string", f"{key}."), f"{key}.sha256") if verified else None)
        files.append(f)
        keys.append(key)
    quality = r.typed(meta.get("quality", {}), "a JSON object", "quality")
    unknown = [k for k in quality if k not in _QUALITY_FILES]
    if unknown:
        raise r.error(f"bundle.json key 'quality' has unknown entries {unknown} (known: {list(_QUALITY_FILES)})")
    qfiles = {}
    for k, name in quality.items():
        f = r.file_name(name, f"quality.{k}")
        if f.name in first_use:
            raise r.error(f"bundle.json key 'quality.{k}' names {f.name}, already used by {first_use[f.name]}")
        first_use[f.name] = f"quality.{k}"
        qfiles[k] = f
    checksums: dict = {}
    if verified:
        checksums = r.typed(meta["checksums"], "a JSON object", "checksums")
        wanted = {f.name for f in qfiles.values()}
        for name in wanted:
            if name not in checksums:
                raise r.error(f"bundle.json lacks the key 'checksums.{name}'")
        for name in checksums:
            if name not in wanted:
                raise r.error(f"bundle.json key 'checksums.{name}' names a file that 'quality' does not use")
            r.digest(checksums[name], f"checksums.{name}")

    # ---- files: members
    members = []
    for f, sha, key in zip(files, shas, keys):
        if not f.is_file():
            raise r.error(f"lacks member file {f.name} ({key}.file)")
        r.verify(f, sha)
        try:
            sd = load_file(str(f))
        except Exception as exc:  # safetensors raises its own error types
            raise r.error(f"{f.name}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
        for k, t in sd.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise r.error(f"{f.name}: parameter '{k}' holds non-finite values (corrupt weights)")
        # half-precision storage (save_bundle(weights_dtype="float16")) runs in float32
        sd = {k: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for k, t in sd.items()}
        members.append(sd)
    _check_members_distinct([state_dict_digest(sd) for sd in members], [f.name for f in files], r.where)

    # ---- files: quality
    for k, f in qfiles.items():
        if not f.is_file():
            raise r.error(f"lacks its {k} file {f.name}")
        r.verify(f, checksums.get(f.name) if verified else None)
    def read_quality(key: str, loader: Callable[[Path], Any]) -> Any:
        """The quality file ``key`` read by ``loader`` (None if the bundle has none)."""
        if key not in qfiles:
            return None
        f = qfiles[key]
        try:
            return loader(f)
        except Exception as exc:
            raise r.error(f"{f.name}: not a readable {key} file ({type(exc).__name__}: {exc})") from exc

    from safetensors.numpy import load_file as load_np

    from kielnet.quality.neighbours import NeighbourModel

    ood = read_quality("embedding_ood", EmbeddingOOD.load)
    tsne_ref = read_quality("tsne_reference", lambda f: load_np(str(f))["spectra"])
    if tsne_ref is not None and (tsne_ref.ndim != 2 or (config.spectrum is not None and tsne_ref.shape[1] != pre.n_pix)):
        raise r.error(f"{qfiles['tsne_reference'].name}: reference spectra of shape {tsne_ref.shape} do not have "
                      f"preprocessing.n_pix = {pre.n_pix} pixels")
    neighbours = read_quality("neighbours", NeighbourModel.load)
    if neighbours is not None and neighbours.label_names != labels:
        raise r.error(f"{qfiles['neighbours'].name} was fitted for labels {neighbours.label_names}, the config has "
                      f"{labels}")

    bundle = Bundle(
        config=config, preprocessor=pre, members=members, member_info=infos, neighbours=neighbours,
        running_dispersion=running, label_ranges=label_ranges, feature_ranges=feature_ranges,
        training_data=extras["training_data"], validation=extras["validation"], versions=extras["versions"],
        ood=ood, tsne_reference=tsne_ref, spread=spread, sigma_model=sigma_model, tail_regimes=tail_regimes,
    )

    # ---- config against tensors
    key = bundle._state_key()
    nets = member_networks(config, pre, members, where=r.where, names=[f.name for f in files])
    bundle._nets, bundle._nets_key = nets, key
    if ood is not None:
        fname = qfiles["embedding_ood"].name
        if len(ood.digests) != len(nets):
            raise r.error(f"{fname} was fitted with {len(ood.digests)} members but the bundle has {len(nets)}")
        for i, (sd, d) in enumerate(zip(members, ood.digests)):
            if not digest_matches(sd, d):
                raise r.error(f"{fname} was fitted with other weights than {files[i].name}")
    if spread is not None:
        if list(spread.label_names) != labels:
            raise r.error(f"bundle.json key 'ensemble_spread' is calibrated for labels {spread.label_names}, "
                          f"the config has {labels}")
        if spread.n_members != len(members):
            raise r.error(f"bundle.json key 'ensemble_spread' was calibrated with {spread.n_members} members "
                          f"but the bundle has {len(members)}")
    return bundle


def _read_bundle_json(path: Path):
    """``(bundle.json as parsed JSON, a reader of its fields naming the bundle)``; a
    :class:`BundleError` when the file is absent or not JSON."""
    js = path / "bundle.json"
    if not js.is_file():
        raise BundleError(f"{path} is not a kielnet bundle (no bundle.json)")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{js} is not valid JSON: {exc}") from exc
    return meta, _Reader(path)


def verify_bundle(path: str | Path) -> dict[str, str]:
    """Check every file a bundle lists against the SHA-256 ``bundle.json`` records for it,
    without reading the weights; returns ``{file: sha256}``. A :class:`BundleError`
    naming the file for a missing or changed one, or for a format-1 bundle (which
    records no checksums). :func:`load_bundle` makes the same check and more."""
    path = Path(resolve_bundle(path))
    meta, r = _read_bundle_json(path)
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise r.error(f"only format-{BUNDLE_FORMAT} bundles record checksums to verify")
    recorded = {}
    for i, m in enumerate(r.get(meta, "members", "a list")):
        m = r.typed(m, "a JSON object", f"members[{i}]")
        f = r.file_name(r.get(m, "file", "a string", f"members[{i}]."), f"members[{i}].file")
        recorded[f.name] = r.digest(r.get(m, "sha256", "a string", f"members[{i}]."), f"members[{i}].sha256")
    for name, sha in r.typed(meta.get("checksums", {}), "a JSON object", "checksums").items():
        recorded[r.file_name(name, f"checksums.{name}").name] = r.digest(sha, f"checksums.{name}")
    for name, sha in recorded.items():
        if not (path / name).is_file():
            raise r.error(f"lacks the file {name} that bundle.json lists")
        r.verify(path / name, sha)
    return recorded
