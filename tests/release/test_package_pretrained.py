"""The model card's tail-regime section is written from the bundle and the benchmark result."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "release"))

from package_pretrained import tail_regime_lines  # noqa: E402

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
