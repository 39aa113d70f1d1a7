"""Issue 4 item 9: the Gaia-RVS hybrid preset's machinery validated on the real XP library.

No labelled RVS spectra exist here, so the preset runs on the APOGEE DR17 x Gaia XP
library with its RVS branch reading the XP sampled spectrum (configuration
``benchmarks/configs/rvs_validation_xp.yaml``, which documents every change from the
preset) and the foundation's fixed split (test = ``crc32(apogee_id) % 5 == 0``).

(a) **ensemble**: the 28-member (7 splits x 4) ensemble's robust sigma, bias and 1-sigma
    coverage of the total uncertainties (sigma-columns) on the test stars, with the
    preset's (the paper's) running dispersion; ``ensemble_uncertainty`` gives the
    coverage of kielnet's default (held-out residuals) for the same members.
(b) **ood**: an ensemble trained without any star of Teff > 7000 K; on the test stars,
    the fraction of hot stars (Teff > 7000 K) that each classifier marks and the
    fraction of in-range stars (Teff <= 7000 K) it marks, for
    * ``boundary_flag``: any digit of the 8-digit flag except t-SNE set (predicted labels
      or G outside the training ranges; the library has no parallax, that digit is
      left out);
    * ``tsne``: the t-SNE classification (4 maps, perplexities 30/50/75/100, over the
      training and test spectra) calls the star training-unlike;
    * ``fast_score``: the bundle's fast scores (no maps): ``ood_score`` > 1 (embedding
      nearest neighbour) or ``spread_score`` > 1 (ensemble disagreement), i.e. digit 8
      of the flag in ``training_like: fast_score`` mode; each score is also reported
      on its own (``embedding_nn``, ``ensemble_spread``), with its ROC AUC for hot vs
      in-range and the hot fraction flagged per Teff bin;
    * ``boundary_flag_8digit_tsne`` / ``boundary_flag_8digit_fast``: the whole flag,
      digits 1-7 as above plus digit 8 from t-SNE (the paper's) or the fast scores.
    The OOD ensemble is the preset's 7 splits x 4 members (``--ood-members``).

Writes ``benchmarks/results/rvs_validation.json``. Run (after the README's set-up)::

    python benchmarks/rvs_validation.py

Work directories in ``benchmarks/.work/rvs_validation/`` make reruns resume; ``--part
ensemble`` / ``--part ood`` train one half only (two processes can share the two
cores: the configuration trains with one thread each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from kielnet.config import KielnetConfig, load_config
from kielnet.diagnostics.metrics import label_metrics
from kielnet.artifact import save_bundle
from kielnet.inference.predict import predict
from kielnet.quality.boundary import parse_boundary_flags
from kielnet.quality.embedding import agreement
from kielnet.data.startable import StarTable
from kielnet.io import XP_LIBRARY, read_stars
from kielnet.pipeline import holdout_split
from kielnet.training.ensemble import train_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402

CONFIG = ROOT / "benchmarks" / "configs" / "rvs_validation_xp.yaml"
WORK = ROOT / "benchmarks" / ".work" / "rvs_validation"
HOT = 7000.0  # K


def ood_config(cfg: KielnetConfig, splits: int, members: int) -> KielnetConfig:
    return cfg.with_overrides(name=cfg.name + "_ood", ensemble={"n_splits": splits, "members_per_split": members})


def cool_part(train: StarTable) -> StarTable:
    """Training stars with a finite Teff <= 7000 K (the OOD experiment's training set)."""
    teff = train.labels["teff"]
    with np.errstate(invalid="ignore"):
        return train.take(np.isfinite(teff) & (teff <= HOT))


def train_part(part: str, table: StarTable, cfg: KielnetConfig, args) -> "object":
    train, _ = holdout_split(table)
    if part == "ensemble":
        return train_ensemble(train, cfg, workdir=Path(args.workdir) / "ensemble")
    return train_ensemble(cool_part(train), ood_config(cfg, args.ood_splits, args.ood_members),
                          workdir=Path(args.workdir) / f"ood_{args.ood_splits}x{args.ood_members}")


def sensitivity_maps(bundle, test: StarTable, cat, outdir: Path) -> dict:
    """Fig. 9/10-style gradient maps of the 28-member ensemble over the test stars that
    it places in the red clump (4600-5100 K, log g 2.3-2.7, [Fe/H] -0.2-+0.2)."""
    from kielnet.diagnostics.sensitivity import gradient_maps, plot_branch_sensitivity, plot_sensitivity

    sel = {"teff": (4600.0, 5100.0), "logg": (2.3, 2.7), "fe_h": (-0.2, 0.2)}
    keep = np.ones(len(test), dtype=bool)
    with np.errstate(invalid="ignore"):
        for name, (lo, hi) in sel.items():
            keep &= (np.asarray(cat[name], float) >= lo) & (np.asarray(cat[name], float) <= hi)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:  # e.g. a smoke run with too few epochs to place any star there
        return {"selection_on_predicted_labels": sel, "n_stars": 0, "files": []}
    pre = bundle.preprocessor
    maps = gradient_maps(bundle.build_members(), pre.transform(test, with_labels=False), idx,
                         label_transforms=pre)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = outdir / "rvs_validation_sensitivity"
    maps.save(stem.with_suffix(".npz"))
    units = {lab.name: lab.unit for lab in bundle.config.labels}
    wl = test.wavelength.to_value("Angstrom")
    plot_sensitivity(maps, wl, np.nanmean(test.flux[idx], axis=0), f"{stem}_spectrum.png", units=units,
                     title=f"XP library red clump: mean gradients of {len(idx)} stars x {maps.n_members} members "
                           "(per unit of log10 flux / median)")
    plot_branch_sensitivity(maps, "photometry", f"{stem}_photometry.png",
                            input_names=pre.branch_input_names()["photometry"], units=units)
    peak = {name: float(wl[int(np.argmax(np.abs(maps.pixel[j])))]) for j, name in enumerate(maps.label_names)}
    return {"selection_on_predicted_labels": sel, "n_stars": int(len(idx)), "n_members": maps.n_members,
            "peak_abs_gradient_wavelength_angstrom": peak,
            "files": [f"{stem.name}{s}" for s in (".npz", "_spectrum.png", "_photometry.png")]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "ensemble", "ood"], default="all")
    ap.add_argument("--ood-splits", type=int, default=7)
    ap.add_argument("--ood-members", type=int, default=4)
    ap.add_argument("--data", default=XP_LIBRARY)
    ap.add_argument("--out", default=str(RESULTS / "rvs_validation.json"))
    ap.add_argument("--workdir", default=str(WORK))
    ap.add_argument("--figures", default=str(RESULTS), help="where the sensitivity maps go")
    ap.add_argument("--splits", type=int, default=None, help="override ensemble.n_splits (smoke tests)")
    ap.add_argument("--members", type=int, default=None, help="override ensemble.members_per_split")
    ap.add_argument("--max-epochs", type=int, default=None, help="override training.max_epochs")
    ap.add_argument("--threads", type=int, default=None, help="override training.threads (1 in the config)")
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()
    cfg = load_config(CONFIG)
    over = {"ensemble": {k: v for k, v in (("n_splits", args.splits), ("members_per_split", args.members))
                         if v is not None}}
    over["training"] = {k: v for k, v in (("max_epochs", args.max_epochs), ("threads", args.threads))
                        if v is not None}
    cfg = cfg.with_overrides(**over)
    table = read_stars(args.data)
    if args.part != "all":
        train_part(args.part, table, cfg, args)
        return 0
    train, test = holdout_split(table)
    t0 = time.time()
    bundle = train_part("ensemble", table, cfg, args)
    t_ens = time.time() - t0
    save_bundle(bundle, Path(args.workdir) / "ensemble_bundle")
    labels_only = replace(bundle, tsne_reference=None, config=bundle.config.with_overrides(
        quality={"boundary_flag": {"enabled": False}, "tsne": {"reference_size": 0}}))
    cat = predict(labels_only, test)
    ensemble = {}
    for name in cfg.label_names:
        m = label_metrics(np.asarray(cat[name], float), test.labels[name], np.asarray(cat[f"sigma_{name}"], float))
        ensemble[name] = {"robust_sigma": m["robust_sigma"], "bias": m["bias"],
                          "coverage_1sigma": m["coverage_1sigma"], "n": m["n"], "rms": m.get("rms")}
        ensemble[name]["median_sigma"] = float(np.nanmedian(np.asarray(cat[f"sigma_{name}"], float)))
        print(f"{name}: robust sigma {m['robust_sigma']:.4g}, bias {m['bias']:.3g}, "
              f"1-sigma coverage {m['coverage_1sigma']:.3f}")
    # the same members with kielnet's default running dispersion (held-out residuals,
    # internal part subtracted) instead of the paper's (training residuals, added)
    alt_cfg = cfg.with_overrides(uncertainty={"residuals": "heldout", "subtract_internal": True},
                                 quality={"embedding_ood": {"enabled": False}, "ensemble_spread": {"enabled": False},
                                          "tsne": {"reference_size": 0}, "boundary_flag": {"enabled": False}})
    alt = train_ensemble(train, alt_cfg, workdir=Path(args.workdir) / "ensemble")
    acat = predict(alt, test)
    heldout_sigma = {}
    for name in cfg.label_names:
        m = label_metrics(np.asarray(acat[name], float), test.labels[name], np.asarray(acat[f"sigma_{name}"], float))
        heldout_sigma[name] = {"coverage_1sigma": m["coverage_1sigma"],
                               "median_sigma": float(np.nanmedian(np.asarray(acat[f"sigma_{name}"], float)))}
        print(f"{name} (held-out running dispersion): 1-sigma coverage {m['coverage_1sigma']:.3f}")

    sensitivity = sensitivity_maps(bundle, test, cat, Path(args.figures))

    t1 = time.time()
    ood_bundle = train_part("ood", table, cfg, args)
    t_ood = time.time() - t1
    save_bundle(ood_bundle, Path(args.workdir) / "ood_bundle")
    t2 = time.time()
    ocat = predict(ood_bundle, test)  # flag_boundary (t-SNE digit), tsne_training_like, ood_score
    t_pred = time.time() - t2
    teff = test.labels["teff"]
    with np.errstate(invalid="ignore"):
        hot = np.isfinite(teff) & (teff > HOT)
        inrange = np.isfinite(teff) & (teff <= HOT)
    digits = parse_boundary_flags(np.asarray(ocat["flag_boundary"]))
    # digits the library can test: the four learned labels and G ([M/H] is not learned and
    # there is no parallax, so those digits are '1' for every star and are left out)
    used = [d for d in ("teff", "logg", "alpha_m", "fe_h", "g")]
    boundary = np.any([digits[d] for d in used], axis=0)
    tsne = ~np.asarray(ocat["tsne_training_like"], bool)
    nn_score = np.asarray(ocat["ood_score"], float)
    spread_score = np.asarray(ocat["spread_score"], float)
    fast = (nn_score > 1.0) | (spread_score > 1.0)

    def fractions(flagged, score=None):
        out = {"hot_flagged_frac": float(flagged[hot].mean()), "inrange_flagged_frac": float(flagged[inrange].mean())}
        if score is not None:
            from sklearn.metrics import roc_auc_score

            both = hot | inrange
            out["roc_auc"] = float(roc_auc_score(hot[both], np.nan_to_num(score[both], nan=np.inf)))
        bins = [(7000, 7500), (7500, 8000), (8000, 10000), (10000, 15000), (15000, 25000)]
        with np.errstate(invalid="ignore"):
            out["hot_flagged_frac_by_teff"] = {f"{lo}-{hi}": {"n": int(((teff > lo) & (teff <= hi)).sum()),
                                                              "frac": float(flagged[(teff > lo) & (teff <= hi)].mean())}
                                               for lo, hi in bins}
        return out

    ood = {"boundary_flag": dict(fractions(boundary), digits_used=used),
           "tsne": fractions(tsne), "fast_score": fractions(fast),
           "embedding_nn": dict(fractions(nn_score > 1.0, nn_score), threshold="ood_score > 1",
                                calibration_quantile=ood_bundle.ood.quantile),
           "ensemble_spread": dict(fractions(spread_score > 1.0, spread_score), threshold="spread_score > 1",
                                   calibration_quantile=ood_bundle.spread.quantile,
                                   calibration=ood_bundle.spread.calibration,
                                   n_calibration_stars=ood_bundle.spread.n_reference),
           "boundary_flag_8digit_tsne": fractions(boundary | tsne),
           "boundary_flag_8digit_fast": fractions(boundary | fast),
           "per_digit": {d: fractions(digits[d]) for d in used},
           "n_hot_test": int(hot.sum()), "n_inrange_test": int(inrange.sum()),
           "n_train": len(cool_part(train)), "training_label_ranges": ood_bundle.label_ranges,
           "agreement_tsne_vs_fast_score": agreement(~tsne, ~fast),
           "targets": {"hot_flagged_frac": ">= 0.90", "inrange_flagged_frac": "<= 0.10"}}
    for k in ("boundary_flag", "tsne", "fast_score", "embedding_nn", "ensemble_spread",
              "boundary_flag_8digit_tsne", "boundary_flag_8digit_fast"):
        print(f"{k}: hot flagged {ood[k]['hot_flagged_frac']:.3f}, in-range flagged {ood[k]['inrange_flagged_frac']:.3f}")

    result = {
        "description": "Gaia-RVS hybrid preset on the XP library (RVS branch <- XP sampled spectrum; "
                       "see benchmarks/configs/rvs_validation_xp.yaml), foundation split crc32 % 5 == 0",
        "config": str(CONFIG.relative_to(ROOT)),
        "ensemble": ensemble,
        "ensemble_uncertainty": {
            "preset": "sigma = e (+) running dispersion of the whole ensemble's residuals on its training "
                      "stars, no subtraction (Gaia-RVS Sect. 3.4; uncertainty.residuals = training)",
            "kielnet_default_heldout": heldout_sigma,
            "kielnet_default_note": "same members; running dispersion of the held-out validation residuals "
                                    "with the internal part subtracted (uncertainty.residuals = heldout, "
                                    "subtract_internal = true)"},
        "ensemble_members": len(bundle.members),
        "ensemble_validation_heldout": bundle.validation,
        "ood": ood,
        "sensitivity": sensitivity,
        "ood_ensemble_members": len(ood_bundle.members),
        "n_train": len(train), "n_test": len(test),
        "seconds": {"ensemble_train_or_resume": round(t_ens, 1), "ood_train_or_resume": round(t_ood, 1),
                    "ood_predict_with_tsne": round(t_pred, 1)},
        **provenance(commit, dirty),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
