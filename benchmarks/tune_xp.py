"""`kielnet tune` on the XP library's training part: the study and what it found.

The study sees only the benchmark's training stars (the XP library minus the test fifth
``crc32(apogee_id) % 5 == 0``); each trial validates on a split of those stars. Writes
``benchmarks/results/tune_xp.json``: every trial (state, score, epochs, seconds,
parameters), the best trial, and the preset it wrote (``benchmarks/results/
xp_hybrid_tuned.yaml``). The study is resumable from ``benchmarks/.work/tune_xp``.

Run::

    python benchmarks/tune_xp.py [--trials N] [--max-epochs E] [--max-stars S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kielnet.config import load_config
from kielnet.io import XP_LIBRARY, read_stars
from kielnet.pipeline import holdout_split
from kielnet.training.tuning import _study, run_study, write_best_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="xp_hybrid")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--max-epochs", type=int, default=None, help="override tuning.max_epochs")
    ap.add_argument("--max-stars", type=int, default=None, help="override tuning.max_stars")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "tune_xp"))
    ap.add_argument("--out", default=str(RESULTS / "tune_xp.json"))
    ap.add_argument("--preset-out", default=str(RESULTS / "xp_hybrid_tuned.yaml"))
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()
    cfg = load_config(args.config)
    over = {k: v for k, v in {"max_epochs": args.max_epochs, "max_stars": args.max_stars}.items() if v}
    if over:
        cfg = cfg.with_overrides(tuning=over)
    train, test = holdout_split(read_stars(XP_LIBRARY))
    t0 = time.time()
    res = run_study(train, cfg, args.workdir, n_trials=args.trials)
    write_best_preset(res, cfg, args.preset_out, data_source=f"{XP_LIBRARY} training part ({len(train)} stars)")
    trials = []
    for t in _study(Path(args.workdir), cfg).get_trials(deepcopy=False):
        trials.append({"number": t.number, "state": t.state.name, "score": t.value, "params": t.params,
                       "epochs_reported": len(t.intermediate_values), **t.user_attrs})
    out = {"best_trial": res.best_trial, "best_score": res.best_value,
           "score_definition": "mean over labels of the robust sigma (1.4826 MAD) of the scaled validation "
                               "residuals of one network (training stars' own validation split)",
           "n_complete": res.n_complete, "n_pruned": res.n_pruned, "n_failed": res.n_failed,
           "trials": trials, "tuning": cfg.tuning.model_dump(mode="json"),
           "n_tuning_stars": len(train), "test_stars_seen": 0, "seconds_this_run": round(time.time() - t0, 1),
           "preset": str(Path(args.preset_out).relative_to(ROOT)), **provenance(commit, dirty)}
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
