"""Wall-clock time and held-out metrics of ``kielnet demo`` (the README's first command
after set-up) on the embedded XP library. Writes ``benchmarks/results/demo_runtime.json``.

Run: ``python benchmarks/demo_runtime.py`` (the demo's output goes to a temporary
directory that is removed afterwards).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, git_commit, git_dirty, provenance, write_result  # noqa: E402


def main() -> int:
    commit, dirty = git_commit(), git_dirty()
    out_dir = Path(tempfile.mkdtemp(prefix="kielnet_demo_"))
    cmd = ["kielnet", "demo", "--out", str(out_dir / "demo"), "--quiet"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        return proc.returncode
    metrics = json.loads((out_dir / "demo" / "metrics.json").read_text())
    files = sorted(p.name for p in (out_dir / "demo").iterdir())
    for png in ("kiel_diagram.png", "residuals.png"):  # keep the figures next to the numbers
        shutil.copy(out_dir / "demo" / png, RESULTS / f"demo_{png}")
    shutil.rmtree(out_dir, ignore_errors=True)
    out = {"wall_seconds": round(wall, 1), "limit_seconds": 900, "within_limit": wall <= 900,
           "note": "excludes the pip set-up (about 1 minute here with the local torch wheel)",
           "demo_metrics": metrics, "files_written": files, "stdout_tail": proc.stdout[-2500:],
           "demo_command": " ".join(cmd[:2] + ["--out", "<tmp>", "--quiet"]), **provenance(commit, dirty)}
    write_result(out, RESULTS / "demo_runtime.json")
    print(f"demo took {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
