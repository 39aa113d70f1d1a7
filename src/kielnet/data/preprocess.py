"""Declared preprocessing: star table → network tensors (numpy), and back for labels.

:class:`Preprocessor` is built from a :class:`~kielnet.config.KielnetConfig`, fitted on
a training :class:`~kielnet.data.startable.StarTable`, and then applied to any table
with the same columns. Its fitted state (per-pixel statistics, feature scalers,
label transforms) serialises to a JSON-able dict stored in model bundles.

Nothing is silently dropped: :class:`Prepared` carries, per star, the count of
interpolated spectral pixels, whether the spectrum was unusable (too many non-finite
pixels, or physically implausible for this model: see
:mod:`kielnet.data.plausibility`), and which scalar features were missing (imputed
with the training mean; survey placeholders such as 99.999 or −999 and values far
outside the training range count as missing), so that the quality layer can flag the
star.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kielnet.config import KielnetConfig
from kielnet.data.plausibility import ColumnRanges, SpectrumPlausibility, placeholder_mask
from kielnet.data.startable import StarTable
from kielnet.data.transforms import LabelTransform, Scaler
from kielnet.data.input_columns import resolve_columns, resolve_inputs
from kielnet.data.label_columns import resolve_labels
from kielnet.errors import InputError
from kielnet.labels import column_candidates
from kielnet.stats import row_nanmedian

__all__ = ["Prepared", "Preprocessor", "repair_spectra", "spectrum_snr"]


@dataclass
class Prepared:
    """Network-ready arrays for ``n`` stars.

    Attributes
    ----------
    spectrum : (n, n_pix) float32 or None
    spectrum_err : (n, n_pix) float32 or None — flux errors propagated through the same
        steps (0 where unknown); used for noise augmentation
    branches : dict branch name → (n, k) float32 (features, then missing indicators)
    targets : (n, n_labels) float32, scaled; NaN where the label is unknown/invalid
    n_bad_pixels : (n,) int — non-finite pixels that were interpolated
    bad_spectrum : (n,) bool — spectrum unusable for any reason (too many bad pixels,
        no spectrum, or implausible); its labels are not reported
    missing_features : (n, n_features) bool
    label_out_of_range : (n, n_labels) bool — reference label given but unphysical
    implausible : (n,) bool — the spectrum failed a plausibility test (a subset of
        ``bad_spectrum``)
    spectrum_issues : (n,) str — the failed plausibility tests, comma-separated
    raw_features : (n, n_features) float64 or None — the unscaled features
        (:meth:`Preprocessor.raw_features`), kept so later stages need not recompute them
    missing_columns : (n, n_columns) bool or None — which of the config's scalar columns
        (:meth:`~kielnet.config.KielnetConfig.scalar_columns`, in that order) are missing
    snr : (n,) float64 or None — the spectrum's S/N (:func:`spectrum_snr`; NaN where it
        has no flux errors)
    """

    spectrum: np.ndarray | None
    spectrum_err: np.ndarray | None
    branches: dict[str, np.ndarray]
    targets: np.ndarray | None
    n_bad_pixels: np.ndarray
    bad_spectrum: np.ndarray
    missing_features: np.ndarray
    label_out_of_range: np.ndarray | None
    implausible: np.ndarray | None = None
    spectrum_issues: np.ndarray | None = None
    raw_features: np.ndarray | None = None
    missing_columns: np.ndarray | None = None
    snr: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.n_bad_pixels)
        if self.implausible is None:
            self.implausible = np.zeros(n, dtype=bool)
        if self.spectrum_issues is None:
            self.spectrum_issues = np.full(n, "", dtype="<U1")

    def __len__(self) -> int:
        return len(self.n_bad_pixels)

    def take(self, idx: np.ndarray) -> "Prepared":
        """Rows ``idx`` (integer index array)."""
        def sub(a):
            return None if a is None else a[idx]

        return Prepared(sub(self.spectrum), sub(self.spectrum_err), {k: v[idx] for k, v in self.branches.items()},
                        sub(self.targets), self.n_bad_pixels[idx], self.bad_spectrum[idx],
                        self.missing_features[idx], sub(self.label_out_of_range), self.implausible[idx],
                        self.spectrum_issues[idx], sub(self.raw_features), sub(self.missing_columns),
                        sub(self.snr))


def spectrum_snr(flux: np.ndarray | None, err: np.ndarray | None) -> np.ndarray:
    """Per-star S/N of a spectrum: the median of |flux| / error over the pixels with a
    finite flux and a finite, positive error (NaN for a star without such pixels, and
    for every star when ``flux`` or ``err`` is None). Dimensionless."""
    if flux is None or err is None:
        n = 0 if flux is None else len(flux)
        return np.full(n, np.nan)
    f = np.asarray(flux, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(f) & np.isfinite(e) & (e > 0), np.abs(f) / e, np.nan)
    out = np.full(len(f), np.nan)
    has = np.isfinite(ratio).any(axis=1) if ratio.ndim == 2 and ratio.shape[1] else np.zeros(len(f), bool)
    if has.any():
        out[has] = row_nanmedian(ratio[has])
    return out


def repair_spectra(flux: np.ndarray, max_bad_fraction: float, mode: str = "interpolate"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repair non-finite pixels: linear interpolation along each spectrum
    (``mode='interpolate'``) or zero (``mode='zero'``).

    Returns ``(repaired, n_bad, unusable)``: spectra with more than
    ``max_bad_fraction`` bad pixels (or all bad) are marked unusable and zero-filled.
    """
    flux = np.array(flux, dtype=np.float32, copy=True)
    bad = ~np.isfinite(flux)
    n_bad = bad.sum(axis=1)
    unusable = n_bad > max_bad_fraction * flux.shape[1]
    unusable |= n_bad == flux.shape[1]
    if mode == "zero":
        flux[bad] = 0.0
    x = np.arange(flux.shape[1])
    for i in np.flatnonzero((n_bad > 0) & ~unusable) if mode == "interpolate" else []:
        good = ~bad[i]
        flux[i, bad[i]] = np.interp(x[bad[i]], x[good], flux[i, good])
    flux[unusable] = 0.0
    return flux, n_bad.astype(np.int64), unusable


class Preprocessor:
    """Fit-once, apply-anywhere preprocessing described by a config."""

    def __init__(self, config: KielnetConfig) -> None:
        self.config = config
        self.pixel_mean: np.ndarray | None = None
        self.pixel_std: np.ndarray | None = None
        self.n_pix: int | None = None
        self.feature_scalers: dict[str, Scaler] = {}
        self.label_transforms: list[LabelTransform] = []
        #: training ranges of the spectrum statistics (None: only the absolute tests)
        self.plausibility: SpectrumPlausibility | None = None
        #: training ranges of the scalar columns (None: only the placeholder test)
        self.column_ranges: ColumnRanges | None = None
        self.fitted = False

    # ------------------------------------------------------------- spectrum
    def _spectrum_steps(self, flux: np.ndarray, err: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalise / log the flux; propagate ``err`` (first order) through the same steps."""
        prep = self.config.spectrum
        assert prep is not None
        out = flux.astype(np.float64)
        e = None if err is None else np.where(np.isfinite(err), err, 0.0).astype(np.float64)
        if prep.normalise == "median":
            med = np.median(out, axis=1, keepdims=True)
            med[~(np.abs(med) > 0)] = 1.0
            out = out / med
            e = None if e is None else e / np.abs(med)
        if prep.log:
            clipped = np.clip(out, 1e-4, None)
            e = None if e is None else e / (clipped * np.log(10.0))
            out = np.log10(clipped)
        return out, e

    # ------------------------------------------------------------- features
    def clean_columns(self, table: StarTable) -> dict[str, np.ndarray]:
        """The scalar columns the features read, with survey placeholders and values far
        outside the training range (see :mod:`kielnet.data.plausibility`) set to NaN."""
        chk = self.config.checks
        out = {}
        for c in self.config.scalar_columns():
            v = np.array(table.scalars[c], dtype=np.float64)
            bad = placeholder_mask(v, chk.placeholders) | np.isinf(v)
            if self.column_ranges is not None:
                bad |= self.column_ranges.far_outside(c, v)
            v[bad] = np.nan
            out[c] = v
        return out

    def raw_features(self, table: StarTable, *, clean: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Unscaled feature values (n, n_features) in their own units (mag, mas); NaN = missing
        (a missing column value, a survey placeholder, or a value far outside the training range).
        ``clean``: the table's :meth:`clean_columns`, if already computed."""
        cols = []
        if clean is None:
            clean = self.clean_columns(table) if self.config.features else {}
        for f in self.config.features:
            vals = [clean[c] for c in f.columns]
            if f.invalid_above is not None:
                with np.errstate(invalid="ignore"):
                    vals = [np.where(v >= f.invalid_above, np.nan, v) for v in vals]
            if f.kind == "column":
                cols.append(vals[0])
            elif f.kind == "difference":
                cols.append(vals[0] - vals[1])
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    cols.append(np.where(vals[1] != 0, vals[0] / np.where(vals[1] != 0, vals[1], 1.0), np.nan))
        if not cols:
            return np.zeros((len(table), 0))
        return np.stack(cols, axis=1).astype(np.float64)

    def _raw_labels(self, table: StarTable) -> tuple[np.ndarray, np.ndarray]:
        vals, oor = [], []
        for lab in self.config.labels:
            v = table.labels.get(lab.name, np.full(len(table), np.nan))
            lo, hi = lab.valid_range
            out = np.isfinite(v) & ((v < lo) | (v > hi))
            vals.append(np.where(out, np.nan, v))
            oor.append(out)
        return np.stack(vals, axis=1), np.stack(oor, axis=1)

    # ------------------------------------------------------------- fit
    def fit(self, table: StarTable) -> "Preprocessor":
        """Fit statistics on a training table (labels must be present)."""
        cfg = self.config
        table = resolve_columns(table, cfg)
        for name, info in cfg.label_vocabulary.items():
            if name not in table.labels:
                raise InputError(f"required label '{name}' is missing (looked for columns "
                                 f"{list(column_candidates(info))}, case-insensitive); labels available: "
                                 f"{sorted(table.labels)}", source=table.source, field=name)
        table.require(scalars=cfg.scalar_columns(),
                      n_pix=None if cfg.spectrum is None else (table.n_pix if table.flux is not None else 0))
        if cfg.spectrum is not None:
            flux, _, unusable = repair_spectra(table.flux, cfg.spectrum.max_bad_fraction, cfg.spectrum.bad_pixels)
            self.n_pix = int(flux.shape[1])
            if cfg.checks.spectra:
                chk = cfg.checks
                self.plausibility = SpectrumPlausibility.fit(
                    flux[~unusable], check_scale=cfg.spectrum.normalise == "none",
                    nonpositive_margin=chk.nonpositive_margin, flat_factor=chk.flat_factor,
                    scale_margin_dex=chk.scale_margin_dex, spike_factor=chk.spike_factor)
                unusable = unusable | self.plausibility.failures(flux).any(axis=1)
            spec, _ = self._spectrum_steps(flux[~unusable])
            if cfg.spectrum.standardise:
                self.pixel_mean = spec.mean(axis=0).astype(np.float32)
                std = spec.std(axis=0)
                std[~(std > 0)] = 1.0
                self.pixel_std = std.astype(np.float32)
        self.column_ranges = None
        self.column_ranges = ColumnRanges.fit(self.clean_columns(table), cfg.checks.span_margin)
        self._set_scalers(self.raw_features(table), self._raw_labels(table)[0])
        return self

    def _set_scalers(self, raw: np.ndarray | None, labels: np.ndarray | None) -> None:
        """Feature scalers and label transforms: each ``fixed_scaling`` of the config, or
        fitted on the training values ``raw`` / ``labels`` (None: all must be fixed)."""
        cfg = self.config
        self.feature_scalers = {}
        for j, f in enumerate(cfg.features):
            if f.fixed_scaling is not None:
                self.feature_scalers[f.name] = Scaler(f.scaling, *f.fixed_scaling)
            else:
                self.feature_scalers[f.name] = Scaler(f.scaling).fit(raw[:, j])
        self.label_transforms = []
        for j, lab in enumerate(cfg.labels):
            lt = LabelTransform(lab.name, lab.transform, Scaler(lab.scaling))
            if lab.fixed_scaling is not None:
                lt.scaler.centre, lt.scaler.scale = lab.fixed_scaling
            else:
                lt.fit(labels[:, j])
            self.label_transforms.append(lt)
        self.fitted = True

    # ------------------------------------------------------------- apply
    def transform(self, table: StarTable, *, with_labels: bool = True, check_spectra: bool = True) -> Prepared:
        """Turn a star table into network inputs (and scaled targets if labels exist).

        ``check_spectra=False`` skips the plausibility tests (for noise realisations of
        spectra already tested as observed: the observed spectrum decides)."""
        if not self.fitted:
            raise RuntimeError("Preprocessor.transform called before fit/from_dict")
        cfg = self.config
        n = len(table)
        table = resolve_inputs(table, cfg.scalar_columns())
        table.require(scalars=cfg.scalar_columns(), n_pix=self.n_pix if cfg.spectrum else None)
        if with_labels:
            table = resolve_labels(table, cfg.label_vocabulary)
        spectrum = spectrum_err = None
        n_bad = np.zeros(n, dtype=np.int64)
        unusable = np.zeros(n, dtype=bool)
        implausible = np.zeros(n, dtype=bool)
        issues = None
        if cfg.spectrum is not None:
            flux, n_bad, unusable = repair_spectra(table.flux, cfg.spectrum.max_bad_fraction, cfg.spectrum.bad_pixels)
            if cfg.checks.spectra and check_spectra:
                checks = self.plausibility or SpectrumPlausibility(check_scale=False)
                fails = checks.failures(flux)
                fails[unusable] = False
                implausible = fails.any(axis=1)
                issues = SpectrumPlausibility.describe(fails)
                unusable = unusable | implausible
                flux[implausible] = 0.0  # never fed to the networks: keep the arithmetic finite
            spec, err = self._spectrum_steps(flux, table.flux_err)
            if self.pixel_mean is not None:
                spec = (spec - self.pixel_mean) / self.pixel_std
                err = None if err is None else err / self.pixel_std
            bad_after = ~np.isfinite(spec).all(axis=1)
            unusable |= bad_after
            spec[unusable] = 0.0
            spectrum = spec.astype(np.float32)
            if err is not None:
                err[~np.isfinite(table.flux) | ~np.isfinite(err)] = 0.0
                err[unusable] = 0.0
                spectrum_err = err.astype(np.float32)
        clean = self.clean_columns(table) if cfg.features else {}
        raw = self.raw_features(table, clean=clean)
        missing = ~np.isfinite(raw)
        cols_all = cfg.scalar_columns()
        missing_cols = (np.stack([~np.isfinite(clean[c]) for c in cols_all], axis=1) if cols_all
                        else np.zeros((n, 0), dtype=bool))
        snr = spectrum_snr(table.flux, table.flux_err) if cfg.spectrum is not None else np.full(n, np.nan)
        scaled = np.zeros_like(raw)
        for j, f in enumerate(cfg.features):
            col = raw[:, j]
            if f.missing_value is not None:  # sentinel mode: placeholder in raw units
                col = np.where(missing[:, j], f.missing_value, col)
            scaled[:, j] = self.feature_scalers[f.name].forward(col)
            if f.missing_value is None:
                scaled[missing[:, j], j] = 0.0  # training mean
        # either way the star is reported via missing_features
        index = {f.name: j for j, f in enumerate(cfg.features)}
        branches = {}
        for br in (cfg.model.scalar_branches):
            cols = [scaled[:, index[name]] for name in br.features]
            cols += [missing[:, index[name]].astype(np.float64) for name in br.features
                     if cfg.features[index[name]].missing_indicator]
            branches[br.name] = np.stack(cols, axis=1).astype(np.float32)
        targets = oor = None
        if with_labels and all(name in table.labels for name in cfg.label_names):
            labels, oor = self._raw_labels(table)
            targets = np.stack([lt.forward(labels[:, j]) for j, lt in enumerate(self.label_transforms)],
                               axis=1).astype(np.float32)
        return Prepared(spectrum, spectrum_err, branches, targets, n_bad, unusable, missing, oor,
                        implausible, issues, raw, missing_cols, snr)

    def branch_input_names(self) -> dict[str, list[str]]:
        """Names of each scalar branch's inputs, in order: its features, then
        ``missing_<feature>`` for each feature with a missing-value indicator."""
        feats = {f.name: f for f in self.config.features}
        return {br.name: list(br.features) + [f"missing_{f}" for f in br.features if feats[f].missing_indicator]
                for br in self.config.model.scalar_branches}

    def masking_plan(self, columns: list[str]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """How hiding the scalar ``columns`` changes the branch inputs: for each branch with
        an affected feature, ``(branch, value_positions, fill_values, indicator_positions)``
        — set those inputs to the fill values (what :meth:`transform` gives a missing
        feature) and those missing indicators to 1. Used by input dropout in training."""
        cfg = self.config
        hidden = set(columns)
        feats = {f.name: f for f in cfg.features}
        plan = []
        for br in cfg.model.scalar_branches:
            vals, fills, inds = [], [], []
            ind_pos = len(br.features)
            for i, name in enumerate(br.features):
                f = feats[name]
                if set(f.columns) & hidden:
                    vals.append(i)
                    fills.append(0.0 if f.missing_value is None
                                 else float(self.feature_scalers[name].forward(np.array([f.missing_value]))[0]))
                    if f.missing_indicator:
                        inds.append(ind_pos)
                if f.missing_indicator:
                    ind_pos += 1
            if vals:
                plan.append((br.name, np.array(vals, dtype=np.int64), np.array(fills, dtype=np.float32),
                             np.array(inds, dtype=np.int64)))
        return plan

    def branch_widths(self) -> dict[str, int]:
        """Input width of each scalar branch (features + missing indicators)."""
        feats = {f.name: f for f in self.config.features}
        return {br.name: len(br.features) + sum(feats[f].missing_indicator for f in br.features)
                for br in self.config.model.scalar_branches}

    def forward_labels(self, x: np.ndarray) -> np.ndarray:
        """Physical labels (…, n_labels) → scaled network outputs (inverse of
        :meth:`inverse_labels`)."""
        x = np.asarray(x, dtype=np.float64)
        return np.stack([lt.forward(x[..., j]) for j, lt in enumerate(self.label_transforms)], axis=-1)

    def inverse_labels(self, y: np.ndarray) -> np.ndarray:
        """Scaled network outputs (…, n_labels) → physical units."""
        y = np.asarray(y, dtype=np.float64)
        return np.stack([lt.inverse(y[..., j]) for j, lt in enumerate(self.label_transforms)], axis=-1)

    @classmethod
    def fixed(cls, config: KielnetConfig, n_pix: int) -> "Preprocessor":
        """A preprocessor that needs no training table: every feature and label has a
        ``fixed_scaling`` and the spectrum is not standardised (e.g. the official APOGEE
        Net II input handling, for imported weights). Without training spectra and
        columns, only the absolute plausibility and placeholder tests run."""
        missing = [f.name for f in config.features if f.fixed_scaling is None]
        missing += [lab.name for lab in config.labels if lab.fixed_scaling is None]
        if missing:
            raise ValueError(f"no fixed_scaling for {missing}: a fixed preprocessor needs one for every feature "
                             "and label")
        if config.spectrum is not None and config.spectrum.standardise:
            raise ValueError("spectrum.standardise needs per-pixel training statistics")
        p = cls(config)
        p.n_pix = int(n_pix) if config.spectrum is not None else None
        p._set_scalers(None, None)
        return p

    # ------------------------------------------------------------- state
    def to_dict(self) -> dict:
        return {
            "n_pix": self.n_pix,
            "pixel_mean": None if self.pixel_mean is None else self.pixel_mean.tolist(),
            "pixel_std": None if self.pixel_std is None else self.pixel_std.tolist(),
            "feature_scalers": {k: s.to_dict() for k, s in self.feature_scalers.items()},
            "label_transforms": [lt.to_dict() for lt in self.label_transforms],
            "plausibility": None if self.plausibility is None else self.plausibility.to_dict(),
            "column_ranges": None if self.column_ranges is None else self.column_ranges.to_dict(),
        }

    @classmethod
    def from_dict(cls, config: KielnetConfig, d: dict) -> "Preprocessor":
        p = cls(config)
        p.n_pix = d["n_pix"]
        p.pixel_mean = None if d["pixel_mean"] is None else np.asarray(d["pixel_mean"], np.float32)
        p.pixel_std = None if d["pixel_std"] is None else np.asarray(d["pixel_std"], np.float32)
        p.feature_scalers = {k: Scaler.from_dict(v) for k, v in d["feature_scalers"].items()}
        p.label_transforms = [LabelTransform.from_dict(v) for v in d["label_transforms"]]
        if d.get("plausibility") is not None:
            p.plausibility = SpectrumPlausibility.from_dict(d["plausibility"])
        if d.get("column_ranges") is not None:
            p.column_ranges = ColumnRanges.from_dict(d["column_ranges"])
        p.fitted = True
        return p
