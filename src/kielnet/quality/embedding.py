"""Fast out-of-distribution score in the network's own embedding (no t-SNE maps).

The t-SNE classification (:mod:`kielnet.quality.tsne`) needs new maps over training
*and* observed spectra whenever new stars arrive. This module gives every new star
a score from a nearest-neighbour search alone:

1. **Embedding.** For each ensemble member, the star's embedding is the activation
   vector that feeds the fusion head: the output of the spectrum branch concatenated
   with the outputs of the scalar branches, i.e. the input of ``HybridNet.head[0]``
   (captured with a forward pre-hook, so it works for any ``HybridNet`` layout). This
   is the representation from which the network computes its labels: a star whose
   embedding lies far from every training star's is one the head has never seen.
   Distances are Euclidean in the raw activations (the head's first layer is linear
   in them). Members live in different spaces, so each member is treated on its own.
2. **Reference.** At the fit (:func:`kielnet.compute.embeddings.fit_embedding_ood`) the usable training stars (those
   without ``bad_spectrum``) are embedded; a random subsample of at most
   ``max_reference`` (default 20 000) is kept as the reference set.
3. **Scale.** For each member, the leave-one-out nearest-neighbour distance of every
   reference star to the *other* reference stars is computed; its ``quantile``
   (default 0.99) quantile ``q_m`` is the member's distance scale. It is computed on
   the stored reference itself (not on the full training set), so it matches the
   distances that new stars get to that same reference.
4. **Score.** A new star's member score is ``d_m / q_m`` with ``d_m`` its distance to
   the nearest reference star in member ``m``'s embedding; its **score** is the mean
   of the member scores. ``score > 1`` flags it (``out_of_distribution``). A star
   drawn from the training distribution has a member score above 1 with probability
   nominally ``1 − quantile`` (1 %), by exchangeability; in synthetic checks 0.7–2.5 %
   of such stars had ``score > 1``. This is the same rule as the default t-SNE
   thresholds, so the two classifications are directly comparable (:func:`agreement`).

Stars with an unusable spectrum (``Prepared.bad_spectrum``) are zero-filled by the
preprocessor; their score is computed but meaningless (they are flagged
``bad_spectrum`` anyway).

Storage
-------
The state holds the reference embeddings: ``n_members × n_ref × width`` float32 values
(e.g. 28 members × 20 000 stars × 96 = 54 M values = 215 MB). Two forms:

* :meth:`EmbeddingOOD.to_dict` / :meth:`EmbeddingOOD.from_dict`: a JSON-able dict; each
  member's reference is stored as base64 of its little-endian float32 bytes
  (``{"dtype", "shape", "b64"}``), exact and ~3× smaller than a decimal list — fine for
  a few thousand reference stars or a few members;
* :meth:`EmbeddingOOD.save` / :meth:`EmbeddingOOD.load`: **recommended** for real
  ensembles: one ``.safetensors`` file (a tensor ``reference_<m>`` per member, the
  rest as JSON metadata), loadable without pickle and memory-mappable, like the
  members of a bundle.

Lower ``max_reference`` to shrink it: the score's resolution in sparse regions
degrades gently, since ``q_m`` is recomputed on the same subsample.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from kielnet.data.preprocess import Prepared
from kielnet.data.splits import random_subset
from kielnet.stats import cohen_kappa

__all__ = ["EmbeddingOOD", "FusionCapture", "agreement", "DEFAULT_MAX_REFERENCE"]

DEFAULT_MAX_REFERENCE = 20_000
_FORMAT = 1


class FusionCapture:
    """Context manager that records the fusion-head input of every forward pass of
    ``net`` through its own modules (a hook on ``net.head[0]``)::

        with FusionCapture(net) as cap:
            labels = net(spectrum, branches)
        emb = cap.embeddings()   # (n_stars, width) float32, in call order

    kielnet itself gets the embeddings from the batched forward path instead
    (:func:`kielnet.compute.embeddings.fusion_embeddings`, or
    :meth:`kielnet.compute.EnsembleRunner.predict` with ``embeddings=True``, which
    also covers the fused and converted layouts that do not call ``net.head``).
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self._chunks: list[np.ndarray] = []
        self._handle = None

    def _hook(self, _module, inputs) -> None:
        self._chunks.append(inputs[0].detach().float().cpu().numpy())

    def __enter__(self) -> "FusionCapture":
        self._handle = self.net.head[0].register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def embeddings(self) -> np.ndarray:
        width = self.net.head[0].in_features if hasattr(self.net.head[0], "in_features") else 0
        return np.concatenate(self._chunks) if self._chunks else np.zeros((0, width), np.float32)


def _loo_nn(ref: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=2).fit(ref).kneighbors(ref)
    return d[:, 1]


def _encode(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: dict) -> np.ndarray:
    if d.get("dtype") != "float32":
        raise ValueError(f"unsupported reference dtype {d.get('dtype')!r}")
    return np.frombuffer(base64.b64decode(d["b64"]), dtype="<f4").reshape(d["shape"]).astype(np.float32)


class EmbeddingOOD:
    """Nearest-neighbour out-of-distribution score in the fusion embedding (module docstring).

    Parameters
    ----------
    max_reference
        Most training stars kept as the reference (random subsample beyond).
    quantile
        Quantile of the reference leave-one-out NN distances that defines score 1.
    random_state
        Seed of the subsample.
    """

    def __init__(self, *, max_reference: int = DEFAULT_MAX_REFERENCE, quantile: float = 0.99,
                 random_state: int = 0) -> None:
        if max_reference < 2:
            raise ValueError("max_reference must be at least 2")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.max_reference = int(max_reference)
        self.quantile = float(quantile)
        self.random_state = int(random_state)
        self.references: list[np.ndarray] = []   # per member (n_ref, width) float32
        self.scales: np.ndarray = np.zeros(0)     # per member q_m
        self.digests: list[str] = []
        self.n_train = 0
        self._index: list | None = None

    # ------------------------------------------------------------------ fit
    def reference_rows(self, prepared_train: Prepared) -> np.ndarray:
        """Rows of ``prepared_train`` that make the reference: the stars with a usable
        spectrum, a random subsample of at most ``max_reference`` of them (seeded by
        ``random_state``)."""
        use = np.flatnonzero(~np.asarray(prepared_train.bad_spectrum, dtype=bool))
        if len(use) < 2:
            raise ValueError("need at least 2 training stars with a usable spectrum")
        return random_subset(use, self.max_reference, self.random_state)

    def fit_embeddings(self, embeddings: Sequence[np.ndarray], digests: Sequence[str], *,
                       n_train: int | None = None) -> "EmbeddingOOD":
        """Set the reference from fusion embeddings already computed (one (n_ref, width)
        array per member, e.g. captured with the label predictions, of the rows
        :meth:`reference_rows` picks) and set the scales. ``digests`` are the members'
        weight digests (:func:`kielnet.artifact.digest.state_dict_digest`), kept to refuse
        scoring with other networks (:meth:`check_members`)."""
        if len(embeddings) != len(digests):
            raise ValueError(f"{len(embeddings)} embedding arrays for {len(digests)} member digests")
        if any(len(e) < 2 for e in embeddings):
            raise ValueError("need at least 2 reference stars")
        self.n_train = int(n_train if n_train is not None else len(embeddings[0]))
        self.references = [np.ascontiguousarray(e, dtype=np.float32) for e in embeddings]
        self.digests = [str(d) for d in digests]
        scales = []
        for ref in self.references:
            q = float(np.quantile(_loo_nn(ref), self.quantile))
            if not q > 0:  # degenerate reference (all duplicates): any distance > 0 is then far
                q = float(np.finfo(np.float32).eps)
            scales.append(q)
        self.scales = np.asarray(scales)
        self._index = None
        return self

    def check_members(self, matches: Sequence[bool]) -> None:
        """Refuse (ValueError) to score with networks other than the fitted ones:
        ``matches[m]`` says whether member ``m``'s weights have the digest recorded for it
        (:func:`kielnet.artifact.digest.digest_matches`)."""
        if len(matches) != self.n_members:
            raise ValueError(f"fitted with {self.n_members} members, got {len(matches)} nets")
        if not all(matches):
            raise ValueError("these nets are not the ones the reference was fitted with "
                             "(weight digests differ); refit or pass check=False")

    @property
    def n_members(self) -> int:
        return len(self.references)

    @property
    def n_reference(self) -> int:
        return len(self.references[0]) if self.references else 0

    def _indices(self) -> list:
        from sklearn.neighbors import NearestNeighbors

        if self._index is None:
            self._index = [NearestNeighbors(n_neighbors=1).fit(ref) for ref in self.references]
        return self._index

    # ------------------------------------------------------------------ score
    def member_scores_of(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        """(n_members, n_stars) scores of stars whose fusion embeddings (one array per
        member, e.g. from :class:`FusionCapture`) are already known."""
        if len(embeddings) != self.n_members:
            raise ValueError(f"fitted with {self.n_members} members, got {len(embeddings)} embeddings")
        n = len(embeddings[0]) if len(embeddings) else 0
        out = np.empty((self.n_members, n))
        for m, (emb, index) in enumerate(zip(embeddings, self._indices())):
            if emb.shape != (n, self.references[m].shape[1]):
                raise ValueError(f"member {m}: embeddings of shape {emb.shape}, expected "
                                 f"({n}, {self.references[m].shape[1]})")
            d = index.kneighbors(emb)[0][:, 0] if len(emb) else np.zeros(0)
            out[m] = d / self.scales[m]
        return out

    def score_of(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        """(n_stars,) mean member score; > 1 = farther from the training stars than
        ``quantile`` of training stars are from each other."""
        return self.member_scores_of(embeddings).mean(axis=0)

    # ------------------------------------------------------------------ state
    def _meta(self) -> dict:
        return {"format": _FORMAT, "kind": "embedding_ood", "max_reference": self.max_reference,
                "quantile": self.quantile, "random_state": self.random_state, "n_train": self.n_train,
                "scales": [float(s) for s in self.scales], "digests": list(self.digests)}

    def to_dict(self) -> dict:
        """JSON-able state, reference embeddings base64-encoded float32 (module docstring)."""
        return dict(self._meta(), references=[_encode(r) for r in self.references])

    @classmethod
    def _from_meta(cls, meta: dict, references: list[np.ndarray]) -> "EmbeddingOOD":
        if meta.get("format") != _FORMAT or meta.get("kind") != "embedding_ood":
            raise ValueError(f"not an EmbeddingOOD state (format={meta.get('format')!r}, kind={meta.get('kind')!r})")
        obj = cls(max_reference=meta["max_reference"], quantile=meta["quantile"],
                  random_state=meta["random_state"])
        obj.n_train = int(meta["n_train"])
        obj.scales = np.asarray(meta["scales"], dtype=np.float64)
        obj.digests = list(meta["digests"])
        obj.references = references
        if len(references) != len(obj.scales):
            raise ValueError(f"{len(references)} references for {len(obj.scales)} members")
        return obj

    @classmethod
    def from_dict(cls, d: dict) -> "EmbeddingOOD":
        return cls._from_meta(d, [_decode(r) for r in d["references"]])

    def save(self, path: str | Path) -> Path:
        """Write the state as one ``.safetensors`` file (recommended for large references)."""
        from kielnet.quality.store import save_state

        tensors = {f"reference_{m}": np.asarray(r, dtype=np.float32) for m, r in enumerate(self.references)}
        return save_state(path, tensors, "kielnet_embedding_ood", self._meta())

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingOOD":
        from kielnet.quality.store import load_state

        meta, arrays = load_state(path, "kielnet_embedding_ood", "an EmbeddingOOD")
        return cls._from_meta(meta, [arrays[f"reference_{m}"] for m in range(len(meta["scales"]))])


def agreement(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> dict:
    """Agreement of two boolean classifications of the same stars (same sense, e.g.
    t-SNE ``training_like`` and ``~EmbeddingOOD.flag(...)``).

    Returns a JSON-able dict: ``n``, ``n_agree``, ``fraction_agree``, the confusion
    counts ``both_true``, ``a_true_b_false``, ``a_false_b_true``, ``both_false``,
    the fractions ``a_true`` / ``b_true``, and Cohen's ``kappa``
    (:func:`kielnet.stats.cohen_kappa`: ``(p_o − p_e) / (1 − p_e)``, NaN when ``p_e = 1``,
    i.e. both classifications put every star in the same single class; then
    ``fraction_agree`` says it all).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D arrays of the same length, got {a.shape} and {b.shape}")
    if a.dtype != bool or b.dtype != bool:
        raise ValueError("a and b must be boolean arrays")
    n = len(a)
    tt = int(np.sum(a & b))
    tf = int(np.sum(a & ~b))
    ft = int(np.sum(~a & b))
    ff = int(np.sum(~a & ~b))
    if n == 0:
        return {"n": 0, "n_agree": 0, "fraction_agree": float("nan"), "both_true": 0, "a_true_b_false": 0,
                "a_false_b_true": 0, "both_false": 0, "a_true": float("nan"), "b_true": float("nan"),
                "kappa": float("nan")}
    return {"n": n, "n_agree": tt + ff, "fraction_agree": (tt + ff) / n, "both_true": tt, "a_true_b_false": tf,
            "a_false_b_true": ft, "both_false": ff, "a_true": (tt + tf) / n, "b_true": (tt + ft) / n,
            "kappa": cohen_kappa(a, b)}
