"""Shared fixtures of the kielnet test suite.

* ``shared_data`` / ``xp_subset_path`` / ``xp_subset``: the real data in
  ``../shared/data`` (relative to the repository root); tests using them skip cleanly
  when it is absent.
* ``make_table`` / ``tiny_config``: small synthetic star tables and a tiny config,
  so that unit tests of training and inference need no real data.
* ``tiny_holdout`` / ``tiny_bundle_dir``: a tiny ensemble trained *once per session*
  on the crc32 training part of the 1,000-star XP-library subset, and its saved
  bundle; reused by the pipeline, bundle, prediction, streaming and CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kielnet.config import KielnetConfig, load_config
from kielnet.data.startable import StarTable

# The machine is shared and small: never let torch oversubscribe the cores.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBSET_NAME = "apogee_dr17_gaiaxp_sampled_subset1000.npz"
LABELS = ("teff", "logg", "fe_h", "alpha_m")


@pytest.fixture(scope="session", autouse=True)
def _kielnet_cache_dir(tmp_path_factory):
    """Cached files (the XP calibration matrices) go to a session directory, not the
    user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KIELNET_CACHE_DIR", str(tmp_path_factory.mktemp("kielnet_cache")))
    yield
    mp.undo()


# --------------------------------------------------------------------- real data
@pytest.fixture(autouse=True)
def _compute_tests_run_on_the_cpu(request, monkeypatch):
    """tests/compute checks the CPU paths (fused / conv1d / native layouts, threads,
    operator fallbacks) exactly or at float32 rounding: there the runner's default device
    is the CPU, also where torch sees a GPU. tests/compute/test_cuda.py checks the CUDA
    path against it; everywhere else the default stays CUDA-when-available."""
    path = Path(str(request.node.path))
    if not torch.cuda.is_available() or path.parent.name != "compute" or path.name == "test_cuda.py":
        return
    import kielnet.compute.forward as forward

    resolve = forward.resolve_device
    monkeypatch.setattr(forward, "resolve_device", lambda device: resolve("cpu" if device is None else device))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"real data directory {path} is absent")
    return path


@pytest.fixture(scope="session")
def xp_subset_path(shared_data: Path) -> Path:
    path = shared_data / "xp_library" / SUBSET_NAME
    if not path.is_file():
        pytest.skip(f"XP-library subset {path} is absent")
    return path


@pytest.fixture(scope="session")
def xp_subset(xp_subset_path: Path) -> StarTable:
    """The 1,000-star subset (tests must not modify it in place; use ``take``)."""
    from kielnet.io import load_xp_library

    return load_xp_library(xp_subset_path)


# --------------------------------------------------------------------- synthetic data
def synthetic_table(n: int = 120, n_pix: int = 48, seed: int = 0, ids=None) -> StarTable:
    """Stars whose spectra and photometry depend smoothly on their labels."""
    rng = np.random.default_rng(seed)
    teff = rng.uniform(3800.0, 7000.0, n)
    logg = rng.uniform(1.0, 5.0, n)
    fe_h = rng.uniform(-1.5, 0.4, n)
    alpha_m = rng.uniform(-0.1, 0.4, n)
    x = np.linspace(0.0, 1.0, n_pix)
    t = (teff[:, None] - 5000.0) / 1000.0
    flux = (1.0 + 0.4 * t * (x - 0.5) + 0.1 * logg[:, None] * np.sin(6 * x)
            + 0.1 * fe_h[:, None] * np.cos(9 * x) + 0.05 * alpha_m[:, None] * x ** 2)
    flux = np.clip(flux + rng.normal(0.0, 0.01, flux.shape), 0.05, None)
    g = rng.uniform(9.0, 15.0, n)
    bp = g + 0.3 + 0.8 * (6000.0 - teff) / 2000.0 + rng.normal(0, 0.01, n)
    rp = g - 0.5 - 0.5 * (6000.0 - teff) / 2000.0
    j = g - 1.2 - 0.1 * logg
    h = j - 0.4
    k = h - 0.1 + 0.02 * fe_h
    if ids is None:
        ids = np.array([f"SYN{seed:02d}-{i:05d}" for i in range(n)])
    return StarTable(ids=ids, flux=flux, flux_err=np.full_like(flux, 0.01),
                     wavelength=np.linspace(400.0, 900.0, n_pix),
                     scalars={"g": g, "bp": bp, "rp": rp, "j": j, "h": h, "k": k},
                     labels={"teff": teff, "logg": logg, "fe_h": fe_h, "alpha_m": alpha_m},
                     label_errs={"teff": np.full(n, 50.0), "logg": np.full(n, 0.05),
                                 "fe_h": np.full(n, 0.02), "alpha_m": np.full(n, 0.02)},
                     extra={"source_id": np.arange(n, dtype=np.int64) + 10_000},
                     meta={"source": "<synthetic>"})


def tiny_config_dict(**overrides) -> dict:
    """A tiny but complete config (spectrum + one photometry branch, 4 labels)."""
    d = {
        "name": "tiny",
        "description": "tiny test config",
        "spectrum": {"normalise": "none", "log": True, "standardise": True, "max_bad_fraction": 0.1},
        "features": [
            {"name": "g", "columns": ["g"]},
            {"name": "bp_rp", "kind": "difference", "columns": ["bp", "rp"]},
            {"name": "g_rp", "kind": "difference", "columns": ["g", "rp"]},
            {"name": "j_k", "kind": "difference", "columns": ["j", "k"]},
        ],
        "labels": [
            {"name": "teff", "unit": "K", "transform": "log10", "valid_range": [2000, 60000]},
            {"name": "logg", "unit": "dex", "valid_range": [-1.5, 6.5]},
            {"name": "fe_h", "unit": "dex", "valid_range": [-5.0, 1.5]},
            {"name": "alpha_m", "unit": "dex", "valid_range": [-1.0, 1.5]},
        ],
        "model": {
            "spectrum": {"conv": [{"channels": 4, "kernel": 5, "pool": 2},
                                  {"channels": 4, "kernel": 3, "pool": 2}],
                         "dense": [16], "activation": "leaky_relu"},
            "scalar_branches": [{"name": "phot", "features": ["g", "bp_rp", "g_rp", "j_k"], "layers": [8]}],
            "head": {"layers": [16], "dropout": 0.1, "activation": "leaky_relu"},
            "channels_last_2d": False,
        },
        "training": {"batch_size": 32, "max_epochs": 2, "patience": 50, "lr": 3e-3, "threads": 1,
                     "weighting": {"kind": "kde", "labels": ["teff", "logg"]}},
        "ensemble": {"n_splits": 1, "members_per_split": 1, "seed": 0},
        "uncertainty": {"n_bins": 3, "degree": 1, "min_per_bin": 5},
    }
    for key, val in overrides.items():
        if isinstance(val, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **val}
        else:
            d[key] = val
    return d


@pytest.fixture(name="tiny_config_dict")
def _tiny_config_dict_fixture():
    """Factory: ``tiny_config_dict(**section_overrides)`` → plain config dict."""
    return tiny_config_dict


@pytest.fixture
def make_table():
    """Factory: ``make_table(n=120, n_pix=48, seed=0, ids=None)`` → synthetic StarTable."""
    return synthetic_table


@pytest.fixture
def tiny_config() -> KielnetConfig:
    return KielnetConfig.from_dict(tiny_config_dict())


@pytest.fixture
def tiny_config_factory():
    """Factory: ``tiny_config_factory(**section_overrides)`` → KielnetConfig."""
    return lambda **kw: KielnetConfig.from_dict(tiny_config_dict(**kw))


@pytest.fixture(scope="session")
def synthetic_bundle():
    """A 2-member ensemble trained on synthetic stars (needs no real data)."""
    from kielnet.training.ensemble import train_ensemble

    cfg = KielnetConfig.from_dict(tiny_config_dict(ensemble={"n_splits": 1, "members_per_split": 2}))
    return train_ensemble(synthetic_table(n=120, n_pix=48, seed=30), cfg, progress=False, log=lambda *_: None)


# --------------------------------------------------------------------- tiny real ensemble
def tiny_xp_config() -> KielnetConfig:
    """The xp_hybrid preset shrunk so that 2 members train in a few seconds on 1 core."""
    cfg = load_config("xp_hybrid")
    feats = [f.name for f in cfg.features]
    return cfg.with_overrides(
        model={"spectrum": {"conv": [{"channels": 4, "kernel": 5, "pool": 4},
                                     {"channels": 8, "kernel": 3, "pool": 4}],
                            "dense": [32], "activation": "leaky_relu"},
               "scalar_branches": [{"name": "photometry", "features": feats, "layers": [32],
                                    "activation": "leaky_relu"}],
               "head": {"layers": [64], "dropout": 0.0, "activation": "leaky_relu"},
               "channels_last_2d": False},
        training={"max_epochs": 12, "batch_size": 32, "lr": 3e-3, "patience": 12, "threads": 1},
        ensemble={"n_splits": 1, "members_per_split": 2, "seed": 0},
        uncertainty={"n_bins": 5, "degree": 1, "min_per_bin": 10},
    )


@pytest.fixture(name="tiny_xp_config")
def _tiny_xp_config_fixture():
    """Factory returning the shrunk xp_hybrid config used by ``tiny_holdout``."""
    return tiny_xp_config


@pytest.fixture(scope="session")
def tiny_holdout(xp_subset, tmp_path_factory):
    """Tiny ensemble (1 split x 2 members) trained once on the crc32 training part of
    the subset; the held-out fifth predicted (:func:`kielnet.pipeline.run_holdout`)."""
    from kielnet.pipeline import run_holdout

    out = tmp_path_factory.mktemp("tiny_ensemble")
    logs: list[str] = []
    res = run_holdout(xp_subset, tiny_xp_config(), workdir=out / "work", bundle_dir=out / "bundle",
                      progress=False, log=logs.append)
    res.logs = logs
    res.bundle_dir = out / "bundle"
    return res


@pytest.fixture(scope="session")
def tiny_bundle(tiny_holdout):
    return tiny_holdout.bundle


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_holdout) -> Path:
    return tiny_holdout.bundle_dir


@pytest.fixture(scope="session")
def gaiaxpy():
    """The optional GaiaXPy package (the XP calibration's reference); skips when absent."""
    from kielnet.errors import InputError
    from kielnet.io.gaia_xp import _require_gaiaxpy

    try:
        return _require_gaiaxpy()
    except InputError:
        pytest.skip("optional package gaiaxpy is absent")
