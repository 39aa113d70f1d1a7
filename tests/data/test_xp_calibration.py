"""XP calibration as a batched linear map (kielnet.data.xp_calibration) and its matrices
(kielnet.io.xp_matrices): exact algebra on synthetic inputs, then GaiaXPy as the
reference on every real star in the shared files (one of them without BP)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from kielnet.data.xp import correlation_matrix, pack_correlations, xp_coefficients
from kielnet.data.xp_calibration import XPSampling, sample_band
from kielnet.errors import InputError

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
XP_DIR = DATA / "gaia_xp"
FILES = ("XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW_with_missing_BP.csv",
         "18Sco-XP-spectra.csv")
REFERENCE = XP_DIR / "SampledMeanSpectrum.csv"
needs_data = pytest.mark.skipif(not (XP_DIR / FILES[0]).is_file(),
                                reason=f"real XP data {XP_DIR} is absent")
MISSING_BP_STAR = "5405570973190252288"


def _random_case(rng, n=6, k=55, n_pix=40):
    design = rng.normal(size=(n_pix, k))
    coef = rng.normal(size=(n, k)) * 100
    err = rng.uniform(0.5, 3.0, size=(n, k))
    corr = []
    for _ in range(n):
        m = rng.normal(size=(k, 2 * k))
        c = m @ m.T
        d = 1 / np.sqrt(np.diag(c))
        corr.append(pack_correlations(c * d[:, None] * d[None, :]))
    return design, coef, err, np.array(corr)


def _brute(design, coef, err, corr):
    """Per star: A c and sqrt(diag(A D R D Aᵀ)) with the full 55×55 matrices."""
    r = correlation_matrix(corr, coef.shape[1])
    flux = np.array([design @ c for c in coef])
    sig = np.array([np.sqrt(np.diag(design @ (np.diag(s) @ rr @ np.diag(s)) @ design.T))
                    for s, rr in zip(err, r)])
    return flux, sig


# ------------------------------------------------------------------ algebra
def test_sample_band_equals_the_full_covariance_product():
    design, coef, err, corr = _random_case(np.random.default_rng(1))
    flux, sig = sample_band(design, coef, err, corr)
    bf, bs = _brute(design, coef, err, corr)
    np.testing.assert_allclose(flux, bf, rtol=1e-12, atol=1e-12 * np.abs(bf).max())
    np.testing.assert_allclose(sig, bs, rtol=1e-10)
    # blocks of stars give the same numbers as one star at a time
    for i in range(len(coef)):
        f1, s1 = sample_band(design, coef[i], err[i], corr[i])
        np.testing.assert_allclose(s1[0], sig[i], rtol=1e-13)
        np.testing.assert_allclose(f1[0], flux[i], rtol=1e-13, atol=1e-13 * np.abs(flux).max())
    assert sample_band(design, coef, with_errors=False)[1] is None


def test_the_same_batch_gives_the_same_bits_on_any_blas_thread_count():
    """One process and a Dask worker (one BLAS thread each, or two) must give identical
    rows: multi-threaded OpenBLAS splits a product by rows and changes last bits, so the
    calibration runs on one thread whatever the caller's setting."""
    from threadpoolctl import threadpool_limits

    design, coef, err, corr = _random_case(np.random.default_rng(2), n=3, n_pix=343)
    big = [np.tile(a, (700, 1)) for a in (coef, err, corr)]  # rows beyond a BLAS tile
    runs = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            runs.append(sample_band(design, *big))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    # both bands at once on the thread pool (XPSampling.sample): the same bits as one by one
    rng = np.random.default_rng(4)
    w = np.clip(np.linspace(-1, 2, 343), 0, 1)
    sampling = XPSampling(np.linspace(336, 1020, 343), design, rng.normal(size=(343, 55)), 1 - w, w)
    rp = [np.tile(a, (700, 1)) for a in _random_case(rng, n=3, n_pix=343)[1:]]
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            flux, err = sampling.sample(big[0], rp[0], big[1], rp[1], big[2], rp[2])
        f_bp, e_bp = runs[0]
        f_rp, e_rp = sample_band(sampling.rp_design, *rp)
        np.testing.assert_array_equal(flux, (1 - w) * f_bp + w * f_rp)
        np.testing.assert_array_equal(err, np.sqrt(((1 - w) * e_bp) ** 2 + (w * e_rp) ** 2))


def test_truncation_equals_slicing_the_bases():
    design, coef, err, corr = _random_case(np.random.default_rng(2), n=3)
    keep = np.array([10, 55, np.nan])  # NaN keeps all, as GaiaXPy
    flux, sig = sample_band(design, coef, err, corr, n_bases=keep)
    full = correlation_matrix(corr)
    for i, k in enumerate([10, 55, 55]):
        a, s = design[:, :k], err[i, :k]
        cov = np.diag(s) @ full[i, :k, :k] @ np.diag(s)
        np.testing.assert_allclose(flux[i], a @ coef[i, :k], rtol=1e-11, atol=1e-9)
        np.testing.assert_allclose(sig[i], np.sqrt(np.diag(a @ cov @ a.T)), rtol=1e-10)
    assert not np.allclose(flux[0], sample_band(design, coef[:1], with_errors=False)[0][0])


def _toy_sampling(rng) -> XPSampling:
    wl = np.arange(600.0, 680.0, 2.0)
    w_rp = np.clip((wl - 635.0) / 8.0, 0.0, 1.0)
    return XPSampling(wavelength_nm=wl, bp_design=rng.normal(size=(len(wl), 55)),
                      rp_design=rng.normal(size=(len(wl), 55)), bp_weight=1.0 - w_rp,
                      rp_weight=w_rp, origin="toy")


@pytest.mark.parametrize("n", [943, 1001, 256, 1])
def test_sampled_bits_do_not_depend_on_the_number_of_threads(monkeypatch, n):
    """A Dask worker runs on one thread, one process on several: every star's flux and
    error must be the same bits (the parts of the stars are cut by place, not by thread;
    with two parts of 471 and 472 stars, OpenBLAS gave the last star of each other bits)."""
    rng = np.random.default_rng(7)
    w = np.clip(np.linspace(-1, 2, 343), 0, 1)
    sampling = XPSampling(np.linspace(336, 1020, 343), rng.normal(size=(343, 55)), rng.normal(size=(343, 55)),
                          1 - w, w)
    bp, rp = rng.normal(size=(n, 55)) * 100, rng.normal(size=(n, 55)) * 100
    errs = [rng.uniform(0.5, 3.0, size=(n, 55)) for _ in range(2)]
    corrs = [rng.uniform(-0.3, 0.3, size=(n, 1485)) for _ in range(2)]
    runs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("KIELNET_THREADS", threads)
        runs.append(sampling.sample(bp, rp, errs[0], errs[1], corrs[0], corrs[1]))
    for flux, err in runs[1:]:
        np.testing.assert_array_equal(flux, runs[0][0])
        np.testing.assert_array_equal(err, runs[0][1])


def test_each_band_computed_only_where_weighted_gives_the_full_merge_with_bad_inputs():
    """sample() computes a band only where its merge weight is > 0; the merged flux and
    error are the bits of merging both bands computed at every pixel, and a star with a
    non-finite coefficient, error or correlation (not a whole missing band) is NaN at
    every pixel of the merge it reaches, as the full products make it."""
    rng = np.random.default_rng(11)
    s = _toy_sampling(rng)
    _, bp, bp_e, bp_r = _random_case(rng, n=6)
    _, rp, rp_e, rp_r = _random_case(rng, n=6)
    rp[1, 4] = np.nan      # one RP coefficient: NaN over the RP side and the overlap
    bp_r[2, 7] = np.nan    # one BP correlation: the error only
    bp_e[3, 0] = np.inf    # an infinite BP error
    rp[4] = np.nan         # BP only (the whole band missing)
    flux, err = s.sample(bp, rp, bp_e, rp_e, bp_r, rp_r)
    f_bp, e_bp = sample_band(s.bp_design, bp, bp_e, bp_r)
    f_rp, e_rp = sample_band(s.rp_design, rp, rp_e, rp_r)
    w_bp, w_rp = s.bp_weight, s.rp_weight
    with np.errstate(invalid="ignore"):
        want_f = w_bp * f_bp + w_rp * f_rp
        want_e = np.sqrt((w_bp * e_bp) ** 2 + (w_rp * e_rp) ** 2)
    for i in (0, 1, 2, 3):
        np.testing.assert_array_equal(flux[i], want_f[i])
        np.testing.assert_array_equal(err[i], want_e[i])
    assert np.isnan(flux[1]).all() and np.isfinite(flux[2]).all() and np.isnan(err[2]).all()
    assert np.isnan(err[3]).all() and np.isfinite(err[0]).all()
    np.testing.assert_array_equal(flux[4, w_bp > 0], f_bp[4, w_bp > 0])
    assert np.isnan(flux[4, w_bp == 0]).all()


def test_merge_and_missing_bands():
    rng = np.random.default_rng(3)
    s = _toy_sampling(rng)
    _, bp, bp_e, bp_r = _random_case(rng, n=4)
    _, rp, rp_e, rp_r = _random_case(rng, n=4)
    bp[1] = np.nan  # RP only
    rp[2] = np.nan  # BP only
    bp[3] = rp[3] = np.nan  # neither
    flux, err = s.sample(bp, rp, bp_e, rp_e, bp_r, rp_r)
    f_bp, e_bp = sample_band(s.bp_design, bp, bp_e, bp_r)
    f_rp, e_rp = sample_band(s.rp_design, rp, rp_e, rp_r)
    w_bp, w_rp = s.bp_weight, s.rp_weight
    np.testing.assert_allclose(flux[0], w_bp * f_bp[0] + w_rp * f_rp[0], rtol=1e-13)
    np.testing.assert_allclose(err[0], np.hypot(w_bp * e_bp[0], w_rp * e_rp[0]), rtol=1e-13)
    # one band: its unweighted flux where its weight is > 0 (GaiaXPy), NaN elsewhere
    rp_ok, bp_ok = w_rp > 0, w_bp > 0
    np.testing.assert_array_equal(flux[1, rp_ok], f_rp[1, rp_ok])
    np.testing.assert_array_equal(err[1, rp_ok], e_rp[1, rp_ok])
    assert np.isnan(flux[1, ~rp_ok]).all() and np.isnan(err[1, ~rp_ok]).all()
    np.testing.assert_array_equal(flux[2, bp_ok], f_bp[2, bp_ok])
    assert np.isnan(flux[2, ~bp_ok]).all()
    assert np.isnan(flux[3]).all() and np.isnan(err[3]).all()
    overlap = (s.wavelength_nm > 635) & (s.wavelength_nm < 643)
    assert overlap.sum() == 4 and np.isfinite(flux[:3][:, overlap]).all()  # covered by either
    flux_only, none = s.sample(bp, rp, with_errors=False)
    assert none is None
    np.testing.assert_array_equal(flux_only, flux)


def test_sampling_checks_shapes_and_is_read_only():
    rng = np.random.default_rng(4)
    s = _toy_sampling(rng)
    with pytest.raises(InputError, match="bp_design"):
        XPSampling(**{**s.arrays(), "bp_design": s.bp_design[:, :54]})
    with pytest.raises(InputError, match="rp_coef"):
        s.sample(np.zeros((2, 55)), np.zeros((3, 55)), with_errors=False)
    with pytest.raises(InputError, match="errors and correlations"):
        s.sample(np.zeros((2, 55)), np.zeros((2, 55)))
    with pytest.raises(ValueError):
        s.bp_design[0, 0] = 1.0
    assert XPSampling(**s.arrays()) == s


# ------------------------------------------------------------------ GaiaXPy as reference
@pytest.fixture(scope="module")
def tables():
    from kielnet.io.gaia_xp import read_xp_continuous

    if not (XP_DIR / FILES[0]).is_file():
        pytest.skip(f"real XP data {XP_DIR} is absent")
    return {name: read_xp_continuous(XP_DIR / name) for name in FILES}


def _gaiaxpy_calibrate(gaiaxpy, table, **kwargs):
    from kielnet.io.gaia_xp import _quiet_gaiaxpy, to_gaiaxpy_frame

    frame, _ = to_gaiaxpy_frame(table)  # std = 1 where a file lacks it: errors are unchanged
    with _quiet_gaiaxpy():
        out, used = gaiaxpy.calibrate(frame, save_file=False, **kwargs)
    return (np.vstack(out["flux"]).astype(float), np.vstack(out["flux_error"]).astype(float),
            np.asarray(used, float))


def _inputs(table):
    bp, rp = xp_coefficients(table)
    e = table.extra
    return (bp, rp, e["bp_coefficient_errors"], e["rp_coefficient_errors"],
            e["bp_coefficient_correlations"], e["rp_coefficient_correlations"])


def _max_rel(a, b):
    same_nan = np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    return same_nan, float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok])))


@needs_data
@pytest.mark.parametrize("truncation", [False, True])
def test_matches_gaiaxpy_calibrate_on_every_real_star(gaiaxpy, tables, truncation):
    """Observed (GaiaXPy 2.1.5): max relative difference ~2e-14 in flux, ~2e-15 in error."""
    from kielnet.io.xp_matrices import default_xp_sampling

    sampling = default_xp_sampling()
    assert sampling.n_pix == 343 and sampling.origin.startswith("gaiaxpy")
    n_stars = 0
    for name, table in tables.items():
        if truncation and not np.isfinite(table.extra["rp_n_relevant_bases"]).all():
            continue  # 18 Sco's file has no n_relevant_bases
        trunc = ({"bp_n_bases": table.extra["bp_n_relevant_bases"],
                  "rp_n_bases": table.extra["rp_n_relevant_bases"]} if truncation else {})
        flux, err = sampling.sample(*_inputs(table), **trunc)
        ref_flux, ref_err, used = _gaiaxpy_calibrate(gaiaxpy, table, truncation=truncation)
        np.testing.assert_array_equal(sampling.wavelength_nm, used)
        for mine, ref in ((flux, ref_flux), (err, ref_err)):
            same_nan, rel = _max_rel(mine, ref)
            assert same_nan and rel < 1e-11, (name, rel)
        if name == FILES[1]:
            i = list(table.ids).index(MISSING_BP_STAR)
            assert np.isnan(flux[i, :150]).all() and np.isfinite(flux[i, 150:]).all()
        n_stars += len(table)
    assert n_stars >= (3 if truncation else 6)


@needs_data
def test_other_grid_matches_gaiaxpy(gaiaxpy, tables):
    from kielnet.io.xp_matrices import xp_sampling

    grid = np.arange(400.0, 1000.0, 7.5)
    table = tables[FILES[1]]
    sampling = xp_sampling(grid)
    flux, err = sampling.sample(*_inputs(table))
    ref_flux, ref_err, used = _gaiaxpy_calibrate(gaiaxpy, table, sampling=grid)
    np.testing.assert_array_equal(used, grid)
    for mine, ref in ((flux, ref_flux), (err, ref_err)):
        same_nan, rel = _max_rel(mine, ref)
        assert same_nan and rel < 1e-11, rel
    with pytest.raises(InputError, match="sampling"):
        xp_sampling(np.arange(100.0, 200.0))


def _hand_parse(cell: str) -> np.ndarray:
    return np.array([float(v) for v in cell.strip()[1:-1].split(",")])


@needs_data
def test_band_sampling_reproduces_sampled_mean_spectrum_csv(gaiaxpy, tables):
    """SampledMeanSpectrum.csv: GaiaXPy ``convert`` (per band, pseudo-wavelength grid
    linspace(0, 60, 481)) of XP_CONTINUOUS_RAW.csv; the same batched algebra with
    convert's design matrices reproduces it (flux to 1e-12 of the peak, error 1e-6)."""
    from kielnet.io.xp_matrices import internal_design_matrices

    design = internal_design_matrices(np.linspace(0, 60, 481))
    table = tables[FILES[0]]
    bp, rp, bp_e, rp_e, bp_r, rp_r = _inputs(table)
    mine = {"BP": sample_band(design["bp"], bp, bp_e, bp_r),
            "RP": sample_band(design["rp"], rp, rp_e, rp_r)}
    with open(REFERENCE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for row in rows:
        i = list(table.ids).index(row["source_id"])
        flux, err = (a[i] for a in mine[row["xp"]])
        ref_flux, ref_err = _hand_parse(row["flux"]), _hand_parse(row["error"])
        assert np.abs(flux - ref_flux).max() / np.abs(ref_flux).max() < 1e-12
        np.testing.assert_allclose(err, ref_err, rtol=1e-6)


# ------------------------------------------------------------------ the cache
@needs_data
def test_matrices_are_cached_per_gaiaxpy_version(gaiaxpy, tmp_path, monkeypatch):
    from kielnet.io import xp_matrices

    monkeypatch.setenv(xp_matrices.CACHE_ENV, str(tmp_path / "fresh"))
    built = xp_matrices.default_xp_sampling()
    path = xp_matrices.cache_path(gaiaxpy.__version__)
    assert path.parent == tmp_path / "fresh" and path.is_file()
    assert xp_matrices.default_xp_sampling() is built  # kept in memory
    # without GaiaXPy: the cached copy is used
    monkeypatch.setitem(sys.modules, "gaiaxpy", None)
    xp_matrices._cached.cache_clear()
    loaded = xp_matrices.default_xp_sampling()
    assert loaded == built and loaded is not built
    assert loaded.origin == built.origin
    # without GaiaXPy and without a cache: a clear error
    monkeypatch.setenv(xp_matrices.CACHE_ENV, str(tmp_path / "empty"))
    with pytest.raises(InputError, match="pip install gaiaxpy") as exc:
        xp_matrices.default_xp_sampling()
    assert "empty" in str(exc.value)
    xp_matrices._cached.cache_clear()


def test_coefficients_invert_the_map_exactly_on_a_synthetic_grid():
    """Least squares recovers the coefficients that made a merged spectrum (full column
    rank), also from the spectrum over a per-star number; a star with a NaN pixel gets NaN."""
    rng = np.random.default_rng(3)
    n_pix = 150
    wl = np.linspace(330, 1050, n_pix)
    w_bp = np.clip((643 - wl) / 8, 0, 1)
    s = XPSampling(wl, rng.normal(size=(n_pix, 55)), rng.normal(size=(n_pix, 55)), w_bp, 1 - w_bp)
    bp, rp = rng.normal(size=(5, 55)) * 100, rng.normal(size=(5, 55)) * 100
    flux, _ = s.sample(bp, rp, with_errors=False)
    scale = np.array([1.0, 2.0, 0.5, 10.0, 3.0])[:, None]
    flux = flux / scale
    flux[4, 7] = np.nan
    got_bp, got_rp = s.coefficients(flux)
    np.testing.assert_allclose(got_bp[:4], (bp / scale)[:4], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(got_rp[:4], (rp / scale)[:4], rtol=1e-8, atol=1e-8)
    assert np.isnan(got_bp[4]).all() and np.isnan(got_rp[4]).all()
    with pytest.raises(InputError, match="flux must have shape"):
        s.coefficients(np.ones((2, n_pix + 1)))


@needs_data
def test_coefficients_recovered_from_float32_library_like_spectra_of_real_stars(tables):
    """The library's representation (default grid, / median flux, float32) of the real
    archive stars gives back coefficients that reproduce the spectrum to float32 precision;
    each band over its first coefficient (the xp_coefficients preset's inputs) agrees with
    the archive's to 1e-3 of the first coefficient, typically to a fraction of the
    coefficient errors (the high orders, barely constrained by the spectrum, least); the
    star without BP (its spectrum NaN below 635 nm) gets NaN."""
    from kielnet.data.xp_calibration import with_xp_coefficients
    from kielnet.io.gaia_xp import xp_sampled_spectra
    from kielnet.io.xp_matrices import default_xp_sampling

    sampling = default_xp_sampling()
    table = tables["XP_CONTINUOUS_RAW_with_missing_BP.csv"]
    lib = xp_sampled_spectra(table)
    lib = type(lib)(ids=lib.ids, flux=lib.flux.astype(np.float32).astype(np.float64), flux_err=lib.flux_err,
                    wavelength=lib.wavelength, scalars={}, extra={}, meta={})
    got = with_xp_coefficients(lib, sampling)
    bp, rp = xp_coefficients(table)
    gbp, grp = xp_coefficients(got)
    full = ~np.isnan(bp).all(axis=1)
    assert (~full).sum() == 1 and np.isnan(gbp[~full]).all()
    back, _ = sampling.sample(gbp[full], grp[full], with_errors=False)
    assert np.max(np.abs(back - lib.flux[full])) < 1e-6 * np.max(np.abs(lib.flux[full]))
    for band, ref, est in (("bp", bp[full], gbp[full]), ("rp", rp[full], grp[full])):
        assert np.max(np.abs(est[:, 1:] / est[:, :1] - ref[:, 1:] / ref[:, :1])) < 1e-3
        in_errors = np.abs(est * (ref[:, :1] / est[:, :1]) - ref) / table.extra[f"{band}_coefficient_errors"][full]
        assert np.median(in_errors) < 0.5
    with pytest.raises(InputError, match="343 pixels"):
        with_xp_coefficients(table, sampling)
