"""benchmarks/gpu_check.py: the catalogue comparison its parity sections report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_check import LABELS, compare  # noqa: E402


def _catalogue(n: int = 5) -> Table:
    cat = Table({"status": np.array(["ok"] * n, dtype="U32"), "flag": np.zeros(n, np.int64)})
    for i, name in enumerate(LABELS):
        cat[name] = np.arange(n, dtype=float) + 10 * i
        cat[f"sigma_{name}"] = np.full(n, 2.0)
    return cat


def test_differences_are_measured_in_sigma_and_every_changed_row_is_counted():
    ref, other = _catalogue(), _catalogue()
    other["teff"][3] += 0.5                   # 0.25 sigma
    other["logg"][1] = np.nan                 # withheld in one catalogue only
    other["status"][2], other["flag"][2] = "missing_input", 4
    got = compare(ref, other)
    assert got["n_rows"] == 5 and got["status_differs"] == 1 and got["flag_differs"] == 1
    assert got["teff"]["max_abs_diff_over_sigma"] == pytest.approx(0.25)
    assert got["teff"]["max_abs_diff"] == pytest.approx(0.5)
    assert got["logg"]["finite_differs"] == 1 and got["logg"]["n"] == 4
    assert got["fe_h"]["max_abs_diff_over_sigma"] == 0.0


def test_no_comparable_row_gives_none_rather_than_a_number():
    ref, other = _catalogue(2), _catalogue(2)
    ref["alpha_m"] = np.nan
    got = compare(ref, other)["alpha_m"]
    assert got["n"] == 0 and got["max_abs_diff_over_sigma"] is None and got["max_abs_diff"] is None
