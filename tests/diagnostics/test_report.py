"""``kielnet report`` pieces: each figure function gives a non-empty PNG; a report on a
catalogue with NaN labels and flagged rows renders, counts them and never draws them; the
HTML page is self-contained and (with Chromium) shows every figure."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from kielnet.diagnostics import figures
from kielnet.diagnostics.external import cluster_metallicity
from kielnet.diagnostics.report import drawable, make_report, read_catalogue_columns
from kielnet.io import atomic_write_table
from kielnet.quality.flags import FLAG_BITS, status_strings

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = ["teff", "logg", "m_h", "alpha_m"]


@pytest.fixture
def drawn_figures(monkeypatch) -> list:
    """The figures ``kielnet.diagnostics.figures`` writes during a test, in order (still
    written as PNG files)."""
    figs: list = []
    real = figures.save_png
    monkeypatch.setattr(figures, "save_png", lambda fig, path: figs.append(fig) or real(fig, path))
    return figs


def _catalogue(n: int = 600, seed: int = 0) -> tuple[Table, Table]:
    """A catalogue with NaN labels, withheld labels and flagged rows, and its reference."""
    rng = np.random.default_rng(seed)
    ref = {"teff": rng.uniform(3800, 8000, n), "logg": rng.uniform(0.5, 5.0, n), "m_h": rng.uniform(-2, 0.4, n),
           "alpha_m": rng.uniform(-0.1, 0.4, n)}
    cat = Table()
    cat["id"] = np.array([f"s{i:05d}" for i in range(n)])
    cat["source_id"] = np.arange(n, dtype=np.int64) + 10 ** 15
    flags = np.zeros(n, dtype=np.int64)
    scale = {"teff": 80.0, "logg": 0.1, "m_h": 0.08, "alpha_m": 0.04}
    for lab in LABELS:
        cat[lab] = ref[lab] + rng.normal(0, scale[lab], n)
        cat[f"e_{lab}"] = np.full(n, scale[lab] / 2)
        cat[f"sigma_{lab}"] = np.full(n, scale[lab])
        cat[lab].unit = cat[f"sigma_{lab}"].unit = u.K if lab == "teff" else u.dex
    bad = np.arange(0, 30)  # unlabelled rows: NaN everywhere, bad_spectrum
    flags[bad] |= 1 << FLAG_BITS["bad_spectrum"]
    hot = np.flatnonzero(ref["teff"] > 7000)[:40]  # [M/H] withheld for hot stars
    flags[hot] |= 1 << FLAG_BITS["label_not_reported"]
    odd = np.setdiff1d(np.arange(30, 90), hot)[:20]  # finite labels but flagged: an absurd value that must not be drawn
    flags[odd] |= 1 << FLAG_BITS["input_outside_training"]
    for lab in LABELS:
        cat[lab][bad] = np.nan
    cat["m_h"][hot] = np.nan
    cat["sigma_m_h"][hot] = np.nan
    cat["teff"][odd] = 99999.0
    cat["flag"] = flags
    cat["status"] = status_strings(flags, LABELS)
    cat["snr_spectrum"] = rng.uniform(10, 300, n)
    cat["g"] = rng.uniform(8, 16, n)
    reft = Table({"gaia_source_id": cat["source_id"][::-1].copy()})  # reversed order: match by id
    for lab in LABELS:
        reft[lab.upper()] = ref[lab][::-1]
    reft["numax"] = np.where(ref["logg"][::-1] < 3.3, 3090 * 10 ** (ref["logg"][::-1] - 4.438)
                             * np.sqrt(5777 / ref["teff"][::-1]), np.nan)
    reft["cluster"] = np.where(np.arange(n) % 7 == 0, np.where(np.arange(n) % 2 == 0, "M67", "NGC188"), "")
    reft["ra"] = rng.uniform(0, 360, n)
    reft["dec"] = rng.uniform(-60, 60, n)
    reft["parallax"] = rng.uniform(0.1, 2.0, n)
    cat.meta["odd_rows"] = odd.tolist()
    return cat, reft


def test_drawable_only_ok_rows():
    cat, _ = _catalogue(100)
    d = drawable(cat)
    odd = cat.meta["odd_rows"]
    assert not d[:30].any() and not d[odd].any()  # bad spectrum and flagged rows
    # ok rows, and rows whose only flag is label_not_reported (their other labels are usable)
    only_withheld = np.asarray(cat["status"]) == "label_not_reported"
    assert only_withheld.any()
    np.testing.assert_array_equal(d, (np.asarray(cat["status"]) == "ok") | only_withheld)
    d2 = drawable(cat, accept=("input_outside_training", "bad_spectrum"))  # bad_spectrum can never be accepted
    assert d2[odd].all() and not d2[:30].any()


def test_each_figure_function_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    n = 500
    t, g = rng.uniform(3500, 7000, n), rng.uniform(0, 5, n)
    m, a = rng.uniform(-2, 0.5, n), rng.uniform(-0.1, 0.4, n)
    m[:50] = np.nan
    snr = rng.uniform(10, 200, n)
    sig = {"teff": rng.uniform(20, 200, n), "logg": rng.uniform(0.02, 0.3, n)}
    pred = {"teff": t + rng.normal(0, 60, n), "logg": g + rng.normal(0, 0.1, n)}
    paths = [
        figures.kiel_by_snr(t, g, m, tmp_path / "a.png", snr=snr),
        figures.kiel_by_snr(t, g, m, tmp_path / "a2.png"),
        figures.residual_density(pred, {"teff": t, "logg": g}, tmp_path / "b.png", units={"teff": "K"}),
        figures.sigma_vs_label(pred, sig, tmp_path / "c.png"),
        figures.sigma_vs_snr(sig, snr, tmp_path / "d.png"),
        figures.calibration_figure(pred, {"teff": t, "logg": g}, sig, tmp_path / "e.png", snr=snr),
        figures.correlation_matrix({"teff": t, "logg": g, "m_h": m, "snr": snr}, tmp_path / "f.png"),
        figures.alpha_vs_metal_kiel_bins(t, g, m, a, tmp_path / "g.png"),
        figures.alpha_vs_metal_rz(rng.uniform(0, 14, n), rng.normal(0, 1, n), m, a, tmp_path / "h.png"),
        figures.flag_statistics({"bad_spectrum": 3}, {"ok": 497, "bad_spectrum": 3}, n, tmp_path / "i.png"),
        figures.seismic_comparison(g, g + rng.normal(0, 0.05, n), tmp_path / "j.png", teff=t),
        figures.cluster_comparison(cluster_metallicity(np.where(np.arange(n) % 2, "A", "B"), m),
                                   tmp_path / "k.png"),
        # nothing drawable: still a PNG saying so
        figures.residual_density({"teff": np.full(5, np.nan)}, {"teff": np.arange(5.0)}, tmp_path / "l.png"),
    ]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, p


def test_kiel_diagram_never_colours_withheld_metallicity(tmp_path):
    """A star whose [M/H] is NaN adds to the grey density, never to a coloured hexagon."""
    from matplotlib.figure import Figure  # noqa: F401 - backend-free

    t = np.array([5000.0] * 50 + [9000.0] * 50)
    g = np.array([4.5] * 50 + [4.0] * 50)
    m = np.array([0.0] * 50 + [np.nan] * 50)
    p = figures.kiel_by_snr(t, g, m, tmp_path / "k.png")
    assert p.read_bytes()[:8] == PNG


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_report_with_nan_and_flagged_rows(tmp_path, suffix):
    cat, ref = _catalogue()
    path = atomic_write_table(cat, tmp_path / f"cat{suffix}")
    back = read_catalogue_columns(path, progress=False)
    assert back["teff"].unit == u.K and back["m_h"].unit == u.dex
    rep = make_report(path, tmp_path / "rep", references=[ref], reference_names=["APOGEE"], progress=False,
                      log=lambda *_: None)
    c = rep.counts
    assert c["rows"] == 600
    status = np.asarray(cat["status"])
    assert sum(v for k, v in c["status"].items() if "bad_spectrum" in k) == 30
    assert sum(c["status"].values()) == 600 and c["status"]["ok"] == int(np.sum(status == "ok"))
    assert c["flag_bits"]["bad_spectrum"] == 30
    assert c["flag_bits"]["label_not_reported"] == 40 and c["flag_bits"]["input_outside_training"] == 20
    assert c["labels"]["m_h"]["nan"] == int(np.isnan(cat["m_h"]).sum()) > 40
    usable = (status == "ok") | (status == "label_not_reported")  # only the withheld labels are NaN there
    flagged = ~usable & np.isfinite(cat["teff"])
    assert c["labels"]["teff"]["finite_but_flagged"] == int(flagged.sum()) >= 20
    n_ok = int(np.sum(usable))
    assert c["drawable_rows"] == n_ok and c["labels"]["teff"]["drawn"] == n_ok
    assert c["references"]["APOGEE"]["matched"] == 600
    # the comparison counts only ok rows: the 99999 K rows are not in it (the bias would show them)
    comp = rep.tables["comparison_APOGEE"]
    row = comp[(comp["label"] == "teff") & (comp["regime"] == "all")][0]
    assert row["n"] == n_ok and abs(row["bias"]) < 30 and row["rms"] < 200
    for key in ("kiel", "residuals_APOGEE", "calibration_APOGEE", "sigma_label", "sigma_snr", "correlation",
                "alpha_kiel", "seismic", "clusters", "alpha_rz", "flags"):
        assert rep.figures[key].read_bytes()[:8] == PNG, key
    # seismic log g from the reference's numax and Teff recovers its log g
    s = rep.tables["seismic"]
    assert s["n"][0] > 50 and abs(s["bias"][0]) < 0.05
    assert set(rep.tables["clusters"]["cluster"]) == {"M67", "NGC188"}
    page = rep.html.read_text()
    imgs = re.findall(r"<img src='data:image/png;base64,([^']+)'", page)
    assert len(imgs) == len(rep.figures)
    for b in imgs:
        assert base64.b64decode(b)[:8] == PNG
    assert "http://" not in page and "https://" not in page  # self-contained


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_page_in_headless_chromium(tmp_path):
    """Every <img> of the page decodes in a real browser (naturalWidth > 0)."""
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary (installed by .ci/run: apt-get install chromium)")
    cat, ref = _catalogue(300)
    rep = make_report(cat, tmp_path / "rep", references=[ref], progress=False, log=lambda *_: None)
    page = rep.html.read_text()
    probe = ("<script>window.addEventListener('load',function(){var im=document.images,bad=0,ok=0;"
             "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++}else{bad++}}"
             "document.body.setAttribute('data-images-ok',ok);document.body.setAttribute('data-images-bad',bad);"
             "});</script>")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", probe + "</body>"))
    cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
           "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           probe_page.resolve().as_uri()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 120 s")
    dom = res.stdout
    m_ok = re.search(r'data-images-ok="(\d+)"', dom)
    m_bad = re.search(r'data-images-bad="(\d+)"', dom)
    assert m_ok and m_bad, f"chromium gave no DOM (rc {res.returncode}): {res.stderr[-2000:]}"
    assert int(m_bad.group(1)) == 0
    assert int(m_ok.group(1)) == len(rep.figures) == len(re.findall(r"<img ", page))


def test_report_on_real_holdout(tiny_holdout, tmp_path):
    """What ``kielnet demo`` writes: the held-out XP-library stars against their APOGEE labels,
    with the bundle's gradient maps."""
    from kielnet.diagnostics.report import reference_table

    res = tiny_holdout
    rep = make_report(res.catalogue, tmp_path / "rep", references=[reference_table(res.test)],
                      reference_names=["APOGEE DR17"], bundle=res.bundle, stars=res.test, progress=False,
                      max_gradient_stars=100, log=lambda *_: None)
    assert rep.counts["references"]["APOGEE DR17"]["matched"] == len(res.test)
    assert {"kiel", "residuals_APOGEE_DR17", "calibration_APOGEE_DR17", "correlation", "flags",
            "gradient_spectrum"} <= set(rep.figures)
    comp = rep.tables["comparison_APOGEE_DR17"]
    row = comp[(comp["label"] == "teff") & (comp["regime"] == "all")][0]
    ok = np.asarray(res.catalogue["status"]) == "ok"
    assert row["n"] == int((ok & np.isfinite(res.test.labels["teff"])).sum())


def test_seismic_comparison_draws_stars_without_teff_in_grey(tmp_path, drawn_figures):
    """Stars whose Teff is withheld keep their place in the log g comparison as a grey
    density; no coloured hexagon is NaN (a median over a hexagon holding them)."""
    rng = np.random.default_rng(5)
    n = 2000
    g = rng.uniform(1.5, 3.5, n)
    t = rng.uniform(4000, 5200, n)
    t[rng.random(n) < 0.3] = np.nan
    figures.seismic_comparison(g, g + rng.normal(0, 0.05, n), tmp_path / "s.png", teff=t)
    hexes = [c for c in drawn_figures[0].axes[0].collections if c.get_array() is not None]
    assert len(hexes) == 2
    grey, coloured = hexes
    assert grey.get_array().sum() == int(np.isnan(t).sum())
    assert np.isfinite(coloured.get_array()).all() and coloured.get_array().size > 100


def test_snr_bins_hold_every_star_once(tmp_path, drawn_figures):
    """The Gaia-RVS Fig. 11 bins start at S/N 15; stars below it (or without an S/N) get
    bins of their own instead of leaving the Kiel diagrams, and the panels count them."""
    rng = np.random.default_rng(6)
    n = 1000
    snr = rng.uniform(16, 300, n)
    snr[:40] = rng.uniform(3, 15, 40)  # < 10 %: the Fig. 11 edges still apply
    snr[40:45] = np.nan
    bins = figures.snr_bins(snr)
    names = [b[0] for b in bins]
    assert names[0] == "S/N < 15" and names[-1] == "no S/N" and "15 ≤ S/N < 25" in names
    stack = np.stack([m for _, m in bins])
    assert (stack.sum(axis=0) == 1).all()
    assert bins[0][1].sum() == 40 and bins[-1][1].sum() == 5
    # a finite upper edge: stars above it are kept too
    assert [b[0] for b in figures.snr_bins(np.array([5.0, 20.0, 80.0]), (10.0, 50.0))] == \
        ["S/N < 10", "10 ≤ S/N ≤ 50", "S/N > 50"]

    t, g = rng.uniform(4000, 6000, n), rng.uniform(1, 4.5, n)
    m = rng.uniform(-1, 0.3, n)
    m[::7] = np.nan
    figures.kiel_by_snr(t, g, m, tmp_path / "k.png", snr=snr)
    counts = []
    for ax in drawn_figures[0].axes:
        title = ax.get_title()
        if "grey)" in title:
            a, b = title.rsplit("(", 1)[1].split(" grey")[0].split(" + ")
            counts.append(int(a) + int(b))
    assert sum(counts) == n and len(counts) == len(bins)


def test_alpha_metal_cells_say_how_many_stars_they_show(tmp_path, drawn_figures):
    """Fig. 14 keeps only the fullest Teff × log g cells; its title says how many of the
    stars with both labels that leaves out."""
    rng = np.random.default_rng(8)
    t = np.r_[rng.uniform(4000, 4500, 300), rng.uniform(9000, 9400, 5)]  # 5 stars in a cell of < 20
    g = np.r_[rng.uniform(2, 3, 300), rng.uniform(4, 4.5, 5)]
    m, a = rng.uniform(-1, 0.3, 305), rng.uniform(0, 0.3, 305)
    a[:10] = np.nan
    figures.alpha_vs_metal_kiel_bins(t, g, m, a, tmp_path / "a.png")
    assert "290 of the 295 stars with both labels" in drawn_figures[0]._suptitle.get_text()


def test_alpha_metal_rz_says_how_many_stars_fall_outside_its_grid(tmp_path, drawn_figures):
    rng = np.random.default_rng(9)
    r, z = rng.uniform(2, 15, 200), rng.normal(0, 0.8, 200)
    r[:7] = 25.0  # beyond the last R edge (20 kpc)
    m, a = rng.uniform(-1, 0.3, 200), rng.uniform(0, 0.3, 200)
    inside = int(((np.abs(z) < 4.0) & (r < 20)).sum())
    figures.alpha_vs_metal_rz(r, z, m, a, tmp_path / "rz.png")
    assert f"{inside} of the 200 stars with both labels and a position" in drawn_figures[0]._suptitle.get_text()


def test_report_leaves_ci997_out_of_the_correlations_and_counts_interval_misses(tmp_path, monkeypatch):
    """ci997_X is ci95_X times one number per label, so it has ci95_X's ranks: the matrix
    keeps ci95_X and does not repeat it. The comparison table counts the misses of both."""
    cat, ref = _catalogue()
    cat["ci95_teff"] = np.asarray(cat["sigma_teff"]) * np.random.default_rng(2).uniform(1.8, 2.5, len(cat))
    cat["ci997_teff"] = 2.4 * cat["ci95_teff"]
    shown: list = []
    real = figures.correlation_matrix
    monkeypatch.setattr(figures, "correlation_matrix", lambda cols, path, **kw: shown.append(list(cols))
                        or real(cols, path, **kw))
    rep = make_report(cat, tmp_path / "rep", references=[ref], reference_names=["APOGEE"], progress=False,
                      log=lambda *_: None)
    assert "ci95_teff" in shown[0] and "ci997_teff" not in shown[0]
    # the comparison table counts the drawn rows outside each interval (logg has none: NaN)
    comp = rep.tables["comparison_APOGEE"]
    row = comp[(comp["label"] == "teff") & (comp["regime"] == "all")][0]
    draw = drawable(cat)
    r = (np.asarray(cat["teff"], float) - np.asarray(ref["TEFF"], float)[::-1])[draw]  # ref: reversed order
    ok = np.isfinite(r)
    assert row["outside_ci997"] == pytest.approx(np.mean(np.abs(r[ok]) > np.asarray(cat["ci997_teff"])[draw][ok]))
    assert row["outside_ci95"] == pytest.approx(np.mean(np.abs(r[ok]) > np.asarray(cat["ci95_teff"])[draw][ok]))
    assert 0 < row["outside_ci95"] and np.isnan(comp[comp["label"] == "logg"]["outside_ci95"]).all()
