"""The first stage of training: the plan.

What a run will do before any network trains: the usable training rows (a usable
spectrum and at least one valid label) and each split's validation side, the loss
weights, the work directory claimed for this very run, and which members are already
finished there (resume) and which are still to train. Tuning
(:mod:`kielnet.training.tuning`) and the ablation benchmark reuse it.

Stages: plan (this module) → members (:mod:`kielnet.training.members`) → calibrate
(:mod:`kielnet.training.calibrate`) → assemble (:mod:`kielnet.training.assemble`);
:func:`kielnet.training.ensemble.train_ensemble` runs them in order.

Work directory layout (format :data:`WORKDIR_FORMAT`): ``run.json`` (the run's
fingerprint), ``member_NNN.safetensors`` (finished members: weights + provenance in the
file's metadata), ``ckpt_NNN.safetensors`` (per-epoch checkpoints of running members)
and ``out_of_fold.parquet``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kielnet.artifact import MemberInfo
from kielnet.config import KielnetConfig
from kielnet.data.fingerprint import describe_differences, dict_differences, table_fingerprint
from kielnet.data.input_columns import resolve_columns
from kielnet.data.preprocess import Prepared, Preprocessor
from kielnet.data.splits import ensemble_heldout
from kielnet.data.startable import StarTable
from kielnet.data.weighting import kde_inverse_density_weights
from kielnet.errors import InputError, RunMismatchError
from kielnet.io.atomic import atomic_path, atomic_write_text
from kielnet.training.distributed import MemberJob

__all__ = ["TrainingPlan", "plan_training", "TrainingRows", "training_rows", "sample_weights", "member_seed",
           "run_fingerprint", "claim_workdir", "member_file", "save_member", "load_member", "check_training_table",
           "MIN_TRAINING_STARS", "WORKDIR_FORMAT"]


def member_seed(base: int, split: int, member: int) -> int:
    """Seed of member ``member`` of split ``split``."""
    return base * 1_000_003 + split * 1_000 + member + 1


def sample_weights(config: KielnetConfig, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-row loss weights for the training rows ``rows`` (ones elsewhere)."""
    w = np.ones(len(targets))
    wc = config.training.weighting
    if wc.kind == "kde":
        cols = [config.label_names.index(n) for n in wc.labels]
        w[rows] = kde_inverse_density_weights(targets[rows][:, cols], bandwidth=wc.bandwidth,
                                              cap=wc.cap, seed=config.ensemble.seed)
    return w


#: version of the work directory layout (run.json + member files with metadata)
WORKDIR_FORMAT = 2
#: fewest usable training stars :func:`train_ensemble` accepts
MIN_TRAINING_STARS = 20
#: below this many usable stars (or validation stars per split) training warns
WARN_TRAINING_STARS = 500
WARN_VALIDATION_STARS = 50


def _comparable_config(cfg_dict: dict) -> dict:
    """The part of a config that determines the trained members.

    Re-validated so that fields added to the schema later compare at their defaults.
    Member k*members_per_split+m depends only on (seed, split k, member m), so the
    number of splits may change between runs (e.g. to grow an ensemble); sections
    applied after the members are trained do not change the members either, nor does
    the number of CPU threads.
    """
    d = KielnetConfig.from_dict(cfg_dict).model_dump(mode="json")
    d["ensemble"].pop("n_splits")
    d["training"].pop("threads", None)
    for key in ("name", "description", "uncertainty", "inference", "reporting", "quality", "tuning",
                "provenance"):
        d.pop(key, None)
    return d


def _revalidated(stored: dict | None) -> dict | None:
    """A comparable config read from an older run.json, re-validated so that config
    fields added since then (whose defaults keep the old behaviour) compare at their
    defaults; returned unchanged if it cannot be re-validated."""
    if not isinstance(stored, dict):
        return stored
    try:
        d = json.loads(json.dumps(stored))
        d.setdefault("name", "stored")
        d.setdefault("ensemble", {}).setdefault("n_splits", 1)
        return _comparable_config(d)
    except Exception:  # noqa: BLE001 - then it is compared as stored
        return stored


def run_fingerprint(config: KielnetConfig, table: StarTable) -> dict:
    """What determines the members a work directory holds: the comparable config and
    the content of the training table (ids, spectra and errors, the scalar columns the
    features read, the labels learned)."""
    return {"format": WORKDIR_FORMAT, "config": _comparable_config(config.model_dump(mode="json")),
            "data": table_fingerprint(table, scalars=config.scalar_columns(), labels=config.label_names,
                                      extra=False)}


def claim_workdir(wd: Path, fingerprint: dict, *, what: str = "training run", revalidate=None) -> None:
    """Create ``wd`` with ``run.json`` = ``fingerprint`` (a dict with ``format``, ``config``
    and ``data``), or check that ``wd`` belongs to this very run (same format, config
    and data content), so that resuming never mixes different runs. Raises
    :class:`RunMismatchError` naming what differs. ``revalidate`` maps the stored config
    before comparing (default: training's comparable config at today's defaults). Used
    by training and by tuning."""
    revalidate = _revalidated if revalidate is None else revalidate
    stamp = wd / "run.json"
    if wd.is_dir() and any(wd.iterdir()):
        if not stamp.is_file():
            raise RunMismatchError("the work directory holds files but no run.json: it was not written by "
                                   "this version of kielnet; use --fresh to start afresh or choose another "
                                   "work directory", source=str(wd), field="workdir")
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError) as exc:
            raise RunMismatchError(f"run.json is unreadable ({exc}); use --fresh to start afresh",
                                   source=str(wd), field="workdir") from exc
        if not isinstance(old, dict) or old.get("format") != fingerprint["format"]:
            raise RunMismatchError("the work directory was written by an older kielnet (no content "
                                   "fingerprint of the data); use --fresh to start afresh",
                                   source=str(wd), field="workdir")
        diffs = [f"training data: {d}" for d in describe_differences(old.get("data", {}), fingerprint["data"])]
        diffs += [f"config: {d}" for d in dict_differences(revalidate(old.get("config")), fingerprint["config"])]
        if diffs:
            raise RunMismatchError(f"the work directory holds a different {what} (" + "; ".join(diffs)
                                   + "); use --fresh to discard its checkpoints or choose another work "
                                   "directory",
                                   source=str(wd), field="workdir")
        return
    wd.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(fingerprint, indent=1))


@dataclass
class TrainingRows:
    """The stars an ensemble trains on: the prepared table, the usable rows (a usable
    spectrum and at least one valid label) and each split's validation side
    (``heldout``, (len(rows), n_splits))."""

    prep: Prepared
    rows: np.ndarray
    heldout: np.ndarray


def training_rows(table: StarTable, config: KielnetConfig, pre: Preprocessor, log=print, *,
                  n_splits: int | None = None) -> TrainingRows:
    """Prepare ``table`` with ``pre`` and split its usable rows as
    :func:`plan_training` does (by star id, seeded by ``config.ensemble.seed``) into
    ``n_splits`` splits (default ``config.ensemble.n_splits``; tuning and the ablation
    benchmark train one member on one split)."""
    prep = pre.transform(table)
    if prep.label_out_of_range is not None and prep.label_out_of_range.any():
        bad = prep.label_out_of_range.sum(axis=0)
        log("reference labels outside their valid range (treated as missing): " +
            ", ".join(f"{n}={int(c)}" for n, c in zip(config.label_names, bad) if c))
    usable = ~prep.bad_spectrum & np.isfinite(prep.targets).any(axis=1)
    if (~usable).any():
        n_impl = int(prep.implausible.sum())
        log(f"{int((~usable).sum())} stars have an unusable spectrum or no valid label and are not trained on"
            + (f" ({n_impl} with a physically implausible spectrum)" if n_impl else ""))
    rows = np.flatnonzero(usable)
    ens = config.ensemble
    heldout = ensemble_heldout(table.ids[rows], ens.n_splits if n_splits is None else n_splits,
                               config.training.val_fraction, ens.seed)
    return TrainingRows(prep, rows, heldout)


def _check_sample_size(n_usable: int, heldout: np.ndarray, config: KielnetConfig, table: StarTable,
                       log) -> list[str]:
    """Refuse below :data:`MIN_TRAINING_STARS` usable stars or a split without training or
    validation stars; return (and log) warnings for small samples."""
    ens = config.ensemble
    if n_usable < MIN_TRAINING_STARS:
        raise InputError(f"only {n_usable} usable training stars (a spectrum and at least one valid label); "
                         f"kielnet trains on at least {MIN_TRAINING_STARS}", source=table.source)
    n_val = heldout.sum(axis=0)
    n_tr = n_usable - n_val
    for k in range(ens.n_splits):
        if n_val[k] < 1 or n_tr[k] < 2:
            raise InputError(f"split {k} has {int(n_tr[k])} training and {int(n_val[k])} validation stars; "
                             f"use fewer splits or a larger val_fraction", source=table.source,
                             field="ensemble.n_splits")
    warns = []
    if n_usable < WARN_TRAINING_STARS:
        warns.append(f"only {n_usable} usable training stars: labels, the running dispersion and the "
                     f"quality calibrations are poorly constrained (kielnet is meant for >= "
                     f"{WARN_TRAINING_STARS})")
    if n_val.min() < WARN_VALIDATION_STARS:
        warns.append(f"the smallest split has {int(n_val.min())} validation stars: early stopping and the "
                     f"held-out metrics are noisy (>= {WARN_VALIDATION_STARS} recommended)")
    for w in warns:
        log(f"WARNING: {w}")
    return warns


def check_training_table(table: StarTable, config: KielnetConfig) -> None:
    """An :class:`InputError` for an empty table, missing columns or a label without any value."""
    if len(table) == 0:
        raise InputError("training table is empty", source=table.source)
    table.require(scalars=config.scalar_columns(), labels=config.label_names)
    for name in config.label_names:
        if not np.isfinite(table.labels[name]).any():
            raise InputError(f"label '{name}' has no finite value in the training table",
                             source=table.source, field=name)


def member_file(workdir: Path, index: int) -> Path:
    """The finished-member file of member ``index`` in ``workdir``."""
    return Path(workdir) / f"member_{index:03d}.safetensors"


def save_member(path: Path, state: dict, info: MemberInfo) -> None:
    """A finished member: weights + provenance in one safetensors file, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"member_info": json.dumps(info.to_dict())})


def load_member(path: Path) -> tuple[dict[str, torch.Tensor], MemberInfo]:
    """A finished member's weights and provenance (:func:`save_member`); a
    :class:`RunMismatchError` if the file is damaged."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        info = MemberInfo(**json.loads(meta["member_info"]))
    except Exception as exc:  # noqa: BLE001 - any damage to the file is reported the same way
        raise RunMismatchError(f"finished member file is unreadable ({type(exc).__name__}: {exc}); use "
                               "--fresh to start afresh", source=str(path)) from exc
    return state, info


@dataclass
class TrainingPlan:
    """What a training run does (module docstring): the table (after any selection),
    the fitted preprocessor, the usable rows and splits, the loss weights, the work
    directory, the members already finished there and the jobs still to run."""

    table: StarTable
    config: KielnetConfig
    preprocessor: Preprocessor
    rows: TrainingRows
    weights: np.ndarray
    workdir: Path | None
    jobs: list[MemberJob]
    finished: dict[int, tuple[dict, MemberInfo]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    selection: dict | None = None

    @property
    def n_pix(self) -> int:
        return self.preprocessor.n_pix or 0

    @property
    def widths(self) -> dict[str, int]:
        return self.preprocessor.branch_widths()

    @property
    def n_members(self) -> int:
        return self.config.ensemble.n_splits * self.config.ensemble.members_per_split


def plan_training(table: StarTable, config: KielnetConfig, *, workdir: str | Path | None = None, selection=None,
                  log=print) -> TrainingPlan:
    """Plan a run of the config's deep ensemble on ``table``: resolve its labels
    and inputs (:func:`kielnet.data.input_columns.resolve_columns`), apply ``selection`` (a
    :class:`kielnet.data.selection.Selection`, its per-cut counts logged and kept), check
    the table, fit the preprocessor, split the usable rows, weight them, claim
    ``workdir`` (a :class:`RunMismatchError` if it holds another run) and read the
    members already finished there; the others become jobs (split-major order)."""
    table = resolve_columns(table, config)
    if table.meta.get("label_columns"):
        log("labels read from columns: " + ", ".join(f"{n} <- {c}" for n, c in table.meta["label_columns"].items()))
    if table.meta.get("input_columns"):
        log("inputs read from columns: " + ", ".join(f"{n} <- {c}" for n, c in table.meta["input_columns"].items()))
    selection_report = None
    if selection is not None:
        from kielnet.data.selection import select_stars

        table, report = select_stars(table, selection)
        log(f"training-star selection '{selection.name}':\n{report}")
        selection_report = {"name": selection.name, **report.to_dict(), "cuts_definition": selection.to_dict()}
    check_training_table(table, config)
    pre = Preprocessor(config).fit(table)
    tr = training_rows(table, config, pre, log=log)
    warns = _check_sample_size(len(tr.rows), tr.heldout, config, table, log)
    weights = sample_weights(config, tr.prep.targets, tr.rows)
    wd = Path(workdir) if workdir is not None else None
    if wd is not None:
        claim_workdir(wd, run_fingerprint(config, table))
    ens = config.ensemble
    n_total = ens.n_splits * ens.members_per_split
    finished: dict[int, tuple[dict, MemberInfo]] = {}
    jobs = []
    for k in range(ens.n_splits):
        tr_rows, va_rows = tr.rows[~tr.heldout[:, k]], tr.rows[tr.heldout[:, k]]
        for m in range(ens.members_per_split):
            idx = k * ens.members_per_split + m
            done = member_file(wd, idx) if wd else None
            if done is not None and done.is_file():
                finished[idx] = load_member(done)
                log(f"member {idx + 1}/{n_total}: resumed from {done}")
            else:
                jobs.append(MemberJob(idx, k, member_seed(ens.seed, k, m), tr_rows, va_rows,
                                      (wd / f"ckpt_{idx:03d}") if wd else None))
    return TrainingPlan(table=table, config=config, preprocessor=pre, rows=tr, weights=weights, workdir=wd,
                        jobs=jobs, finished=finished, warnings=warns, selection=selection_report)
