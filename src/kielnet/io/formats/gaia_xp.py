"""Format ``gaia-xp``: Gaia DR3 XP continuous mean spectra (``xp_continuous_mean_spectrum``)
as the archive writes them — a CSV / ECSV / FITS / VOTable file (plain or ``.gz``) with a
column ``bp_coefficients`` or ``rp_coefficients`` — a directory of such files (the bulk
download's ``XpContinuousMeanSpectrum_*.csv.gz``, ECSV-headed CSV) or a glob of them.

Read whole by :func:`kielnet.io.gaia_xp.read_xp_continuous` (one file) or file after
file (a directory / list). Streamed in row pieces with memory bounded by the piece by
:class:`kielnet.io.streams.xp_continuous.XpContinuousSource` (the ``open`` hook: the
coefficients as scalars; ``open_sampled``: for a model that reads sampled spectra, each
piece calibrated to the 343-pixel spectrum divided by its median, as
:func:`kielnet.io.gaia_xp.xp_sampled_spectra` does for a whole file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kielnet.data.startable import StarTable
from kielnet.io.registry import ReaderSpec, column_names, register_reader, safe_iterdir

__all__ = ["READER"]

_COLUMNS = {"bp_coefficients", "rp_coefficients"}


def identify(path: Path) -> bool:
    """a CSV/ECSV/FITS/VOTable file (.gz allowed) with bp_coefficients / rp_coefficients columns, or a
    directory whose first such file has them"""
    if path.is_dir():
        from kielnet.io.streams.xp_continuous import XP_SUFFIXES

        first = min((f for f in safe_iterdir(path) if f.is_file() and not f.name.startswith((".", "_"))
                     and f.name.lower().endswith(XP_SUFFIXES)), default=None)
        return first is not None and bool(_COLUMNS & column_names(first))
    return path.is_file() and bool(_COLUMNS & column_names(path))


def read(path: Any) -> StarTable:
    """Every star of a file (coefficients as scalars ``bp_0 … rp_54``), or of a directory /
    list of files (their stars concatenated)."""
    from kielnet.io.gaia_xp import read_xp_continuous

    if isinstance(path, (list, tuple)) or Path(path).is_dir():
        return open_source(path).read_all()
    return read_xp_continuous(path)


def as_sampled(path: Any) -> StarTable:
    """The file's stars as sampled spectra (336–1020 nm, divided by the median flux)."""
    from kielnet.io.gaia_xp import xp_sampled_spectra

    return xp_sampled_spectra(path)


def list_files(target: Any) -> list[Path]:
    """The file, a list's files, or a directory's XP files (sorted)."""
    from kielnet.io.streams.xp_continuous import xp_files

    return xp_files(target)


def open_source(target: Any):
    """The streamed source of ``target`` (coefficients as scalars)."""
    from kielnet.io.streams.xp_continuous import XpContinuousSource

    return XpContinuousSource(target)


def open_sampled(target: Any):
    """The streamed source of ``target`` as sampled spectra (343 px, divided by the median)."""
    from kielnet.io.streams.xp_continuous import XpContinuousSource

    return XpContinuousSource(target, sampled=True)


def open_coefficients(target: Any):
    """The streamed source of ``target``: coefficients only (errors, correlations not read)."""
    from kielnet.io.streams.xp_continuous import XpContinuousSource

    return XpContinuousSource(target, uncertainties=False)


READER = register_reader(ReaderSpec(
    "gaia-xp", identify=identify, read=read, priority=15, description="Gaia XP continuous spectra",
    directories=True, list_files=list_files, open=open_source, open_sampled=open_sampled,
    open_coefficients=open_coefficients,
    as_sampled=as_sampled, shared_meta=("xp_coefficients", "xp_correlations"),
    hint="archive XP continuous CSV/ECSV/FITS/VOTable (.gz allowed): columns bp_coefficients, rp_coefficients; "
         "or a directory of them (bulk download)"))
