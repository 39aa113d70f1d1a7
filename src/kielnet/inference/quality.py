"""Quality columns that ``predict`` adds when the bundle's ``config.quality`` asks for them.

=======================  ==================================================================
column                   meaning
=======================  ==================================================================
``ood_score``            fast out-of-distribution score (:mod:`kielnet.quality.embedding`):
                         distance to the nearest training star in the network's fusion
                         embedding / the 99 % quantile of training NN distances, mean over
                         members; > 1 sets flag bit ``out_of_distribution``
``spread_score``         ensemble-disagreement score (:mod:`kielnet.quality.spread`): the
                         members' spread (geometric mean over labels, in the networks'
                         scaled outputs) / its calibration quantile (default 90 %) over
                         the training stars, or with ``quality.ensemble_spread.local`` over
                         the out-of-fold stars nearest in predicted labels × S/N (set with
                         the neighbour assessment, kept here); > 1 sets flag bit
                         ``ensemble_disagreement``
``tsne_training_like``   t-SNE classification (paper §5.1) against the bundle's t-SNE
                         reference spectra; maps are built per ``predict`` call (per chunk
                         when streaming) over the reference and that call's spectra
``flag_boundary``        the 8-digit boundary flag (paper §5.2, :mod:`kielnet.quality.boundary`):
                         labels, G and parallax against the bundle's training ranges; digit 8
                         from ``quality.boundary_flag.training_like``: ``tsne``, or
                         ``fast_score`` (``ood_score`` > 1 or ``spread_score`` > 1, of
                         those the bundle has)
=======================  ==================================================================

Digits whose quantity the bundle does not know (a label it does not learn, no G or
parallax feature, hence no training range) are '1': the star cannot be shown to lie
within the training limits. Stars with an unusable spectrum are training-unlike.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from kielnet.data.preprocess import Prepared
from kielnet.data.startable import StarTable
from kielnet.artifact import Bundle
from kielnet.compute.embeddings import embedding_ood_scores
from kielnet.models.hybrid import HybridNet
from kielnet.quality.boundary import BOUNDARY_LABELS, boundary_flags, describe_boundary_flag
from kielnet.quality.flags import FLAG_BITS, status_strings
from kielnet.quality.tsne import tsne_training_like

__all__ = ["add_quality_columns", "tsne_unlike"]


def tsne_unlike(bundle: Bundle, prep: Prepared, *, n_jobs: int = 1) -> np.ndarray:
    """Bool per star: True where the t-SNE classification against the bundle's reference
    spectra calls it training-unlike (stars with an unusable spectrum: True)."""
    if bundle.tsne_reference is None:
        raise ValueError("this bundle has no t-SNE reference (config.quality.tsne.reference_size = 0)")
    tc = bundle.config.quality.tsne
    unlike = np.ones(len(prep), dtype=bool)
    ok = np.flatnonzero(~np.asarray(prep.bad_spectrum, dtype=bool))
    if len(ok):
        res = tsne_training_like(bundle.tsne_reference, prep.spectrum[ok], perplexities=tc.perplexities,
                                 threshold_quantile=tc.threshold_quantile, pca_components=tc.pca_components,
                                 n_jobs=n_jobs, random_state=bundle.config.ensemble.seed)
        unlike[ok] = ~res.training_like
    return unlike


def _scalar(bundle: Bundle, raw: np.ndarray, name: str) -> tuple[np.ndarray, tuple[float, float]]:
    """Raw values of feature ``name`` (from ``raw``, the preprocessor's raw features) and
    its training range (NaN and a dummy range if the bundle does not know it)."""
    rng = bundle.feature_ranges.get(name)
    if rng is None or not np.all(np.isfinite(rng)):
        return np.full(len(raw), np.nan), (0.0, 0.0)
    names = [f.name for f in bundle.config.features]
    return raw[:, names.index(name)], (float(rng[0]), float(rng[1]))


def add_quality_columns(cat: Table, bundle: Bundle, nets: list[HybridNet], table: StarTable,
                        prep: Prepared, *, embeddings: list[np.ndarray] | None = None,
                        preds: np.ndarray | None = None, device: str | None = None) -> Table:
    """Add the columns of the module docstring to ``cat`` (in place) and return it.

    ``embeddings``: the members' fusion embeddings of these stars if already captured
    with the label predictions (saves one forward pass per member). ``preds``: the
    members' predictions (n_members, n_stars, n_labels) in physical units, needed for
    ``spread_score`` when the bundle carries its calibration. ``device``: where the
    networks run if the embeddings must be computed here (``None``: CUDA when available).
    """
    q = bundle.config.quality
    fast_unlike = None
    if "spread_score" in cat.colnames:  # calibrated locally (quality.ensemble_spread.local), flag already set
        with np.errstate(invalid="ignore"):
            fast_unlike = np.asarray(cat["spread_score"], dtype=np.float64) > 1.0
    elif bundle.spread is not None:
        if preds is None:
            raise ValueError("the bundle carries an ensemble-disagreement calibration: pass the member predictions")
        spread = bundle.spread.score(bundle.preprocessor.forward_labels(preds))
        spread[np.asarray(prep.bad_spectrum, dtype=bool)] = np.nan
        cat["spread_score"] = spread
        cat["spread_score"].description = (f"ensemble disagreement / training {bundle.spread.quantile:.0%} "
                                           "quantile (>1: members disagree)")
        with np.errstate(invalid="ignore"):
            fast_unlike = spread > 1.0
        cat["flag"] |= fast_unlike.astype(np.int64) << FLAG_BITS["ensemble_disagreement"]
    score = None
    if bundle.ood is not None:
        if embeddings is not None:
            score = bundle.ood.member_scores_of(embeddings).mean(axis=0)
        else:
            score = embedding_ood_scores(bundle.ood, nets, prep, check=False, device=device)
        cat["ood_score"] = score
        cat["ood_score"].description = "embedding nearest-neighbour distance / training 99% quantile (>1: OOD)"
        cat["flag"] |= (score > 1.0).astype(np.int64) << FLAG_BITS["out_of_distribution"]
        fast_unlike = (score > 1.0) if fast_unlike is None else (fast_unlike | (score > 1.0))
    if bundle.spread is not None or bundle.ood is not None:
        cat["status"] = status_strings(np.asarray(cat["flag"]), bundle.config.label_names)
    unlike = None
    bf = q.boundary_flag
    if bundle.tsne_reference is not None and (not bf.enabled or bf.training_like == "tsne"):
        unlike = tsne_unlike(bundle, prep)
        cat["tsne_training_like"] = ~unlike
        cat["tsne_training_like"].description = "t-SNE classification (Guiglion et al. 2024, Sect. 5.1)"
    if bf.enabled:
        if bf.training_like == "fast_score":
            if fast_unlike is None:
                raise ValueError("boundary_flag.training_like = fast_score but the bundle has neither an "
                                 "embedding OOD score nor an ensemble-disagreement calibration")
            unlike = fast_unlike
        unlike = unlike | np.asarray(prep.bad_spectrum, dtype=bool)
        labels, ranges = {}, {}
        for name in BOUNDARY_LABELS:
            known = name in cat.colnames and name in bundle.label_ranges
            labels[name] = np.asarray(cat[name], float) if known else np.full(len(cat), np.nan)
            ranges[name] = bundle.label_ranges[name] if known else (0.0, 0.0)
        raw = prep.raw_features if prep.raw_features is not None else bundle.preprocessor.raw_features(table)
        g, g_range = _scalar(bundle, raw, "g")
        plx, plx_range = _scalar(bundle, raw, "parallax")
        cat["flag_boundary"] = boundary_flags(labels, ranges, g, plx, g_range, plx_range, unlike)
        cat["flag_boundary"].description = "Boundary flag composed of 8 digits (Sect. 5.2)"
        comments = cat.meta.setdefault("comments", [])
        comments.extend(describe_boundary_flag().splitlines())
        comments.append(f"digit 8 from: {bf.training_like}")
    return cat
