"""The XP calibration's design matrices and merge weights, obtained from GaiaXPy once.

:class:`kielnet.data.xp_calibration.XPSampling` turns XP coefficients into sampled
spectra with fixed matrices. For GaiaXPy's default ``calibrate`` sampling (336–1020 nm
in 2 nm steps, 343 px, the XP library's grid) GaiaXPy ships these matrices in its
configuration (``load_xpsampling_from_xml`` / ``load_xpmerge_from_xml``, models
BP v375wi / RP v142r, the ones ``calibrate`` uses). :func:`default_xp_sampling` reads
them from the installed GaiaXPy the first time and caches them as
``xp_sampling_gaiaxpy-<version>.npz`` (~0.3 MB) in the user cache directory —
``$KIELNET_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("kielnet")`` when
platformdirs is installed, else ``~/.cache/kielnet`` — so later runs (and machines
without GaiaXPy, given the cache) need no GaiaXPy. Without GaiaXPy and without a
cache the error says what to install.

GaiaXPy is BSD-3-Clause licensed (© DPAC, CU5, DPCI): the matrices could be shipped
with kielnet provided the copyright notice and licence travel with them; they are
derived at first use instead, so that they always match the installed GaiaXPy.

:func:`xp_sampling` also builds the map for any other wavelength grid, from GaiaXPy's
instrument model (GaiaXPy's own private routine; not cached on disk), and
:func:`internal_design_matrices` gives the per-band matrices of GaiaXPy's ``convert``
(internally calibrated, pseudo-wavelength sampling). GaiaXPy is imported (and kept
quiet) here for the whole package: :func:`_require_gaiaxpy`, :func:`_quiet_gaiaxpy`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kielnet.data.xp import XP_BANDS
from kielnet.data.xp_calibration import XPSampling
from kielnet.errors import InputError

__all__ = ["default_xp_sampling", "xp_sampling", "internal_design_matrices", "cache_dir",
           "cache_path", "CACHE_ENV"]

#: Environment variable that overrides the cache directory.
CACHE_ENV = "KIELNET_CACHE_DIR"
_PREFIX = "xp_sampling_gaiaxpy-"
#: The models GaiaXPy's ``calibrate`` uses by default.
_BP_MODEL, _RP_MODEL = "v375wi", "v142r"


def cache_dir() -> Path:
    """Directory of kielnet's cached files (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "kielnet"
    return Path(platformdirs.user_cache_dir("kielnet"))


def cache_path(gaiaxpy_version: str) -> Path:
    """Cache file of the default-sampling matrices for one GaiaXPy version."""
    return cache_dir() / f"{_PREFIX}{gaiaxpy_version}.npz"


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("gaiaxpy")
    except importlib.metadata.PackageNotFoundError:
        return None


def _require_gaiaxpy() -> Any:
    import matplotlib

    # GaiaXPy's plotter sets matplotlib's text.usetex = True at import, which breaks every
    # later figure on machines without LaTeX: keep the user's settings as they were
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", DeprecationWarning)  # pandas 3 notices at import
        try:
            gaiaxpy = importlib.import_module("gaiaxpy")
        except ImportError as exc:
            raise InputError("converting XP coefficients to sampled spectra needs the optional "
                             "package gaiaxpy (pip install gaiaxpy, or the kielnet extra that "
                             f"provides it): {exc}", source="gaiaxpy") from None
        try:  # imported lazily by GaiaXPy; import it here under the filter
            importlib.import_module("gaiaxpy.input_reader.dataframe_string_array_reader")
        except ImportError:
            pass
    return gaiaxpy


@contextlib.contextmanager
def _quiet_gaiaxpy() -> Any:
    """Silence GaiaXPy's progress messages: its progress bars write to the ``stdout``
    bound when its calibrator / converter modules were imported, so those are swapped too."""
    sink = io.StringIO()
    saved: list[tuple[Any, Any]] = []
    for name in ("gaiaxpy.calibrator.calibrator", "gaiaxpy.converter.converter"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "stdout"):
            saved.append((module, module.stdout))
            module.stdout = sink
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                warnings.catch_warnings():
            # GaiaXPy 2.1.5 under pandas 3 emits pandas deprecation notices (not ours to fix)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for module, value in saved:
            module.stdout = value


def _from_gaiaxpy_default() -> XPSampling:
    gaiaxpy = _require_gaiaxpy()
    from gaiaxpy.core.config import load_xpmerge_from_xml, load_xpsampling_from_xml

    with _quiet_gaiaxpy():
        grid, merge = load_xpmerge_from_xml(bp_model=_BP_MODEL, rp_model=_RP_MODEL)
        design = load_xpsampling_from_xml(bp_model=_BP_MODEL, rp_model=_RP_MODEL)
    return XPSampling(wavelength_nm=np.asarray(grid, float),
                      bp_design=np.asarray(design["bp"], float).T,
                      rp_design=np.asarray(design["rp"], float).T,
                      bp_weight=np.asarray(merge["bp"], float), rp_weight=np.asarray(merge["rp"], float),
                      origin=f"gaiaxpy {getattr(gaiaxpy, '__version__', '?')} default sampling")


def _load(path: Path) -> XPSampling:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("wavelength_nm", "bp_design", "rp_design", "bp_weight",
                                    "rp_weight")}
        origin = str(z["origin"]) if "origin" in z.files else path.name
    return XPSampling(**arrays, origin=origin)


def _save(sampling: XPSampling, path: Path) -> None:
    """Write atomically (a temporary file renamed into place); a cache that cannot be
    written is skipped silently — the matrices are then derived again next time."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **sampling.arrays(), origin=np.array(sampling.origin))
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@functools.lru_cache(maxsize=4)
def _cached(directory: str, version: str | None) -> XPSampling:
    if version is not None:
        path = Path(directory) / f"{_PREFIX}{version}.npz"
        if path.is_file():
            return _load(path)
        try:
            sampling = _from_gaiaxpy_default()
        except InputError:
            sampling = None  # listed as installed but not importable: try any cache below
        if sampling is not None:
            _save(sampling, path)
            return sampling
    found = sorted(Path(directory).glob(f"{_PREFIX}*.npz"), key=lambda p: p.stat().st_mtime)
    if found:
        return _load(found[-1])
    raise InputError("converting XP coefficients to sampled spectra needs the optional package "
                     "gaiaxpy once, to derive its calibration matrices (pip install gaiaxpy, or "
                     f"the kielnet extra that provides it); no cached copy in {directory} "
                     f"({CACHE_ENV} sets the cache directory)", source="gaiaxpy")


def default_xp_sampling() -> XPSampling:
    """The XP calibration map at GaiaXPy's default sampling (343 px, 336–1020 nm).

    Loaded from the cache for the installed GaiaXPy version, else derived from GaiaXPy
    and cached; without GaiaXPy, the newest cached copy of any version. Kept in memory
    after the first call.

    Raises
    ------
    InputError
        When GaiaXPy cannot be imported and no cached copy exists.
    """
    return _cached(str(cache_dir()), _installed_version())


@functools.lru_cache(maxsize=8)
def _other_grid(grid: bytes) -> XPSampling:
    sampling = np.frombuffer(grid, dtype=np.float64).copy()
    gaiaxpy = _require_gaiaxpy()
    calibrator = importlib.import_module("gaiaxpy.calibrator.calibrator")
    build = getattr(calibrator, "__generate_xp_matrices_and_merge", None)
    if build is None:
        raise InputError("this GaiaXPy has no routine for design matrices on other grids; use "
                         "method='gaiaxpy'", source="gaiaxpy")
    importlib.import_module("gaiaxpy.core.generic_functions").validate_wl_sampling(sampling)
    with _quiet_gaiaxpy():
        design, merge = build("calibrator", sampling, _BP_MODEL, _RP_MODEL)
    return XPSampling(wavelength_nm=sampling,
                      bp_design=np.asarray(design["bp"].get_design_matrix(), float).T,
                      rp_design=np.asarray(design["rp"].get_design_matrix(), float).T,
                      bp_weight=np.asarray(merge["bp"], float), rp_weight=np.asarray(merge["rp"], float),
                      origin=f"gaiaxpy {getattr(gaiaxpy, '__version__', '?')} instrument model")


def xp_sampling(wavelength_nm: np.ndarray | None = None) -> XPSampling:
    """The XP calibration map on a wavelength grid (nm).

    ``None`` (or GaiaXPy's default grid, 336–1020 nm in 2 nm steps): :func:`default_xp_sampling`.
    Any other grid (330–1050 nm) is computed by GaiaXPy from its instrument model,
    as ``gaiaxpy.calibrate(sampling=…)`` does — it needs GaiaXPy and is kept in memory only.
    """
    if wavelength_nm is None:
        return default_xp_sampling()
    grid = np.ascontiguousarray(wavelength_nm, dtype=np.float64).ravel()
    default = default_xp_sampling()
    if np.array_equal(grid, default.wavelength_nm):
        return default
    try:
        return _other_grid(grid.tobytes())
    except ValueError as exc:  # GaiaXPy's grid validation
        raise InputError(f"invalid XP sampling grid: {exc}", field="sampling_nm") from None


def internal_design_matrices(sampling_pwl: np.ndarray) -> dict[str, np.ndarray]:
    """GaiaXPy ``convert``'s design matrices (internally calibrated flux, e⁻ s⁻¹ per
    pseudo-wavelength pixel) on a pseudo-wavelength grid: ``{band: (n_pix, 55)}``.

    Needs GaiaXPy (not cached); for checking :func:`kielnet.data.xp_calibration.sample_band`
    against GaiaXPy's ``convert`` output.
    """
    _require_gaiaxpy()
    converter = importlib.import_module("gaiaxpy.converter.converter")
    config = importlib.import_module("gaiaxpy.converter.config")
    from gaiaxpy.config.paths import hermite_bases_file

    with _quiet_gaiaxpy():
        matrices = converter.get_design_matrices(np.asarray(sampling_pwl, float),
                                                 config.parse_config(hermite_bases_file))
    return {band: np.asarray(matrices[band].get_design_matrix(), float).T for band in XP_BANDS}
