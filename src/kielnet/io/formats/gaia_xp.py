"""Format ``gaia-xp``: Gaia DR3 XP continuous mean spectra (``xp_continuous_mean_spectrum``)
as the archive writes them — a CSV / ECSV / FITS / VOTable file with a column
``bp_coefficients`` or ``rp_coefficients``.

Read by :func:`kielnet.io.gaia_xp.read_xp_continuous`; streamed: read whole (one
file), then sliced. For a model that reads sampled spectra the file is converted with
GaiaXPy (:func:`kielnet.io.gaia_xp.xp_sampled_spectra`, the ``as_sampled`` hook).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kielnet.data.startable import StarTable
from kielnet.io.registry import ReaderSpec, column_names, register_reader

__all__ = ["READER"]


def identify(path: Path) -> bool:
    """a CSV/ECSV/FITS/VOTable file with bp_coefficients / rp_coefficients columns"""
    return path.is_file() and bool({"bp_coefficients", "rp_coefficients"} & column_names(path))


def read(path: Any) -> StarTable:
    """Every star of the file (coefficients as scalars ``bp_0 … rp_54``)."""
    from kielnet.io.gaia_xp import read_xp_continuous

    return read_xp_continuous(path)


def as_sampled(path: Any) -> StarTable:
    """The file's stars as sampled spectra (336–1020 nm, divided by the median flux)."""
    from kielnet.io.gaia_xp import xp_sampled_spectra

    return xp_sampled_spectra(path)


READER = register_reader(ReaderSpec(
    "gaia-xp", identify=identify, read=read, priority=15, description="Gaia XP continuous spectra",
    as_sampled=as_sampled, shared_meta=("xp_coefficients", "xp_correlations"),
    hint="archive XP continuous CSV/ECSV/FITS/VOTable: columns bp_coefficients, rp_coefficients"))
