"""Inference speed of the APOGEE Net II preset on this machine: stars per second of
``predict`` with 20 noise realisations (the preset's default) and without, the model's
FLOPs per star (torch's FlopCounterMode, one forward pass), and this machine's
measured fp32 matmul GFLOP/s. Writes ``benchmarks/results/apogee_speed.json``.

Uses the bundle of ``apogee_emulated.py`` if present, else an untrained preset network
(speed does not depend on the weights). Run: ``python benchmarks/apogee_speed.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from kielnet.artifact import load_bundle
from kielnet.inference.predict import predict
from kielnet.io import load_payne_emulator
from kielnet.simulation import sample_labels, simulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, bundle_arguments, git_commit, git_dirty, provenance, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "apogee" / "emulator"


def matmul_gflops(n: int = 2048, repeat: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - t0) / 1e9


def main() -> int:
    args = bundle_arguments(__doc__)
    commit, dirty = git_commit(), git_dirty()
    bundle = load_bundle(args.bundle)
    emu = load_payne_emulator(DATA / "NN_normalized_spectra_old.npz")
    rng = np.random.default_rng(0)
    stars = simulate(emu, sample_labels(emu, 256, rng), 50.0, rng)
    nets = bundle.build_members()
    prep = bundle.preprocessor.transform(stars.take(np.arange(1)), with_labels=False)
    with FlopCounterMode(display=False) as fc:
        with torch.inference_mode():
            nets[0](torch.from_numpy(prep.spectrum), [torch.from_numpy(prep.branches[b]) for b in nets[0].branch_names])
    flops = fc.get_total_flops()
    timings = {}
    for n_real in (0, 20):
        for batch in (32, 128):
            predict(bundle, stars.take(np.arange(32)), nets=nets, n_realisations=n_real, batch_size=batch)
            t0 = time.perf_counter()
            predict(bundle, stars, nets=nets, n_realisations=n_real, batch_size=batch)
            dt = time.perf_counter() - t0
            timings[f"realisations_{n_real}_batch_{batch}"] = {"stars_per_second": len(stars) / dt,
                                                              "seconds": dt, "n_stars": len(stars)}
    gf = matmul_gflops()
    out = {"flops_per_star_forward": flops, "n_members": len(nets),
           "predict": timings, "matmul_fp32_gflops": gf,
           "model_gflops_achieved_20_realisations": max(
               v["stars_per_second"] for k, v in timings.items() if "_20_" in k) * 20 * flops / 1e9,
           "note": "20 realisations = 20 forward passes per star per member",
           **provenance(commit, dirty)}
    write_result(out, args.out or RESULTS / "apogee_speed.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
