"""Apply a bundle to a star table: ensemble mean, model-to-model σ, total σ, flags.

The catalogue has exactly one row per input star, in input order, with

* ``id`` and any pass-through columns (e.g. ``source_id``);
* for each label ``X``: ``X`` (ensemble mean), ``e_X`` (model-to-model σ, i.e. the
  members' standard deviation) and ``sigma_X`` (total σ = e_X ⊕ running dispersion);
* ``flag`` (bitmask, see :mod:`kielnet.quality.flags`), ``status`` (its names),
  ``n_bad_pixels``, ``missing_inputs`` and ``spectrum_issues`` (the plausibility tests
  a spectrum failed, :mod:`kielnet.data.plausibility`);
* where the bundle's ``config.quality`` asks for them: ``ood_score``,
  ``tsne_training_like`` and ``flag_boundary`` (see :mod:`kielnet.inference.quality`).

Labels are never reported for a star that cannot be labelled: an unusable or
implausible spectrum, a non-finite network output, or a label outside its physically
valid range gives NaN labels and a flag naming the reason, and a row with status
``ok`` always has finite labels and uncertainties (:func:`enforce_status`).
"""

from __future__ import annotations

import time

import numpy as np
from astropy.table import Table

from kielnet.compute import (DEFAULT_BATCH_SIZE, PRECISIONS, EnsembleRunner, member_predictions,
                             realisation_statistics, resolve_device)
from kielnet.compute.realisations import DEFAULT_BLOCK_ROWS
from kielnet.data.preprocess import Prepared
from kielnet.errors import InputError, UsageError
from kielnet.labels import astropy_unit
from kielnet.data.startable import StarTable
from kielnet.artifact import Bundle
from kielnet.inference.inputs import duplicate_id_mask, fill_absent_inputs, warn_duplicates
from kielnet.inference.quality import add_quality_columns
from kielnet.quality.neighbours import interval_columns, positions
from kielnet.quality.sigma import star_snr
from kielnet.quality.spread import log_disagreement
from kielnet.quality.uncertainty import total_sigma
from kielnet.models.hybrid import HybridNet
from kielnet.words import joined_names
from kielnet.quality.flags import (FLAG_BITS, describe_flags, label_bit, range_flags, status_strings,
                                   unlabelled_mask)

__all__ = ["member_predictions", "realisation_predictions", "predict", "catalogue_from_predictions",
           "catalogue_meta", "enforce_status", "not_reported_reasons", "describe_columns", "COLUMN_DESCRIPTIONS"]

def catalogue_from_predictions(bundle: Bundle, table: StarTable, prep: Prepared,
                               preds: np.ndarray, noise_var: np.ndarray | None = None,
                               head_sigma: np.ndarray | None = None) -> Table:
    """Combine member predictions into the catalogue (see module docstring).

    ``preds`` is (n_members, n_stars, n_labels) in physical units; ``noise_var``
    (n_stars, n_labels), if given, is the members' mean variance over noise
    realisations, added to the member variance in ``e_X`` (law of total variance);
    ``head_sigma`` (n_members, n_stars, n_labels), if given, the heteroscedastic
    members' own σ outputs (physical units). ``sigma_X`` follows the bundle's σ model
    (:mod:`kielnet.quality.sigma`).
    """
    cfg = bundle.config
    names = cfg.label_names
    mean = preds.mean(axis=0)
    spread = preds.std(axis=0, ddof=1) if preds.shape[0] > 1 else np.zeros_like(mean)
    if noise_var is not None:
        spread = np.sqrt(spread ** 2 + noise_var)
    flags = np.zeros(len(table), dtype=np.int64)
    flags |= (prep.bad_spectrum & ~prep.implausible).astype(np.int64) << FLAG_BITS["bad_spectrum"]
    flags |= prep.implausible.astype(np.int64) << FLAG_BITS["implausible_spectrum"]
    # pixels of an unusable spectrum are not interpolated: that star is flagged bad_spectrum only
    interpolated = (prep.n_bad_pixels > 0) & ~prep.bad_spectrum
    flags |= interpolated.astype(np.int64) << FLAG_BITS["interpolated_pixels"]
    flags |= prep.missing_features.any(axis=1).astype(np.int64) << FLAG_BITS["missing_input"]
    if bundle.feature_ranges and cfg.features:
        lo = np.array([bundle.feature_ranges[f.name][0] for f in cfg.features])
        hi = np.array([bundle.feature_ranges[f.name][1] for f in cfg.features])
        raw = prep.raw_features if prep.raw_features is not None else bundle.preprocessor.raw_features(table)
        flags |= range_flags(raw, lo, hi).any(axis=1).astype(np.int64) << FLAG_BITS["input_outside_training"]
    # labels of an unusable spectrum are not reported (NaN), so they are never "outside training"
    usable = ~prep.bad_spectrum
    failed = usable & ~np.isfinite(preds).all(axis=(0, 2))  # corrupt weights, overflow, ...
    if noise_var is not None:
        failed |= usable & ~np.isfinite(noise_var).all(axis=1)
    vlo = np.array([lab.valid_range[0] for lab in cfg.labels])
    vhi = np.array([lab.valid_range[1] for lab in cfg.labels])
    with np.errstate(invalid="ignore"):
        unphysical = usable & ~failed & ((mean < vlo) | (mean > vhi)).any(axis=1)
    flags |= failed.astype(np.int64) << FLAG_BITS["prediction_failed"]
    flags |= unphysical.astype(np.int64) << FLAG_BITS["label_unphysical"]
    sm = bundle.sigma_model
    group_idx = sm.group_index(prep.missing_columns) if sm is not None else None
    no_missing_sigma = usable & ~failed & sm.withheld(group_idx) if sm is not None else np.zeros(len(table), bool)
    flags |= no_missing_sigma.astype(np.int64) << FLAG_BITS["missing_input_unlabelled"]
    unlabelled = prep.bad_spectrum | failed | unphysical | no_missing_sigma
    mean[unlabelled] = np.nan
    spread[unlabelled] = np.nan
    lo = np.array([bundle.label_ranges[n][0] for n in names])
    hi = np.array([bundle.label_ranges[n][1] for n in names])
    outside = range_flags(mean, lo, hi)
    for j in range(len(names)):
        flags |= outside[:, j].astype(np.int64) << label_bit(j)
    snr = None
    if sm is not None:
        snr = star_snr(sm.snr, prep.snr, table.scalars, len(table))
    nb, near = bundle.neighbours, None
    if nb is not None:
        near = nb.assess(positions(bundle.preprocessor.forward_labels(mean), prep.snr if snr is None else snr))
    local_spread = None
    if near is not None and near.disagreement_threshold is not None and preds.shape[0] >= 2:
        # quality.ensemble_spread.local: the members' disagreement against that of the out-of-fold
        # stars predicted alike (kielnet.quality.spread); add_quality_columns keeps this score
        with np.errstate(invalid="ignore", over="ignore"):
            local_spread = np.exp(log_disagreement(bundle.preprocessor.forward_labels(preds))
                                  - near.disagreement_threshold)
            local_spread[prep.bad_spectrum] = np.nan
            flags |= (local_spread > 1.0).astype(np.int64) << FLAG_BITS["ensemble_disagreement"]
    by_rule = np.zeros_like(mean, dtype=bool)
    for rule in cfg.reporting:
        when = mean[:, names.index(rule.when)]
        with np.errstate(invalid="ignore"):
            hit = np.zeros(len(when), dtype=bool)
            if rule.above is not None:
                hit |= when > rule.above
            if rule.below is not None:
                hit |= when < rule.below
        by_rule[:, names.index(rule.label)] |= hit
    no_support = np.zeros_like(mean, dtype=bool) if near is None else nb.withheld(near)
    tails = np.zeros_like(mean, dtype=bool) if bundle.tail_regimes is None else bundle.tail_regimes.withheld(mean)
    withheld = by_rule | no_support | tails
    flags |= withheld.any(axis=1).astype(np.int64) << FLAG_BITS["label_not_reported"]
    if near is not None:
        flags |= (~unlabelled & nb.outliers(near)).astype(np.int64) << FLAG_BITS["likely_outlier"]
    mean[withheld] = np.nan
    spread[withheld] = np.nan

    ci95 = None if near is None else nb.ci95_scale(near)
    ci997 = None if near is None else nb.ci997_scale(near)
    head = None if head_sigma is None else np.sqrt(np.mean(np.asarray(head_sigma, dtype=np.float64) ** 2, axis=0))
    cat = Table()
    cat["id"] = table.ids
    for key, col in table.extra.items():
        cat[key] = col
    for j, lab in enumerate(cfg.labels):
        info = lab.info
        unit = astropy_unit(info.unit)
        rd = bundle.running_dispersion.get(lab.name)
        run = rd(mean[:, j]) if rd is not None else np.zeros(len(table))
        cat[lab.name] = mean[:, j]
        cat[f"e_{lab.name}"] = spread[:, j]
        if sm is None:
            cat[f"sigma_{lab.name}"] = total_sigma(spread[:, j], run)
        else:
            h = None if head is None else np.where(unlabelled | withheld[:, j], np.nan, head[:, j])
            base = sm.base(spread[:, j], run, h)
            cat[f"sigma_{lab.name}"] = sm.sigma(lab.name, base, mean[:, j], snr, group_idx, spread=spread[:, j])
        if near is not None:
            s_glob = np.asarray(cat[f"sigma_{lab.name}"], dtype=np.float64)
            cat[f"sigma_{lab.name}"] = s_glob * near.factor[:, j]
            widths = {"ci95": (ci95[:, j], "95 % interval of {} (the out-of-fold neighbours' 0.95 quantile of "
                                           "|residual|/sigma)")}
            if ci997 is not None:
                widths["ci997"] = (ci997[:, j], "99.73 % interval of {} (a Gaussian's 3 sigma): ci95 x the "
                                                "out-of-fold 99.73 % quantile of |residual|/ci95 (NaN: too few "
                                                "out-of-fold stars to know it)")
            for prefix, (scale, text) in widths.items():
                c = f"{prefix}_{lab.name}"
                cat[c] = np.where(np.isnan(mean[:, j]), np.nan, s_glob * scale)
                cat[c].description = "half-width of the " + text.format(lab.name)
                if unit is not None:
                    cat[c].unit = unit
        if noise_var is not None:
            cat[f"e_{lab.name}_noise"] = np.where(withheld[:, j] | unlabelled, np.nan,
                                                  np.sqrt(noise_var[:, j]))
            cat[f"e_{lab.name}_noise"].description = (f"scatter of {lab.name} over the noise realisations of the "
                                                      "flux errors (root mean of the members' variances)")
            if unit is not None:
                cat[f"e_{lab.name}_noise"].unit = unit
        for c in (lab.name, f"e_{lab.name}", f"sigma_{lab.name}"):
            if unit is not None:
                cat[c].unit = unit
        cat[lab.name].description = f"{info.description} ({lab.name}): mean of {preds.shape[0]} ensemble members"
        cat[f"e_{lab.name}"].description = f"model-to-model dispersion of {lab.name}"
        cat[f"sigma_{lab.name}"].description = (f"total uncertainty of {lab.name} (e_ + running dispersion)"
                                                if sm is None else f"total uncertainty of {lab.name}: {sm.describe()}")
    cat["flag"] = flags
    cat["status"] = status_strings(flags, names)
    cat["not_reported"] = not_reported_reasons(names, by_rule & ~unlabelled[:, None],
                                               no_support & ~unlabelled[:, None], tails & ~unlabelled[:, None])
    cat["not_reported"].description = "labels withheld and why: rule (a reporting rule), support (no reference " \
                                      "values near the star), tails (too many stars predicted alike were wrong " \
                                      "by > 3 sigma)"
    cat["n_bad_pixels"] = prep.n_bad_pixels
    cat["missing_inputs"] = joined_names(prep.missing_features, [f.name for f in cfg.features])
    cat["spectrum_issues"] = prep.spectrum_issues.astype(str)
    cat["spectrum_issues"].description = "plausibility tests the spectrum failed (nonpositive, constant, scale, spike)"
    if near is not None:
        for j, name in enumerate(names):
            cat[f"support_{name}"] = near.support[:, j]
            cat[f"support_{name}"].description = (f"fraction of the {nb.k_support} nearest out-of-fold training "
                                                  f"stars with a reference {name} (< {nb.min_support:g}: withheld)")
        cat["outlier_score"] = np.where(unlabelled, np.nan, near.outlier_score)
        cat["outlier_score"].description = (f"fraction of the {nb.k_local} nearest out-of-fold training stars "
                                            f"wrong by > {nb.tail:g} local sigma (> {nb.outlier_threshold:.3g}: "
                                            "likely_outlier)")
    if sm is not None and sm.recalibration is not None and sm.snr == "spectrum":
        cat["snr_spectrum"] = snr
        cat["snr_spectrum"].description = ("median |flux| / flux error of the spectrum: the S/N the sigma "
                                           "recalibration uses")
    if local_spread is not None:
        cat["spread_score"] = local_spread
        cat["spread_score"].description = (f"ensemble disagreement / the {nb.disagreement_quantile:.0%} quantile of "
                                           f"that of the {nb.k_local} nearest out-of-fold training stars (>1: "
                                           "members disagree)")
    cat.meta.update(catalogue_meta(bundle))
    return cat


#: descriptions of the catalogue's generic columns and of the pass-through columns the
#: built-in readers add, for the columns that carry none (:func:`describe_columns`)
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "the star's id in the input",
    "source_id": "Gaia DR3 source_id, passed through from the input",
    "medflux": "median of the star's sampled XP flux (W m-2 nm-1), by which its spectrum was divided",
    "missing_bp": "the input has no BP spectrum for the star (its coefficients are NaN)",
    "missing_rp": "the input has no RP spectrum for the star (its coefficients are NaN)",
    "flag": "quality flag bitmask: bit k set = flag k (the bits are listed in the header comments, 'flag bits')",
    "status": "ok, or the names of the set flag bits joined by ','",
    "n_bad_pixels": "non-finite or masked spectrum pixels, interpolated",
    "missing_inputs": "the model's input features missing for the star, joined by ','",
}


def describe_columns(cat: Table) -> Table:
    """Give every column of :data:`COLUMN_DESCRIPTIONS` that has no description its
    description, in place (a pass-through column a reader described keeps its own)."""
    for name, text in COLUMN_DESCRIPTIONS.items():
        if name in cat.colnames and not cat[name].description:
            cat[name].description = text
    return cat


#: the reasons a label is withheld, in the order :func:`not_reported_reasons` joins them
WITHHOLD_REASONS = ("rule", "support", "tails")


def not_reported_reasons(names: list[str], by_rule: np.ndarray, no_support: np.ndarray,
                         tails: np.ndarray | None = None) -> np.ndarray:
    """Per star, the withheld labels and why, e.g. ``"fe_h:support,alpha_m:support"`` or
    ``"teff:tails"``; reasons of one label are joined by ``+`` (``"fe_h:rule+support"``);
    empty string where every label is reported."""
    masks = [by_rule, no_support, np.zeros_like(by_rule) if tails is None else tails]
    codes = sum(np.asarray(m, dtype=np.int64) << b for b, m in enumerate(masks))
    keys, inverse = np.unique(codes, axis=0, return_inverse=True)

    def word(c: int) -> str:
        return "+".join(r for b, r in enumerate(WITHHOLD_REASONS) if c >> b & 1)

    text = [",".join(f"{n}:{word(int(c))}" for n, c in zip(names, row) if c) for row in keys]
    return np.asarray(text, dtype=str)[inverse.reshape(-1)] if len(keys) else np.zeros(0, dtype=str)


def enforce_status(cat: Table, label_names: list[str]) -> Table:
    """Make ``status`` the single source of truth, in place: a row without a flag that
    withholds labels must have finite labels, ``e_`` and ``sigma_`` values (a NaN label
    is allowed only where a reporting rule withheld it); any row that breaks this gets
    ``prediction_failed``. Rows whose flags withhold labels get NaN in every label
    column. ``status`` is then rewritten from ``flag``.
    """
    flags = np.asarray(cat["flag"], dtype=np.int64).copy()
    cols = [c for n in label_names for c in (n, f"e_{n}", f"sigma_{n}") if c in cat.colnames]
    if cols:
        values = np.stack([np.asarray(cat[c], dtype=np.float64) for c in cols], axis=1)
        withheld = (flags >> FLAG_BITS["label_not_reported"]) & 1 == 1
        broken = ~unlabelled_mask(flags) & (np.isinf(values).any(axis=1)
                                           | (np.isnan(values).any(axis=1) & ~withheld))
        flags[broken] |= 1 << FLAG_BITS["prediction_failed"]
        blank = unlabelled_mask(flags)
        for c in cols + [c for n in label_names for c in interval_columns(n) if c in cat.colnames]:
            if blank.any():
                cat[c][blank] = np.nan
    cat["flag"] = flags
    cat["status"] = status_strings(flags, label_names)
    return cat


def catalogue_meta(bundle: Bundle) -> dict:
    """Header metadata of a catalogue made with ``bundle`` (versions, model, flag bits)."""
    names = bundle.config.label_names
    sigma = ("sigma_X = e_X (+) running dispersion in X" if bundle.sigma_model is None
             else bundle.sigma_model.describe())
    return {"KIELNET": bundle.versions.get("kielnet", ""), "MODEL": bundle.config.name,
            "NMEMBERS": len(bundle.members),
            "comments": ["flag bits: " + line for line in describe_flags(names).splitlines()]
            + ["sigma model: " + sigma]
            + ([] if bundle.neighbours is None else ["neighbour model: " + bundle.neighbours.describe()])
            + ([] if bundle.tail_regimes is None else [bundle.tail_regimes.describe(bundle.config.label_units)])}


def realisation_predictions(bundle: Bundle, nets: list[HybridNet], table: StarTable, n: int,
                            rng: np.random.Generator, batch_size: int = DEFAULT_BATCH_SIZE, *,
                            precision: str = "fp32", layout: str = "auto", device: str | None = None,
                            threads: int | None = None, head_sigma: list | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """APOGEE Net II §3.2.3: predictions from ``n`` noise realisations of each spectrum.

    Errors are clipped at ``clip_factor`` × each star's median error; scalar inputs are
    not perturbed. Returns ``(median, variance)``, both (n_members, n_stars, n_labels):
    each member's median over realisations and its variance over them.

    The realisations of a block of stars are stacked into the batch dimension: one
    preprocessing and one batched forward per block, memory bounded by the block
    (:func:`kielnet.compute.realisation_statistics`). Draw order: ``rng`` gives, star
    after star in input order, that star's ``(n, n_pix)`` standard-normal draws (float32)
    — the same numbers whatever ``batch_size`` is.
    """
    if table.flux is None or table.flux_err is None:
        raise InputError("noise realisations need spectra with flux errors", source=table.source,
                         field="flux_err")
    runner = EnsembleRunner(nets, batch_size=batch_size, precision=precision, layout=layout, device=device,
                            threads=threads)
    return realisation_statistics(runner, bundle.preprocessor, table, n, rng, bundle.preprocessor.inverse_labels,
                                  clip_factor=bundle.config.inference.clip_factor,
                                  block_rows=max(DEFAULT_BLOCK_ROWS, int(batch_size)), head_sigma=head_sigma)


def predict(bundle: Bundle, table: StarTable, *, batch_size: int = DEFAULT_BATCH_SIZE,
            nets: list[HybridNet] | None = None, n_realisations: int | None = None,
            rng: np.random.Generator | None = None, precision: str = "fp32", mark_duplicates: bool = True,
            timings: dict[str, float] | None = None, device: str | None = None) -> Table:
    """Label every star of ``table`` with the bundle's ensemble.

    Parameters
    ----------
    bundle
        A trained bundle (see :func:`kielnet.artifact.load_bundle`).
    table
        Input stars; must hold the scalar columns and spectrum length the bundle needs
        (an :class:`~kielnet.errors.InputError` names what is missing).
    batch_size
        Stars per forward call (a memory bound; on the CPU the convolutions run on
        cache-sized chunks of it, so 256 is fast for every preset).
    n_realisations
        Noise realisations per spectrum (default: the bundle's ``inference.n_realisations``;
        0 = predict the observed spectrum only).
    rng
        Random generator for the realisations (default: seeded by ``inference.seed``).
    precision
        ``"fp32"`` (default) or ``"bf16"`` (bfloat16 convolutions and linear layers:
        faster on CPUs with AVX-512 BF16 / AMX; the labels change by a small fraction of
        their uncertainties, ``benchmarks/results/throughput.json``).
    mark_duplicates
        Add the column ``duplicate_id`` (the star's id occurs more than once in ``table``)
        and warn with the count (the streaming driver marks them over the whole input instead).
    timings
        If a dict is given, wall seconds are added to its entries ``"networks"`` (the
        members' forward passes, noise realisations included) and ``"labels"`` (all the
        rest: preprocessing, σ, quality scores and flags, the catalogue), and the
        process's CPU seconds in them (every thread's) to ``"networks_cpu"`` and
        ``"labels_cpu"``.
    device
        Where the networks run: ``"cpu"``, ``"cuda"`` (``"cuda:1"``, …) or ``None``
        (default: CUDA when torch sees a GPU, else the CPU). Everything else runs on the
        CPU. On a GPU the labels agree with the CPU's to float rounding, far below σ
        (``benchmarks/results/gpu_check.json``).

    An input column the bundle reads but ``table`` lacks entirely is treated as missing
    for every star when the bundle's σ model covers it
    (:func:`kielnet.inference.inputs.fill_absent_inputs`), with a warning.

    Returns
    -------
    astropy.table.Table
        One row per input star, in input order (see module docstring).
    """
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be a positive number of stars, got {batch_size}")
    n_real = bundle.config.inference.n_realisations if n_realisations is None else n_realisations
    if int(n_real) < 0:
        raise UsageError(f"n_realisations must be >= 0, got {n_real}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = str(resolve_device(device))
    t_start, c_start = time.perf_counter(), time.process_time()
    table = fill_absent_inputs(bundle, table)
    prep = bundle.preprocessor.transform(table, with_labels=False)
    nets = nets if nets is not None else bundle.build_members()
    t_nets, c_nets = time.perf_counter(), time.process_time()
    if n_real > 0:
        rng = rng if rng is not None else np.random.default_rng(bundle.config.inference.seed)
        head: list = []
        med, var = realisation_predictions(bundle, nets, table, n_real, rng, batch_size, precision=precision,
                                           device=device, head_sigma=head)
        t_nets, c_nets = time.perf_counter() - t_nets, time.process_time() - c_nets
        cat = catalogue_from_predictions(bundle, table, prep, med, noise_var=var.mean(axis=0),
                                         head_sigma=head[0] if head else None)
        embeddings, preds = None, med
    else:
        embeddings = [] if bundle.ood is not None else None
        head = []
        preds = member_predictions(nets, prep, bundle.preprocessor.inverse_labels, batch_size, embeddings,
                                   precision=precision, device=device, head_sigma=head)
        t_nets, c_nets = time.perf_counter() - t_nets, time.process_time() - c_nets
        cat = catalogue_from_predictions(bundle, table, prep, preds, head_sigma=head[0] if head else None)
    cat = add_quality_columns(cat, bundle, nets, table, prep, embeddings=embeddings, preds=preds, device=device)
    cat = enforce_status(cat, bundle.config.label_names)
    if timings is not None:
        for name, value in (("networks", t_nets), ("labels", time.perf_counter() - t_start - t_nets),
                            ("networks_cpu", c_nets), ("labels_cpu", time.process_time() - c_start - c_nets)):
            timings[name] = timings.get(name, 0.0) + value
    if mark_duplicates:
        dup = duplicate_id_mask(table.ids)
        add_duplicate_column(cat, dup)
        if dup.any():
            warn_duplicates(int(dup.sum()), len(np.unique(np.asarray(table.ids)[dup])), table.source)
    return describe_columns(cat)


def add_duplicate_column(cat: Table, dup: np.ndarray) -> None:
    """The catalogue column ``duplicate_id`` (bool) with its description."""
    cat["duplicate_id"] = np.asarray(dup, dtype=bool)
    cat["duplicate_id"].description = "the star's id occurs more than once in the input (every row is labelled)"
