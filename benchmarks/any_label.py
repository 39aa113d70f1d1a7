"""Any label through the CLI only: xp_hybrid on the XP library with APOGEE's A_K
(``ak_targ``) as a fifth label (issue 22).

Runs, as a user would::

    kielnet train --data xp-library --config benchmarks/configs/xp_hybrid_ak.yaml --select xp-train \\
        --out WORK/bundle --workdir WORK/bundle.work
    kielnet evaluate --bundle WORK/bundle --data xp-library --select xp-test-fifth --out WORK/test_metrics.json

and writes ``benchmarks/results/any_label.json``: per label the robust σ, bias and 1σ
coverage on the XP test fifth (``crc32(apogee_id) % 5 == 0``, scored once), the
out-of-fold validation metrics the bundle records, both commands, and — for context —
the four-label seed mean of ``xp_library.json`` (8 members; this run has 4: 2 splits ×
2 members, see the config). Rerunning resumes the training from its work directory.

    python benchmarks/any_label.py [--work benchmarks/.work/any_label]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402

CONFIG = ROOT / "benchmarks" / "configs" / "xp_hybrid_ak.yaml"


def run(cmd: list[str]) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def test_fifth_tails(catalogue: Path) -> dict:
    """``kielnet.diagnostics.metrics.tail_metrics`` of the catalogue's test-fifth rows against
    the library's APOGEE labels (usable rows beyond 3σ / 5σ, hot stars above 10,000 K), as
    ``xp_library.json`` reports them for the four-label model."""
    import numpy as np

    from kielnet.data.label_columns import resolve_labels
    from kielnet.data.splits import crc32_holdout
    from kielnet.diagnostics.metrics import tail_metrics
    from kielnet.io import read_catalogue, read_stars
    from kielnet.labels import label_info

    cat = read_catalogue(catalogue)
    names = [n for n in ("teff", "logg", "fe_h", "alpha_m", "ak_targ") if n in cat.colnames]
    stars = resolve_labels(read_stars("xp-library"), {n: label_info(n) for n in names})
    if list(np.asarray(cat["id"]).astype(str)) != list(np.asarray(stars.ids).astype(str)):
        raise SystemExit(f"{catalogue} is not a catalogue of the XP library in its order")
    test = crc32_holdout(stars.ids, 5, 0)
    truth = {n: stars.labels[n][test] for n in names}
    hot = stars.labels["teff"][test] > 10_000
    return tail_metrics(cat[test], truth, names, label_errs={n: stars.label_errs[n][test] for n in names
                                                             if n in stars.label_errs}, hot=hot)


def train_note(bjson: dict) -> str:
    """What ``train_seconds`` is, with the time per member."""
    n = len(bjson.get("members", []))
    sec = bjson.get("training_data", {}).get("train_seconds")
    if not n or sec is None:
        return "wall time of the members' training on this machine"
    return (f"wall time of training the {n} members on this machine: ~{sec / n / 60:.0f} min per member "
            "(other jobs, if any, share it: see the commit's notes)")


def scorings(previous: Path, bundle: Path, commit: str) -> dict:
    """The test-fifth scorings of this configuration: one per distinct bundle scored, carried
    over from the previous ``any_label.json`` (a rerun that scores the same bundle again adds
    none). The first run (89576e3) recorded only a count."""
    import hashlib

    sha = hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()
    history: list[dict] = []
    if previous.is_file():
        old = json.loads(previous.read_text())
        s = old.get("test_fifth_scorings")
        if isinstance(s, dict):
            history = list(s.get("history", []))
        elif s:  # the first run's form, "this configuration: 1"
            history = [{"evaluated_at": (old.get("git_commit") or "")[:7], "bundle_sha256": None,
                        "note": "first run; neighbour assessment before the fix of 86cc3e2"}]
    if not history or history[-1].get("bundle_sha256") != sha:
        history.append({"evaluated_at": commit[:7], "bundle_sha256": sha})
    return {"this_configuration": len(history), "history": history,
            "rule": "one per distinct bundle (sha256 of bundle.json) evaluated on the test fifth"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "any_label"))
    args = ap.parse_args()
    commit, dirty = git_commit(), git_dirty()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle, metrics_file = work / "bundle", work / "test_metrics.json"
    kielnet = str(Path(sys.executable).with_name("kielnet"))
    train = [kielnet, "train", "--data", "xp-library", "--config", str(CONFIG.relative_to(ROOT)), "--select",
             "xp-train", "--out", str(bundle), "--workdir", str(work / "bundle.work"), "--quiet"]
    evaluate = [kielnet, "evaluate", "--bundle", str(bundle), "--data", "xp-library", "--select", "xp-test-fifth",
                "--out", str(metrics_file)]
    catalogue = work / "library_catalogue.parquet"
    predict = [kielnet, "predict", "--bundle", str(bundle), "--data", "xp-library", "--out", str(catalogue),
               "--quiet"]
    t_train = None
    if not (bundle / "bundle.json").is_file():
        t_train = run(train)
    t_eval = run(evaluate)
    if not catalogue.is_file():
        run(predict)
    tails = test_fifth_tails(catalogue)
    test = json.loads(metrics_file.read_text())
    bjson = json.loads((bundle / "bundle.json").read_text())
    reference = json.loads((RESULTS / "xp_library.json").read_text())
    seeds = reference.get("seeds", {})
    out = {
        **provenance(commit, dirty),
        "commands": [shlex.join(["kielnet", *c[1:]]) for c in (train, evaluate, predict)],
        "config": str(CONFIG.relative_to(ROOT)),
        "labels": list(test),
        "n_members": len(bjson.get("members", [])),
        "train_seconds": bjson.get("training_data", {}).get("train_seconds", t_train),
        "train_note": train_note(bjson),
        "evaluate_seconds": t_eval,
        "test_fifth": {n: {k: test[n].get(k) for k in ("n", "bias", "robust_sigma", "coverage_1sigma",
                                                       "coverage_2sigma") if k in test[n]} for n in test},
        "validation": bjson.get("validation"),
        "tails": tails,
        "four_label_reference": {"source": "benchmarks/results/xp_library.json (seed mean, 8 members)",
                                 "robust_sigma": {n: (seeds.get("robust_sigma", {}).get(n) or {}).get("mean")
                                                  for n in ("teff", "logg", "fe_h", "alpha_m")},
                                 "ok_beyond_3sigma": seeds.get("ok_beyond_3sigma"),
                                 "hot_ok_beyond_3sigma": seeds.get("hot_ok_beyond_3sigma")},
        "test_fifth_scorings": scorings(RESULTS / "any_label.json", bundle, commit),
    }
    path = write_result(out, RESULTS / "any_label.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
