"""Diagnostic figures are written as PNG files (NaN points skipped)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from kielnet.diagnostics.plots import kiel_diagram, residual_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_kiel_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    teff = rng.uniform(3500, 7000, 200)
    logg = rng.uniform(0, 5, 200)
    feh = rng.uniform(-2, 0.5, 200)
    teff[0], feh[1] = np.nan, np.nan
    out = kiel_diagram(teff, logg, feh, tmp_path / "sub" / "kiel.png")
    assert out == tmp_path / "sub" / "kiel.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_residual_plot_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    truth = {"teff": rng.uniform(3500, 7000, 300), "logg": rng.uniform(0, 5, 300)}
    pred = {k: v + rng.normal(0, 0.05 * v.std(), 300) for k, v in truth.items()}
    pred["logg"][:5] = np.nan
    out = residual_plot(pred, truth, tmp_path / "res.png", units={"teff": "K", "logg": "dex"})
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 5000



def test_importing_the_diagnostics_leaves_the_matplotlib_backend_alone(tmp_path):
    """No ``matplotlib.use`` and no pyplot at import or when drawing: a notebook's backend
    stays as it is (a fresh interpreter, so that nothing is imported already)."""
    code = ("import importlib, pkgutil, sys, matplotlib, numpy as np\n"
            "matplotlib.use('svg')\n"
            "import kielnet.diagnostics as d\n"
            "for m in pkgutil.iter_modules(d.__path__): importlib.import_module('kielnet.diagnostics.' + m.name)\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "from kielnet.diagnostics.plots import kiel_diagram\n"
            "kiel_diagram(*[np.array([5000.0, 4000.0, 6000.0])] * 3, sys.argv[1])\n"
            "assert matplotlib.get_backend() == 'svg' and 'matplotlib.pyplot' not in sys.modules\n")
    out = tmp_path / "k.png"
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_kiel_diagram_draws_every_star_with_teff_and_logg(tmp_path, monkeypatch):
    """Stars without [Fe/H] (withheld for hot stars) are drawn in grey, not dropped: the
    points drawn are exactly the stars with a finite Teff and log g."""
    import kielnet.diagnostics.plots as plots

    figs = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figs.append(fig) or real(fig, path))
    rng = np.random.default_rng(2)
    teff, logg, feh = rng.uniform(3500, 15000, 300), rng.uniform(0, 5, 300), rng.uniform(-2, 0.5, 300)
    feh[teff > 7000] = np.nan
    teff[:3] = np.nan
    kiel_diagram(teff, logg, feh, tmp_path / "kiel.png")
    ax = figs[0].axes[0]
    drawn = [len(c.get_offsets()) for c in ax.collections]
    want_grey = int((np.isfinite(teff) & ~np.isfinite(feh)).sum())
    assert sorted(drawn) == sorted([want_grey, int((np.isfinite(teff) & np.isfinite(feh)).sum())])
    assert sum(drawn) == 297 and want_grey > 100
    assert f"no [Fe/H] ({want_grey})" in [t.get_text() for t in ax.get_legend().get_texts()]
