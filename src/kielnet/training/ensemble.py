"""Deep-ensemble training (Gaia-RVS hybrid CNN §3.2) and uncertainty calibration (§3.4).

``n_splits`` random train/validation splits *by star id* × ``members_per_split``
differently seeded networks. After training, every split's members predict that
split's validation stars; the pooled held-out residuals give

* the running dispersion of each label (robust σ in bins of the predicted label,
  polynomial fit), used for the total σ of new stars — unless
  ``uncertainty.residuals = training``, the paper's choice, which fits the whole
  ensemble's residuals on its training stars instead;
* held-out metrics and 1σ coverage, stored in the bundle.

A work directory makes the run resumable: finished members are kept as safetensors
files and each running member checkpoints every epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import save_file

from kielnet.config import KielnetConfig
from kielnet.data.preprocess import Preprocessor
from kielnet.data.fingerprint import describe_differences, dict_differences, table_fingerprint
from kielnet.data.label_columns import resolve_labels
from kielnet.data.startable import StarTable
from kielnet.data.weighting import kde_inverse_density_weights
from kielnet.errors import InputError, RunMismatchError
from kielnet.io.atomic import atomic_path, atomic_write_text
from kielnet.compute import Bundle, MemberInfo
from kielnet.training.calibrate import calibrate, training_rows, training_stars_digest
from kielnet.training.out_of_fold import out_of_fold, save_out_of_fold
from kielnet.training.distributed import MemberJob, train_members_on_cluster
from kielnet.training.quality import attach_quality
from kielnet.training.trainer import build_model, train_member

__all__ = ["train_ensemble", "sample_weights", "member_seed", "run_fingerprint", "MIN_TRAINING_STARS"]


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


def _save_member(path: Path, state: dict, info: MemberInfo) -> None:
    """A finished member: weights + provenance in one safetensors file, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                  metadata={"member_info": json.dumps(info.to_dict())})


def _load_member(path: Path) -> tuple[dict, MemberInfo]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        info = MemberInfo(**json.loads(meta["member_info"]))
    except Exception as exc:  # noqa: BLE001 - any damage to the file is reported the same way
        raise RunMismatchError(f"finished member file is unreadable ({type(exc).__name__}: {exc}); use "
                               "--fresh to start afresh", source=str(path)) from exc
    return state, info


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


def _check_training_table(table: StarTable, config: KielnetConfig) -> None:
    if len(table) == 0:
        raise InputError("training table is empty", source=table.source)
    table.require(scalars=config.scalar_columns(), labels=config.label_names)
    for name in config.label_names:
        if not np.isfinite(table.labels[name]).any():
            raise InputError(f"label '{name}' has no finite value in the training table",
                             source=table.source, field=name)


def _nets(config: KielnetConfig, states: list[dict], n_pix: int, widths: dict[str, int]) -> list:
    """Eval-mode networks with the weights ``states``."""
    nets = []
    for st in states:
        net = build_model(config, n_pix, widths, 0)
        net.load_state_dict(st)
        nets.append(net.eval())
    return nets


def train_ensemble(table: StarTable, config: KielnetConfig, *, workdir: str | Path | None = None,
                   progress: bool = True, log=print, cluster=None, selection=None) -> Bundle:
    """Train the config's deep ensemble on ``table`` and return a bundle.

    Parameters
    ----------
    table
        Training sample with spectra, the scalar columns the config's features need,
        and reference labels (NaN = unknown; such labels are masked in the loss).
    config
        Declarative model description (see :mod:`kielnet.config`).
    workdir
        Directory for checkpoints; rerunning with the same directory resumes.
    progress
        Show tqdm progress bars.
    log
        Callable receiving one-line progress messages (``print`` by default).
    cluster
        Train the members as Dask tasks (``"local:N"``, ``"tcp://HOST:PORT"`` or a
        ``distributed.Client``; :mod:`kielnet.training.distributed`); same members as
        serial training for the same seeds and thread count.
    selection
        A :class:`kielnet.data.selection.Selection` of training stars (cuts on the
        scalar columns, labels, ``<label>_err`` and pass-through columns), applied first;
        its per-cut counts are logged and kept in the bundle (``training_data.selection``).
    """
    t0 = time.time()
    table = resolve_labels(table, config.label_vocabulary)
    if table.meta.get("label_columns"):
        log("labels read from columns: " + ", ".join(f"{n} <- {c}" for n, c in table.meta["label_columns"].items()))
    selection_report = None
    if selection is not None:
        from kielnet.data.selection import select_stars

        table, report = select_stars(table, selection)
        log(f"training-star selection '{selection.name}':\n{report}")
        selection_report = {"name": selection.name, **report.to_dict(), "cuts_definition": selection.to_dict()}
    if cluster is not None:
        from kielnet.cluster import check_cluster

        check_cluster(cluster)
    _check_training_table(table, config)
    pre = Preprocessor(config).fit(table)
    plan = training_rows(table, config, pre, log=log)
    prep, rows, heldout = plan.prep, plan.rows, plan.heldout
    ens = config.ensemble
    warnings_ = _check_sample_size(len(rows), heldout, config, table, log)
    weights = sample_weights(config, prep.targets, rows)
    wd = Path(workdir) if workdir is not None else None
    if wd is not None:
        claim_workdir(wd, run_fingerprint(config, table))
    members, infos = [], []
    n_pix, widths = pre.n_pix or 0, pre.branch_widths()
    n_total = ens.n_splits * ens.members_per_split
    states: dict[int, dict] = {}
    infos_by: dict[int, MemberInfo] = {}
    jobs = []
    for k in range(ens.n_splits):
        tr, va = rows[~heldout[:, k]], rows[heldout[:, k]]
        for m in range(ens.members_per_split):
            idx = k * ens.members_per_split + m
            done = wd / f"member_{idx:03d}.safetensors" if wd else None
            if done is not None and done.is_file():
                states[idx], infos_by[idx] = _load_member(done)
                log(f"member {idx + 1}/{n_total}: resumed from {done}")
            else:
                jobs.append(MemberJob(idx, k, member_seed(ens.seed, k, m), tr, va,
                                      (wd / f"ckpt_{idx:03d}") if wd else None))

    def finished(job: MemberJob, res) -> None:
        info = MemberInfo(split=job.split, seed=job.seed, best_epoch=res.best_epoch,
                          best_val_loss=float(res.best_val_loss), n_train=len(job.train_rows),
                          n_val=len(job.val_rows))
        states[job.index], infos_by[job.index] = res.state_dict, info
        log(f"member {job.index + 1}/{n_total}: split {job.split}, best epoch {res.best_epoch}, "
            f"val loss {res.best_val_loss:.4f} ({time.time() - t0:.0f} s)")
        if wd is not None:
            _save_member(wd / f"member_{job.index:03d}.safetensors", res.state_dict, info)

    if cluster is not None and jobs:
        log(f"training {len(jobs)} members as Dask tasks on {cluster}")
        train_members_on_cluster(cluster, jobs, config, prep, weights, n_pix=n_pix, widths=widths,
                                 on_done=finished, preprocessor=pre)
    else:
        for job in jobs:
            finished(job, train_member(config, prep, job.train_rows, job.val_rows, weights, n_pix=n_pix,
                                       branch_widths=widths, seed=job.seed, checkpoint=job.checkpoint,
                                       progress=progress, preprocessor=pre))
    split_nets = []
    for k in range(ens.n_splits):
        split_states = []
        for m in range(ens.members_per_split):
            idx = k * ens.members_per_split + m
            members.append(states[idx])
            infos.append(infos_by[idx])
            split_states.append(states[idx])
        split_nets.append(_nets(config, split_states, n_pix, widths))
    oof = out_of_fold(config, pre, table, prep, rows, heldout, split_nets)
    if wd is not None:
        save_out_of_fold(wd / "out_of_fold.parquet", oof, table.ids[oof.rows], config.label_names)

    cal = calibrate(config, pre, table, plan, oof, _nets(config, members, n_pix, widths)
                    if config.uncertainty.residuals == "training" else None)
    running, sigma_model, validation = cal.running, cal.sigma_model, cal.validation
    label_ranges = {}
    for j, name in enumerate(config.label_names):
        v = table.labels[name][rows]
        v = v[np.isfinite(v) & ~prep.label_out_of_range[rows, j]]
        label_ranges[name] = (float(v.min()), float(v.max()))
    raw = pre.raw_features(table)[rows]
    feature_ranges = {f.name: (float(np.nanmin(raw[:, i])), float(np.nanmax(raw[:, i])))
                      for i, f in enumerate(config.features)}
    training_data = {
        "source": table.source, "n_rows": int(len(table)), "n_unique_ids": int(len(np.unique(table.ids))),
        "n_trained": int(len(rows)), "missing": table.missing_report(),
        "stars_digest": training_stars_digest(table, config),
        "n_pix": n_pix, "train_seconds": round(time.time() - t0, 1),
        "label_counts": {n: int(np.isfinite(prep.targets[rows, j]).sum()) for j, n in enumerate(config.label_names)},
        "n_implausible_spectra": int(prep.implausible.sum()),
        "warnings": warnings_,
    }
    if selection_report is not None:
        training_data["selection"] = selection_report
    bundle = Bundle(config=config, preprocessor=pre, members=members, member_info=infos,
                    running_dispersion=running, label_ranges=label_ranges, feature_ranges=feature_ranges,
                    training_data=training_data, validation=validation, sigma_model=sigma_model,
                    neighbours=cal.neighbours)
    return attach_quality(bundle, prep.take(rows), heldout=heldout, log=log)

