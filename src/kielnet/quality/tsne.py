"""t-SNE "training-like" classification of observed spectra (Gaia-RVS hybrid CNN paper, §5.1).

The training spectra and the observed spectra are concatenated into one set and
embedded in 2-D with t-SNE, once per perplexity (default 30, 50, 75 and 100, as in
the paper). In each map, every observed spectrum gets the distance to its nearest
*training* spectrum. An observed spectrum is **training-like** only if that distance
is at most the map's threshold **in every map**; otherwise it is training-unlike
(it lies in a region of spectrum space that the training set does not populate, so
its CNN labels may suffer from systematics).

Default threshold (``threshold=None``)
--------------------------------------
Map coordinates have no physical unit and their scale changes with the number of
points and with the perplexity, so a fixed absolute distance cannot be carried from
one map to the next. The threshold of each map is therefore taken from the map
itself: the ``threshold_quantile`` (default 0.99) quantile of the distances from each
training spectrum to its nearest *other* training spectrum in that map
(leave-one-out nearest-neighbour distances).

Why this rule: if an observed spectrum were drawn from the same distribution as the
training spectra, its distance to the nearest training spectrum would be distributed
like a training spectrum's distance to its nearest other training spectrum
(exchangeability). The rule thus flags, per map, nominally ``1 − threshold_quantile``
(1 %) of genuinely training-like spectra, whatever the map's scale or local density,
while a spectrum that sits in a region without training spectra lies farther from
them than 99 % of training spectra lie from each other. In practice the tail quantile
is estimated from few points and t-SNE maps are noisy: in synthetic checks with
observed spectra drawn from the training distribution (300–1 000 training spectra)
1.5–4 % were flagged per map and 3–6 % over four maps (an observed spectrum must pass
in every map, so the per-map rates add up, minus the maps' overlap). Spectra from a
distinct population are flagged in every map. Other choices:

* ``threshold_quantile=q``: another quantile of the same distribution;
* ``threshold=float``: one absolute map distance for every map;
* ``threshold=[t1, t2, ...]``: one absolute distance per map, in perplexity order.

A result can be re-classified with another threshold without recomputing the maps
(:meth:`TsneResult.reclassify`).

Inputs and PCA
--------------
Both inputs are 2-D arrays ``(n, n_pix)`` on the same pixel grid and in the same
units (e.g. the network inputs ``Prepared.spectrum``, which are already normalised
and standardised per pixel; rows must be finite). By default the combined set is
first reduced to ``pca_components=50`` principal components (fitted on the combined
set, so that directions in which only the observed spectra vary are kept). This is
the usual preprocessing for t-SNE: it removes pixel noise from the nearest-neighbour
search and makes it much faster on 2 401-pixel spectra, while the first 50
components of stellar spectra hold nearly all of their variance. The paper embedded
the full spectra; ``pca_components=None`` reproduces that.

Cost: t-SNE (openTSNE, Barnes-Hut below 10 000 points, FFT interpolation above) is
~O(n log n) per map; the paper's 886 080 spectra need hours per map. Use
:mod:`kielnet.quality.embedding` for a fast per-star score of new stars.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["TsneResult", "tsne_training_like", "training_like_thresholds", "plot_tsne_maps",
           "DEFAULT_PERPLEXITIES", "DEFAULT_THRESHOLD_QUANTILE"]

DEFAULT_PERPLEXITIES: tuple[float, ...] = (30, 50, 75, 100)
DEFAULT_THRESHOLD_QUANTILE = 0.99


@dataclass
class TsneResult:
    """Outcome of :func:`tsne_training_like`.

    Attributes
    ----------
    perplexities : (n_maps,) requested perplexities, in map order
    effective_perplexities : (n_maps,) perplexities openTSNE used (lower than
        requested when the set has fewer than ~3 × perplexity points)
    embeddings : (n_maps, n_train + n_obs, 2) map coordinates; rows ``[:n_train]`` are
        the training spectra, rows ``[n_train:]`` the observed spectra, in input order
    n_train : number of training spectra
    distances : (n_maps, n_obs) distance of each observed spectrum to its nearest
        training spectrum, per map
    train_nn_distances : (n_maps, n_train) distance of each training spectrum to its
        nearest other training spectrum, per map (the threshold rule's reference)
    thresholds : (n_maps,) distance threshold of each map
    threshold_rule : how the thresholds were set (``"quantile=0.99"``, ``"fixed"``)
    training_like : (n_obs,) bool, True iff ``distances <= thresholds`` in every map
    pca_components : PCA dimension used before t-SNE (None = none)
    """

    perplexities: np.ndarray
    effective_perplexities: np.ndarray
    embeddings: np.ndarray
    n_train: int
    distances: np.ndarray
    train_nn_distances: np.ndarray
    thresholds: np.ndarray
    threshold_rule: str
    training_like: np.ndarray
    pca_components: int | None = None
    timings: dict = field(default_factory=dict)

    @property
    def n_maps(self) -> int:
        return len(self.perplexities)

    @property
    def n_observed(self) -> int:
        return self.embeddings.shape[1] - self.n_train

    @property
    def training_like_per_map(self) -> np.ndarray:
        """(n_maps, n_obs) bool: the test in each map separately."""
        return self.distances <= self.thresholds[:, None]

    def train_embedding(self, i: int) -> np.ndarray:
        """(n_train, 2) coordinates of the training spectra in map ``i``."""
        return self.embeddings[i, : self.n_train]

    def observed_embedding(self, i: int) -> np.ndarray:
        """(n_obs, 2) coordinates of the observed spectra in map ``i``."""
        return self.embeddings[i, self.n_train:]

    def reclassify(self, threshold: float | Sequence[float] | None = None, *,
                   threshold_quantile: float = DEFAULT_THRESHOLD_QUANTILE) -> "TsneResult":
        """The same maps classified with another threshold (see module docstring)."""
        thr, rule = training_like_thresholds(self.train_nn_distances, threshold,
                                             threshold_quantile=threshold_quantile)
        like = np.all(self.distances <= thr[:, None], axis=0)
        return replace(self, thresholds=thr, threshold_rule=rule, training_like=like)

    def summary(self) -> dict:
        """JSON-able counts per map and overall."""
        per_map = self.training_like_per_map
        return {
            "n_train": int(self.n_train), "n_observed": int(self.n_observed),
            "perplexities": [float(p) for p in self.perplexities],
            "thresholds": [float(t) for t in self.thresholds], "threshold_rule": self.threshold_rule,
            "n_training_like_per_map": [int(c) for c in per_map.sum(axis=1)],
            "n_training_like": int(self.training_like.sum()),
            "n_training_unlike": int((~self.training_like).sum()),
        }

    def save(self, path: str | Path) -> Path:
        """Write the result as ``.npz`` (plain arrays, no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, perplexities=self.perplexities, effective_perplexities=self.effective_perplexities,
            embeddings=self.embeddings, n_train=np.int64(self.n_train), distances=self.distances,
            train_nn_distances=self.train_nn_distances, thresholds=self.thresholds,
            threshold_rule=np.str_(self.threshold_rule), training_like=self.training_like,
            pca_components=np.int64(-1 if self.pca_components is None else self.pca_components))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TsneResult":
        with np.load(path, allow_pickle=False) as z:
            pca = int(z["pca_components"])
            return cls(perplexities=z["perplexities"], effective_perplexities=z["effective_perplexities"],
                       embeddings=z["embeddings"], n_train=int(z["n_train"]), distances=z["distances"],
                       train_nn_distances=z["train_nn_distances"], thresholds=z["thresholds"],
                       threshold_rule=str(z["threshold_rule"]), training_like=z["training_like"],
                       pca_components=None if pca < 0 else pca)


def training_like_thresholds(train_nn_distances: np.ndarray, threshold: float | Sequence[float] | None = None,
                             *, threshold_quantile: float = DEFAULT_THRESHOLD_QUANTILE
                             ) -> tuple[np.ndarray, str]:
    """Per-map thresholds from the rule described in the module docstring.

    ``train_nn_distances`` is (n_maps, n_train). Returns ``(thresholds, rule)``.
    """
    nn = np.atleast_2d(np.asarray(train_nn_distances, dtype=np.float64))
    n_maps = nn.shape[0]
    if threshold is None:
        if not 0.0 < threshold_quantile <= 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1], got {threshold_quantile}")
        return np.quantile(nn, threshold_quantile, axis=1), f"quantile={threshold_quantile:g}"
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_maps, float(thr))
    if thr.shape != (n_maps,):
        raise ValueError(f"threshold must be a number or one value per map ({n_maps}), got shape {thr.shape}")
    if not np.all(np.isfinite(thr) & (thr >= 0)):
        raise ValueError(f"thresholds must be finite and >= 0, got {thr.tolist()}")
    return thr, "fixed"


def _check_spectra(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, n_pix), got shape {a.shape}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{name} has {bad.sum()} row(s) with non-finite values "
                         f"(first: {rows[:5].tolist()}); repair or drop them first")
    return a


def _nearest(reference: np.ndarray, query: np.ndarray | None, n_jobs: int) -> np.ndarray:
    """Distance from each query point to its nearest reference point (query=None:
    leave-one-out distance of each reference point to its nearest other one)."""
    from sklearn.neighbors import NearestNeighbors

    if query is None:
        if len(reference) < 2:
            raise ValueError("need at least 2 training spectra for leave-one-out distances")
        d, _ = NearestNeighbors(n_neighbors=2, n_jobs=n_jobs).fit(reference).kneighbors(reference)
        return d[:, 1]
    if len(query) == 0:
        return np.zeros(0)
    d, _ = NearestNeighbors(n_neighbors=1, n_jobs=n_jobs).fit(reference).kneighbors(query)
    return d[:, 0]


def tsne_training_like(train_spectra: np.ndarray, observed_spectra: np.ndarray, *,
                       perplexities: Sequence[float] = DEFAULT_PERPLEXITIES,
                       threshold: float | Sequence[float] | None = None,
                       threshold_quantile: float = DEFAULT_THRESHOLD_QUANTILE,
                       pca_components: int | None = 50, n_jobs: int = 1, random_state: int = 0,
                       tsne_kwargs: dict | None = None, log=None) -> TsneResult:
    """Classify observed spectra as training-like / -unlike with t-SNE maps (paper §5.1).

    Parameters
    ----------
    train_spectra, observed_spectra
        (n_train, n_pix) and (n_obs, n_pix) finite arrays on the same pixel grid.
    perplexities
        One t-SNE map per value (paper: 30, 50, 75, 100). openTSNE lowers a
        perplexity that is too high for the number of points (with a warning).
    threshold, threshold_quantile
        Per-map distance threshold; ``None`` = the ``threshold_quantile`` quantile of the
        training leave-one-out nearest-neighbour distances in that map (module docstring).
    pca_components
        Reduce the combined set to this many principal components first (``None``: no
        PCA; skipped when the spectra have no more pixels than this).
    n_jobs
        Threads for openTSNE and the neighbour searches (keep 1 on shared machines).
    random_state
        Seed of every map (openTSNE's PCA initialisation is itself deterministic).
    tsne_kwargs
        Extra keyword arguments of :class:`openTSNE.TSNE` (e.g. ``n_iter``).
    log
        Optional callable receiving progress lines.

    Returns
    -------
    TsneResult
    """
    import time

    from openTSNE import TSNE

    xt = _check_spectra(train_spectra, "train_spectra")
    xo = _check_spectra(observed_spectra, "observed_spectra")
    if xt.shape[1] != xo.shape[1]:
        raise ValueError(f"train_spectra have {xt.shape[1]} pixels but observed_spectra {xo.shape[1]}")
    perps = np.asarray(list(perplexities), dtype=np.float64)
    if perps.size == 0 or np.any(perps <= 0):
        raise ValueError(f"perplexities must be positive and non-empty, got {perps.tolist()}")
    n_train = len(xt)
    x = np.vstack([xt, xo])
    timings: dict = {}
    t0 = time.perf_counter()
    used_pca = None
    if pca_components is not None and x.shape[1] > pca_components and len(x) > pca_components:
        from sklearn.decomposition import PCA

        x = PCA(n_components=int(pca_components), random_state=random_state).fit_transform(x)
        used_pca = int(pca_components)
    timings["pca_s"] = time.perf_counter() - t0
    kwargs = dict(tsne_kwargs or {})
    embeddings = np.empty((len(perps), len(x), 2), dtype=np.float64)
    eff = np.empty(len(perps))
    dist = np.empty((len(perps), len(xo)))
    nn_train = np.empty((len(perps), n_train))
    for i, p in enumerate(perps):
        t = time.perf_counter()
        emb = TSNE(perplexity=float(p), n_jobs=n_jobs, random_state=random_state, **kwargs).fit(x)
        embeddings[i] = np.asarray(emb)
        aff = emb.affinities
        e = getattr(aff, "effective_perplexity_", None)
        if e is None:
            e = np.ravel(getattr(aff, "effective_perplexities_", [p]))[0]
        eff[i] = float(e)
        nn_train[i] = _nearest(embeddings[i, :n_train], None, n_jobs)
        dist[i] = _nearest(embeddings[i, :n_train], embeddings[i, n_train:], n_jobs)
        timings[f"map_{p:g}_s"] = time.perf_counter() - t
        if log is not None:
            log(f"t-SNE map perplexity={p:g}: {timings[f'map_{p:g}_s']:.1f} s")
    thr, rule = training_like_thresholds(nn_train, threshold, threshold_quantile=threshold_quantile)
    like = np.all(dist <= thr[:, None], axis=0)
    return TsneResult(perplexities=perps, effective_perplexities=eff, embeddings=embeddings, n_train=n_train,
                      distances=dist, train_nn_distances=nn_train, thresholds=thr, threshold_rule=rule,
                      training_like=like, pca_components=used_pca, timings=timings)


def plot_tsne_maps(result: TsneResult, path: str | Path, *, title: str = "t-SNE classification") -> Path:
    """One panel per map, like Fig. 17b–d: training spectra (green), observed
    training-like (gold) and training-unlike (red) spectra. Written as PNG.

    Uses a bare :class:`matplotlib.figure.Figure` (Agg canvas), so it never switches
    the caller's pyplot backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    n = result.n_maps
    fig = Figure(figsize=(4.0 * n, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    like = result.training_like
    for i, ax in enumerate(axes):
        tr, ob = result.train_embedding(i), result.observed_embedding(i)
        ax.scatter(ob[like, 0], ob[like, 1], s=1.5, color="gold", label=f"training-like ({like.sum()})",
                   rasterized=True)
        ax.scatter(tr[:, 0], tr[:, 1], s=1.5, color="C2", alpha=0.6, label=f"training ({result.n_train})",
                   rasterized=True)
        ax.scatter(ob[~like, 0], ob[~like, 1], s=3, color="C3", label=f"training-unlike ({(~like).sum()})",
                   rasterized=True)  # on top: the points that matter
        ax.set_title(f"perplexity {result.perplexities[i]:g} (d ≤ {result.thresholds[i]:.3g})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best", fontsize=7, markerscale=4)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
