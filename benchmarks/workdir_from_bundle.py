"""Rebuild a training work directory from a saved bundle's members, so that a benchmark
can refit everything applied after the members (σ model, neighbour model, tail regimes,
flags) with today's config and score that, without retraining.

Used for seed 0 of ``benchmarks/xp_library.py`` when its original work directory is not on
the machine: the shipped ``xp-apogee-dr17`` bundle holds seed 0's eight members (stored in
float16, loaded as float32 exactly as ``predict`` loads them). The directory is claimed with
the fingerprint training would write for ``--config`` (with ``--seed``) on the XP library's
training part after ``--select``, so the benchmark's resume check compares the members'
config and the training data as for any resumed run; each member file keeps the bundle's
provenance (split, seed, best epoch).

    python benchmarks/workdir_from_bundle.py --bundle xp-apogee-dr17 --seed 0 \\
        --workdir benchmarks/.work/xp_library
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kielnet.artifact import load_bundle
from kielnet.config import load_config
from kielnet.data.label_columns import resolve_labels
from kielnet.data.selection import load_selection, select_stars
from kielnet.io import XP_LIBRARY, read_stars
from kielnet.pipeline import holdout_split
from kielnet.training.plan import claim_workdir, member_file, run_fingerprint, save_member

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402

LABEL_CLEANING = ROOT / "benchmarks" / "configs" / "xp_label_quality.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="xp-apogee-dr17", help="bundle directory or shipped model name")
    ap.add_argument("--config", default="xp_hybrid", help="preset or YAML the members were trained with")
    ap.add_argument("--seed", type=int, default=0, help="ensemble.seed of the members")
    ap.add_argument("--workdir", required=True, help="work directory to create (must not exist)")
    ap.add_argument("--data", default=XP_LIBRARY)
    ap.add_argument("--select", default=str(LABEL_CLEANING), help="the training-star selection ('none': all)")
    args = ap.parse_args(argv)
    wd = Path(args.workdir)
    if wd.exists():
        raise SystemExit(f"{wd} exists: choose a new work directory")
    bundle = load_bundle(args.bundle)
    cfg = load_config(args.config).with_overrides(ensemble={"seed": args.seed})
    train, _ = holdout_split(read_stars(args.data))
    train = resolve_labels(train, cfg.label_vocabulary)
    if args.select.lower() != "none":
        train, _ = select_stars(train, load_selection(Path(args.select)))
    claim_workdir(wd, run_fingerprint(cfg, train))
    for i, (state, info) in enumerate(zip(bundle.members, bundle.member_info)):
        save_member(member_file(wd, i), {k: v.to(torch.float32) for k, v in state.items()}, info)
    print(f"{wd}: {len(bundle.members)} members of {args.bundle} (seed {args.seed}); the config's training part "
          "is checked against them when the benchmark resumes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
