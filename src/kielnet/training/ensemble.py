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
from safetensors.torch import load_file, save_file

from kielnet.config import KielnetConfig
from kielnet.data.preprocess import Preprocessor
from kielnet.data.splits import ensemble_heldout
from kielnet.data.startable import StarTable
from kielnet.data.weighting import kde_inverse_density_weights
from kielnet.errors import InputError
from kielnet.inference.bundle import Bundle, MemberInfo
from kielnet.inference.predict import member_predictions
from kielnet.inference.uncertainty import fit_running_dispersion, robust_sigma
from kielnet.training.quality import attach_quality
from kielnet.training.trainer import build_model, train_member

__all__ = ["train_ensemble", "sample_weights", "member_seed"]


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


def _claim_workdir(wd: Path, config: KielnetConfig, table: StarTable) -> None:
    """Create ``wd`` or check that it belongs to this very run (same config and data),
    so that resuming never mixes members of different runs."""
    import hashlib

    def comparable(cfg_dict: dict) -> dict:
        # re-validate so that fields added to the schema later compare at their defaults;
        # member k*members_per_split+m depends only on (seed, split k, member m), so the
        # number of splits may change between runs (e.g. to grow an ensemble); sections
        # applied after the members are trained do not change the members either, nor
        # does the number of CPU threads
        d = KielnetConfig.from_dict(cfg_dict).model_dump(mode="json")
        d["ensemble"].pop("n_splits")
        d["training"].pop("threads", None)
        for key in ("name", "description", "uncertainty", "inference", "reporting", "quality"):
            d.pop(key, None)
        return d

    fingerprint = {
        "config": config.model_dump(mode="json"),
        "data": {"n_rows": len(table),
                 "ids_sha1": hashlib.sha1("\n".join(table.ids.tolist()).encode()).hexdigest()},
    }
    wd.mkdir(parents=True, exist_ok=True)
    stamp = wd / "run.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        same = (old.get("data") == fingerprint["data"]
                and comparable(old["config"]) == comparable(fingerprint["config"]))
        if not same:
            raise InputError("work directory holds a run with a different configuration or training "
                             "data; choose another work directory or delete it to start afresh",
                             source=str(wd), field="workdir")
    else:
        stamp.write_text(json.dumps(fingerprint, indent=1))


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
                   progress: bool = True, log=print) -> Bundle:
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
    """
    t0 = time.time()
    _check_training_table(table, config)
    pre = Preprocessor(config).fit(table)
    prep = pre.transform(table)
    if prep.label_out_of_range is not None and prep.label_out_of_range.any():
        bad = prep.label_out_of_range.sum(axis=0)
        log("reference labels outside their valid range (treated as missing): " +
            ", ".join(f"{n}={int(c)}" for n, c in zip(config.label_names, bad) if c))
    usable = ~prep.bad_spectrum & np.isfinite(prep.targets).any(axis=1)
    if (~usable).any():
        log(f"{int((~usable).sum())} stars have an unusable spectrum or no valid label and are not trained on")
    rows = np.flatnonzero(usable)
    weights = sample_weights(config, prep.targets, rows)
    ens = config.ensemble
    wd = Path(workdir) if workdir is not None else None
    if wd is not None:
        _claim_workdir(wd, config, table)
    members, infos = [], []
    oof_sum = np.zeros((len(table), len(config.labels)))
    oof_n = np.zeros(len(table))
    oof_spread_sum = np.zeros((len(table), len(config.labels)))
    n_pix, widths = pre.n_pix or 0, pre.branch_widths()
    n_total = ens.n_splits * ens.members_per_split
    heldout = ensemble_heldout(table.ids[rows], ens.n_splits, config.training.val_fraction, ens.seed)
    for k in range(ens.n_splits):
        tr, va = rows[~heldout[:, k]], rows[heldout[:, k]]
        split_states = []
        for m in range(ens.members_per_split):
            seed = member_seed(ens.seed, k, m)
            idx = k * ens.members_per_split + m
            done = wd / f"member_{idx:03d}.safetensors" if wd else None
            if done is not None and done.is_file():
                state = load_file(str(done))
                info = MemberInfo(**json.loads(done.with_suffix(".json").read_text()))
                log(f"member {idx + 1}/{n_total}: resumed from {done}")
            else:
                res = train_member(config, prep, tr, va, weights, n_pix=n_pix, branch_widths=widths,
                                   seed=seed, checkpoint=(wd / f"ckpt_{idx:03d}") if wd else None,
                                   progress=progress)
                state = res.state_dict
                info = MemberInfo(split=k, seed=seed, best_epoch=res.best_epoch,
                                  best_val_loss=float(res.best_val_loss), n_train=len(tr), n_val=len(va))
                log(f"member {idx + 1}/{n_total}: split {k}, best epoch {res.best_epoch}, "
                    f"val loss {res.best_val_loss:.4f} ({time.time() - t0:.0f} s)")
                if done is not None:
                    save_file({kk: v.contiguous() for kk, v in state.items()}, str(done))
                    done.with_suffix(".json").write_text(json.dumps(info.to_dict()))
            members.append(state)
            infos.append(info)
            split_states.append(state)
        sub = prep.take(va)
        p = member_predictions(_nets(config, split_states, n_pix, widths), sub, pre.inverse_labels)
        oof_sum[va] += p.mean(axis=0)
        oof_spread_sum[va] += p.std(axis=0, ddof=1) if len(split_states) > 1 else 0.0
        oof_n[va] += 1
    held = oof_n > 0
    oof = np.full_like(oof_sum, np.nan)
    oof[held] = oof_sum[held] / oof_n[held, None]
    oof_spread = np.full_like(oof_sum, np.nan)
    oof_spread[held] = oof_spread_sum[held] / oof_n[held, None]

    running, validation = {}, {}
    ucfg = config.uncertainty
    if ucfg.residuals == "training":  # the whole ensemble on the stars it trained on (Gaia-RVS §3.4)
        p = member_predictions(_nets(config, members, n_pix, widths), prep.take(rows), pre.inverse_labels)
        fit_pred = np.full_like(oof, np.nan)
        fit_spread = np.full_like(oof, np.nan)
        fit_pred[rows] = p.mean(axis=0)
        fit_spread[rows] = p.std(axis=0, ddof=1) if len(members) > 1 else 0.0
    else:
        fit_pred, fit_spread = oof, oof_spread
    for j, name in enumerate(config.label_names):
        truth = np.where(prep.label_out_of_range[:, j], np.nan, table.labels[name])
        running[name] = fit_running_dispersion(
            fit_pred[:, j], fit_pred[:, j] - truth, n_bins=ucfg.n_bins, degree=ucfg.degree,
            min_per_bin=ucfg.min_per_bin, internal=fit_spread[:, j] if ucfg.subtract_internal else None)
        resid = oof[:, j] - truth
        ok = np.isfinite(resid)
        tot = np.hypot(oof_spread[:, j], running[name](oof[:, j]))
        validation[name] = {"n": int(ok.sum()), "bias": float(np.median(resid[ok])) if ok.any() else None,
                            "robust_sigma": robust_sigma(resid[ok]),
                            "coverage_1sigma": float(np.mean(np.abs(resid[ok]) < tot[ok])) if ok.any() else None,
                            "note": "held-out validation stars, predicted by the members of their split"}
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
        "n_pix": n_pix, "train_seconds": round(time.time() - t0, 1),
        "label_counts": {n: int(np.isfinite(prep.targets[rows, j]).sum()) for j, n in enumerate(config.label_names)},
    }
    bundle = Bundle(config=config, preprocessor=pre, members=members, member_info=infos,
                    running_dispersion=running, label_ranges=label_ranges, feature_ranges=feature_ranges,
                    training_data=training_data, validation=validation)
    return attach_quality(bundle, prep.take(rows), heldout=heldout, log=log)

