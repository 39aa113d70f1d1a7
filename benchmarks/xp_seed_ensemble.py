"""Seed-to-seed scatter of the XP benchmark, and what a larger ensemble would buy.

Resumes the ensembles that ``benchmarks/xp_library.py`` trained with different
``--seed`` values (their work directories; nothing is retrained when they are
complete), predicts the benchmark's test fifth with each, and reports the robust σ of
each ensemble and of their union (the mean of the ensembles' label means, i.e. one
ensemble with all their members; its σ is not calibrated, so only accuracy is given).
The training time of the union is the sum of the ensembles' ``train_seconds``.

Run (after ``python benchmarks/xp_library.py`` and
``python benchmarks/xp_library.py --seed 1 --out benchmarks/results/xp_library_seed1.json
--workdir benchmarks/.work/xp_library_seed1``)::

    python benchmarks/xp_seed_ensemble.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kielnet.config import load_config
from kielnet.data.selection import load_selection
from kielnet.diagnostics.metrics import label_metrics
from kielnet.inference.predict import predict
from kielnet.io import XP_LIBRARY, read_stars
from kielnet.pipeline import holdout_split
from kielnet.training.ensemble import train_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402
from xp_library import LABEL_CLEANING, TARGETS  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=[f"0:{WORK / 'xp_library'}:{RESULTS / 'xp_library.json'}",
                                                  f"1:{WORK / 'xp_library_seed1'}:{RESULTS / 'xp_library_seed1.json'}"],
                    help="SEED:WORKDIR:RESULT_JSON of each ensemble")
    ap.add_argument("--config", default="xp_hybrid")
    ap.add_argument("--out", default=str(RESULTS / "xp_seed_ensemble.json"))
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()
    cfg0 = load_config(args.config)
    train, test = holdout_split(read_stars(XP_LIBRARY))
    selection = load_selection(LABEL_CLEANING)
    names = cfg0.label_names
    runs, means = [], []
    for spec in args.runs:
        seed, workdir, result = spec.split(":", 2)
        res = json.loads(Path(result).read_text())
        cfg = cfg0.with_overrides(ensemble={"seed": int(seed)})
        if res.get("config") != cfg.model_dump(mode="json"):
            print(f"error: {result} was run with another config than {args.config} at seed {seed}")
            return 1
        bundle = train_ensemble(train, cfg, workdir=workdir, progress=False, selection=selection)
        cat = predict(bundle, test)
        mean = np.stack([np.asarray(cat[n], float) for n in names], axis=1)
        means.append(mean)
        metrics = {n: label_metrics(mean[:, j], test.labels[n]) for j, n in enumerate(names)}
        runs.append({"seed": int(seed), "result": Path(result).name, "n_members": len(bundle.members),
                     "train_seconds": res["train_seconds"],
                     "robust_sigma": {n: metrics[n]["robust_sigma"] for n in names}})
        print(f"seed {seed}: " + ", ".join(f"{n} {metrics[n]['robust_sigma']:.4g}" for n in names))
    union = np.mean(means, axis=0)
    um = {n: label_metrics(union[:, j], test.labels[n]) for j, n in enumerate(names)}
    print("union: " + ", ".join(f"{n} {um[n]['robust_sigma']:.4g}" for n in names))
    rs = {n: [r["robust_sigma"][n] for r in runs] for n in names}
    out = {
        "definition": "robust sigma (1.4826 MAD) of predicted - APOGEE DR17 label on the benchmark's test fifth; "
                      "'union' averages the ensembles' label means (one ensemble of all their members)",
        "runs": runs,
        "seed_scatter": {n: {"min": min(v), "max": max(v), "spread_over_mean": (max(v) - min(v)) / np.mean(v)}
                         for n, v in rs.items()},
        "union": {"n_members": sum(r["n_members"] for r in runs),
                  "train_seconds": sum(r["train_seconds"] for r in runs),
                  "robust_sigma": {n: um[n]["robust_sigma"] for n in names},
                  "meets_target": {n: bool(um[n]["robust_sigma"] <= TARGETS[n]) for n in names}},
        "meets_target_per_run": {n: [bool(v <= TARGETS[n]) for v in rs[n]] for n in names},
        "targets": TARGETS,
        **provenance(commit, dirty),
    }
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
