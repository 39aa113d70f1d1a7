"""Robustness matrix: every bad input, option, bundle and resume that a hostile new user
can produce, run through the ``kielnet`` command line, with its outcome.

Each case builds its inputs from the real data in ``../shared/data`` (the 1,000-star
XP-library subset and copies of it, the real apStar / RVS / XP archive files) in a
scratch directory, runs ``kielnet`` as a user would, and classifies what happened:

=============  ====================================================================
outcome        meaning
=============  ====================================================================
``error``      exit code 2 and a one-line message naming the file / field / star;
               nothing written, nothing left behind
``refused``    a resume of a different run refused (exit 2, message names what
               differs and says ``--fresh``)
``flagged``    a catalogue with one row per input star, in input order; the bad
               rows carry a flag that says why and NaN labels (or, for a missing
               input, the ``missing_input`` flag and labels inside the valid range)
``resumed``    an interrupted run completed by a rerun, identical to an
               uninterrupted run
``warned``     the command succeeded and warned (training on few stars)
``labelled``   the command succeeded, every row ``ok`` or flagged as expected
``traceback``  an exception escaped (the worst outcome after a silent one)
=============  ====================================================================

``silently_wrong`` is true when a catalogue was written that loses or reorders a row,
carries a row of another input, marks a bad row ``ok``, or has an ``ok`` row with a
non-finite label — or when a command that should have refused exited 0.

A test suite's harness, not a test module itself (pytest collects ``test_*.py`` only):
``tests/test_robustness.py`` runs every case and asserts its expected outcome. Run as a
script, ``python tests/robustness_matrix.py`` → ``benchmarks/results/robustness.json``
(trains a tiny bundle on the subset first, about a minute on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SUBSET = SHARED / "xp_library" / "apogee_dr17_gaiaxp_sampled_subset1000.npz"
LABELS = ("teff", "logg", "fe_h", "alpha_m")

#: xp_hybrid shrunk so that a bundle trains in seconds (a YAML config using ``base:``)
TINY_CONFIG = """\
base: xp_hybrid
name: xp_hybrid_tiny
model:
  spectrum:
    conv: [{channels: 4, kernel: 5, pool: 4}, {channels: 8, kernel: 3, pool: 4}]
    dense: [32]
    activation: leaky_relu
  scalar_branches:
    - {name: photometry, features: [g, bp_rp, g_rp, g_j, j_h, h_k, j_k, g_k], layers: [32], activation: leaky_relu}
  head: {layers: [64], dropout: 0.0, activation: leaky_relu}
  channels_last_2d: false
training: {max_epochs: %(epochs)d, batch_size: 32, lr: 0.003, patience: 50, threads: 1}
ensemble: {n_splits: 1, members_per_split: 2, seed: 0}
uncertainty: {n_bins: 5, degree: 1, min_per_bin: 10}
"""


# ----------------------------------------------------------------------------- running
@dataclass
class Run:
    """What one ``kielnet`` invocation did."""

    code: int | None
    out: str
    err: str
    exc: BaseException | None = None

    @property
    def traceback(self) -> bool:
        return self.exc is not None and not isinstance(self.exc, KeyboardInterrupt)


def cli(*argv: str) -> Run:
    """Run ``kielnet ARGV`` in this process, capturing output; exceptions are caught."""
    from kielnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    exc, code = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            code = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 - a traceback is an outcome here
            exc = e
            traceback.print_exc(file=err)
    return Run(code, out.getvalue(), err.getvalue(), exc)


def cli_subprocess(*argv: str, kill_when: Callable[[], bool] | None = None, timeout: float = 300) -> Run:
    """Run ``kielnet ARGV`` as a child process; if ``kill_when`` is given, SIGKILL the
    child as soon as it returns true (polled every 50 ms)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "kielnet.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    if kill_when is not None:
        while proc.poll() is None and time.time() - t0 < timeout:
            if kill_when():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    out, err = proc.communicate(timeout=timeout)
    return Run(proc.returncode, out, err)


@contextlib.contextmanager
def interrupt_after_parts(n: int):
    """Make an in-process chunked prediction stop (KeyboardInterrupt, as Ctrl-C would)
    after ``n`` parts were written."""
    import kielnet.inference.streaming as streaming

    real, calls = streaming.predict, {"n": 0}

    def flaky(*a, **kw):
        if calls["n"] >= n:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return real(*a, **kw)

    streaming.predict = flaky
    try:
        yield
    finally:
        streaming.predict = real


# ----------------------------------------------------------------------------- context
@dataclass
class Context:
    """Scratch directory, the real subset, a trained tiny bundle and its config file."""

    tmp: Path
    bundle: Path
    config: Path
    subset: object = None
    _n: int = 0

    def dir(self, name: str) -> Path:
        self._n += 1
        d = self.tmp / f"{self._n:03d}_{name}"
        d.mkdir(parents=True)
        return d

    def stars(self, n: int | None = None):
        t = self.subset
        return t if n is None else t.take(np.arange(n) % len(t))


def make_context(tmp: Path, bundle: Path | None = None, epochs: int = 6) -> Context:
    """Load the subset; train the tiny bundle into ``tmp`` unless ``bundle`` is given."""
    from kielnet.io import load_xp_library

    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "tiny.yaml"
    config.write_text(TINY_CONFIG % {"epochs": epochs})
    subset = load_xp_library(SUBSET)
    if bundle is None:
        bundle = tmp / "bundle"
        if not (bundle / "bundle.json").is_file():
            from kielnet.io import write_table

            train = tmp / "train.parquet"
            write_table(subset, train)
            r = cli("train", "--data", train, "--config", config, "--out", bundle, "--quiet")
            if r.code != 0:
                raise RuntimeError(f"training the robustness bundle failed:\n{r.err}")
    return Context(tmp=tmp, bundle=bundle, config=config, subset=subset)


# ----------------------------------------------------------------------------- helpers
def write_stars(table, path: Path) -> Path:
    from kielnet.io import write_table

    write_table(table, path)
    return path


def copy_ids(table, suffix: str):
    """The same stars under other ids (a 'copy' of the subset)."""
    from dataclasses import replace

    return replace(table, ids=np.char.add(table.ids.astype(str), suffix))


def repeat(table, k: int):
    from kielnet.data import StarTable

    return StarTable.concat([copy_ids(table, f"_{i}") for i in range(k)])


def read_cat(path: Path):
    from kielnet.io import read_catalogue

    return read_catalogue(path)


def catalogue_problems(cat, ids, bad_rows=(), missing_rows=()) -> list[str]:
    """Why a written catalogue is silently wrong (empty list: it is right)."""
    probs = []
    if len(cat) != len(ids):
        probs.append(f"{len(cat)} rows for {len(ids)} input stars")
    elif not np.array_equal(np.asarray(cat["id"]).astype(str), np.asarray(ids).astype(str)):
        probs.append("ids differ from the input (foreign, missing or reordered rows)")
    status = np.asarray(cat["status"]).astype(str)
    ok = status == "ok"
    for n in LABELS:
        for c in (n, f"e_{n}", f"sigma_{n}"):
            if c in cat.colnames and not np.isfinite(np.asarray(cat[c], float)[ok]).all():
                probs.append(f"an ok row has a non-finite {c}")
    for i in bad_rows:
        if i < len(cat) and (status[i] == "ok" or np.isfinite(float(cat["teff"][i]))):
            probs.append(f"bad row {i} labelled ({status[i]}, teff {float(cat['teff'][i]):.4g})")
    for i in missing_rows:
        if i < len(cat):
            if "missing_input" not in status[i]:
                probs.append(f"row {i}: placeholder not treated as missing ({status[i]})")
            teff = float(cat["teff"][i])
            if np.isfinite(teff) and not 2000 <= teff <= 60000:
                probs.append(f"row {i}: teff {teff:.4g} outside the valid range")
    return probs


@dataclass
class Outcome:
    outcome: str
    rows_in: int | None = None
    rows_out: int | None = None
    silently_wrong: bool = False
    detail: str = ""
    left_behind: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def classify_failure(r: Run, must_name: str | None = None) -> Outcome:
    """A command that must not succeed: ``error`` / ``refused`` / ``traceback``;
    exit 0 is silently wrong."""
    msg = (r.err.strip().splitlines() or [""])[-1]
    if r.traceback:
        return Outcome("traceback", detail=f"{type(r.exc).__name__}: {r.exc}"[:300])
    if r.code == 0:
        return Outcome("labelled", silently_wrong=True, detail="exit 0 where a refusal was due")
    kind = "refused" if "--fresh" in msg else "error"
    detail = msg[:400]
    if must_name and must_name not in r.err:
        detail = f"message does not name {must_name!r}: " + detail
        kind = "error_unnamed"
    return Outcome(kind, detail=detail)


def leftovers(directory: Path, before: set[str]) -> list[str]:
    return sorted(set(os.listdir(directory)) - before)


# ----------------------------------------------------------------------------- cases
CASES: dict[str, tuple[str, Callable[[Context], Outcome]]] = {}


def case(name: str, expected: str):
    def deco(fn):
        CASES[name] = (expected, fn)
        return fn
    return deco


def _predict_flagged(ctx: Context, name: str, table, bad_rows=(), missing_rows=(), path=None) -> Outcome:
    d = ctx.dir(name)
    src = path or write_stars(table, d / "in.parquet")
    out = d / "cat.parquet"
    r = cli("predict", "--bundle", ctx.bundle, "--data", src, "--out", out, "--quiet")
    if r.traceback:
        return Outcome("traceback", rows_in=len(table), detail=f"{type(r.exc).__name__}: {r.exc}"[:300])
    if r.code != 0:
        return Outcome("error", rows_in=len(table), detail=r.err.strip()[-300:])
    cat = read_cat(out)
    probs = catalogue_problems(cat, table.ids, bad_rows, missing_rows)
    flagged = {str(cat["status"][i]) for i in list(bad_rows) + list(missing_rows)}
    return Outcome("flagged" if (bad_rows or missing_rows) else "labelled", rows_in=len(table), rows_out=len(cat),
                   silently_wrong=bool(probs), detail="; ".join(probs) or ", ".join(sorted(flagged)))


# -- garbage spectra and placeholder magnitudes
def _garbage(kind: str):
    def build(ctx: Context) -> Outcome:
        t = ctx.stars(50)
        t = t.take(np.arange(len(t)))
        t.flux = t.flux.copy()
        f = t.flux[7].copy()
        t.flux[7] = {"all_zero": 0 * f, "negative": -np.abs(f), "constant": np.full_like(f, 1.0),
                     "scaled_1e6": f * 1e6, "spike_1e30": np.where(np.arange(len(f)) == 100, 1e30, f),
                     "all_nan": np.full_like(f, np.nan)}[kind]
        return _predict_flagged(ctx, f"spectrum_{kind}", t, bad_rows=[7])
    return build


for _k in ("all_zero", "negative", "constant", "scaled_1e6", "spike_1e30", "all_nan"):
    case(f"spectrum_{_k}", "flagged")(_garbage(_k))


def _placeholder(value: float, column: str):
    def build(ctx: Context) -> Outcome:
        t = ctx.stars(50)
        t = t.take(np.arange(len(t)))
        t.scalars[column] = t.scalars[column].copy()
        t.scalars[column][3] = value
        return _predict_flagged(ctx, f"placeholder_{column}_{value}", t, missing_rows=[3])
    return build


for _v, _c in ((99.0, "g"), (-999.0, "g"), (99.999, "j"), (-9999.0, "k"), (1e30, "bp")):
    case(f"magnitude_{_c}_{_v:g}", "flagged")(_placeholder(_v, _c))


# -- prediction parts and resume
def _killed_run(ctx: Context, name: str, chunk: int = 500):
    """A 3,000-star copy of the subset whose prediction was interrupted after 2 parts."""
    d = ctx.dir(name)
    big = repeat(ctx.subset, 3)
    src = write_stars(big, d / "big.parquet")
    out = d / "cat.parquet"
    with interrupt_after_parts(2):
        r = cli("predict", "--bundle", ctx.bundle, "--data", src, "--out", out, "--chunk-size", chunk, "--quiet")
    assert isinstance(r.exc, KeyboardInterrupt), r.err
    return d, big, src, out


def _rerun_refused(change: str):
    def build(ctx: Context) -> Outcome:
        d, big, src, out = _killed_run(ctx, f"resume_{change}")
        args = ["--bundle", ctx.bundle, "--data", src, "--out", out, "--chunk-size", 500]
        rows_in = len(big)
        if change == "other_file":
            small = write_stars(ctx.subset, d / "small.parquet")
            args[3], rows_in = small, len(ctx.subset)
        elif change == "shuffled":
            perm = np.random.default_rng(1).permutation(len(big))
            args[3] = write_stars(big.take(perm), d / "shuffled.parquet")
        elif change == "chunk_size":
            args[-1] = 700
        elif change == "other_bundle":
            other = d / "bundle2"
            shutil.copytree(ctx.bundle, other)
            _flip_byte(other / "member_000.safetensors", rewrite_hash=True)
            args[1] = other
        r = cli("predict", *args, "--quiet")
        o = classify_failure(r)
        o.rows_in = rows_in
        if r.code == 0:
            o.rows_out = len(read_cat(out))
        return o
    return build


for _c in ("other_file", "shuffled", "chunk_size", "other_bundle"):
    case(f"predict_resume_{_c}", "refused")(_rerun_refused(_c))


@case("predict_resume_same_run", "resumed")
def _resume_same(ctx: Context) -> Outcome:
    d, big, src, out = _killed_run(ctx, "resume_same")
    r = cli("predict", "--bundle", ctx.bundle, "--data", src, "--out", out, "--chunk-size", 500, "--quiet")
    if r.code != 0:
        return classify_failure(r)
    ref = d / "ref.parquet"
    cli("predict", "--bundle", ctx.bundle, "--data", src, "--out", ref, "--chunk-size", 500, "--quiet")
    a, b = read_cat(out), read_cat(ref)
    same = a.colnames == b.colnames and all(np.array_equal(np.asarray(a[c]), np.asarray(b[c]), equal_nan=True)
                                            if a[c].dtype.kind == "f" else np.array_equal(a[c], b[c])
                                            for c in a.colnames)
    probs = catalogue_problems(a, big.ids)
    return Outcome("resumed" if same else "resumed_differently", rows_in=len(big), rows_out=len(a),
                   silently_wrong=bool(probs) or not same, detail="; ".join(probs))


@case("predict_resume_fresh", "labelled")
def _resume_fresh(ctx: Context) -> Outcome:
    d, big, src, out = _killed_run(ctx, "resume_fresh")
    small = write_stars(ctx.subset, d / "small.parquet")
    r = cli("predict", "--bundle", ctx.bundle, "--data", small, "--out", out, "--chunk-size", 500, "--fresh",
            "--quiet")
    if r.code != 0:
        return classify_failure(r)
    cat = read_cat(out)
    probs = catalogue_problems(cat, ctx.subset.ids)
    return Outcome("labelled", rows_in=len(ctx.subset), rows_out=len(cat), silently_wrong=bool(probs),
                   detail="; ".join(probs))


@case("predict_sigkill_rerun_other_input", "refused")
def _sigkill_predict(ctx: Context) -> Outcome:
    d = ctx.dir("sigkill_predict")
    big = repeat(ctx.subset, 3)
    src = write_stars(big, d / "big.parquet")
    out = d / "cat.parquet"
    parts = d / "cat.parquet.parts"
    r = cli_subprocess("predict", "--bundle", ctx.bundle, "--data", src, "--out", out, "--chunk-size", 300,
                       "--quiet", kill_when=lambda: len(list(parts.glob("part_*.parquet"))) >= 2)
    if r.code != -signal.SIGKILL:
        return Outcome("not_killed", detail=f"exit {r.code}: the run ended before it could be killed")
    small = write_stars(ctx.subset, d / "small.parquet")
    o = classify_failure(cli("predict", "--bundle", ctx.bundle, "--data", small, "--out", out, "--chunk-size",
                             300, "--quiet"))
    o.rows_in = len(ctx.subset)
    return o


# -- training
def _train_table(ctx: Context, n: int):
    return ctx.stars(n)


def _train_n(n: int, expected: str):
    def build(ctx: Context) -> Outcome:
        d = ctx.dir(f"train_{n}")
        src = write_stars(_train_table(ctx, n), d / "train.parquet")
        t0 = time.time()
        r = cli("train", "--data", src, "--config", ctx.config, "--out", d / "bundle", "--quiet")
        took = time.time() - t0
        if expected == "error":
            o = classify_failure(r)
            o.detail += f" ({took:.1f} s: refused before training)" if o.outcome == "error" else ""
            return o
        if r.code != 0:
            return classify_failure(r)
        warned = "WARNING" in r.out
        meta = json.loads((d / "bundle" / "bundle.json").read_text())
        ok = warned and meta["training_data"].get("warnings")
        return Outcome("warned" if ok else "labelled", silently_wrong=not ok,
                       detail=(r.out.split("WARNING: ", 1)[-1].splitlines()[0] if warned else "no warning"))
    return build


case("train_1_star", "error")(_train_n(1, "error"))
case("train_5_stars", "error")(_train_n(5, "error"))
case("train_60_stars", "warned")(_train_n(60, "warned"))


@case("train_sigkill_rerun_changed_labels", "refused")
def _train_killed(ctx: Context) -> Outcome:
    d = ctx.dir("train_killed")
    t = ctx.stars(300)
    src = write_stars(t, d / "train.parquet")
    cfg = d / "slow.yaml"
    cfg.write_text(ctx.config.read_text().replace("max_epochs: 6", "max_epochs: 200"))
    work = d / "bundle.work"
    r = cli_subprocess("train", "--data", src, "--config", cfg, "--out", d / "bundle", "--quiet",
                       kill_when=lambda: (work / "ckpt_000.safetensors").is_file())
    if r.code != -signal.SIGKILL:
        return Outcome("not_killed", detail=f"exit {r.code}")
    fixed = t.take(np.arange(len(t)))
    fixed.labels["fe_h"] = fixed.labels["fe_h"] + 0.05   # "after fixing the labels"
    write_stars(fixed, src)
    return classify_failure(cli("train", "--data", src, "--config", cfg, "--out", d / "bundle", "--quiet"),
                            must_name="fe_h")


@case("train_rerun_after_success_changed_spectra", "refused")
def _train_after_success(ctx: Context) -> Outcome:
    d = ctx.dir("train_done")
    t = ctx.stars(200)
    src = write_stars(t, d / "train.parquet")
    r = cli("train", "--data", src, "--config", ctx.config, "--out", d / "bundle", "--quiet")
    if r.code != 0:
        return classify_failure(r)
    fixed = t.take(np.arange(len(t)))
    fixed.flux = fixed.flux * 1.01
    write_stars(fixed, src)
    return classify_failure(cli("train", "--data", src, "--config", ctx.config, "--out", d / "bundle", "--quiet"),
                            must_name="spectra")


# -- bundles
def _flip_byte(path: Path, rewrite_hash: bool = False, value: bytes | None = None) -> None:
    """Change bytes in the tensor data of a safetensors file (and optionally record the
    new digest in bundle.json, to get past the checksum to the next check)."""
    import hashlib

    raw = bytearray(path.read_bytes())
    pos = len(raw) - 64
    if value is None:
        raw[pos] ^= 0x5A
    else:
        raw[pos:pos + len(value)] = value
    path.write_bytes(bytes(raw))
    if rewrite_hash:
        js = path.parent / "bundle.json"
        meta = json.loads(js.read_text())
        for m in meta["members"]:
            if m["file"] == path.name and "sha256" in m:
                m["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
        js.write_text(json.dumps(meta))


def _bundle_case(edit: Callable[[Path], None], must_name: str | None = None):
    def build(ctx: Context) -> Outcome:
        d = ctx.dir("bundle")
        b = d / "bundle"
        shutil.copytree(ctx.bundle, b)
        edit(b)
        src = write_stars(ctx.stars(30), d / "in.parquet")
        out = d / "cat.parquet"
        before = set(os.listdir(d))
        r = cli("predict", "--bundle", b, "--data", src, "--out", out, "--quiet")
        o = classify_failure(r, must_name=must_name)
        o.rows_in = 30
        if r.code == 0:
            o.rows_out = len(read_cat(out))
        o.left_behind = leftovers(d, before)
        return o
    return build


def _edit_json(fn: Callable[[dict], None]):
    def edit(b: Path) -> None:
        meta = json.loads((b / "bundle.json").read_text())
        fn(meta)
        (b / "bundle.json").write_text(json.dumps(meta))
    return edit


def _dup_member(meta: dict) -> None:
    meta["members"][1] = dict(meta["members"][0])


def _copy_member(b: Path) -> None:
    shutil.copy(b / "member_000.safetensors", b / "member_001.safetensors")
    meta = json.loads((b / "bundle.json").read_text())
    meta["members"][1]["sha256"] = meta["members"][0].get("sha256")
    (b / "bundle.json").write_text(json.dumps(meta))


def _outside_path(kind: str):
    def edit(b: Path) -> None:
        target = b.parent / "member_x.safetensors"
        shutil.copy(b / "member_000.safetensors", target)
        meta = json.loads((b / "bundle.json").read_text())
        meta["members"][0]["file"] = "../member_x.safetensors" if kind == "parent" else str(target.resolve())
        (b / "bundle.json").write_text(json.dumps(meta))
    return edit


case("bundle_weight_byte_flipped", "error")(
    _bundle_case(lambda b: _flip_byte(b / "member_001.safetensors"), must_name="member_001"))
case("bundle_weight_nan_bytes", "error")(
    _bundle_case(lambda b: _flip_byte(b / "member_000.safetensors", value=b"\xff\xff\xc0\x7f" * 4),
                 must_name="member_000"))
case("bundle_member_listed_twice", "error")(_bundle_case(_edit_json(_dup_member), must_name="member_000"))
case("bundle_member_copied", "error")(_bundle_case(_copy_member, must_name="member_001"))
case("bundle_member_path_parent", "error")(_bundle_case(_outside_path("parent"), must_name="member_x"))
case("bundle_member_path_absolute", "error")(_bundle_case(_outside_path("absolute"), must_name="member_x"))
case("bundle_npix_edited", "error")(
    _bundle_case(_edit_json(lambda m: m["preprocessing"].__setitem__("n_pix", 8575)), must_name="n_pix"))
case("bundle_empty_members", "error")(_bundle_case(_edit_json(lambda m: m.__setitem__("members", []))))
case("bundle_missing_key", "error")(
    _bundle_case(_edit_json(lambda m: m.pop("label_ranges")), must_name="label_ranges"))
case("bundle_json_garbage", "error")(
    _bundle_case(lambda b: (b / "bundle.json").write_text("{not json"), must_name="bundle.json"))


# -- options and paths
def _option_case(extra: Callable[[Path, Path], list], must_name: str | None = None):
    def build(ctx: Context) -> Outcome:
        d = ctx.dir("option")
        src = write_stars(ctx.stars(30), d / "in.parquet")
        args = extra(d, src)
        before = set(os.listdir(d))
        r = cli("predict", "--bundle", ctx.bundle, "--data", src, *args, "--quiet")
        o = classify_failure(r, must_name=must_name)
        o.rows_in = 30
        o.left_behind = leftovers(d, before)
        if o.left_behind and o.outcome == "error":
            o.outcome = "error_left_files"
        return o
    return build


case("option_chunk_size_negative", "error")(_option_case(lambda d, s: ["--out", d / "c.parquet", "--chunk-size", -5]))
case("option_chunk_size_zero", "error")(_option_case(lambda d, s: ["--out", d / "c.parquet", "--chunk-size", 0]))
case("option_batch_size_zero", "error")(_option_case(lambda d, s: ["--out", d / "c.parquet", "--batch-size", 0]))
case("option_realisations_negative", "error")(
    _option_case(lambda d, s: ["--out", d / "c.parquet", "--realisations", -1]))
case("option_unknown_suffix", "error")(_option_case(lambda d, s: ["--out", d / "c.xyz"], must_name="c.xyz"))
case("option_out_is_directory", "error")(
    _option_case(lambda d, s: [(d / "adir").mkdir() or "--out", d / "adir"], must_name="adir"))
case("option_out_unwritable", "error")(
    _option_case(lambda d, s: ["--out", d / "in.parquet" / "sub" / "c.parquet"], must_name="in.parquet"))
case("option_out_equals_input", "error")(_option_case(lambda d, s: ["--out", s], must_name="in.parquet"))


# -- readers
def _reader_case(make: Callable[[Context, Path], tuple], must_name: str | None = None):
    """``make`` writes a bad file and returns (path, expected, bad_rows, ids)."""
    def build(ctx: Context) -> Outcome:
        d = ctx.dir("reader")
        path, expected, bad_rows, ids = make(ctx, d)
        out = d / "cat.parquet"
        before = set(os.listdir(d))
        r = cli("predict", "--bundle", ctx.bundle, "--data", path, "--out", out, "--quiet")
        if expected == "flagged" and r.code == 0:
            cat = read_cat(out)
            probs = catalogue_problems(cat, ids, bad_rows)
            return Outcome("flagged", rows_in=len(ids), rows_out=len(cat), silently_wrong=bool(probs),
                           detail="; ".join(probs) or ", ".join(str(cat["status"][i]) for i in bad_rows))
        o = classify_failure(r, must_name=must_name or path.name)
        o.rows_in = len(ids) if ids is not None else None
        o.left_behind = leftovers(d, before)
        return o
    return build


def _fits_table(ctx: Context, d: Path, n: int = 20) -> Path:
    from kielnet.io.tables import startable_to_table

    tab = startable_to_table(ctx.stars(n))
    tab.meta.clear()
    path = d / "stars.fits"
    tab.write(path)
    return path


def _fits_bad_string(ctx, d):
    path = _fits_table(ctx, d)
    raw = bytearray(path.read_bytes())
    first_id = ctx.stars(1).ids[0].encode()
    pos = raw.find(first_id, 2880)
    raw[pos:pos + 3] = b"\xff\xfe\xfd"
    path.write_bytes(bytes(raw))
    return path, "error", [], ctx.stars(20).ids


def _fits_truncated(ctx, d):
    path = _fits_table(ctx, d)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.6)])
    return path, "error", [], ctx.stars(20).ids


def _parquet(cols: dict, path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), path)
    return path


def _parquet_cols(ctx, n=20):
    import pyarrow as pa

    t = ctx.stars(n)
    cols = {"id": pa.array(t.ids.tolist())}
    cols["flux"] = pa.array([r.tolist() for r in t.flux], pa.list_(pa.float32()))
    for c in ("g", "bp", "rp", "j", "h", "k"):
        cols[c] = pa.array(t.scalars[c].tolist())
    return t, cols


def _parquet_zero_rows(ctx, d):
    import pyarrow as pa

    t, cols = _parquet_cols(ctx)
    cols = {k: (pa.array([], v.type)) for k, v in cols.items()}
    return _parquet(cols, d / "empty.parquet"), "error", [], np.zeros(0, dtype=str)


def _parquet_non_numeric(ctx, d):
    import pyarrow as pa

    t, cols = _parquet_cols(ctx)
    g = [f"{v:.3f}" for v in t.scalars["g"]]
    g[4] = "abc"
    cols["g"] = pa.array(g)
    return _parquet(cols, d / "text_g.parquet"), "error", [], t.ids


def _parquet_null_spectrum(ctx, d):
    import pyarrow as pa

    t, cols = _parquet_cols(ctx)
    rows = [r.tolist() for r in t.flux]
    rows[6] = None
    cols["flux"] = pa.array(rows, pa.list_(pa.float32()))
    return _parquet(cols, d / "null_spec.parquet"), "flagged", [6], t.ids


def _parquet_ragged(ctx, d):
    import pyarrow as pa

    t, cols = _parquet_cols(ctx)
    rows = [r.tolist() for r in t.flux]
    rows[9] = rows[9][:200]
    cols["flux"] = pa.array(rows, pa.list_(pa.float32()))
    return _parquet(cols, d / "ragged.parquet"), "error", [], t.ids


def _real_file(sub: str, pattern: str):
    files = sorted((SHARED / sub).glob(pattern))
    return files[0]


def _truncated_copy(src: Path, d: Path, frac: float) -> Path:
    path = d / src.name
    raw = src.read_bytes()
    path.write_bytes(raw[: int(len(raw) * frac)])
    return path


def _apstar_truncated(ctx, d):
    return _truncated_copy(_real_file("apogee/apStar", "apStar-*.fits"), d, 0.5), "error", [], None


def _apstar_garbage(ctx, d):
    src = _real_file("apogee/apStar", "apStar-*.fits")
    path = d / src.name
    path.write_bytes(os.urandom(src.stat().st_size // 4))
    return path, "error", [], None


def _rvs_truncated(ctx, d):
    src = [p for p in sorted((SHARED / "gaia_rvs").iterdir()) if p.suffix == ".csv"][0]
    return _truncated_copy(src, d, 0.5), "error", [], None


def _xp_garbled(ctx, d):
    src = SHARED / "gaia_xp" / "XP_CONTINUOUS_RAW.csv"
    text = src.read_text()
    head, *rows = text.splitlines(keepends=True)
    row = rows[0]
    i = row.index("(") + 1
    rows[0] = row[:i] + "abc, " + row[i:]
    path = d / "XP_CONTINUOUS_RAW.csv"
    path.write_text(head + "".join(rows))
    return path, "error", [], None


case("fits_corrupt_string_bytes", "error")(_reader_case(_fits_bad_string))
case("fits_truncated", "error")(_reader_case(_fits_truncated))
case("parquet_zero_rows", "error")(_reader_case(_parquet_zero_rows))
case("parquet_non_numeric_magnitude", "error")(_reader_case(_parquet_non_numeric, must_name="'g'"))
case("parquet_null_spectrum", "flagged")(_reader_case(_parquet_null_spectrum))
case("parquet_ragged_spectrum", "error")(_reader_case(_parquet_ragged, must_name="row 9"))
case("apstar_truncated", "error")(_reader_case(_apstar_truncated))
case("apstar_garbage_bytes", "error")(_reader_case(_apstar_garbage))
case("rvs_csv_truncated", "error")(_reader_case(_rvs_truncated))
@case("rvs_one_star_with_missing_pixels", "flagged")
def _rvs_one_bad(ctx: Context) -> Outcome:
    """A two-star RVS datalink file in which the first star lacks 5 pixels mid-grid: the
    star is kept with an all-NaN spectrum (bad_spectrum downstream), the other intact."""
    import warnings

    from kielnet.io import read_stars

    d = ctx.dir("rvs_one_bad")
    files = [p for p in sorted((SHARED / "gaia_rvs").iterdir()) if p.suffix == ".csv"][:2]
    a, b = (f.read_text().splitlines(keepends=True) for f in files)
    path = d / "two_stars.csv"
    path.write_text("".join(a[:1000] + a[1005:] + b[1:]))
    clean = read_stars(files[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = read_stars(path)
    probs = []
    if len(t) != 2:
        probs.append(f"{len(t)} rows for 2 stars")
    else:
        if np.isfinite(t.flux[0]).any():
            probs.append("the damaged star kept a spectrum")
        if not np.array_equal(t.flux[1], clean.flux[0], equal_nan=True):
            probs.append("the intact star changed")
        if not (t.meta.get("bad_rows") and any(str(t.ids[0]) in str(w.message) for w in caught)):
            probs.append("no warning / bad_rows entry names the star")
    return Outcome("flagged", rows_in=2, rows_out=len(t), silently_wrong=bool(probs),
                   detail="; ".join(probs) or str(t.meta.get("bad_rows"))[:200])


@case("xp_continuous_garbled_coefficients", "flagged")
def _xp_garbled_kept(ctx: Context) -> Outcome:
    """One star's coefficient string is garbled: the reader keeps the star with NaN
    coefficients (missing inputs downstream) and says why; the other star is intact.
    (No catalogue: the tiny XP-spectrum bundle does not read XP coefficients.)"""
    import warnings

    from kielnet.io import read_stars

    d = ctx.dir("xp_garbled")
    path, *_ = _xp_garbled(ctx, d)
    clean = read_stars(SHARED / "gaia_xp" / "XP_CONTINUOUS_RAW.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = read_stars(path)
    coef = [c for c in t.scalars if c.startswith(("bp_", "rp_"))]
    bad = np.stack([t.scalars[c] for c in coef], axis=1)
    probs = []
    if len(t) != len(clean) or not np.array_equal(t.ids, clean.ids):
        probs.append("rows lost or reordered")
    if np.isfinite(bad[0]).any():
        probs.append("the garbled star kept finite coefficients")
    if not np.array_equal(bad[1:], np.stack([clean.scalars[c] for c in coef], axis=1)[1:], equal_nan=True):
        probs.append("an intact star changed")
    said = bool(t.meta.get("bad_rows")) and any(str(t.ids[0]) in str(w.message) for w in caught)
    if not said:
        probs.append("no warning / bad_rows entry names the star")
    return Outcome("flagged", rows_in=len(clean), rows_out=len(t), silently_wrong=bool(probs),
                   detail="; ".join(probs) or str(t.meta.get("bad_rows"))[:200])


# ----------------------------------------------------------------------------- driver
def run_case(ctx: Context, name: str) -> Outcome:
    expected, fn = CASES[name]
    try:
        return fn(ctx)
    except Exception as exc:  # noqa: BLE001 - a failure of the harness is reported as such
        return Outcome("harness_error", detail=f"{type(exc).__name__}: {exc}"[:300])


def main() -> None:
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import RESULTS, git_commit, git_dirty, provenance, write_result

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "robustness"))
    ap.add_argument("--out", default=str(RESULTS / "robustness.json"))
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = ap.parse_args()
    commit, dirty = git_commit(), git_dirty()
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work / "cases", ignore_errors=True)
    t0 = time.time()
    ctx = make_context(work)
    ctx.tmp = work / "cases"
    ctx.tmp.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only or CASES:
        t1 = time.time()
        o = run_case(ctx, name)
        d = o.to_dict()
        d["expected"] = CASES[name][0]
        d["as_expected"] = o.outcome == CASES[name][0] and not o.silently_wrong and not o.left_behind
        d["seconds"] = round(time.time() - t1, 2)
        results[name] = d
        print(f"{name:45s} {o.outcome:10s} expected {d['expected']:9s} silently_wrong={o.silently_wrong} "
              f"{o.detail[:90]}")
    res = {"cases": results, "n_cases": len(results),
           "n_silently_wrong": sum(r["silently_wrong"] for r in results.values()),
           "n_tracebacks": sum(r["outcome"] == "traceback" for r in results.values()),
           "n_not_as_expected": sum(not r["as_expected"] for r in results.values()),
           "rows_lost": sum((r["rows_in"] or 0) - (r["rows_out"] or 0) for r in results.values()
                            if r["rows_out"] is not None),
           "seconds": round(time.time() - t0, 1)}
    res.update(provenance(commit, dirty))
    write_result(res, args.out)


if __name__ == "__main__":
    main()
