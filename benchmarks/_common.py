"""Shared helpers of the benchmark scripts: provenance (git commit, machine) and the
atomic write of a result JSON into ``benchmarks/results/``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def git_commit() -> str:
    """HEAD of the repository (call at start: the code that runs is the code at start)."""
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def git_dirty() -> bool:
    """Whether src/ or benchmarks/ differ from HEAD."""
    return subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "benchmarks"], cwd=ROOT).returncode != 0


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; None where it is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict:
    """The machine a figure came from: platform, CPU model and the vector ISA torch uses
    (timings from an AVX2 and an AVX-512 machine are not comparable; bf16 kernels need
    AVX-512 BW/VL/DQ or AVX-NE-CONVERT), cores, threads, versions."""
    import torch

    from kielnet.compute.plan import bf16_supported

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_kernels": bf16_supported(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}


def provenance(commit: str, dirty: bool) -> dict:
    """Keys every result JSON carries: commit, command, machine, date."""
    return {"git_commit": commit, "git_dirty_at_start": dirty,
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def bundle_arguments(doc: str | None):
    """Parse ``--bundle`` (default: the bundle of ``apogee_emulated.py``) and ``--out``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "benchmarks" / ".work" / "apogee_emulated" / "bundle"))
    ap.add_argument("--out", default=None, help="result JSON (default: in benchmarks/results/)")
    return ap.parse_args()


def label_change(ref, other, label: str, mask=None) -> dict:
    """How ``other``'s values of ``label`` differ from ``ref``'s (two catalogues of the same
    stars, row for row), in units of ``ref``'s ``sigma_<label>``: on the rows finite in both
    with sigma > 0 (and ``mask``), ``n``, the max / 99th percentile / median of
    ``|Δ| / sigma``, the max ``|Δ|`` in the label's unit and the median sigma (None where
    no row compares)."""
    import numpy as np

    a, b = np.asarray(ref[label], float), np.asarray(other[label], float)
    sig = np.asarray(ref[f"sigma_{label}"], float)
    m = np.isfinite(a) & np.isfinite(b) & (sig > 0)
    if mask is not None:
        m &= mask
    d = np.abs(b - a)[m]
    r = d / sig[m]
    some = bool(m.any())
    return {"n": int(m.sum()),
            "max_delta_over_sigma": float(r.max()) if some else None,
            "p99_delta_over_sigma": float(np.percentile(r, 99)) if some else None,
            "median_delta_over_sigma": float(np.median(r)) if some else None,
            "max_abs_delta": float(d.max()) if some else None,
            "median_sigma": float(np.median(sig[m])) if some else None}


def write_result(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
    print(f"written {path}")
    return path
