"""Coefficient input against sampled input (issue 23): ``python benchmarks/xp_coefficient_input.py``
writes ``benchmarks/results/xp_coefficient_input.json``; ``benchmarks/xp_archive.py`` reports it
as ``coefficient_input``.

The XP library (APOGEE DR17 x Gaia XP, the only labelled set) ships sampled spectra only. Their
coefficients are recovered by least squares with the Gaia XP design matrices
(:func:`kielnet.data.xp_calibration.with_xp_coefficients`; exact up to the library's float32
rounding), so the two models see the same stars and the same information:

* ``sampled``: the ``xp_hybrid`` preset (CNN on the 343-pixel spectrum + photometry);
* ``coefficients``: the ``xp_coefficients`` preset (MLP on the 110 coefficients over each band's
  first one + the same photometry; no spectrum).

Protocol (no test-fifth star is used): the training part of the library (``crc32(id) % 5 != 0``)
is split again by ``crc32(id) % 5``: bucket 1 is the validation set both are scored on, buckets
2-4 train both (label cleaning ``benchmarks/configs/xp_label_quality.yaml`` on the training stars
only, as ``xp_library.py``). Both use the same, smaller ensemble (``--splits`` x ``--members``,
default 2 x 1) and the same seed; reported: robust sigma, bias and 1-sigma coverage per label on
the validation stars, and the ratio coefficients / sampled of the robust sigma.

Rerunning resumes both ensembles from ``benchmarks/.work/xp_coefficient_input/``; the bundles are
saved there (``sampled_bundle``, ``coefficients_bundle``): ``benchmarks/xp_archive.py`` times the
coefficient model on the archive directory with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from kielnet.artifact import save_bundle
from kielnet.config import load_config
from kielnet.data.selection import load_selection
from kielnet.data.splits import crc32_buckets
from kielnet.data.xp_calibration import with_xp_coefficients
from kielnet.inference.predict import predict
from kielnet.io import XP_LIBRARY, read_stars
from kielnet.io.xp_matrices import default_xp_sampling
from kielnet.pipeline import catalogue_metrics, holdout_split
from kielnet.training import train_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402

LABEL_CLEANING = ROOT / "benchmarks" / "configs" / "xp_label_quality.yaml"
MODELS = {"sampled": "xp_hybrid", "coefficients": "xp_coefficients"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=2, help="ensemble.n_splits of both models (default 2)")
    ap.add_argument("--members", type=int, default=1, help="ensemble.members_per_split (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="override training.max_epochs of both (smoke tests)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N library stars (smoke tests)")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "xp_coefficient_input"))
    ap.add_argument("--out", default=str(RESULTS / "xp_coefficient_input.json"))
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()

    table = read_stars(XP_LIBRARY)
    if args.limit:
        table = table.take(np.arange(min(args.limit, len(table))))
    sampling = default_xp_sampling()
    table = with_xp_coefficients(table, sampling)
    train_part, _ = holdout_split(table)  # the test fifth is dropped here and never read again
    bucket = crc32_buckets(train_part.ids, 5)
    fit, val = train_part.take(bucket != 1), train_part.take(bucket == 1)
    selection = load_selection(LABEL_CLEANING)
    log(f"{len(table)} library stars; {len(fit)} train both models, {len(val)} validation stars "
        f"(crc32 % 5 == 1 of the training part); test fifth unused")

    res: dict = {"protocol": "train: crc32(id) % 5 in {2,3,4}; score: crc32(id) % 5 == 1; the test fifth "
                             "(== 0) is not used", "n_fit": len(fit), "n_validation": len(val),
                 "coefficients_from": f"least squares of the library's sampled spectra with the design "
                                      f"matrices ({sampling.origin})",
                 "models": {}}
    for key, preset in MODELS.items():
        over: dict = {"ensemble": {"n_splits": args.splits, "members_per_split": args.members, "seed": args.seed}}
        if args.epochs:
            over["training"] = {"max_epochs": args.epochs}
        cfg = load_config(preset).with_overrides(**over)
        t0 = time.time()
        bundle = train_ensemble(fit, cfg, workdir=Path(args.workdir) / key, progress=False, log=log,
                                selection=selection)
        seconds = time.time() - t0
        save_bundle(bundle, Path(args.workdir) / f"{key}_bundle")  # xp_archive.py times the archive path with it
        t1 = time.time()
        cat = predict(bundle, val)
        pred_s = time.time() - t1
        metrics = catalogue_metrics(cat, val, cfg.label_names)
        res["models"][key] = {
            "preset": preset, "members": len(bundle.members),
            "train_seconds_this_run": round(seconds, 1),  # ~0 where the members were resumed from the work directory
            "predict_seconds": round(pred_s, 2),
            "robust_sigma": {n: m["robust_sigma"] for n, m in metrics.items()},
            "bias": {n: m["bias"] for n, m in metrics.items()},
            "coverage_1sigma": {n: m.get("coverage_1sigma") for n, m in metrics.items()},
            "n_scored": {n: m["n"] for n, m in metrics.items()}}
        log(f"{key}: robust sigma {res['models'][key]['robust_sigma']}")
    s, c = res["models"]["sampled"]["robust_sigma"], res["models"]["coefficients"]["robust_sigma"]
    res["robust_sigma_ratio_coefficients_over_sampled"] = {n: c[n] / s[n] for n in s}
    res["ensemble"] = {"n_splits": args.splits, "members_per_split": args.members, "seed": args.seed,
                       "max_epochs_override": args.epochs, "limit": args.limit}
    res.update(provenance(commit, dirty))
    write_result(res, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
