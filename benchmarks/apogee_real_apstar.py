"""The APOGEE Net II bundle of ``apogee_emulated.py`` applied to the 26 real apStar files
in ``../shared/data/apogee/apStar`` (``kielnet predict`` path: reader → preprocessing →
20 noise realisations → catalogue), plus the χ² emulator fit of the real spectrum
``spectrum_ap_id_2M13012770+5754582_.npz`` next to the CNN's prediction for it.
Writes ``benchmarks/results/apogee_real_apstar.json``.

The bundle was trained on emulated, continuum-normalised dwarf spectra (4200–7000 K);
the apStar files hold un-normalised flux of mostly M dwarfs, so most rows are expected
to be flagged (outside the training range); the point is that every file gets a row
that says why. Run after ``python benchmarks/apogee_emulated.py``:
``python benchmarks/apogee_real_apstar.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kielnet.artifact import load_bundle
from kielnet.inference.predict import predict
from kielnet.io import load_payne_emulator, read_apstar
from kielnet.io.emulator import load_payne_spectra
from kielnet.simulation import fit_spectra

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, bundle_arguments, git_commit, git_dirty, provenance, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "apogee"


def _row(cat, i, names) -> dict:
    out = {"id": str(cat["id"][i]), "file": str(cat["file"][i]) if "file" in cat.colnames else None,
           "status": str(cat["status"][i]), "flag": int(cat["flag"][i])}
    for n in names:
        for c in (n, f"e_{n}", f"sigma_{n}"):
            v = float(cat[c][i])
            out[c] = v if np.isfinite(v) else None
    return out


def main() -> int:
    args = bundle_arguments(__doc__)
    commit, dirty = git_commit(), git_dirty()
    bundle = load_bundle(args.bundle)
    names = bundle.config.label_names
    stars = read_apstar(DATA / "apStar")
    cat = predict(bundle, stars, rng=np.random.default_rng(0))
    rows = [_row(cat, i, names) for i in range(len(cat))]

    emu = load_payne_emulator(DATA / "emulator" / "NN_normalized_spectra_old.npz")
    spec = load_payne_spectra(DATA / "emulator" / "spectrum_ap_id_2M13012770+5754582_.npz", emu)
    fit = fit_spectra(emu, spec)
    cnn = predict(bundle, spec, rng=np.random.default_rng(0))
    comparison = {
        "spectrum": "spectrum_ap_id_2M13012770+5754582_.npz (continuum-normalised, emulator grid)",
        "expected_chi2_fit": {"teff": 4942, "logg": 4.53, "fe_h": -0.19},
        "chi2_fit": {n: float(fit.labels[0, j]) for j, n in enumerate(emu.label_names)},
        "chi2_fit_rms_residual": float(np.atleast_1d(fit.rms_residual)[0]),
        "cnn": _row(cnn, 0, names),
    }
    out = {"n_files": len(stars), "n_rows": len(cat),
           "n_status_ok": int(np.sum(np.asarray(cat["status"]) == "ok")),
           "rows": rows, "emulator_fit_vs_cnn": comparison,
           "bundle": str(args.bundle) + " (apogee_net_2 without metadata, from apogee_emulated.py)",
           **provenance(commit, dirty)}
    write_result(out, args.out or RESULTS / "apogee_real_apstar.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
