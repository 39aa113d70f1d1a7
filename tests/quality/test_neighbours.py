"""The neighbour model: label support, local σ factors, 95 % intervals, outlier score."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.quality.neighbours import NeighbourModel, positions

NAMES = ["a", "b"]


def _reference(n: int = 4000, seed: int = 0):
    """Stars on a 2-label plane; label b exists only where a < 0; residuals Gaussian
    with σ = 1 except for a < -1, where they are 3x wider, and a > 1.5, where 30 % of
    the stars are wrong by 8σ (a heavy tail)."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(-2, 2, (n, 2))
    snr = 10 ** rng.uniform(1, 2.5, n)
    has = np.ones((n, 2), dtype=bool)
    has[pred[:, 0] >= 0, 1] = False
    z = np.abs(rng.normal(0, 1, (n, 2)))
    z[pred[:, 0] < -1] *= 3.0
    tail = (pred[:, 0] > 1.5) & (rng.random(n) < 0.3)
    z[tail, 0] = 8.0
    z[~has] = np.nan
    return pred, snr, has, z, tail


@pytest.fixture(scope="module")
def model():
    pred, snr, has, z, _ = _reference()
    return NeighbourModel.fit(NAMES, pred, snr, has, z, k_support=40, k_local=150, outlier_budget=0.15)


def test_label_withheld_where_training_set_had_no_value(model):
    new = np.array([[-1.5, 0.0], [-0.5, 1.0], [0.5, 1.0], [1.5, -1.0]])
    a = model.assess(positions(new, np.full(4, 100.0)))
    w = model.withheld(a)
    assert not w[:, 0].any()                           # label a exists everywhere
    assert w[:, 1].tolist() == [False, False, True, True]  # b only where a < 0
    assert a.support[0, 1] == 1.0 and a.support[3, 1] == 0.0


def test_local_factor_follows_the_residuals(model):
    new = np.array([[-1.6, 0.0], [-0.3, 0.0]])
    a = model.assess(positions(new, np.full(2, 100.0)))
    # |N(0,1)| has its 68.27 % quantile at 1; three times wider where a < -1
    assert a.factor[0, 0] == pytest.approx(3.0, rel=0.2)
    assert a.factor[1, 0] == pytest.approx(1.0, rel=0.2)
    # 95 % of |N(0, s)| lies within 1.96 s
    assert a.q95[1, 0] == pytest.approx(1.96, rel=0.2)


def test_heavy_tailed_region_is_flagged_and_threshold_from_reference_only(model):
    pred, snr, has, z, tail = _reference()
    new = np.array([[1.95, 0.0], [-0.3, 0.0], [0.4, 1.0]])
    a = model.assess(positions(new, np.full(3, 100.0)))
    assert model.outliers(a).tolist() == [True, False, False]
    # the threshold is the (1 - budget) quantile of the reference stars' own scores,
    # each computed without itself
    ref = model.assess(positions(pred, snr), exclude_self=True)
    assert model.outlier_threshold == pytest.approx(np.quantile(ref.outlier_score, 0.85))
    assert model.report["flagged_fraction"] <= 0.15 + 1e-9
    # in the reference, flagged stars are the heavy-tailed region's
    flagged = model.outliers(ref)
    assert flagged.any() and np.mean(pred[flagged, 0] > 1.2) > 0.9


def test_no_flag_without_budget():
    pred, snr, has, z, _ = _reference()
    m = NeighbourModel.fit(NAMES, pred, snr, has, z)
    assert not np.isfinite(m.outlier_threshold)
    assert not m.outliers(m.assess(positions(pred[:50], snr[:50]))).any()


def test_non_finite_positions_give_nan(model):
    a = model.assess(positions(np.array([[np.nan, 0.0], [0.1, 0.1]]), np.array([np.nan, np.nan])))
    assert np.isnan(a.support[0]).all() and np.isnan(a.outlier_score[0])
    assert np.isfinite(a.support[1]).all()  # an unknown S/N sits at the reference median


def test_save_load_round_trip(model, tmp_path):
    path = model.save(tmp_path / "n.safetensors")
    again = NeighbourModel.load(path)
    new = positions(np.random.default_rng(1).uniform(-2, 2, (30, 2)), np.full(30, 50.0))
    a, b = model.assess(new), again.assess(new)
    for f in ("support", "factor", "q95", "outlier_score"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert again.outlier_threshold == model.outlier_threshold


def test_inconsistent_arrays_refused(model):
    arrays = model.arrays()
    arrays["z"] = arrays["z"][:10]
    with pytest.raises(ValueError, match="inconsistent shapes"):
        NeighbourModel.from_parts(model._meta(), arrays)


def test_joint_fit_meets_both_coverage_bands_for_heavy_tails():
    """Student-t (3 dof) residuals: a factor fitted to 68.27 % alone leaves the 2σ coverage
    far below 95.45 %; the balanced factor brings both into their bands."""
    rng = np.random.default_rng(3)
    n = 6000
    pred = rng.uniform(-1, 1, (n, 2))
    snr = np.full(n, 50.0)
    z = np.abs(rng.standard_t(3, (n, 2)))
    has = np.ones((n, 2), dtype=bool)
    cov = {}
    for fit_to in ("1sigma", "1and2sigma"):
        m = NeighbourModel.fit(NAMES, pred, snr, has, z, k_local=400, fit_to=fit_to)
        cov[fit_to] = (m.report["labels"]["a"]["cov1"], m.report["labels"]["a"]["cov2"])
    assert cov["1sigma"][0] == pytest.approx(0.683, abs=0.02) and cov["1sigma"][1] < 0.92
    c1, c2 = cov["1and2sigma"]
    assert abs(c1 - 0.6827) <= 0.05 and abs(c2 - 0.9545) <= 0.03


@pytest.mark.parametrize("k", [1, 2, 37, 64, 150])
def test_count_below_equals_comparing_every_neighbour(k):
    """The bit-by-bit prefix count behind the joint 1σ/2σ factor gives the brute-force
    counts, ties, NaN neighbours (sorted last) and NaN thresholds included, for any
    number of neighbours (powers of two and not)."""
    from kielnet.quality.neighbours import _count_below

    rng = np.random.default_rng(5)
    z = np.round(np.abs(rng.standard_t(3, size=(60, 3, k))), 1)    # ties
    z[rng.random(z.shape) < 0.15] = np.nan
    z[7] = np.nan                                                  # a star without neighbours
    zs = np.sort(z, axis=2)
    g = np.round(np.abs(rng.normal(size=(60, 3, 9))) * 2, 1)
    g[0, 0, :] = np.nan
    g[1, 1, 3] = zs[1, 1, 0] if np.isfinite(zs[1, 1, 0]) else 1.0  # a threshold equal to a neighbour
    g[2, 2, :] = np.inf
    with np.errstate(invalid="ignore"):
        ref = (zs[:, :, :, None] < g[:, :, None, :]).sum(axis=2)
    got = _count_below(zs, g)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    assert (got[2, 2] == np.isfinite(zs[2, 2]).sum()).all() and (got[0, 0] == 0).all()


def test_sorted_rows_equal_sorting_in_float64():
    """Sorting the stored float32 values and widening them gives the numbers of widening
    first and sorting along the neighbours, NaN last, in (star, label, neighbour) order."""
    from kielnet.quality.neighbours import _sorted_rows

    rng = np.random.default_rng(2)
    z = np.abs(rng.standard_t(3, size=(40, 150, 4))).astype(np.float32)
    z[rng.random(z.shape) < 0.1] = np.nan
    got = _sorted_rows(z)
    assert got.dtype == np.float64 and got.shape == (40, 4, 150) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, np.moveaxis(np.sort(z.astype(np.float64), axis=1), 1, 2))


def test_neighbours_are_the_nearest_reference_stars(model):
    """The k nearest reference stars, nearest first, as a brute-force distance sort gives
    them; assessed as themselves, each reference star leaves itself out."""
    x = model.standardise(positions(np.random.default_rng(4).uniform(-2, 2, (25, 2)), np.full(25, 40.0)))
    d = np.linalg.norm(x[:, None, :] - model.coords[None, :, :], axis=2)
    idx = model._neighbours(x, 30, exclude_self=False)
    assert idx.shape == (25, 30)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1, kind="stable")[:, :30])
    own = model._neighbours(model.coords[:20], 30, exclude_self=True)
    assert own.shape == (20, 30) and not (own == np.arange(20)[:, None]).any()
    assert model._neighbours(x[:3], 1, exclude_self=False).shape == (3, 1)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_assessment_does_not_depend_on_parts_or_threads(model, monkeypatch, threads):
    rng = np.random.default_rng(5)
    raw = positions(rng.uniform(-2.2, 2.2, (900, 2)), 10 ** rng.uniform(1, 2.5, 900))
    raw[::37, 0] = np.nan  # stars without a position keep NaN, in their rows
    monkeypatch.setenv("KIELNET_THREADS", "1")
    whole = model.assess(raw, chunk=10_000)
    monkeypatch.setenv("KIELNET_THREADS", threads)
    parts = model.assess(raw, chunk=64)
    for name in ("support", "factor", "q95", "tail_rate", "outlier_score"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=name)
    assert np.isnan(parts.support[::37]).all() and np.isfinite(parts.support[1]).all()


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_reference_stars_leave_themselves_out_in_every_part(monkeypatch, threads):
    """Assessed as themselves, the reference stars give the same numbers in parts of any
    size on any number of threads as in one part, and each one's are those of its
    nearest other reference stars (brute force), itself never among them. A part that
    took its rows for the first reference stars would keep each star of the later parts
    among its own neighbours and drop its farthest one."""
    pred, snr, has, z, _ = _reference()
    pred, snr, has, z = pred[:600].copy(), snr[:600], has[:600], z[:600]
    pred[5, 0] = np.nan  # a star without a position is no reference star: the others keep their order
    raw = positions(pred, snr)
    m = NeighbourModel.fit(NAMES, pred, snr, has, z, k_support=20, k_local=40, min_local=10)
    monkeypatch.setenv("KIELNET_THREADS", "1")
    whole = m.assess(raw, exclude_self=True, chunk=10_000)
    monkeypatch.setenv("KIELNET_THREADS", threads)
    parts = m.assess(raw, exclude_self=True, chunk=50)
    for name in ("support", "factor", "q95", "tail_rate", "outlier_score"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=name)
    ref = np.flatnonzero(np.isfinite(raw[:, 0]))
    d = np.linalg.norm(m.coords[:, None, :] - m.coords[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1, kind="stable")[:, :20]
    np.testing.assert_allclose(parts.support[ref], has[ref][near].mean(axis=1))


def test_local_disagreement_threshold_follows_the_stars_predicted_alike(tmp_path):
    """Where the reference stars' members disagree more (a > 1, as for stars rare in
    training), the threshold is higher: a new star disagreeing as much as they do is not
    above it there, but is where the members usually agree."""
    pred, snr, has, z, _ = _reference()
    rng = np.random.default_rng(4)
    dis = rng.normal(0.0, 0.3, len(pred)) + np.where(pred[:, 0] > 1, 2.0, 0.0)
    m = NeighbourModel.fit(NAMES, pred, snr, has, z, k_local=150, disagreement=dis, disagreement_quantile=0.9)
    new = np.array([[1.6, 0.0], [-0.5, 0.0]])
    a = m.assess(positions(new, np.full(2, 100.0)))
    t = a.disagreement_threshold
    assert t[0] == pytest.approx(2.0 + 1.2816 * 0.3, abs=0.15)
    assert t[1] == pytest.approx(1.2816 * 0.3, abs=0.15)
    assert 2.0 < t[0] and 2.0 > t[1]
    # each reference star judged without itself: about the quantile's share above
    ref = m.assess(positions(pred, snr), exclude_self=True)
    assert abs(np.mean(dis > ref.disagreement_threshold) - 0.10) < 0.02
    again = NeighbourModel.load(m.save(tmp_path / "n.safetensors"))
    np.testing.assert_array_equal(again.assess(positions(new, np.full(2, 100.0))).disagreement_threshold, t)
    assert "ensemble_disagreement" in m.describe()
    # without reference disagreements there is no threshold
    assert NeighbourModel.fit(NAMES, pred, snr, has, z).assess(positions(new, np.full(2, 100.0))) \
        .disagreement_threshold is None
    with pytest.raises(ValueError, match="one value per star"):
        NeighbourModel.fit(NAMES, pred, snr, has, z, disagreement=dis[:10])
    arrays = m.arrays()
    arrays["disagreement"] = arrays["disagreement"][:5]
    with pytest.raises(ValueError, match="disagreement has shape"):
        NeighbourModel.from_parts(m._meta(), arrays)


# ---------------------------------------------------------------- the 99.73 % interval
def test_conformal_factor_rank_rule():
    from kielnet.quality.neighbours import GAUSSIAN_3SIGMA, conformal_factor

    u = np.arange(1, 1001, dtype=float)
    # the ceil(1001 x 0.9973) = 999th smallest of 1000
    assert conformal_factor(u) == 999.0
    assert conformal_factor(np.r_[u, np.nan, np.inf]) == 999.0  # non-finite scores are not stars
    # 369 stars cannot give a 99.73 % rank; 370 can (their largest)
    assert np.isnan(conformal_factor(np.arange(369.0)))
    assert conformal_factor(np.arange(370.0)) == 369.0
    assert conformal_factor(u, 0.5) == 501.0 and GAUSSIAN_3SIGMA == pytest.approx(0.9973, abs=1e-4)


def _t_reference(n: int, seed: int, dof: float):
    rng = np.random.default_rng(seed)
    pred = rng.uniform(-1, 1, (n, 2))
    z = np.abs(rng.standard_t(dof, (n, 2))) if np.isfinite(dof) else np.abs(rng.normal(0, 1, (n, 2)))
    return pred, np.full(n, 50.0), np.ones((n, 2), dtype=bool), z


@pytest.mark.parametrize("dof", [3.0, np.inf])
def test_ci997_holds_99_73_percent_of_new_stars_where_sigma_does_not(dof):
    """Reference and new stars with Student-t (3 dof) or Gaussian residuals. For the heavy
    tail, far more than 0.27 % of new stars lie beyond 3 local σ, while ci997 misses
    about 0.27 % of them, cross-fitted as well as on new stars; for the Gaussian it is
    about 3σ wide (1.53 × ci95). Without the conformal factor (ci997 = 3/1.96 ci95, the
    Gaussian ratio) the heavy tail's miss rate is several times higher."""
    m = NeighbourModel.fit(NAMES, *_t_reference(8000, 5, dof), fit_to="1and2sigma")
    pred, snr, _, z = _t_reference(40000, 6, dof)
    a = m.assess(positions(pred, snr))
    miss = z > m.ci997_scale(a)
    beyond_3sigma = z > 3 * a.factor
    gaussian_ratio = z > m.ci95_scale(a) * 3.0 / 1.959963984540054
    for j, name in enumerate(NAMES):
        assert miss[:, j].mean() == pytest.approx(0.0027, abs=0.0015)
        assert m.report["labels"][name]["outside_ci997_cross_fitted"] == pytest.approx(0.0027, abs=0.0015)
        assert m.report["labels"][name]["ci997_factor"] == m.ci997_factor[j]
        if np.isfinite(dof):
            assert beyond_3sigma[:, j].mean() > 0.01
            assert gaussian_ratio[:, j].mean() > 3 * 0.0027
            assert m.ci997_factor[j] > 1.8
        else:
            assert m.ci997_factor[j] == pytest.approx(3.0 / 1.96, rel=0.12)


def test_ci997_left_out_stars_are_those_a_catalogue_would_not_report():
    """The factor is fitted on stars whose label would be reported: a region without the
    label (withheld) holding huge residuals does not widen it."""
    pred, snr, has, z = _t_reference(6000, 7, np.inf)
    base = NeighbourModel.fit(NAMES, pred, snr, has, z)
    has2, z2 = has.copy(), z.copy()
    far = pred[:, 0] > 0.6
    has2[far, 1] = False
    z2[far, 1] = 50.0  # support withholds label b there; these residuals must not count
    m = NeighbourModel.fit(NAMES, pred, snr, has2, z2)
    assert m.withheld(m.assess(positions(pred[far], snr[far])))[:, 1].mean() > 0.9
    assert m.ci997_factor[1] == pytest.approx(base.ci997_factor[1], rel=0.15)
    assert m.ci997_factor[1] < 2.5


def test_ci997_factor_round_trip_and_older_models(model, tmp_path):
    again = NeighbourModel.load(model.save(tmp_path / "n.safetensors"))
    np.testing.assert_array_equal(again.ci997_factor, model.ci997_factor)
    assert "ci997_X" in model.describe()
    meta = model._meta()
    meta.pop("ci997_factor")  # a model saved before the interval existed
    old = NeighbourModel.from_parts(meta, model.arrays())
    assert old.ci997_factor is None and old.ci997_scale(old.assess(positions(np.zeros((1, 2)), None))) is None
    assert "ci997_X" not in old.describe()
    for bad in ([0.5, 2.0], [2.0], [2.0, float("inf")]):
        meta["ci997_factor"] = bad
        with pytest.raises(ValueError, match="ci997_factor"):
            NeighbourModel.from_parts(meta, model.arrays())
    meta["ci997_factor"] = [None, 2.0]  # too few stars for label a: unknown
    assert np.isnan(NeighbourModel.from_parts(meta, model.arrays()).ci997_factor[0])
