"""The Gaia XP archive, streamed (issue 23): ``python benchmarks/xp_archive.py`` writes
``benchmarks/results/xp_archive.json``. Measure on an idle machine.

Input: the real archive rows of ``../shared/data/gaia_xp/XP_CONTINUOUS_RAW*.csv`` (3
distinct stars, one without BP; ``18Sco-XP-spectra.csv`` has another column set and no
standard deviations, so it is left out) replicated with new unique ``source_id`` (every
other cell's text kept as it is, a ``phot_g_mean_mag`` column added: an archive file
with only G) into a bulk-download-like directory of ECSV-headed
``XpContinuousMeanSpectrum_*.csv.gz`` files (default 10 files × 10^4 stars, written
once under ``benchmarks/.work/xp_archive/``, reused when present).

Keys: ``stars``, ``rows_in``, ``rows_out``; ``stars_per_s_end_to_end`` (the whole
``kielnet predict --bundle xp-apogee-dr17 --data DIR --out cat.parquet`` in a child
process, wall time, no metadata table; ``--repeats`` runs, default 3, each in
``runs_end_to_end``: the median run); ``stars_per_s_networks`` (the same ensemble,
networks only, on the prepared inputs of 10^4 of the same stars, in this process with the
process settings of ``kielnet predict`` (:func:`kielnet.runtime.keep_large_allocations`),
measured before the first end-to-end run and after each: for the median run the faster of
the two beside it, both in ``stars_per_s_networks_before_after``, all in
``stars_per_s_networks_all``);
``stage_seconds_end_to_end`` (the run's own seconds per stage, from the closing ``time:``
line of ``kielnet predict``), ``stage_cores_end_to_end`` (the same line's cores kept busy per
stage: the process's CPU seconds over the wall seconds), ``stars_per_s_networks_in_run`` (stars / the networks'
seconds inside that run) and ``end_to_end_over_networks`` (the ratio to each networks
rate); ``stars_per_s_gaiaxpy`` (today's GaiaXPy path on a slice: reading, parsing and
``xp_sampled_spectra(method="gaiaxpy")``); ``peak_rss_gib_1e4`` / ``peak_rss_gib``
(peak RSS of the predict child at 10^4 / all stars, ``/usr/bin/time``: the medians of the
repeated runs);
``max_rel_flux_diff_vs_gaiaxpy`` / ``max_rel_error_diff_vs_gaiaxpy`` (the streamed
sampled spectra of the real stars against ``gaiaxpy.calibrate``, before the median
division); ``dask_identical`` (``--cluster local:2`` on a 2-file subset: the same rows);
``coefficient_input`` (from ``benchmarks/results/xp_coefficient_input.json``: the coefficient-input
preset against the sampled one on validation stars; run ``benchmarks/xp_coefficient_input.py``
first); ``projection_all_sky_h`` (hours for 2.2×10^8 stars here and on 100 Dask workers: from
the whole ``local:2`` run's rate per worker, start included, and from a busy worker's rate,
its seconds per stage summed over the workers, plus the row count of the files).

``--stars N`` (e.g. 2000, a smoke test) makes a smaller directory (2 files) elsewhere
under ``.work`` and writes ``xp_archive_smoke.json`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402
from _stream import (all_sky_hours, paired_ratios, rows_of, same_rows, stage_cores_of,  # noqa: E402
                     stage_seconds_of, timed_predict, worker_busy_rate)

SHARED = (ROOT / ".." / "shared" / "data" / "gaia_xp").resolve()
RAW = SHARED / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
BUNDLE = "xp-apogee-dr17"
ALL_SKY = 2.2e8
ECSV_HEADER = "# %ECSV 1.0\n# ---\n# delimiter: ','\n# schema: astropy-2.0\n"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def real_rows() -> tuple[str, list[str]]:
    """Header and data lines of the real archive rows (distinct stars of the RAW files)."""
    seen: dict[str, str] = {}
    header = ""
    for path in sorted(SHARED.glob("XP_CONTINUOUS_RAW*.csv")):
        lines = path.read_text().splitlines()
        header = header or lines[0]
        if lines[0] != header:
            continue
        for ln in lines[1:]:
            if ln.strip():
                seen.setdefault(ln.split(",", 1)[0], ln)
    return header, list(seen.values())


def make_directory(folder: Path, n_files: int, per_file: int) -> Path:
    """The bulk-download-like directory (reused when complete)."""
    done = folder / "_COMPLETE"
    if done.is_file() and done.read_text() == f"{n_files}x{per_file}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("*.csv.gz"):
        f.unlink()
    header, rows = real_rows()
    at = 10**15
    for k in range(n_files):
        name = folder / f"XpContinuousMeanSpectrum_{at:019d}-{at + per_file - 1:019d}.csv.gz"
        with gzip.open(name, "wt", compresslevel=6, newline="") as fh:
            fh.write(ECSV_HEADER + header + ",phot_g_mean_mag\n")
            for i in range(per_file):
                rest = rows[(at + i) % len(rows)].split(",", 1)[1]
                fh.write(f"{at + i},{rest},{12.0 + 0.001 * ((at + i) % 5000):.3f}\n")
        at += per_file
    done.write_text(f"{n_files}x{per_file}")
    return folder


def networks_rate(folder: Path, n: int, bundle_path: str | Path = BUNDLE) -> float:
    """Stars/s of the ensemble's networks alone on the prepared inputs of ``n`` stars."""
    import torch

    from kielnet.artifact import load_bundle
    from kielnet.compute import member_predictions
    from kielnet.inference.inputs import fill_absent_inputs
    from kielnet.io import open_stars

    bundle = load_bundle(bundle_path)
    sampled = bundle.config.spectrum is not None
    table = next(iter(open_stars(folder, sampled=sampled, coefficients_only=not sampled).batches(n)))
    table = fill_absent_inputs(bundle, table)
    prep = bundle.preprocessor.transform(table, with_labels=False)
    nets = bundle.build_members()
    member_predictions(nets, prep, bundle.preprocessor.inverse_labels)  # warm-up
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        member_predictions(nets, prep, bundle.preprocessor.inverse_labels)
        best = min(best, time.perf_counter() - t0)
    log(f"networks: {len(table) / best:.0f} stars/s ({torch.get_num_threads()} threads)")
    return len(table) / best


def gaiaxpy_rate(folder: Path, n: int) -> float | None:
    """Stars/s of today's GaiaXPy path on ``n`` rows: reading, parsing, ``gaiaxpy.calibrate``."""
    from kielnet.errors import InputError
    from kielnet.io.xp_matrices import _require_gaiaxpy

    try:  # imported with the user's matplotlib settings kept (GaiaXPy turns on text.usetex)
        _require_gaiaxpy()
    except InputError:
        return None
    from kielnet.io.gaia_xp import xp_sampled_spectra

    first = sorted(folder.glob("*.csv.gz"))[0]
    lines = gzip.open(first, "rt").read().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    sl = folder.parent / f"gaiaxpy_slice_{n}.csv"
    sl.write_text("\n".join(body[:n + 1]) + "\n")
    t0 = time.perf_counter()
    out = xp_sampled_spectra(sl, method="gaiaxpy")
    dt = time.perf_counter() - t0
    sl.unlink()
    log(f"gaiaxpy path: {len(out) / dt:.0f} stars/s on {len(out)} rows")
    return len(out) / dt


def gaiaxpy_differences() -> dict:
    """Max relative flux / error difference of the streamed calibration against
    ``gaiaxpy.calibrate`` over the real stars (pixels where GaiaXPy's value is finite)."""
    from kielnet.errors import InputError
    from kielnet.io.xp_matrices import _require_gaiaxpy

    try:  # imported with the user's matplotlib settings kept (GaiaXPy turns on text.usetex)
        gaiaxpy = _require_gaiaxpy()
    except InputError:
        return {"max_rel_flux_diff_vs_gaiaxpy": None, "max_rel_error_diff_vs_gaiaxpy": None}
    from kielnet.io.gaia_xp import to_gaiaxpy_frame, xp_sampled_spectra
    from kielnet.io.streams.xp_continuous import XpContinuousSource
    from kielnet.io.xp_matrices import _quiet_gaiaxpy

    worst_f = worst_e = 0.0
    for path in sorted(SHARED.glob("XP_CONTINUOUS_RAW*.csv")):
        src = XpContinuousSource(path, sampled=True)
        mine = next(iter(src.batches(100)))
        flux = mine.flux * mine.extra["medflux"][:, None]
        err = mine.flux_err * mine.extra["medflux"][:, None]
        coeffs = XpContinuousSource(path).read_all()
        frame, _ = to_gaiaxpy_frame(coeffs)
        with _quiet_gaiaxpy():
            cal, _ = gaiaxpy.calibrate(frame, save_file=False)
        ref_f = np.vstack([np.asarray(v, float) for v in cal["flux"]])
        ref_e = np.vstack([np.asarray(v, float) for v in cal["flux_error"]])
        ok = np.isfinite(ref_f) & (ref_f != 0)
        worst_f = max(worst_f, float(np.nanmax(np.abs(flux[ok] - ref_f[ok]) / np.abs(ref_f[ok]))))
        ok = np.isfinite(ref_e) & (ref_e != 0)
        worst_e = max(worst_e, float(np.nanmax(np.abs(err[ok] - ref_e[ok]) / np.abs(ref_e[ok]))))
        assert np.array_equal(mine.flux, xp_sampled_spectra(path).flux, equal_nan=True)
    return {"max_rel_flux_diff_vs_gaiaxpy": worst_f, "max_rel_error_diff_vs_gaiaxpy": worst_e}


def row_count_seconds(path: Path) -> float:
    """Wall seconds to count the rows of one bulk file (what each of a cluster run's count
    tasks does, :func:`kielnet.io.streams.xp_continuous.count_file_rows`), best of 2."""
    from kielnet.io.streams.xp_continuous import count_file_rows

    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        count_file_rows(str(path))
        best = min(best, time.perf_counter() - t0)
    return best


def gzip_decoder() -> str:
    """What decompresses the .csv.gz files (kielnet uses ISA-L's igzip when installed)."""
    try:
        from importlib.metadata import version

        return f"isal {version('isal')} (igzip)"
    except Exception:  # noqa: BLE001 - not installed
        return "zlib (pyarrow)"


COEFFICIENT_BUNDLE = ROOT / "benchmarks" / ".work" / "xp_coefficient_input" / "coefficients_bundle"


def coefficient_input(folder: Path, work: Path, chunk: tuple[str, ...], small: int) -> dict | None:
    """Robust sigma per label of the coefficient-input model against the sampled one, from
    ``benchmarks/results/xp_coefficient_input.json`` (``benchmarks/xp_coefficient_input.py``:
    both trained alike on the library's training part, scored on its validation stars), and
    the coefficient model's own archive path on the same directory (its bundle from that
    script's work directory: coefficients read without their uncertainties, no sampling)."""
    path = RESULTS / "xp_coefficient_input.json"
    if not path.is_file():
        return None
    import json

    d = json.loads(path.read_text())
    archive = None
    if (COEFFICIENT_BUNDLE / "bundle.json").is_file():
        cat = work / "cat_coefficients.parquet"
        r = timed_predict(COEFFICIENT_BUNDLE, folder, cat, *chunk)
        stars = rows_of(cat)
        archive = {"bundle": f"{COEFFICIENT_BUNDLE.relative_to(ROOT)} ({d['ensemble']['n_splits']} x "
                             f"{d['ensemble']['members_per_split']} members)",
                   "stars": stars, "wall_s": r["wall_s"], "peak_rss_gib": r["peak_rss_gib"],
                   "stars_per_s_end_to_end": round(stars / r["wall_s"], 1),
                   "stars_per_s_networks": round(networks_rate(folder, small, COEFFICIENT_BUNDLE), 1)}
        log(f"coefficient model on the archive: {archive}")
    return {"archive_path": archive,"robust_sigma_coefficients": d["models"]["coefficients"]["robust_sigma"],
            "robust_sigma_sampled": d["models"]["sampled"]["robust_sigma"],
            "ratio_coefficients_over_sampled": d["robust_sigma_ratio_coefficients_over_sampled"],
            "scored_on": d["protocol"], "ensemble": d["ensemble"],
            "from": f"benchmarks/results/xp_coefficient_input.json ({d['command']}, commit {d['git_commit'][:7]})"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stars", type=int, default=100_000, help="stars in the directory (default 100000)")
    ap.add_argument("--files", type=int, default=10, help="files (default 10; 2 with --stars < 100000)")
    ap.add_argument("--chunk-size", type=int, default=10_000,
                    help="kielnet predict --chunk-size for the 10^4 and the whole-directory runs (default "
                         "10000: both runs then hold chunks of the same size, so the RSS ratio shows growth "
                         "with the number of stars; the CLI default, 20000, is measured beside it)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="end-to-end runs at 10^4 and at all stars (default 3; the medians are reported)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    commit, dirty = git_commit(), git_dirty()
    from kielnet.runtime import keep_large_allocations

    keep_large_allocations()  # the process settings of `kielnet predict`, for the networks-only rate
    smoke = args.stars < 100_000
    n_files = 2 if smoke else args.files
    per_file = max(1, args.stars // n_files)
    stars = per_file * n_files
    work = ROOT / "benchmarks" / ".work" / ("xp_archive_smoke" if smoke else "xp_archive")
    folder = make_directory(work / "XpContinuousMeanSpectrum", n_files, per_file)
    log(f"directory: {stars} stars in {n_files} files ({sum(f.stat().st_size for f in folder.glob('*.gz')) / 2**20:.0f}"
        " MiB gzipped)")

    res: dict = {"stars": stars, "files": n_files, "bundle": BUNDLE, "chunk_size": args.chunk_size,
                 "gzip_decoder": gzip_decoder()}
    chunk = ("--chunk-size", str(args.chunk_size))
    # peak RSS at 10^4 stars: the first file's stars alone (a 1-file glob), `repeats` runs
    small = min(10_000, per_file)
    first = sorted(folder.glob("*.csv.gz"))[0]
    small_runs = [timed_predict(BUNDLE, first, work / "cat_1e4.parquet", *chunk) for _ in range(args.repeats)]
    peaks_1e4 = [r1["peak_rss_gib"] for r1 in small_runs]
    res["peak_rss_gib_1e4"] = float(np.median(peaks_1e4))
    res["peak_rss_gib_1e4_runs"] = peaks_1e4
    res["stars_1e4"] = small
    log(f"{small} stars: {[r1['wall_s'] for r1 in small_runs]} s, peak {peaks_1e4} GiB")
    # the whole directory, end to end, `repeats` times, each between two measurements of the
    # networks alone (this machine's speed drifts by 10-20 % over minutes): every run's ratio
    # uses the faster of the two measurements beside it; the headline is the median run
    cat = work / "cat.parquet"
    nets = [networks_rate(folder, small)]
    runs = []
    for _ in range(args.repeats):
        runs.append(timed_predict(BUNDLE, folder, cat, *chunk))
        nets.append(networks_rate(folder, small))
        log(f"end to end: {stars / runs[-1]['wall_s']:.1f} stars/s, peak {runs[-1]['peak_rss_gib']} GiB")
    rates = [stars / r["wall_s"] for r in runs]
    paired = paired_ratios(rates, nets)
    mid = paired["median_run"]
    r = runs[mid]
    res.update(rows_in=stars, rows_out=rows_of(cat), wall_s=r["wall_s"],
               peak_rss_gib=float(np.median([x["peak_rss_gib"] for x in runs])),
               stars_per_s_end_to_end=round(rates[mid], 1), cpu_s=r["cpu_s"],
               cores_busy=round(r["cpu_s"] / (r["wall_s"] * (os.cpu_count() or 1)), 2), summary=r["stdout"])
    res["runs_end_to_end"] = [{"wall_s": x["wall_s"], "stars_per_s": round(rate, 1), "peak_rss_gib": x["peak_rss_gib"],
                               "cpu_s": x["cpu_s"], "stage_seconds": stage_seconds_of(x["stdout"]),
                               "stage_cores": stage_cores_of(x["stdout"]),
                               "stars_per_s_networks_before_after": [round(nets[i], 1), round(nets[i + 1], 1)]}
                              for i, (x, rate) in enumerate(zip(runs, rates))]
    rc = timed_predict(BUNDLE, folder, work / "cat_default_chunk.parquet")
    res["cli_default_chunk"] = {"chunk_size": 20_000, "peak_rss_gib": rc["peak_rss_gib"], "wall_s": rc["wall_s"],
                                "stars_per_s_end_to_end": round(stars / rc["wall_s"], 1)}
    log(f"CLI default chunk: {res['cli_default_chunk']}")
    res["stars_per_s_networks"] = round(max(nets[mid], nets[mid + 1]), 1)
    res["stars_per_s_networks_before_after"] = [round(nets[mid], 1), round(nets[mid + 1], 1)]
    res["stars_per_s_networks_all"] = [round(v, 1) for v in nets]
    # the same run's own account of its time (kielnet predict's closing "time:" line)
    stages = stage_seconds_of(r["stdout"])
    res["stage_seconds_end_to_end"] = stages
    res["stage_cores_end_to_end"] = stage_cores_of(r["stdout"])  # CPU over wall seconds per stage: cores kept busy
    res["stars_per_s_networks_in_run"] = round(stars / stages["networks"], 1)
    in_run = [rate / (stars / x["stage_seconds"]["networks"]) for x, rate in zip(res["runs_end_to_end"], rates)]
    res["end_to_end_over_networks"] = {
        "isolated_faster": round(paired["median_faster"], 3),
        "isolated_slower": round(paired["median_slower"], 3),
        "in_run": round(float(np.median(in_run)), 3),
        "per_run_isolated_faster": [round(v, 3) for v in paired["faster"]],
        "note": f"medians over {args.repeats} end-to-end runs; isolated: each run against the networks alone on "
                "10^4 prepared stars, best of 3, measured just before and just after it (faster: the faster of the "
                "two, slower: the slower); in_run: the networks' own seconds inside that run (first chunk's layout "
                "conversion included); the target is judged on isolated_faster"}
    res["peak_rss_note"] = (f"peak_rss_gib and peak_rss_gib_1e4: medians over {args.repeats} runs each (peak RSS "
                            "of the predict child, /usr/bin/time); the runs' own values in runs_end_to_end and "
                            "peak_rss_gib_1e4_runs")
    rate = gaiaxpy_rate(folder, min(2_000, per_file))
    res["stars_per_s_gaiaxpy"] = None if rate is None else round(rate, 1)
    res.update(gaiaxpy_differences())
    # Dask on a 4-file subset, one chunk (task) per file, two per worker: the same rows as one process
    n_sub_files = min(4, n_files)
    sub = work / f"{n_sub_files}_files"
    sub.mkdir(exist_ok=True)
    for f in sorted(folder.glob("*.csv.gz"))[:n_sub_files]:
        link = sub / f.name
        if not link.exists():
            link.symlink_to(f)
    per_task = ("--chunk-size", str(per_file))
    one, many = work / "cat_sub_one.parquet", work / "cat_sub_dask.parquet"
    ro = timed_predict(BUNDLE, sub, one, *per_task)
    rd = timed_predict(BUNDLE, sub, many, *per_task, "--cluster", "local:2")
    n_sub = rows_of(one)
    res["dask_identical"] = same_rows(one, many)
    stages_dask = stage_seconds_of(rd["stdout"])
    busy_rate = worker_busy_rate(n_sub, stages_dask)
    count_s = row_count_seconds(sorted(sub.glob("*.csv.gz"))[0])
    res["dask_local_2"] = {"stars": n_sub, "files": n_sub_files, "tasks": n_sub_files, "chunk_size": per_file,
                           "wall_s": rd["wall_s"], "stars_per_s": round(n_sub / rd["wall_s"], 1),
                           "stars_per_s_per_worker": round(n_sub / rd["wall_s"] / 2, 1),
                           "stage_seconds_summed_over_workers": stages_dask,
                           "stars_per_s_per_busy_worker": round(busy_rate, 1),
                           "row_count_s_per_file": round(count_s, 2),
                           "one_process_wall_s": ro["wall_s"],
                           "one_process_stars_per_s": round(n_sub / ro["wall_s"], 1),
                           "note": "wall time includes the cluster's start, the row count of every file "
                                   "(one task per file) and each worker loading the bundle; workers run one "
                                   "torch thread each. stars_per_s_per_busy_worker: stars over the workers' "
                                   "seconds in reading, networks, labels and writing (the run's time: line, "
                                   "summed over workers): a worker's rate once started. row_count_s_per_file: "
                                   f"counting the rows of one {per_file}-star file in this process, as each "
                                   "count task does before the chunks start"}
    res["coefficient_input"] = coefficient_input(folder, work, chunk, small)
    per_worker = res["dask_local_2"]["stars_per_s_per_worker"]
    res["projection_all_sky_h"] = {
        "stars": ALL_SKY,
        "this_machine": round(ALL_SKY / res["stars_per_s_end_to_end"] / 3600, 1),
        "per_100_dask_workers": round(all_sky_hours(ALL_SKY, 100, per_worker), 2),
        "per_100_dask_workers_busy": round(all_sky_hours(ALL_SKY, 100, busy_rate, count_s / per_file), 2),
        "note": "this_machine: 2.2e8 / stars_per_s_end_to_end; per_100_dask_workers: 2.2e8 / (100 x the "
                "per-worker rate of the whole local:2 run, its start included: an upper bound); "
                "per_100_dask_workers_busy: 2.2e8 x (1 / stars_per_s_per_busy_worker + row_count_s_per_file / "
                "stars per file) / 100 workers, the workers' start (a fixed ~10 s each) left out; I/O and "
                "scheduler overhead at that scale not included in either"}
    res["targets"] = {
        "end_to_end_ge_half_networks": res["end_to_end_over_networks"]["isolated_faster"] >= 0.5,
        "end_to_end_ge_half_networks_in_run": res["end_to_end_over_networks"]["in_run"] >= 0.5,
        "end_to_end_ge_2000": res["stars_per_s_end_to_end"] >= 2000,
        "peak_rss_le_2gib": res["peak_rss_gib"] <= 2.0,
        "peak_rss_le_1.2x_1e4": res["peak_rss_gib"] <= 1.2 * res["peak_rss_gib_1e4"],
        "flux_le_1e-5": (res["max_rel_flux_diff_vs_gaiaxpy"] or 0) <= 1e-5,
        "error_le_1e-4": (res["max_rel_error_diff_vs_gaiaxpy"] or 0) <= 1e-4,
        "no_row_lost": res["rows_out"] == res["rows_in"]}
    res.update(provenance(commit, dirty))
    out = Path(args.out) if args.out else RESULTS / ("xp_archive_smoke.json" if smoke else "xp_archive.json")
    write_result(res, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
