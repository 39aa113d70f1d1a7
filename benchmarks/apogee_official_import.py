"""The official APOGEE Net II weights run through kielnet: parity and speed.

A state dict with the official tensor names and shapes (the official ``APOGEENet``
module, transcribed in ``tests/apogeenet2_reference.py``, with seeded random weights)
is saved with ``torch.save`` as the official package stores ``model.pt``, imported with
``kielnet import-weights apogeenet2`` and used on the 26 real apStar files
(``../shared/data/apogee/apStar``) replicated under new file names into a directory of
``--replicas`` × 26 files, joined with a metadata table (random Gaia parallax and
photometry: speed does not depend on the values). Reports

* ``max_label_difference``: kielnet's labels against a plain-torch forward of the same
  official module on the same inputs (log g, log Teff, [Fe/H]; dex);
* ``kielnet``: stars/s of ``kielnet predict`` end to end (reading the apStar files and the
  metadata, labelling, writing the Parquet catalogue), with the bundle's 20 noise
  realisations and without;
* ``official_loop``: stars/s of a loop like the official pipeline's (``apogeenet2/pipeline.py``:
  read one file with astropy, one forward of that spectrum, and with uncertainties one
  forward of its 20 realisations), the same weights, in the same run;
* ``speedup``: their ratios.

Run (idle machine)::

    python benchmarks/apogee_official_import.py [--replicas 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402
from apogeenet2_reference import APOGEENet  # noqa: E402

APSTAR = ROOT.parent / "shared" / "data" / "apogee" / "apStar"
OFFICIAL_MEAN = np.array([2.925783395767212, 3.6705732345581055, -0.13088105618953705])
OFFICIAL_STD = np.array([1.1890668869018555, 0.0917675793170929, 0.25668784976005554])


def official_loop(net: APOGEENet, files: list[Path], meta: np.ndarray, n_realisations: int,
                  rng: np.random.Generator) -> float:
    """Seconds of a loop like apogeenet2/pipeline.py over ``files`` (reading included)."""
    from astropy.io import fits

    t0 = time.perf_counter()
    with torch.no_grad():
        for f, m in zip(files, meta):
            with fits.open(f, memmap=False) as h:
                flux = np.atleast_2d(h[1].data)[0].astype(np.float32)
                err = np.atleast_2d(h[2].data)[0].astype(np.float32)
            x = torch.from_numpy(np.nan_to_num(flux)).reshape(1, 1, -1)
            md = torch.from_numpy(m.astype(np.float32)).reshape(1, 7)
            net(x, md)
            if n_realisations:
                e = torch.from_numpy(np.nan_to_num(err)).reshape(1, 1, -1)
                med = 5 * torch.median(e)
                e = torch.where(e < med, e, med)
                inputs = torch.from_numpy(rng.standard_normal((n_realisations, 1, x.shape[-1])).astype(np.float32)) \
                    * e + x
                out = net(inputs, md.repeat(n_realisations, 1)).numpy()
                np.median(out, axis=0), np.std(out, axis=0)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=20, help="copies of the 26 apStar files (default 20)")
    ap.add_argument("--loop-replicas", type=int, default=5, help="copies timed with the official-style loop")
    ap.add_argument("--out", default=str(RESULTS / "apogee_official_import.json"))
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()
    from astropy.table import Table

    from kielnet.artifact import load_bundle, save_bundle
    from kielnet.inference.predict import predict
    from kielnet.inference.streaming import predict_to_file
    from kielnet.interop.apogeenet2 import import_apogeenet2
    from kielnet.io import open_stars, read_stars

    torch.manual_seed(0)
    net = APOGEENet().eval()
    with torch.no_grad():
        net.fc3.weight.mul_(30.0)  # labels that differ between stars (tests/interop/test_apogeenet2.py)
    work = Path(tempfile.mkdtemp(prefix="apogee_official_"))
    try:
        pt = work / "model.pt"
        torch.save(net.state_dict(), pt)
        bundle_dir = work / "bundle"
        save_bundle(import_apogeenet2(pt), bundle_dir)
        bundle = load_bundle(bundle_dir)
        originals = sorted(APSTAR.glob("apStar*.fits"))
        real = read_stars(APSTAR)
        rng = np.random.default_rng(0)
        n0 = len(real)
        g = rng.uniform(9.0, 13.0, n0)
        cols = {"parallax": rng.uniform(1.0, 10.0, n0), "g": g, "bp": g + 0.9, "rp": g - 1.0}

        # parity on the real files
        from kielnet.data.startable import StarTable

        joined = real.join_scalars(StarTable(ids=real.ids, scalars=cols, meta={"source": "<metadata>"}))
        cat = predict(bundle, joined, n_realisations=0)
        prep = bundle.preprocessor.transform(joined, with_labels=False)
        with torch.no_grad():
            plain = net(torch.from_numpy(np.asarray(prep.spectrum, np.float32)).reshape(n0, 1, -1),
                        torch.from_numpy(np.asarray(prep.branches["metadata"], np.float32))).double().numpy()
        plain = plain * OFFICIAL_STD + OFFICIAL_MEAN
        got = np.stack([np.asarray(cat["logg"], float), np.log10(np.asarray(cat["teff"], float)),
                        np.asarray(cat["fe_h"], float)], axis=1)
        fin = np.isfinite(got)
        max_diff = float(np.max(np.abs(got[fin] - plain[fin])))

        # replicated directory + metadata table (ids as the apStar reader gives them, one row per file)
        data = work / "apstar"
        data.mkdir()
        files = []
        for r in range(args.replicas):
            for i, f in enumerate(originals):
                dst = data / f"{f.stem}_r{r:03d}.fits"
                shutil.copyfile(f, dst)
                files.append(dst)
        n = len(read_stars(data))
        ids = np.unique(real.ids)  # the copies keep their APOGEE ids: one metadata row per star
        gg = rng.uniform(9.0, 13.0, len(ids))
        meta_path = work / "meta.csv"
        Table({"id": ids, "parallax": rng.uniform(1.0, 10.0, len(ids)), "g": gg, "bp": gg + 0.9, "rp": gg - 1.0}
              ).write(meta_path)
        kiel = {}
        for n_real in (0, 20):
            out = work / f"labels_{n_real}.parquet"
            t0 = time.perf_counter()
            summary = predict_to_file(bundle_dir, open_stars(str(data), metadata=[str(meta_path)]), out,
                                      n_realisations=n_real, chunk_size=4096)
            dt = time.perf_counter() - t0
            kiel[f"realisations_{n_real}"] = {"stars": n, "seconds": round(dt, 2), "stars_per_second": n / dt,
                                              "summary": summary.report()}
        # the official-style loop on the first loop_replicas copies
        loop_files = files[: args.loop_replicas * len(originals)]
        pre = bundle.preprocessor
        meta_in = np.asarray(pre.transform(joined, with_labels=False).branches["metadata"])
        meta_rows = np.concatenate([meta_in] * args.loop_replicas)[: len(loop_files)]
        loop = {}
        for n_real in (0, 20):
            dt = official_loop(net, loop_files, meta_rows, n_real, np.random.default_rng(1))
            loop[f"realisations_{n_real}"] = {"stars": len(loop_files), "seconds": round(dt, 2),
                                              "stars_per_second": len(loop_files) / dt}
        speedup = {k: kiel[k]["stars_per_second"] / loop[k]["stars_per_second"] for k in kiel}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"max_label_difference": max_diff, "max_label_difference_unit": "dex (log g, log Teff, [Fe/H])",
              "n_parity_stars": int(n0), "kielnet": kiel, "official_loop": loop, "speedup": speedup,
              "torch_threads": torch.get_num_threads(),
              "definition": "kielnet: kielnet predict end to end (apStar directory + metadata CSV -> Parquet); "
                            "official_loop: a loop like apogeenet2/pipeline.py (astropy read, one forward per "
                            "spectrum, one forward of its 20 realisations), plain Conv1d module, same weights",
              **provenance(commit, dirty)}
    write_result(result, args.out)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
