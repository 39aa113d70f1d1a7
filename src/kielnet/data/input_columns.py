"""Scalar model inputs found under the surveys' own column names.

A preset names its photometric inputs briefly (``g``, ``bp``, ``rp``, ``j``, ``h``,
``k``). A table exported from the Gaia archive or from 2MASS calls them
``phot_g_mean_mag`` … and ``j_m`` / ``h_m`` / ``ks_m``. :func:`resolve_inputs` copies
such a column to the input's name when the table lacks that name, so a Gaia/2MASS
export labels with its photometry instead of every star being flagged
``missing_input``. Only names that mean one thing are aliases (:data:`INPUT_ALIASES`;
case-insensitive): a bare ``gmag`` or ``kmag`` may be SDSS or UKIDSS, and is not read.
A column under the input's own name always wins.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

import numpy as np

from kielnet.config import KielnetConfig
from kielnet.data.label_columns import resolve_labels
from kielnet.data.startable import StarTable

__all__ = ["INPUT_ALIASES", "find_input_column", "resolve_inputs", "resolve_columns"]

#: input name → the surveys' names for it (Gaia DR3 ``gaia_source``; 2MASS PSC), in order
#: of preference, lower case
INPUT_ALIASES: Mapping[str, tuple[str, ...]] = {
    "g": ("phot_g_mean_mag",),
    "bp": ("phot_bp_mean_mag",),
    "rp": ("phot_rp_mean_mag",),
    "j": ("j_m",),
    "h": ("h_m",),
    "k": ("ks_m",),
}


def find_input_column(table: StarTable, name: str) -> tuple[str, str] | None:
    """Where ``table`` holds input ``name`` under an alias: ``(kind, key)`` with kind
    ``scalars`` or ``extra`` (numeric), or ``None`` (also when ``name`` itself is a
    scalar column, or has no aliases)."""
    if name in table.scalars:
        return None
    for alias in INPUT_ALIASES.get(name, ()):
        for kind in ("scalars", "extra"):
            cols = getattr(table, kind)
            for key, values in cols.items():
                a = np.asarray(values)
                if key.lower() == alias and a.ndim == 1 and a.dtype.kind in "fiu":
                    return kind, key
    return None


def resolve_inputs(table: StarTable, names: Iterable[str]) -> StarTable:
    """``table`` with each input of ``names`` that it holds only under an alias
    (:func:`find_input_column`) copied to ``scalars[name]`` as float64; the source column
    stays. ``meta['input_columns']`` records ``name → "kind:column"``. Returns ``table``
    itself when nothing changes."""
    found = {n: w for n in names if (w := find_input_column(table, n)) is not None}
    if not found:
        return table
    scalars = dict(table.scalars)
    meta = dict(table.meta)
    mapped = dict(meta.get("input_columns") or {})
    for name, (kind, key) in found.items():
        scalars[name] = np.asarray(getattr(table, kind)[key], dtype=np.float64)
        mapped[name] = f"{kind}:{key}"
    meta["input_columns"] = mapped
    return replace(table, scalars=scalars, meta=meta)


def resolve_columns(table: StarTable, config: KielnetConfig) -> StarTable:
    """``table`` with the config's labels (:func:`kielnet.data.label_columns.resolve_labels`)
    and scalar inputs (:func:`resolve_inputs`) that it holds under other names copied to
    theirs: what every training entry point does before checking the table."""
    table = resolve_labels(table, config.label_vocabulary)
    return resolve_inputs(table, config.scalar_columns())
