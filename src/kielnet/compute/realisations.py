"""Noise realisations (APOGEE Net II §3.2.3) stacked into the batch dimension.

For ``n`` realisations of ``N`` stars the work is ``n × N`` forward rows, done in blocks
of stars: each block's realisations are drawn together, preprocessed together and fed
to the :class:`~kielnet.compute.forward.EnsembleRunner` as one stacked batch, so that
memory stays at one block (``block_rows`` spectra) and the networks run at their
best batch size.

Draw order (what determinism for a given generator means): the generator draws, star
after star in input order, an ``(n, n_pix)`` float32 standard-normal array per star —
one ``rng.standard_normal((stars_in_block, n, n_pix), dtype=float32)`` call per block,
which is the same stream whatever the block size. Realisation ``r`` of star ``i`` is
``flux_i + z[i, r] · err_i`` with ``err_i`` the clipped errors (non-finite → no noise),
exactly as :func:`kielnet.data.spectra.noise_realisations` computes it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from kielnet.compute.forward import EnsembleRunner, decode_outputs
from kielnet.data.preprocess import Preprocessor
from kielnet.data.spectra import clip_flux_errors
from kielnet.data.startable import StarTable

__all__ = ["realisation_statistics", "draw_block", "DEFAULT_BLOCK_ROWS"]

#: stacked rows (stars × realisations) per preprocessing + forward block
DEFAULT_BLOCK_ROWS = 1024


def draw_block(flux: np.ndarray, err: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Realisations of a block of stars: (n_stars, n, n_pix) float32, star-major (see
    module docstring). ``err``: clipped errors, any float dtype; non-finite → no noise."""
    flux = np.asarray(flux, dtype=np.float32)
    e = np.asarray(err, dtype=np.float32)
    e = np.where(np.isfinite(e), e, np.float32(0.0))
    z = rng.standard_normal((flux.shape[0], n, flux.shape[1]), dtype=np.float32)
    z *= e[:, None, :]
    z += flux[:, None, :]
    return z


def _stacked_table(table: StarTable, rows: np.ndarray, flux: np.ndarray, scalars: list[str]) -> StarTable:
    """The stars ``rows`` (repeated) with spectra ``flux`` and the scalar columns the model reads."""
    return StarTable(ids=table.ids[rows], flux=flux, wavelength=table.wavelength,
                     scalars={c: table.scalars[c][rows] for c in scalars}, meta=dict(table.meta))


def realisation_statistics(runner: EnsembleRunner, preprocessor: Preprocessor, table: StarTable,
                           n: int, rng: np.random.Generator, inverse: Callable[[np.ndarray], np.ndarray], *,
                           clip_factor: float = 5.0, block_rows: int = DEFAULT_BLOCK_ROWS,
                           prefetch: bool = True, head_sigma: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per member, the median and variance (ddof=1; zeros for ``n = 1``) over ``n``
    realisations of each star's physical-unit predictions.

    ``table`` needs ``flux`` and ``flux_err``; the errors are clipped at ``clip_factor``
    × each star's median error (:func:`kielnet.data.spectra.clip_flux_errors`, row by
    row, so block by block). ``inverse`` maps scaled outputs to physical units.
    ``prefetch``: draw and preprocess the next block in a background thread while the
    networks run on this one (blocks are still drawn in order, one after the other:
    the same numbers as without). Returns ``(median, variance)``, both
    (n_members, n_stars, n_labels) float64. ``head_sigma``: if a list is given and the
    members are heteroscedastic, their σ outputs (median over realisations, physical
    units) are appended to it as one (n_members, n_stars, n_labels) array.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 realisation, got {n}")
    n_stars = len(table)
    n_members = len(runner)
    med = np.empty((n_members, n_stars, runner.n_labels))
    var = np.zeros((n_members, n_stars, runner.n_labels))
    hsig = np.empty((n_members, n_stars, runner.n_labels)) if runner.n_outputs != runner.n_labels else None
    scalars = list(preprocessor.config.scalar_columns())
    per_block = max(1, int(block_rows) // max(n, 1))
    blocks = [(s, min(s + per_block, n_stars)) for s in range(0, n_stars, per_block)]

    def prepare(s: int, e: int):
        err, _, _ = clip_flux_errors(table.flux_err[s:e], clip_factor)
        noisy = draw_block(table.flux[s:e], err, n, rng).reshape((e - s) * n, -1)
        rows = np.repeat(np.arange(s, e), n)
        # the observed spectrum was tested for plausibility; its noisy copies are not
        return preprocessor.transform(_stacked_table(table, rows, noisy, scalars), with_labels=False,
                                      check_spectra=False)

    def forward(s: int, e: int, prep) -> None:
        scaled, _ = runner.predict(prep.spectrum, prep.branches)
        phys, sig = decode_outputs(scaled, runner.n_labels, inverse)
        phys = phys.reshape(n_members, e - s, n, runner.n_labels)
        med[:, s:e] = np.median(phys, axis=2)
        if hsig is not None:
            hsig[:, s:e] = np.median(sig.reshape(n_members, e - s, n, runner.n_labels), axis=2)
        if n > 1:
            var[:, s:e] = phys.var(axis=2, ddof=1)

    if not prefetch or len(blocks) < 2:
        for s, e in blocks:
            forward(s, e, prepare(s, e))
        if head_sigma is not None and hsig is not None:
            head_sigma.append(hsig)
        return med, var
    # one background thread prepares the blocks in order (the generator is used by it
    # alone), at most one block ahead of the networks
    with ThreadPoolExecutor(1, thread_name_prefix="kielnet-realisations") as pool:
        nxt = pool.submit(prepare, *blocks[0])
        for i, (s, e) in enumerate(blocks):
            prep = nxt.result()
            if i + 1 < len(blocks):
                nxt = pool.submit(prepare, *blocks[i + 1])
            forward(s, e, prep)
            del prep
    if head_sigma is not None and hsig is not None:
        head_sigma.append(hsig)
    return med, var
