"""The robustness matrix (``tests/robustness_matrix.py``): every bad input, option,
bundle and resume case, run through the ``kielnet`` command line on the real data,
must end in its documented outcome — a clear error, a flagged row or a refused
resume — with no row lost, nothing silently wrong and no traceback."""

from __future__ import annotations

import pytest

import robustness_matrix as robustness  # tests/ is on sys.path (conftest)

pytestmark = pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")


@pytest.fixture(scope="module")
def ctx(tiny_bundle_dir, xp_subset, tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("robustness")
    c = robustness.make_context(work, bundle=tiny_bundle_dir)
    return c


@pytest.mark.parametrize("name", list(robustness.CASES))
def test_case_ends_in_its_documented_outcome(ctx, name):
    expected, _ = robustness.CASES[name]
    o = robustness.run_case(ctx, name)
    assert not o.silently_wrong, o.detail
    assert o.outcome != "traceback", o.detail
    assert o.outcome == expected, o.detail
    assert o.left_behind == [], f"files left behind after a refusal: {o.left_behind}"
    if o.rows_out is not None:
        assert o.rows_out == o.rows_in


def test_the_matrix_covers_every_kind_of_case():
    prefixes = {n.split("_")[0] for n in robustness.CASES}
    assert {"spectrum", "magnitude", "predict", "train", "bundle", "option", "fits", "parquet", "apstar",
            "rvs", "xp"} <= prefixes
    assert len(robustness.CASES) >= 45


def test_the_classifier_catches_a_silently_wrong_catalogue():
    """The harness itself must be able to fail: a catalogue with a foreign row, a bad
    row marked ok or an ok row with NaN is silently wrong."""
    import numpy as np
    from astropy.table import Table

    cat = Table({"id": ["a", "b", "c"], "teff": [5000.0, 5100.0, np.nan], "e_teff": [1.0, 1.0, 1.0],
                 "sigma_teff": [1.0, 1.0, 1.0], "status": ["ok", "ok", "ok"]})
    assert robustness.catalogue_problems(cat, ["a", "b", "c"]) == ["an ok row has a non-finite teff"]
    assert robustness.catalogue_problems(cat[:2], ["a", "b"], bad_rows=[1])
    assert robustness.catalogue_problems(cat[:2], ["a", "x"])
    assert robustness.catalogue_problems(cat[:2], ["a", "b", "c"])
    ok = robustness.Run(0, "", "")
    assert robustness.classify_failure(ok).silently_wrong
