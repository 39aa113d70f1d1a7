"""Content fingerprints for run identity.

A resumable thing — a training work directory, the parts of a chunked prediction —
may only be picked up again by the run that wrote it. Such a run is identified by
the *content* of what determines its output: the star table's ids, spectra, scalar
inputs and labels (not file names or modification times), the configuration, the
bundle and the options. :func:`table_fingerprint` digests a star table field by
field, so that a mismatch can be reported precisely ("label 'fe_h' differs"), and
:func:`describe_differences` turns two fingerprints into such messages.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np

from kielnet.data.startable import StarTable

__all__ = ["array_digest", "table_fingerprint", "describe_differences", "dict_differences"]


def array_digest(values: Any) -> str:
    """SHA-256 (hex) of an array's dtype, shape and bytes; strings by their UTF-8 text."""
    a = np.asarray(values)
    h = hashlib.sha256()
    if a.dtype.kind in "USO":
        h.update(f"str{a.shape}".encode())
        h.update("\x1f".join(map(str, a.ravel().tolist())).encode("utf-8", "surrogatepass"))
    else:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).ravel() if a.size else b"")
    return h.hexdigest()


def table_fingerprint(table: StarTable, *, scalars: Iterable[str] | None = None,
                      labels: Iterable[str] | None = None, extra: bool = True,
                      label_errs: bool = False) -> dict:
    """Field-by-field digests of a star table.

    Parameters
    ----------
    table
        The stars.
    scalars, labels
        Restrict the digested scalar / label columns to these names (``None`` = all):
        columns a run does not read cannot change its output.
    extra
        Include pass-through columns (they are copied into catalogues).
    label_errs
        Include the reference label errors.

    Returns
    -------
    dict
        ``{"n_rows", "ids", "flux", "flux_err", "wavelength", "scalars": {name: digest},
        "labels": {...}, ["label_errs": {...}], ["extra": {...}]}`` — JSON-able.
    """
    def pick(d: dict, names: Iterable[str] | None) -> dict[str, str]:
        keys = sorted(d) if names is None else [n for n in names if n in d]
        return {k: array_digest(d[k]) for k in keys}

    fp: dict = {
        "n_rows": int(len(table)),
        "ids": array_digest(table.ids),
        "flux": None if table.flux is None else array_digest(table.flux),
        "flux_err": None if table.flux_err is None else array_digest(table.flux_err),
        "wavelength": None if table.wavelength is None else array_digest(np.asarray(table.wavelength.value)),
        "scalars": pick(table.scalars, scalars),
        "labels": pick(table.labels, labels),
    }
    if label_errs:
        fp["label_errs"] = pick(table.label_errs, labels)
    if extra:
        fp["extra"] = pick(table.extra, None)
    return fp


_FIELD_NAMES = {"n_rows": "number of stars", "ids": "star ids (or their order)", "flux": "spectra (flux)",
                "flux_err": "flux errors", "wavelength": "wavelength grid", "scalars": "scalar input",
                "labels": "label", "label_errs": "label error", "extra": "pass-through column"}


def describe_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two :func:`table_fingerprint` results, most
    telling first (empty when they are equal). A different number of stars is reported
    alone; columns are grouped, e.g. ``"label 'fe_h', 'teff' differ"``."""
    if old.get("n_rows") != new.get("n_rows"):
        return [f"number of stars: {old.get('n_rows')} before, {new.get('n_rows')} now"]
    out = []
    for key, name in _FIELD_NAMES.items():
        a, b = old.get(key), new.get(key)
        if key == "n_rows" or a == b:
            continue
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            for what, cols in (("differ", [c for c in sorted(a) if c in b and a[c] != b[c]]),
                               ("new", sorted(set(b) - set(a))), ("gone", sorted(set(a) - set(b)))):
                if cols:
                    verb = "differs" if what == "differ" and len(cols) == 1 else what
                    out.append(f"{name} {', '.join(repr(c) for c in cols)} {verb}")
        else:
            out.append(f"{name} differ")
    return out


def dict_differences(old: Any, new: Any, prefix: str = "", limit: int = 8) -> list[str]:
    """Dotted paths at which two nested JSON-like values differ (at most ``limit``),
    e.g. ``["training.lr", "model.head.layers"]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(old.keys() | new.keys(), key=str):
            out += dict_differences(old.get(k), new.get(k), f"{prefix}{k}.", limit)
            if len(out) >= limit:
                return out[:limit]
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]
