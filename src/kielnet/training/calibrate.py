"""The fits made on a trained ensemble's *out-of-fold* training stars, and refitting
them on an existing bundle.

After the members are trained, every split's validation stars are predicted by that
split's members (:mod:`kielnet.training.out_of_fold`). On those stars only — never on
stars a benchmark tests on — :func:`calibrate` fits

* the running dispersion of each label (:mod:`kielnet.quality.uncertainty`);
* the σ model (:mod:`kielnet.quality.sigma`);
* the neighbour model (``config.quality.neighbours``, :mod:`kielnet.quality.neighbours`):
  label support, local σ factors, 95 % intervals and the ``likely_outlier`` threshold;
* the tail regimes (``config.quality.tail_regimes``, :mod:`kielnet.quality.tails`): where
  a label is withheld because too many stars predicted alike lie beyond 3 σ;

and reports the held-out validation metrics.

:func:`recalibrate` does the same for an existing bundle: given the table it was trained
on (and the same selection), it rebuilds the splits from the bundle's config and the
members' ``split`` provenance, predicts the out-of-fold stars again and refits these
parts — e.g. after changing ``uncertainty``, ``quality.neighbours`` or
``quality.tail_regimes`` in the config —
without retraining any member (``kielnet calibrate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kielnet.artifact import Bundle
from kielnet.compute import member_predictions
from kielnet.config import KielnetConfig
from kielnet.data.preprocess import Prepared, Preprocessor
from kielnet.data.splits import ensemble_heldout
from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.quality.neighbours import NeighbourAssessment, NeighbourModel, positions
from kielnet.quality.sigma import OutOfFold, SigmaModel, fit_sigma_model
from kielnet.quality.tails import TailRegimes
from kielnet.quality.uncertainty import fit_running_dispersion
from kielnet.stats import robust_sigma
from kielnet.training.out_of_fold import out_of_fold, reference_labels, save_out_of_fold
from kielnet.training.plan import TrainingPlan, TrainingRows, training_rows

__all__ = ["Calibration", "bundle_out_of_fold", "calibrate", "calibrate_ensemble", "oof_sigma", "fit_neighbours",
           "fit_tail_regimes", "recalibrate", "reported_z", "training_stars_digest"]


def training_stars_digest(table: StarTable, config: KielnetConfig) -> dict:
    """What identifies a training table for :func:`recalibrate`: its row count, ids and
    reference labels (the splits are drawn by id; the out-of-fold fits use the labels)."""
    from kielnet.data.fingerprint import table_fingerprint

    fp = table_fingerprint(table, scalars=[], labels=config.label_names, extra=False)
    return {"n_rows": fp["n_rows"], "ids": fp["ids"], "labels": fp["labels"]}


def oof_sigma(sigma_model: SigmaModel, running: dict, oof: OutOfFold) -> np.ndarray:
    """(n, n_labels) total σ of the out-of-fold stars, as ``predict`` would give it
    (before the neighbour model's local factor; without the missing-input factor when
    ``oof`` does not say which columns each star lacks)."""
    names = sigma_model.labels
    mc = oof.missing_columns
    # an out-of-fold file read back keeps only whether a star was complete: no group factor then
    gidx = sigma_model.group_index(mc) if mc is not None and mc.shape[1] == len(sigma_model.columns) else None
    out = np.empty_like(oof.pred)
    for j, name in enumerate(names):
        base = sigma_model.base(oof.spread[:, j], running[name](oof.pred[:, j]),
                                None if oof.head is None else oof.head[:, j])
        out[:, j] = sigma_model.sigma(name, base, oof.pred[:, j], oof.snr, gidx, spread=oof.spread[:, j])
    return out


def fit_neighbours(config: KielnetConfig, pre: Preprocessor, oof: OutOfFold, sigma: np.ndarray) -> NeighbourModel:
    """The neighbour model of ``config.quality.neighbours`` on the out-of-fold stars:
    positions from their predictions, label support from their reference values,
    local factors from |residual| / ``sigma`` (stars lacking an input are left out of
    those, as of the σ model's own fit); with ``quality.ensemble_spread.local``, their
    members' disagreement too (none where a split has a single member: the threshold then
    stays the one over all training stars)."""
    nc, es = config.quality.neighbours, config.quality.ensemble_spread
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(oof.pred - oof.truth) / sigma
    z[~oof.complete] = np.nan
    local = es.enabled and es.local
    if local and oof.disagreement is None:
        raise ValueError("quality.ensemble_spread.local needs the out-of-fold stars' members' disagreement; "
                         "predict them again from the members (kielnet calibrate)")
    return NeighbourModel.fit(config.label_names, pre.forward_labels(oof.pred), oof.snr, np.isfinite(oof.truth), z,
                              k_support=nc.k_support, min_support=nc.min_support, k_local=nc.k_local,
                              min_local=nc.min_local, local_calibration=nc.local_calibration, tail=nc.tail,
                              outlier_budget=nc.outlier_budget, snr_weight=nc.snr_weight,
                              target=config.uncertainty.recalibration.target, fit_to=nc.fit_to,
                              disagreement=oof.disagreement if local and np.isfinite(oof.disagreement).any()
                              else None, disagreement_quantile=es.quantile)


def reported_z(pre: Preprocessor, oof: OutOfFold, sigma: np.ndarray, neighbours: NeighbourModel | None
               ) -> tuple[np.ndarray, NeighbourAssessment | None]:
    """(n, n_labels) |residual| / the σ the catalogue reports for the out-of-fold stars:
    ``sigma`` times the neighbour model's local factor (each star assessed without itself),
    when there is one; NaN for stars lacking an input (left out, as of the σ model's and
    the neighbour model's fits). Also returns that assessment (None without neighbours)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(oof.pred - oof.truth) / sigma
    z[~oof.complete] = np.nan
    a = None
    if neighbours is not None:
        a = neighbours.assess(positions(pre.forward_labels(oof.pred), oof.snr), exclude_self=True)
        if neighbours.local_calibration:
            z = z / np.where(np.isfinite(a.factor), a.factor, 1.0)
    return z, a


def fit_tail_regimes(config: KielnetConfig, pre: Preprocessor, oof: OutOfFold, sigma: np.ndarray,
                     neighbours: NeighbourModel | None) -> TailRegimes:
    """The tail regimes of ``config.quality.tail_regimes`` on the out-of-fold stars, with
    |residual| / the σ the catalogue reports (:func:`reported_z`)."""
    tc = config.quality.tail_regimes
    z, _ = reported_z(pre, oof, sigma, neighbours)
    return TailRegimes.fit(config.label_names, oof.pred, z, bin_stars=tc.bin_stars, max_rate=tc.max_rate,
                           tail=tc.tail, label_max_rate=tc.label_max_rate)


@dataclass
class Calibration:
    running: dict
    sigma_model: SigmaModel
    neighbours: NeighbourModel | None
    validation: dict
    tail_regimes: TailRegimes | None = None


def calibrate(config: KielnetConfig, pre: Preprocessor, table: StarTable, tr: TrainingRows, oof: OutOfFold,
              nets: list | None = None) -> Calibration:
    """Running dispersion, σ model, neighbour model and validation metrics from the
    out-of-fold stars ``oof`` (module docstring). ``nets`` (the whole ensemble's networks)
    are needed only by ``uncertainty.residuals = training``."""
    ucfg = config.uncertainty
    if ucfg.residuals == "training":  # the whole ensemble on the stars it trained on (Gaia-RVS §3.4)
        p = member_predictions(nets, tr.prep.take(tr.rows), pre.inverse_labels)
        fit_pred = p.mean(axis=0)
        fit_spread = p.std(axis=0, ddof=1) if len(nets) > 1 else np.zeros_like(fit_pred)
        fit_truth = reference_labels(table, tr.prep, config)[tr.rows]
    else:
        fit_pred, fit_spread, fit_truth = oof.pred, oof.spread, oof.truth
    running = {}
    for j, name in enumerate(config.label_names):
        running[name] = fit_running_dispersion(
            fit_pred[:, j], fit_pred[:, j] - fit_truth[:, j], n_bins=ucfg.n_bins, degree=ucfg.degree,
            min_per_bin=ucfg.min_per_bin, internal=fit_spread[:, j] if ucfg.subtract_internal else None)
    sigma_model = fit_sigma_model(config, oof, running)
    sig = oof_sigma(sigma_model, running, oof)
    neighbours = fit_neighbours(config, pre, oof, sig) if config.quality.neighbours.enabled else None
    tails = fit_tail_regimes(config, pre, oof, sig, neighbours) if config.quality.tail_regimes.enabled else None
    validation = {}
    for j, name in enumerate(config.label_names):
        resid = oof.pred[:, j] - oof.truth[:, j]
        tot = sig[:, j]
        ok = np.isfinite(resid) & np.isfinite(tot)
        validation[name] = {"n": int(ok.sum()), "bias": float(np.median(resid[ok])) if ok.any() else None,
                            "robust_sigma": robust_sigma(resid[ok]),
                            "coverage_1sigma": float(np.mean(np.abs(resid[ok]) < tot[ok])) if ok.any() else None,
                            "note": "held-out validation stars, predicted by the members of their split "
                                    "(the σ model was fitted on these stars)"}
    return Calibration(running, sigma_model, neighbours, validation, tails)


def calibrate_ensemble(plan: TrainingPlan, split_nets: list[list], nets: list | None = None) -> Calibration:
    """The calibrate stage of training: every split's validation stars predicted by that
    split's networks (``split_nets[k]``; saved as ``out_of_fold.parquet`` in the plan's
    work directory), then :func:`calibrate` on them. ``nets`` (the whole ensemble) are
    needed only by ``uncertainty.residuals = training``."""
    cfg, pre, table, tr = plan.config, plan.preprocessor, plan.table, plan.rows
    oof = out_of_fold(cfg, pre, table, tr.prep, tr.rows, tr.heldout, split_nets)
    if plan.workdir is not None:
        save_out_of_fold(plan.workdir / "out_of_fold.parquet", oof, table.ids[oof.rows], cfg.label_names)
    return calibrate(cfg, pre, table, tr, oof, nets)


def bundle_out_of_fold(bundle: Bundle, table: StarTable, *, config: KielnetConfig | None = None, selection=None,
                       log=print) -> tuple[KielnetConfig, StarTable, TrainingRows, OutOfFold, list]:
    """The out-of-fold predictions of ``bundle``'s training stars, rebuilt from the
    table it was trained on: ``(config, the selected table, training rows, out-of-fold,
    networks)``.

    ``table`` must be the training table (after the same ``selection``, applied here
    first); its stars are split again as in training and each split's validation stars
    are predicted by the members recording that split. ``config``: a config whose
    ``uncertainty``, ``quality.neighbours`` and ``quality.tail_regimes`` sections and
    ``quality.ensemble_spread.local`` replace the bundle's (the rest must not differ).
    Raises :class:`~kielnet.errors.InputError` for any other table.
    """
    from kielnet.data.input_columns import resolve_columns

    table = resolve_columns(table, bundle.config)
    if selection is not None:
        from kielnet.data.selection import select_stars

        table, report = select_stars(table, selection)
        log(f"training-star selection '{selection.name}':\n{report}")
    cfg = bundle.config
    if config is not None:
        spread = cfg.quality.ensemble_spread.model_copy(update={"local": config.quality.ensemble_spread.local})
        quality = cfg.quality.model_copy(update={"neighbours": config.quality.neighbours,
                                                 "tail_regimes": config.quality.tail_regimes,
                                                 "ensemble_spread": spread})
        cfg = cfg.model_copy(update={"uncertainty": config.uncertainty, "quality": quality})
    pre = bundle.preprocessor
    table.require(scalars=cfg.scalar_columns(), labels=cfg.label_names)
    tr = training_rows(table, cfg, pre, log=log)
    stored = bundle.training_data.get("stars_digest")
    given = training_stars_digest(table, cfg) if stored is not None else None
    if stored is not None and stored != given:
        from kielnet.data.fingerprint import describe_differences

        diff = "; ".join(describe_differences(stored, given))
        raise InputError(f"this is not the table the bundle was trained on ({diff}): pass the training table "
                         "(and --select) it was trained with", source=table.source)
    n_trained = bundle.training_data.get("n_trained")
    if n_trained is not None and int(n_trained) != len(tr.rows):
        raise InputError(f"the bundle was trained on {n_trained} usable stars but this table has {len(tr.rows)}: "
                         "pass the training table (and --select) it was trained with", source=table.source)
    nets = bundle.build_members()
    split_of = [m.split for m in bundle.member_info]
    split_nets = [[net for net, k in zip(nets, split_of) if k == s] for s in range(cfg.ensemble.n_splits)]
    if any(not s for s in split_nets):
        raise InputError("the bundle's members do not cover every split of its config "
                         f"(splits {sorted(set(split_of))}, n_splits {cfg.ensemble.n_splits})", source=table.source)
    oof = out_of_fold(cfg, pre, table, tr.prep, tr.rows, tr.heldout, split_nets)
    return cfg, table, tr, oof, nets


def recalibrate(bundle: Bundle, table: StarTable, *, config: KielnetConfig | None = None, selection=None,
                log=print) -> Bundle:
    """Refit the out-of-fold parts of ``bundle`` (module docstring) and return it
    (modified in place).

    ``table`` must be the table the bundle was trained on (after the same
    ``selection``, if one was used; it is applied here first): its stars are split
    again as in training, and each split's validation stars are predicted by the
    members that record that split (:func:`bundle_out_of_fold`). ``config``: a config
    whose ``uncertainty``, ``quality.neighbours`` and ``quality.tail_regimes`` sections
    replace the bundle's (the rest must not differ).
    """
    cfg, table, tr, oof, nets = bundle_out_of_fold(bundle, table, config=config, selection=selection, log=log)
    cal = calibrate(cfg, bundle.preprocessor, table, tr, oof, nets)
    bundle.config = cfg
    bundle.running_dispersion, bundle.sigma_model = cal.running, cal.sigma_model
    bundle.neighbours, bundle.validation = cal.neighbours, cal.validation
    bundle.tail_regimes = cal.tail_regimes
    bundle._nets = None  # the config object changed: rebuild on next use
    log(f"recalibrated on {len(oof.pred)} out-of-fold training stars")
    return bundle
