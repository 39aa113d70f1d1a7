"""kielnet on a CUDA GPU: parity with the CPU and the networks' speed there.

One command on a machine whose torch sees a GPU, ``python benchmarks/gpu_check.py``,
writes ``benchmarks/results/gpu_check.json`` (``--out`` elsewhere). kielnet's
``predict`` runs the networks on CUDA whenever torch sees a GPU (``--device`` chooses);
training runs on the CPU. This checks that path and sizes it.

* ``parity``: the shipped ``xp-apogee-dr17`` bundle labels the 1,000-star XP-library
  subset (``../shared/data``, ``--subset``) on the CPU and on the GPU, ``fp32`` and
  ``bf16``, with torch's TF32 switches left on (their default for cuDNN): kielnet's fp32
  must still be IEEE float32 there. Per label the max and 99th percentile of
  ``|Δ label| / sigma_X``, the max ``|Δ label|`` in label units, and the rows whose
  status or flag differs.
* ``runner_parity``: random-init networks of each preset (the architectures of
  ``throughput.json``) through :class:`kielnet.compute.EnsembleRunner` on the CPU (its
  fused channels-last path) and on the GPU: max ``|Δ output|`` over 512 random rows.
* ``before``: the same sections of the committed result, when it came from an earlier
  commit (the first run measured TF32 convolutions, since switched off).
* ``networks``: rows/s of each preset's whole ensemble on the GPU (inputs preprocessed,
  on the host, copies to the GPU included), fp32 and bf16, at several batch sizes;
  ``stars_per_s`` divides by the preset's noise realisations (20 for ``apogee_net_2``).
* ``realisation_path``: ``apogee_net_2``'s whole realisation path (noise draws and
  preprocessing on the CPU, networks on the GPU, medians) in stars/s.
* ``end_to_end``: ``predict`` of ``xp-apogee-dr17`` on 10^5 stars (the subset tiled with
  new ids) with the networks on the GPU and on this machine's CPU, its ``timings``
  (networks / the rest).

The machine's copy of the tree may carry no ``.git``: ``--commit`` records the commit it
was copied from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kielnet.artifact import load_bundle
from kielnet.compute import EnsembleRunner, realisation_statistics
from kielnet.config import load_config
from kielnet.data.startable import StarTable
from kielnet.inference.predict import predict
from kielnet.io import load_xp_library

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, label_change, provenance, write_result  # noqa: E402
from throughput import PRESETS, _fitted_preprocessor, best_seconds, preset_nets, random_inputs  # noqa: E402

SUBSET = ROOT.parent / "shared" / "data" / "xp_library" / "apogee_dr17_gaiaxp_sampled_subset1000.npz"
LABELS = ("teff", "logg", "fe_h", "alpha_m")
#: the device under test (``--device``; ``cpu`` only to try this script where no GPU is)
DEVICE = "cuda"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def compare(ref, other) -> dict:
    """Per label: max / p99 of |Δ| / sigma (rows finite in both), max |Δ|, and rows whose
    finiteness, status or flag differs."""
    out: dict = {"n_rows": len(ref),
                 "status_differs": int(np.sum(np.asarray(ref["status"]) != np.asarray(other["status"]))),
                 "flag_differs": int(np.sum(np.asarray(ref["flag"]) != np.asarray(other["flag"])))}
    for name in LABELS:
        c = label_change(ref, other, name)
        finite = [np.isfinite(np.asarray(cat[name], float)) for cat in (ref, other)]
        out[name] = {"n": c["n"], "finite_differs": int(np.sum(finite[0] != finite[1])),
                     "max_abs_diff_over_sigma": c["max_delta_over_sigma"],
                     "p99_abs_diff_over_sigma": c["p99_delta_over_sigma"], "max_abs_diff": c["max_abs_delta"]}
    return out


def timed_predict(bundle, table, **kw):
    timings: dict = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    cat = predict(bundle, table, timings=timings, **kw)
    return cat, {"seconds": time.perf_counter() - t0, **{k: float(v) for k, v in timings.items()}}


def parity(bundle, table) -> dict:
    predict(bundle, table.take(np.arange(64)), device=DEVICE)  # warm-up: cuDNN plans, allocator
    ref, t_cpu = timed_predict(bundle, table, device="cpu")
    res: dict = {"bundle": "xp-apogee-dr17", "n_stars": len(table), "cpu_seconds": t_cpu}
    res["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    res["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    for key in ("fp32", "bf16"):
        cat, t = timed_predict(bundle, table, device=DEVICE, precision=key)
        res[key] = {**compare(ref, cat), "device_seconds": t}
        log(f"parity {key}: " + ", ".join(f"{n} max {res[key][n]['max_abs_diff_over_sigma']:.2e} sigma"
                                           for n in LABELS))
    return res


def runner_parity() -> dict:
    out = {}
    for name, (n_pix, widths) in PRESETS.items():
        nets = preset_nets(name, 2)
        spec, br = random_inputs(512, n_pix, widths)
        cpu, _ = EnsembleRunner(nets, device="cpu").predict(spec, br)
        dev, _ = EnsembleRunner(nets, device=DEVICE).predict(spec, br)
        row = {"max_abs_diff": float(np.max(np.abs(dev - cpu))),
               "output_rms": float(np.sqrt(np.mean(cpu.astype(np.float64) ** 2)))}
        out[name] = row
        log(f"runner parity {name}: {row}")
    return out


def networks(quick: bool) -> dict:
    out = {}
    batches = (256, 2048) if quick else (1024, 4096, 16384)
    for name, (n_pix, widths) in PRESETS.items():
        cfg = load_config(name)
        n_members = cfg.ensemble.n_splits * cfg.ensemble.members_per_split
        n_real = max(1, cfg.inference.n_realisations)
        nets = preset_nets(name, n_members)
        n = min(4 * max(batches), 32768)
        spec, br = random_inputs(n, n_pix, widths)
        row: dict = {"n_members": n_members, "n_realisations": n_real, "rows": n}
        for precision in ("fp32", "bf16"):
            sweep = {}
            for b in batches:
                runner = EnsembleRunner(nets, batch_size=b, device=DEVICE, precision=precision)
                sweep[str(b)] = n / best_seconds(lambda: runner.predict(spec, br), 2 if quick else 3)
            best = max(sweep, key=sweep.get)
            row[precision] = {"rows_per_s_by_batch": sweep, "best_batch": int(best),
                              "rows_per_s": sweep[best], "stars_per_s": sweep[best] / n_real}
            log(f"networks {name} {precision}: {sweep[best] / n_real:,.0f} stars/s at batch {best}")
        out[name] = row
    return out


def realisation_path(n_stars: int, n_cpu: int) -> dict:
    """``n_stars`` through the GPU, ``n_cpu`` of them through this machine's CPU."""
    nets = preset_nets("apogee_net_2", 1)
    pre, table = _fitted_preprocessor("apogee_net_2", PRESETS["apogee_net_2"][0], n_stars)
    n_real = load_config("apogee_net_2").inference.n_realisations
    out: dict = {"n_realisations": n_real}
    for device, n in ((DEVICE, n_stars), ("cpu", n_cpu)):
        runner = EnsembleRunner(nets, device=device, batch_size=256 if device == "cpu" else 4096)
        sub = table.take(np.arange(n))

        def run():
            realisation_statistics(runner, pre, sub, n_real, np.random.default_rng(0), pre.inverse_labels)

        key = "gpu" if device != "cpu" else "cpu"
        out[key] = {"n_stars": n, "stars_per_s": n / best_seconds(run, 2)}
        log(f"apogee_net_2 realisation path on {device}: {out[key]['stars_per_s']:,.0f} stars/s")
    return out


def end_to_end(bundle, table, n: int, n_cpu: int) -> dict:
    """``n`` stars with the networks on the GPU, the first ``n_cpu`` of them on the CPU."""
    reps = -(-n // len(table))
    tiles = []
    for r in range(reps):
        t = table.take(np.arange(len(table)))
        t.ids = np.char.add(t.ids, f"_{r}")
        tiles.append(t)
    big = StarTable.concat(tiles).take(np.arange(n))
    out: dict = {}
    for device, batch, m in ((DEVICE, 4096, n), ("cpu", 256, n_cpu)):
        cat, t = timed_predict(bundle, big.take(np.arange(m)), device=device, batch_size=batch)
        out["gpu" if device != "cpu" else "cpu"] = {**t, "n_stars": m, "batch_size": batch,
                                                    "stars_per_s": m / t["seconds"]}
        log(f"end to end on {device}: {m / t['seconds']:,.0f} stars/s ({t})")
    return out


def _earlier(path: Path, commit: str) -> dict | None:
    """The committed result's sections (or its own ``before``) when it came from another commit."""
    committed = RESULTS / "gpu_check.json"
    src = committed if committed.is_file() else path
    if not src.is_file():
        return None
    old = json.loads(src.read_text())
    if str(commit).startswith(old.get("git_commit", "?")[:7]) or str(old.get("git_commit", "?")).startswith(commit):
        return old.get("before")
    return {k: old[k] for k in ("git_commit", "date", "parity", "runner_parity", "networks", "realisation_path",
                                "end_to_end") if k in old}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", default=str(SUBSET), help="the 1,000-star XP-library subset (.npz)")
    ap.add_argument("--quick", action="store_true", help="smaller sweeps")
    ap.add_argument("--commit", default=None, help="the commit this tree was copied from (default: git here)")
    ap.add_argument("--device", default="cuda", help="device under test (cpu: try the script without a GPU)")
    ap.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE != "cpu" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device here", file=sys.stderr)
        return 2
    commit = args.commit or git_commit()
    dirty = False if args.commit else git_dirty()
    t0 = time.time()
    result: dict = {"device": DEVICE}
    if DEVICE != "cpu":
        props = torch.cuda.get_device_properties(DEVICE)
        result["gpu"] = {"name": props.name, "memory_gib": props.total_memory / 2 ** 30,
                         "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version()}
        log(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    bundle = load_bundle("xp-apogee-dr17")
    table = load_xp_library(args.subset)
    result["parity"] = parity(bundle, table)
    result["runner_parity"] = runner_parity()
    result["networks"] = networks(args.quick)
    result["realisation_path"] = realisation_path(500 if args.quick else 1000, 100 if args.quick else 200)
    result["end_to_end"] = end_to_end(bundle, table, 20000 if args.quick else 100000, 5000 if args.quick else 20000)
    result["seconds"] = time.time() - t0
    result.update(provenance(commit, dirty))
    before = _earlier(Path(args.out), commit)
    if before:
        result["before"] = before
    path = write_result(result, args.out)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
