"""The networks' fusion embeddings (the input of the fusion head) through the batched
forward path, and the embedding OOD reference (:class:`kielnet.quality.embedding.EmbeddingOOD`)
fitted and scored from networks rather than from embeddings already computed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from kielnet.artifact.digest import digest_matches, net_digest
from kielnet.compute.forward import EnsembleRunner
from kielnet.data.preprocess import Prepared
from kielnet.quality.embedding import EmbeddingOOD

__all__ = ["fusion_embeddings", "fit_embedding_ood", "embedding_ood_member_scores", "embedding_ood_scores"]


def _as_list(nets) -> list[nn.Module]:
    return list(nets) if isinstance(nets, (list, tuple)) else [nets]


def fusion_embeddings(net: nn.Module, prepared: Prepared, *, batch_size: int = 512,
                      precision: str = "fp32", layout: str = "auto", device: str | None = None) -> np.ndarray:
    """Activations entering ``net.head[0]`` (the fusion head) for every star:
    array (n_stars, width), float32. The net is run with eval semantics and is not
    modified (its mode is left as it is): the same batched forward as the label
    predictions (:class:`kielnet.compute.EnsembleRunner`), whose ``embeddings=True``
    gives these arrays for every member in the label pass itself. ``device``: as for
    :class:`~kielnet.compute.EnsembleRunner` (``None``: CUDA when available)."""
    runner = EnsembleRunner([net], batch_size=batch_size, precision=precision, layout=layout, device=device)
    _, embs = runner.predict(prepared.spectrum, prepared.branches, embeddings=True)
    return embs[0]


def fit_embedding_ood(ood: EmbeddingOOD, nets, prepared_train: Prepared, *, batch_size: int = 512) -> EmbeddingOOD:
    """Fit ``ood`` on the usable training stars of ``prepared_train`` (at most
    ``ood.max_reference``) embedded by every member of ``nets``; returns ``ood``."""
    nets = _as_list(nets)
    sub = prepared_train.take(ood.reference_rows(prepared_train))
    return ood.fit_embeddings([fusion_embeddings(net, sub, batch_size=batch_size) for net in nets],
                              [net_digest(net) for net in nets], n_train=len(prepared_train))


def embedding_ood_member_scores(ood: EmbeddingOOD, nets, prepared: Prepared, *, batch_size: int = 512,
                                check: bool = True, device: str | None = None) -> np.ndarray:
    """(n_members, n_stars): each member's distance to its nearest reference star / its
    scale. ``check`` refuses (ValueError) networks other than those ``ood`` was fitted with."""
    nets = _as_list(nets)
    if not ood.references:
        raise RuntimeError("EmbeddingOOD scored before it was fitted or loaded")
    if len(nets) != ood.n_members:
        raise ValueError(f"fitted with {ood.n_members} members, got {len(nets)} nets")
    if check:
        ood.check_members([digest_matches(net.state_dict(), d) for net, d in zip(nets, ood.digests)])
    return ood.member_scores_of([fusion_embeddings(net, prepared, batch_size=batch_size, device=device)
                                 for net in nets])


def embedding_ood_scores(ood: EmbeddingOOD, nets, prepared: Prepared, **kw) -> np.ndarray:
    """(n_stars,) mean member score (:func:`embedding_ood_member_scores`); > 1: out of distribution."""
    return embedding_ood_member_scores(ood, nets, prepared, **kw).mean(axis=0)
