"""``benchmarks/xp_library.py --combine``: seed runs of one configuration join a result's
seed statistics; another configuration or a repeated seed is refused."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "benchmarks" / "results" / "xp_library.json"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("xp_library_bench", ROOT / "benchmarks" / "xp_library.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _seed_run(main: dict, seed: int, scale: float) -> dict:
    """A result of another seed: ``main``'s first seed with robust σ and tails scaled."""
    from kielnet.config import KielnetConfig

    d = copy.deepcopy(main)
    d["config"] = KielnetConfig.from_dict(main["config"]).model_dump(mode="json")  # as today's runs write it
    d["config"]["ensemble"]["seed"] = seed
    p = copy.deepcopy(main["seeds"]["per_seed"][0])
    p["seed"] = seed
    for n, m in p["kielnet"].items():
        m["robust_sigma"] *= scale
        p["tails"][n]["ok_beyond_3sigma"] *= scale
    d["seeds"] = {"per_seed": [p]}
    d["git_commit"] = "f" * 40
    return d


def test_combine_joins_fully_scored_seeds(bench):
    main = json.loads(RESULT.read_text())
    main["selection_protocol"]["tail_regime_rates_out_of_fold"] = {"chosen": {"marker": 1}}
    n0 = len(main["seeds"]["per_seed"])
    before = main["selection_protocol"]["test_fifth_scorings"]["total"]
    run = _seed_run(main, 7, 1.5)
    out = bench.combine_seed_runs(main, [("xp_library_seed7.json", run)], "a" * 40, False)
    names = [lab["name"] for lab in main["config"]["labels"]]
    assert out["seeds"]["n"] == n0 + 1 and out["seeds"]["seeds"][-1] == 7
    for n in names:
        vals = [p["kielnet"][n]["robust_sigma"] for p in main["seeds"]["per_seed"]]
        vals.append(main["seeds"]["per_seed"][0]["kielnet"][n]["robust_sigma"] * 1.5)
        assert out["headline"]["robust_sigma"][n] == pytest.approx(np.mean(vals))
        assert out["seeds"]["ok_beyond_3sigma"][n]["values"][-1] == pytest.approx(
            main["seeds"]["per_seed"][0]["tails"][n]["ok_beyond_3sigma"] * 1.5)
        assert out["checks"]["issue20"][n]["seed_mean_robust_sigma"]["n_seeds"] == n0 + 1
    assert "with_earlier" not in out["seeds"]  # only fully scored seeds count
    assert out["selection_protocol"]["test_fifth_scorings"]["total"] == before + 1
    # the history gains the seed run, its changes against the run before it
    assert len(out["history"]) == len(main["history"]) + 1
    assert out["history"][-1]["changes"] == {"ensemble.seed": [main["history"][-1]["config"]["ensemble"]["seed"], 7]}
    assert out["git_commit"] == "a" * 40 and out["combined"]["first_run"]["git_commit"] == main["git_commit"]
    # the out-of-fold selection the first run recorded is kept
    assert out["selection_protocol"]["tail_regime_rates_out_of_fold"] == {"chosen": {"marker": 1}}
    # the detailed sections stay the first seed's
    assert out["kielnet"] == main["kielnet"] and out["tails"] == main["tails"]


def test_combine_refuses_other_configuration_and_repeated_seed(bench):
    main = json.loads(RESULT.read_text())
    other = _seed_run(main, 7, 1.0)
    other["config"]["training"]["lr"] *= 2
    with pytest.raises(SystemExit, match="another configuration.*training.lr"):
        bench.combine_seed_runs(main, [("x.json", other)], "a" * 40, False)
    again = _seed_run(main, main["seeds"]["per_seed"][0]["seed"], 1.0)
    with pytest.raises(SystemExit, match="already in"):
        bench.combine_seed_runs(main, [("y.json", again)], "a" * 40, False)


def test_seed_statistics_names_the_seeds_behind_a_measure_some_runs_lack(bench):
    main = json.loads(RESULT.read_text())
    p0 = copy.deepcopy(main["seeds"]["per_seed"][0])
    p0["seed"] = 0
    p0.pop("tail_regimes", None)  # a run from before the tail regimes
    p1, p2 = copy.deepcopy(p0), copy.deepcopy(p0)
    p1["seed"], p2["seed"] = 1, 2
    p1["tail_regimes"] = {"labels": {"teff": {"robust_sigma_without_withholding": 58.0}}}
    p2["tail_regimes"] = {"labels": {"teff": {"robust_sigma_without_withholding": 60.0}}}
    names = [lab["name"] for lab in main["config"]["labels"]]
    st = bench.seed_statistics([p0, p1, p2], names)
    r = st["robust_sigma_without_withholding"]
    assert r["teff"]["values"] == [58.0, 60.0] and r["teff"]["mean"] == pytest.approx(59.0)
    assert r["teff"]["seeds"] == [1, 2] and r["logg"]["values"] == [] and r["logg"]["mean"] is None
    assert "seeds" not in st["robust_sigma"]["teff"] and len(st["ok_fraction"]["teff"]["values"]) == 3


def _with_bins(p: dict, seed: int, cov1: list[float], n: int = 150) -> dict:
    q = copy.deepcopy(p)
    q["seed"] = seed
    for lab in q["calibration"]:
        q["calibration"][lab]["bins"] = [{"bin": f"regimes.r{i}", "n": n, "cov1": c} for i, c in enumerate(cov1)]
    return q


def test_bin_coverage_is_judged_on_the_seed_mean_of_each_bin(bench):
    """A bin that one seed misses but the seed mean does not is inside the band; one the
    mean misses is named; seeds whose summary has no bins are left out and the rest named."""
    main = json.loads(RESULT.read_text())
    names = [lab["name"] for lab in main["config"]["labels"]]
    p = main["seeds"]["per_seed"][0]
    runs = [_with_bins(p, 0, [0.60, 0.80, 0.70]), _with_bins(p, 1, [0.70, 0.76, 0.69]),
            _with_bins(p, 2, [0.68, 0.78, 0.71])]
    old = copy.deepcopy(p)
    old["seed"] = 3  # a run from before the bins were kept
    for lab in old["calibration"]:
        old["calibration"][lab].pop("bins", None)
    st = bench.seed_statistics([*runs, old], names)
    b = st["coverage_1sigma_bins"]["teff"]
    assert b["seeds"] == [0, 1, 2]
    assert [r["mean"] for r in b["bins"]] == pytest.approx([0.66, 0.78, 0.70])
    assert b["outside_band"] == ["regimes.r1"]
    assert b["worst"]["bin"] == "regimes.r1" and b["worst"]["deviation"] == pytest.approx(0.78 - 0.6827)
    checks = bench.issue20_checks([*runs, old], st, names)
    assert checks["teff"]["worst_bin_cov1_seed_mean"]["meets"] is False
    # bins of fewer than 100 stars are reported but not judged
    small = [_with_bins(q, q["seed"], [0.68, 0.95, 0.68], n=50) for q in runs]
    st2 = bench.seed_statistics(small, names)
    assert st2["coverage_1sigma_bins"]["teff"]["outside_band"] == [] and st2["coverage_1sigma_bins"]["teff"]["worst"] is None
    assert bench.issue20_checks(small, st2, names)["teff"]["worst_bin_cov1_seed_mean"] is None
    inside = [_with_bins(q, q["seed"], [0.68, 0.70, 0.66]) for q in runs]
    assert bench.issue20_checks(inside, bench.seed_statistics(inside, names), names)["teff"][
        "worst_bin_cov1_seed_mean"]["meets"] is True
    # runs without bins: nothing to judge, and no check made up
    st3 = bench.seed_statistics([old], names)
    assert st3["coverage_1sigma_bins"] == {} and \
        bench.issue20_checks([old], st3, names)["teff"]["worst_bin_cov1_seed_mean"] is None


def test_coverage_bins_lists_every_bin_of_a_calibration_report(bench):
    from kielnet.diagnostics.metrics import calibration_report

    rng = np.random.default_rng(0)
    truth = rng.normal(0, 1, 800)
    pred = truth + rng.normal(0, 1, 800)
    rep = calibration_report(pred, truth, np.ones(800), snr=rng.uniform(10, 100, 800), g=rng.uniform(10, 17, 800),
                             regimes={"a": truth > 0, "b": truth < -1})
    bins = bench.coverage_bins(rep)
    assert [b["bin"].split(".")[0] for b in bins] == ["snr_bins"] * 4 + ["g_bins"] * 4 + ["regimes"] * 2
    assert sum(b["n"] for b in bins[:4]) == 800 and bins[-2]["bin"] == "regimes.a"
    assert bins[-2]["cov1"] == pytest.approx(np.mean(np.abs(pred - truth)[truth > 0] < 1))
