"""The star table: the one in-memory container every pipeline stage works on.

A :class:`StarTable` holds, for ``n`` stars,

* ``ids`` — one string identifier per star (duplicates allowed: the same star may
  appear several times, e.g. several visits);
* ``flux`` / ``flux_err`` — spectra on a common wavelength grid, shape
  ``(n, n_pix)``; any pixel count; NaN marks a missing pixel;
* ``wavelength`` — the grid, shape ``(n_pix,)``, with an astropy unit;
* ``scalars`` — named per-star scalar inputs (magnitudes in mag, parallax in mas,
  …) as float arrays in which NaN marks a missing value;
* ``labels`` / ``label_errs`` — named reference labels (Teff in K, log g in dex
  [cgs], abundances in dex) with NaN where a label is unknown;
* ``extra`` — pass-through per-star columns of any dtype (e.g. ``source_id``) that
  are carried into catalogues unchanged;
* ``meta`` — provenance (source file, loader, …).

Missing values are always NaN inside the table and are *reported* through
:meth:`StarTable.missing_report`; readers never substitute sentinels. ``data`` never
reads files: the :mod:`kielnet.io` readers build star tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import astropy.units as u
import numpy as np

from kielnet.errors import InputError

__all__ = ["StarTable", "overlay_values"]


def overlay_values(own: np.ndarray | None, joined: np.ndarray) -> tuple[np.ndarray, int]:
    """A scalar column after a join: ``joined`` where it is finite, else ``own`` (the
    table's own values; ``None``: the table has no such column, NaN). Returns it with
    the number of stars whose own finite value was replaced by a different one."""
    joined = np.asarray(joined, dtype=np.float64)
    if own is None:
        return joined, 0
    own = np.asarray(own, dtype=np.float64)
    new = np.isfinite(joined)
    return np.where(new, joined, own), int((new & np.isfinite(own) & (joined != own)).sum())


def _as_float_2d(name: str, arr: Any, source: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float32)
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2:
        raise InputError(f"{name} must be 2-D (n_stars, n_pixels), got shape {out.shape}",
                         source=source, field=name)
    return out


@dataclass
class StarTable:
    """Per-star spectra, scalar inputs and labels (see module docstring for units)."""

    ids: np.ndarray
    flux: np.ndarray | None = None
    flux_err: np.ndarray | None = None
    wavelength: u.Quantity | None = None
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    label_errs: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = str(self.meta.get("source", "<memory>"))
        self.ids = np.asarray([str(i).strip() for i in np.atleast_1d(self.ids)], dtype=str)
        n = len(self.ids)
        if self.flux is not None:
            self.flux = _as_float_2d("flux", self.flux, source)
            if self.flux.shape[0] != n:
                raise InputError(f"flux has {self.flux.shape[0]} rows but there are {n} ids",
                                 source=source, field="flux")
            if self.flux_err is not None:
                self.flux_err = _as_float_2d("flux_err", self.flux_err, source)
                if self.flux_err.shape != self.flux.shape:
                    raise InputError(f"flux_err shape {self.flux_err.shape} differs from "
                                     f"flux shape {self.flux.shape}", source=source, field="flux_err")
            if self.wavelength is not None:
                wl = self.wavelength
                if not isinstance(wl, u.Quantity):
                    wl = np.asarray(wl, dtype=float) * u.nm
                if wl.shape != (self.flux.shape[1],):
                    raise InputError(f"wavelength grid has shape {wl.shape}, spectra have "
                                     f"{self.flux.shape[1]} pixels", source=source, field="wavelength")
                self.wavelength = wl
        for kind in ("scalars", "labels", "label_errs"):
            d = getattr(self, kind)
            for key in list(d):
                v = np.asarray(d[key], dtype=np.float64)
                if np.ma.isMaskedArray(d[key]):
                    v = np.ma.filled(np.ma.asarray(d[key], dtype=np.float64), np.nan)
                if v.shape != (n,):
                    raise InputError(f"{kind[:-1]} '{key}' has shape {v.shape}, expected ({n},)",
                                     source=source, field=key)
                d[key] = v
        for key in list(self.extra):
            v = np.asarray(self.extra[key])
            if v.shape[:1] != (n,):
                raise InputError(f"column '{key}' has {v.shape[:1]} rows, expected {n}",
                                 source=source, field=key)
            self.extra[key] = v

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_pix(self) -> int:
        """Number of spectral pixels (0 when the table holds no spectra)."""
        return 0 if self.flux is None else int(self.flux.shape[1])

    @property
    def source(self) -> str:
        """Where the table came from (file path or ``<memory>``)."""
        return str(self.meta.get("source", "<memory>"))

    def take(self, index: Sequence[int] | np.ndarray) -> "StarTable":
        """Return a new table with the rows ``index`` (an integer or boolean selector)."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)

        def sub(d: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v[idx] for k, v in d.items()}

        return StarTable(
            ids=self.ids[idx],
            flux=None if self.flux is None else self.flux[idx],
            flux_err=None if self.flux_err is None else self.flux_err[idx],
            wavelength=self.wavelength,
            scalars=sub(self.scalars),
            labels=sub(self.labels),
            label_errs=sub(self.label_errs),
            extra=sub(self.extra),
            meta=dict(self.meta),
        )

    def require(self, *, scalars: Sequence[str] = (), labels: Sequence[str] = (),
                n_pix: int | None = None) -> None:
        """Raise :class:`InputError` naming the file and field if something is absent.

        Parameters
        ----------
        scalars, labels
            Names that must be present as columns (values may still be NaN per star).
        n_pix
            Required pixel count of the spectra, or ``None`` for no spectrum check.

        Notes
        -----
        A required scalar that the file has, but as a column holding text that is not a
        number, is reported as such (with the first offending row, in file order) when
        the reader recorded it in ``meta["non_numeric_columns"]`` (``{name: (row,
        text)}``), rather than as missing.
        """
        non_numeric = self.meta.get("non_numeric_columns") or {}
        for name in scalars:
            if name not in self.scalars:
                if name in non_numeric:
                    row, value = non_numeric[name]
                    raise InputError(f"column '{name}' is not numeric (row {int(row)} holds {value!r})",
                                     source=self.source, field=name, row=int(row))
                raise InputError(f"required scalar input '{name}' is missing; available: "
                                 f"{sorted(self.scalars)}", source=self.source, field=name)
        for name in labels:
            if name not in self.labels:
                raise InputError(f"required label '{name}' is missing; available: "
                                 f"{sorted(self.labels)}", source=self.source, field=name)
        if n_pix is not None:
            if self.flux is None:
                raise InputError("the table holds no spectra but the model needs "
                                 f"{n_pix}-pixel spectra", source=self.source, field="flux")
            if self.n_pix != n_pix:
                raise InputError(f"spectra have {self.n_pix} pixels but the model expects {n_pix}",
                                 source=self.source, field="flux")

    def missing_report(self) -> dict[str, int]:
        """Count missing (NaN) values per field, e.g. ``{"scalar:j": 40, "label:fe_h": 4480}``."""
        rep: dict[str, int] = {}
        for kind, d in (("scalar", self.scalars), ("label", self.labels)):
            for k, v in d.items():
                n_bad = int(np.count_nonzero(~np.isfinite(v)))
                if n_bad:
                    rep[f"{kind}:{k}"] = n_bad
        if self.flux is not None:
            bad_rows = ~np.isfinite(self.flux).all(axis=1)
            if bad_rows.any():
                rep["spectrum:nonfinite_pixels"] = int(bad_rows.sum())
        return rep

    def join_scalars(self, other: "StarTable", columns: Sequence[str] | None = None) -> "StarTable":
        """Add scalar columns of ``other`` matched by star id (e.g. Gaia photometry and
        parallax for apStar spectra). Stars absent from ``other`` get NaN (reported as
        missing downstream) unless this table already has a value for that column, which
        is then kept; a finite value in ``other`` wins (``meta['metadata_replaced']``:
        column → stars whose own, different finite value it replaced). Duplicate ids in
        ``other`` are an error."""
        uniq, counts = np.unique(other.ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"ids appear more than once in the metadata table, e.g. "
                             f"{uniq[counts > 1][0]}", source=other.source, field="id")
        index = {sid: i for i, sid in enumerate(other.ids)}
        rows = np.array([index.get(sid, -1) for sid in self.ids])
        cols = list(other.scalars) if columns is None else list(columns)
        scalars = dict(self.scalars)
        replaced: dict[str, int] = {}
        for c in cols:
            if c not in other.scalars:
                raise InputError(f"metadata column '{c}' is missing", source=other.source, field=c)
            found = rows >= 0
            v = np.full(len(self), np.nan)
            v[found] = other.scalars[c][rows[found]]
            scalars[c], n = overlay_values(scalars.get(c), v)
            if n:
                replaced[c] = n
        out = self.take(np.arange(len(self)))
        out.scalars = scalars
        out.meta["metadata_source"] = other.source
        out.meta["metadata_replaced"] = replaced
        return out

    @staticmethod
    def concat(tables: Sequence["StarTable"]) -> "StarTable":
        """Stack tables with identical columns and wavelength grids row-wise."""
        if not tables:
            raise ValueError("nothing to concatenate")
        first = tables[0]
        for t in tables[1:]:
            if any(set(getattr(t, a)) != set(getattr(first, a)) for a in ("scalars", "labels", "extra")):
                raise InputError("tables to concatenate have different columns", source=t.source)
            if t.n_pix != first.n_pix:
                raise InputError("tables to concatenate have different pixel counts", source=t.source)

        def cat(attr: str) -> dict[str, np.ndarray]:
            return {k: np.concatenate([getattr(t, attr)[k] for t in tables])
                    for k in getattr(first, attr)}

        has_err = all(t.flux_err is not None for t in tables)
        return StarTable(
            ids=np.concatenate([t.ids for t in tables]),
            flux=None if first.flux is None else np.concatenate([t.flux for t in tables]),
            flux_err=np.concatenate([t.flux_err for t in tables]) if has_err and first.flux is not None else None,
            wavelength=first.wavelength,
            scalars=cat("scalars"), labels=cat("labels"), label_errs=cat("label_errs"),
            extra=cat("extra"),
            meta={"source": ",".join(sorted({t.source for t in tables}))},
        )
