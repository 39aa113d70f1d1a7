"""The model card's tail sections are written from the bundle and the benchmark results."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "release"))

from package_pretrained import tail_regime_lines, tail_source_lines  # noqa: E402

from kielnet.quality.tails import TailRegimes  # noqa: E402


def _bundle(tr):
    return SimpleNamespace(tail_regimes=tr, config=SimpleNamespace(label_units={"teff": "K", "logg": "dex"}))


def test_card_states_the_interval_and_the_measured_test_withholding():
    rng = np.random.default_rng(0)
    pred = np.column_stack([rng.uniform(4000, 9000, 4000), rng.uniform(1, 5, 4000)])
    z = np.abs(rng.normal(size=pred.shape))
    z[(pred[:, 0] > 6600) & (pred[:, 0] < 7500) & (rng.random(4000) < 0.2), 0] = 8.0
    tr = TailRegimes.fit(["teff", "logg"], pred, z, bin_stars=200)
    result = {"seeds": {"per_seed": [{"tail_regimes": {"labels": {
        "teff": {"n_withheld": 210, "withheld_fraction": 0.026, "n_with_reference": 208,
                 "beyond_3sigma_fraction": 0.125, "false_withhold_rate": 0.875, "n_hot": 27},
        "logg": {"n_withheld": 0, "withheld_fraction": 0.0, "n_with_reference": 0, "beyond_3sigma_fraction": None,
                 "false_withhold_rate": None, "n_hot": 0}}}}]}}
    text = "\n".join(tail_regime_lines(_bundle(tr), result))
    lo, hi, _, _ = tr.intervals["teff"][0]
    assert f"teff predicted in [{lo:.4g}, {hi:.4g}) K" in text
    assert "teff withheld for 210 stars (2.6 %)" in text and "false-withhold rate 88 %" in text
    assert "27 are hot stars" in text and "logg withheld" not in text
    assert tail_regime_lines(_bundle(None), result) == []


def test_card_gives_the_robust_sigma_with_withheld_labels_where_it_differs():
    from package_pretrained import seed_lines

    stat = {"values": [1.0], "mean": 56.5, "std": 0.27}
    seeds = {"n": 3, "seeds": [0, 1, 2], "robust_sigma": {"teff": stat, "logg": {"mean": 0.139, "std": 0.001}},
             "robust_sigma_without_withholding": {"teff": {"mean": 58.9, "std": 0.09, "seeds": [1, 2]},
                                                  "logg": {"mean": 0.139, "std": 0.001}},
             "rows_ok_fraction": {"values": [0.86], "mean": 0.86}}
    text = "\n".join(seed_lines({"seeds": seeds}, ["teff", "logg"]))
    assert "labels withheld by a tail regime included" in text and "teff 58.9 +- 0.09 (seeds [1, 2])" in text
    assert "logg 0.139" not in text.split("included")[1]
    seeds.pop("robust_sigma_without_withholding")
    assert "tail regime" not in "\n".join(seed_lines({"seeds": seeds}, ["teff", "logg"]))


def test_card_gives_the_out_of_fold_coverage_per_regime_from_the_tail_diagnosis():
    repo = Path(__file__).resolve().parents[2]
    import json

    res = json.loads((repo / "benchmarks" / "results" / "xp_tail_sources.json").read_text())
    res["regimes"] = {"cool_dwarfs_teff_lt_4000": {"n_stars": 211, "labels": {
                          "teff": {"n": 211, "cov1": 0.7156, "cov2": 0.94, "beyond_3sigma": 0.03},
                          "fe_h": {"n": 0}}},
                      "teff_gt_10000": {"n_stars": 422, "labels": {
                          "teff": {"n": 422, "cov1": 0.5734, "cov2": 0.79, "beyond_3sigma": 0.14}}}}
    line = next(ln for ln in tail_source_lines(res) if "per regime out of fold" in ln)
    assert "cool_dwarfs_teff_lt_4000 teff 0.72; teff_gt_10000 teff 0.57." in line
    assert "fe_h" not in line  # a label without stars in the regime is left out
    del res["regimes"]  # a diagnosis written before the section existed
    assert not any("per regime" in ln for ln in tail_source_lines(res))


def test_card_says_whether_a_residual_correction_would_help():
    """The card's line on the cross-validated residual regression gives each label's
    robust sigma and tail before and after it; an older diagnosis without the section
    gives no line."""
    import json

    repo = Path(__file__).resolve().parents[2]
    res = json.loads((repo / "benchmarks" / "results" / "xp_tail_sources.json").read_text())
    res["residual_correction"] = {"labels": {"teff": {
        "before": {"robust_sigma": 58.1, "beyond_3sigma": 0.0203},
        "after": {"robust_sigma": 57.9, "beyond_3sigma": 0.0209}}}}
    line = next(ln for ln in tail_source_lines(res) if "not predictable" in ln)
    assert "58.1 / 2.03 % to 57.9 / 2.09 % (teff)" in line
    del res["residual_correction"]
    assert not any("not predictable" in ln for ln in tail_source_lines(res))


def test_card_gives_the_measured_rates_outside_both_intervals():
    from package_pretrained import interval_text

    tails = {"teff": {"ok_outside_ci95": 0.042, "ok_outside_ci997": 0.0031},
             "logg": {"ok_outside_ci95": 0.039, "ok_outside_ci997": 0.0024}}
    text = interval_text(tails, ["teff", "logg"])
    assert "outside ci95_X (5 % expected): teff 4.20 %, logg 3.90 %" in text
    assert "outside ci997_X (0.27 % expected): teff 0.31 %, logg 0.24 %" in text
    # a catalogue of a bundle without ci997_X: no clause
    assert interval_text({"teff": {"ok_outside_ci95": 0.042}}, ["teff"]) == ""


def test_card_seed_table_has_the_ci997_column_only_where_measured():
    from package_pretrained import seed_lines

    seeds = {"n": 3, "seeds": [0, 1, 2], "robust_sigma": {"teff": {"mean": 55.2, "std": 0.9},
                                                        "logg": {"mean": 0.139, "std": 0.001}},
             "rows_ok_fraction": {"values": [0.95], "mean": 0.95}}
    text = "\n".join(seed_lines({"seeds": seeds}, ["teff", "logg"]))
    assert "ci997" not in text  # an older result: no column
    seeds["ok_outside_ci997"] = {"teff": {"mean": 0.00144, "std": 0.0002}, "logg": {"mean": None}}
    lines = seed_lines({"seeds": seeds}, ["teff", "logg"])
    table = [x for x in lines if x.startswith("|")]
    assert table[0].endswith("usable outside ci997 |") and table[1].count("|") == table[0].count("|")
    assert table[2].startswith("| teff") and table[2].endswith(" 0.144 +- 0.02 % |")
    assert table[3].startswith("| logg") and table[3].endswith("|  |")  # not measured for logg


def test_card_gives_the_cross_fitted_ci997_miss_rate():
    from package_pretrained import ci997_fit_text

    rep = {"labels": {"teff": {"outside_ci997_cross_fitted": 0.00227}, "logg": {"outside_ci997_cross_fitted": None}}}
    assert ci997_fit_text(rep) == "; outside ci997_X, cross-fitted on two halves of them (0.27 % expected): teff 0.23 %"
    assert ci997_fit_text({"labels": {"teff": {"withheld_fraction": 0.0}}}) == ""  # an older neighbour model
