"""Fit the quality machinery a bundle carries (``config.quality``) on its training stars.

* ``embedding_ood``: the fast out-of-distribution score of
  :class:`kielnet.quality.embedding.EmbeddingOOD`, fitted with every member;
* ``ensemble_spread``: the ensemble-disagreement score of
  :class:`kielnet.quality.spread.EnsembleSpread`, calibrated on the members'
  predictions for the training stars;
* ``tsne.reference_size``: a random subsample of the training spectra, as the network
  sees them (preprocessed), kept for the t-SNE training-likeness of new stars.

The two scores share one forward pass of every member when they use the same
reference stars (equal ``max_reference`` and no out-of-bag calibration).

:func:`kielnet.training.ensemble.train_ensemble` calls :func:`attach_quality` itself;
call it directly to add (or refit) the machinery of an existing bundle from its
training table.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kielnet.data.preprocess import Prepared
from kielnet.data.splits import random_subset
from kielnet.data.startable import StarTable
from kielnet.artifact import Bundle
from kielnet.artifact.digest import state_dict_digest
from kielnet.compute import member_predictions
from kielnet.quality.embedding import EmbeddingOOD
from kielnet.quality.spread import EnsembleSpread

__all__ = ["attach_quality"]


def _out_of_bag(bundle: Bundle, usable: np.ndarray, heldout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``usable`` held out by at least two splits (one if the ensemble has one),
    and for every training row the members that did not train on it (n_rows, n_members)."""
    n_splits = bundle.config.ensemble.n_splits
    heldout = np.asarray(heldout, dtype=bool)
    if heldout.ndim != 2 or heldout.shape[1] != n_splits:
        raise ValueError(f"heldout must be (n_training_stars, {n_splits}), got {heldout.shape}")
    split_of = np.array([m.split for m in bundle.member_info])
    unseen = heldout[:, split_of]
    eligible = usable[(heldout[usable].sum(axis=1) >= min(2, n_splits)) & (unseen[usable].sum(axis=1) >= 2)]
    return eligible, unseen


def attach_quality(bundle: Bundle, training: StarTable | Prepared, *, seed: int | None = None,
                   heldout: np.ndarray | None = None, log: Callable[[str], object] = print) -> Bundle:
    """Set ``bundle.ood``, ``bundle.spread`` and ``bundle.tsne_reference`` as
    ``bundle.config.quality`` asks.

    Parameters
    ----------
    bundle
        A trained bundle; it is modified in place and returned.
    training
        The stars it was trained on: a star table, or those stars already prepared by
        ``bundle.preprocessor``. Stars with an unusable spectrum are left out.
    seed
        Seed of the subsamples (default: the config's ensemble seed).
    heldout
        (n_training_stars, n_splits) bool, True where a star was in split k's
        validation side (:func:`kielnet.data.splits.ensemble_heldout`, as
        ``train_ensemble`` passes it): the ensemble-disagreement score is then
        calibrated out of bag (:mod:`kielnet.quality.spread`). Without it, it is
        calibrated on all members, which flags new stars somewhat more often than
        its quantile says.
    log
        Receives a line when a configured piece cannot be fitted (the disagreement
        score of a single network).
    """
    q = bundle.config.quality
    seed = bundle.config.ensemble.seed if seed is None else seed
    if q.ensemble_spread.enabled and len(bundle.members) < 2:
        log("quality.ensemble_spread skipped: a single network has no ensemble disagreement "
            "(no spread_score column)")
        q = q.model_copy(update={"ensemble_spread": q.ensemble_spread.model_copy(update={"enabled": False})})
    if not (q.embedding_ood.enabled or q.ensemble_spread.enabled or q.tsne.reference_size):
        return bundle
    prep = training if isinstance(training, Prepared) else \
        bundle.preprocessor.transform(training, with_labels=False)
    usable = np.flatnonzero(~np.asarray(prep.bad_spectrum, dtype=bool))
    if len(usable) < 2:
        raise ValueError("need at least 2 training stars with a usable spectrum for the quality machinery")
    if q.embedding_ood.enabled or q.ensemble_spread.enabled:
        nets = bundle.build_members()
        identity = lambda y: np.asarray(y, dtype=np.float64)  # noqa: E731 - scaled outputs wanted
        emb_rows = random_subset(usable, q.embedding_ood.max_reference, seed) if q.embedding_ood.enabled else None
        spr_rows = mask = None
        if q.ensemble_spread.enabled:
            pool, unseen = usable, None
            if heldout is not None:
                if len(heldout) != len(prep):
                    raise ValueError(f"heldout has {len(heldout)} rows for {len(prep)} training stars")
                oob, oob_unseen = _out_of_bag(bundle, usable, heldout)
                if len(oob) >= 2:  # else (tiny sets) calibrate on all members; the state says which
                    pool, unseen = oob, oob_unseen
            spr_rows = random_subset(pool, q.ensemble_spread.max_reference, seed)
            mask = None if unseen is None else unseen[spr_rows]
        shared = emb_rows is not None and spr_rows is not None and np.array_equal(emb_rows, spr_rows)
        if emb_rows is not None:
            embeddings: list[np.ndarray] = []
            preds = member_predictions(nets, prep.take(emb_rows), identity, embeddings=embeddings)
            bundle.ood = EmbeddingOOD(max_reference=q.embedding_ood.max_reference,
                                      quantile=q.embedding_ood.quantile,
                                      random_state=seed).fit_embeddings(embeddings, [state_dict_digest(sd) for sd in bundle.members],
                                                                         n_train=len(prep))
        if spr_rows is not None:
            if not shared:
                preds = member_predictions(nets, prep.take(spr_rows), identity)
            bundle.spread = EnsembleSpread(quantile=q.ensemble_spread.quantile).fit(
                preds, bundle.config.label_names, member_mask=mask)
    if q.tsne.reference_size:
        pick = random_subset(usable, q.tsne.reference_size, seed)
        bundle.tsne_reference = np.ascontiguousarray(prep.spectrum[pick], dtype=np.float32)
    return bundle
