"""Fit the quality machinery a bundle carries (``config.quality``) on its training stars.

* ``embedding_ood``: the fast out-of-distribution score of
  :class:`kielnet.quality.embedding.EmbeddingOOD`, fitted with every member;
* ``tsne.reference_size``: a random subsample of the training spectra, as the network
  sees them (preprocessed), kept for the t-SNE training-likeness of new stars.

:func:`kielnet.training.ensemble.train_ensemble` calls :func:`attach_quality` itself;
call it directly to add (or refit) the machinery of an existing bundle from its
training table.
"""

from __future__ import annotations

import numpy as np

from kielnet.data.preprocess import Prepared
from kielnet.data.startable import StarTable
from kielnet.inference.bundle import Bundle
from kielnet.quality.embedding import EmbeddingOOD

__all__ = ["attach_quality"]


def attach_quality(bundle: Bundle, training: StarTable | Prepared, *, seed: int | None = None) -> Bundle:
    """Set ``bundle.ood`` and ``bundle.tsne_reference`` as ``bundle.config.quality`` asks.

    Parameters
    ----------
    bundle
        A trained bundle; it is modified in place and returned.
    training
        The stars it was trained on: a star table, or those stars already prepared by
        ``bundle.preprocessor``. Stars with an unusable spectrum are left out.
    seed
        Seed of the subsamples (default: the config's ensemble seed).
    """
    q = bundle.config.quality
    seed = bundle.config.ensemble.seed if seed is None else seed
    if not (q.embedding_ood.enabled or q.tsne.reference_size):
        return bundle
    prep = training if isinstance(training, Prepared) else \
        bundle.preprocessor.transform(training, with_labels=False)
    usable = np.flatnonzero(~np.asarray(prep.bad_spectrum, dtype=bool))
    if len(usable) < 2:
        raise ValueError("need at least 2 training stars with a usable spectrum for the quality machinery")
    if q.embedding_ood.enabled:
        bundle.ood = EmbeddingOOD(max_reference=q.embedding_ood.max_reference, quantile=q.embedding_ood.quantile,
                                  random_state=seed).fit(bundle.build_members(), prep.take(usable))
    if q.tsne.reference_size:
        rng = np.random.default_rng(seed)
        pick = usable if len(usable) <= q.tsne.reference_size else \
            np.sort(rng.choice(usable, q.tsne.reference_size, replace=False))
        bundle.tsne_reference = np.ascontiguousarray(prep.spectrum[pick], dtype=np.float32)
    return bundle
