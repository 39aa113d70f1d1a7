"""Accuracy benchmark on the real APOGEE DR17 x Gaia XP library (40,226 rows).

Fixed split: test = stars with ``zlib.crc32(apogee_id.strip().encode()) % 5 == 0``;
the demo configuration (preset ``xp_hybrid``) is trained on the rest. On the test
set we report per label: n, bias (median residual), robust sigma (1.4826 MAD), RMS
and 1-sigma coverage of the total sigma; the same for a scikit-learn
HistGradientBoostingRegressor baseline trained on the same inputs and split; and
both per regime. Writes ``benchmarks/results/xp_library.json``.

Run (from the repository root, after the README's set-up)::

    python benchmarks/xp_library.py

Rerunning resumes the ensemble from ``benchmarks/.work/xp_library`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kielnet.config import load_config
from kielnet.diagnostics.metrics import label_metrics, metrics_table, regime_masks
from kielnet.inference.uncertainty import robust_sigma
from kielnet.io import XP_LIBRARY, read_stars
from kielnet.pipeline import run_holdout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402

TARGETS = {"teff": 75.0, "logg": 0.15, "fe_h": 0.09, "alpha_m": 0.030}


def baseline_gbt(bundle, train, test, seed: int = 0) -> tuple[dict, dict, float]:
    """HistGradientBoostingRegressor per label on the same preprocessed inputs
    (standardised log spectrum + photometric features). Its sigma is the robust
    dispersion of its own internal-validation residuals (a constant per label)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    pre = bundle.preprocessor

    def design(t):
        p = pre.transform(t, with_labels=False)
        parts = [p.spectrum] + [p.branches[b] for b in sorted(p.branches)]
        return np.concatenate([x for x in parts if x is not None], axis=1)

    t0 = time.time()
    x_tr, x_te = design(train), design(test)
    preds, sigmas = {}, {}
    rng = np.random.default_rng(seed)
    for name in bundle.config.label_names:
        y = train.labels[name]
        ok = np.isfinite(y)
        idx = np.flatnonzero(ok)
        val = rng.random(len(idx)) < 0.1
        model = HistGradientBoostingRegressor(max_iter=500, learning_rate=0.1, early_stopping=True,
                                              validation_fraction=0.1, random_state=seed)
        model.fit(x_tr[idx[~val]], y[idx[~val]])
        sigmas[name] = robust_sigma(model.predict(x_tr[idx[val]]) - y[idx[val]])
        preds[name] = model.predict(x_te)
    return preds, sigmas, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="xp_hybrid", help="preset or YAML (default: the demo's xp_hybrid)")
    ap.add_argument("--splits", type=int, default=None, help="override ensemble.n_splits")
    ap.add_argument("--members", type=int, default=None, help="override ensemble.members_per_split")
    ap.add_argument("--data", default=XP_LIBRARY, help="input stars (default: the embedded XP library)")
    ap.add_argument("--out", default=str(RESULTS / "xp_library.json"))
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "xp_library"))
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()  # the code that runs is the code at start

    cfg = load_config(args.config)
    ens = {}
    if args.splits:
        ens["n_splits"] = args.splits
    if args.members:
        ens["members_per_split"] = args.members
    if ens:
        cfg = cfg.with_overrides(ensemble=ens)
    table = read_stars(args.data)
    res = run_holdout(table, cfg, workdir=args.workdir, progress=False)
    units = {lab.name: lab.unit for lab in cfg.labels}
    print(metrics_table(res.metrics, units))

    b_pred, b_sig, b_seconds = baseline_gbt(res.bundle, res.train, res.test)
    base = {n: label_metrics(b_pred[n], res.test.labels[n], np.full(len(res.test), b_sig[n]))
            for n in cfg.label_names}
    print("baseline (HistGradientBoostingRegressor):")
    print(metrics_table(base, units))

    regimes = {}
    masks = regime_masks(res.test.labels, res.test.scalars)
    for rname, m in masks.items():
        regimes[rname] = {
            "n_stars": int(m.sum()),
            "kielnet": {n: label_metrics(np.asarray(res.catalogue[n], float)[m], res.test.labels[n][m],
                                         np.asarray(res.catalogue[f"sigma_{n}"], float)[m])
                        for n in cfg.label_names},
            "baseline_gbt": {n: label_metrics(b_pred[n][m], res.test.labels[n][m], np.full(m.sum(), b_sig[n]))
                             for n in cfg.label_names},
        }
    checks = {}
    for n, target in TARGETS.items():
        k, b = res.metrics[n]["robust_sigma"], base[n]["robust_sigma"]
        cov = res.metrics[n]["coverage_1sigma"]
        checks[n] = {"target_robust_sigma": target, "meets_target": bool(k <= target),
                     "ratio_baseline_over_kielnet": b / k, "meets_1p5x_baseline": bool(b / k >= 1.5),
                     "coverage_in_0p60_0p76": bool(0.60 <= cov <= 0.76)}
    out = {
        "kielnet": res.metrics,
        "baseline_gbt": base,
        "regimes": regimes,
        "checks": checks,
        "train_seconds": round(res.train_seconds, 1),
        "predict_seconds": round(res.predict_seconds, 2),
        "baseline_train_seconds": round(b_seconds, 1),
        "n_train": len(res.train), "n_test": len(res.test),
        "n_members": len(res.bundle.members),
        "config": cfg.model_dump(mode="json"),
        "validation_heldout": res.bundle.validation,
        "baseline_sigma_definition": "robust sigma of the baseline's residuals on a random 10% of the "
                                     "training stars held out from its fit (constant per label)",
        "residual_definition": "predicted - APOGEE DR17 label; teff in K, others in dex",
        **provenance(commit, dirty),
    }
    write_result(out, args.out)
    print(json.dumps(checks, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
