"""A toy generator of labelled Gaia-RVS-like stars, to exercise the Gaia-RVS hybrid
preset end to end where no labelled RVS spectra exist.

**Not a physical model.** It gives smooth, learnable relations between the five labels
and every input the preset reads, in the archive's units and formats, so that a bundle
of the preset can be trained, saved and applied to real RVS files. Accuracy of models
trained on it says nothing about real stars.

* Labels are drawn uniformly inside the paper's Table 1 training ranges: Teff
  3705–6395 K, log g 0.58–4.70, [M/H] −2.29–0.55, [α/M] −0.18–0.46, and
  [Fe/H] = [M/H] − 0.3·[α/M] (+ a 0.03 dex scatter), clipped to −2.20–0.54.
* Spectrum on the RVS grid (2,401 px, 846–870 nm, normalised continuum = 1): the Ca II
  triplet (849.80, 854.21, 866.21 nm) as Voigt-like profiles (a Gaussian core plus
  Lorentzian wings whose strength grows with log g and [Ca/H] = [M/H] + [α/M]),
  weak Fe I lines scaling with 10^[Fe/H] and Teff, and Si/Ti/Mg-like lines scaling with
  10^([M/H]+[α/M]); Gaussian noise at an S/N drawn log-uniformly from 20 to 300.
* G (mag) uniform 9.01–14.21, parallax (mas) log-uniform 0.05–7.0 (Table 1 ranges),
  BP − RP from a polynomial in Teff, BP and RP split around G.
* 55 BP and 55 RP coefficients: a flux scale ``10^(-0.4 (band mag - 25))`` times
  smooth functions of Teff and [M/H] with a decaying amplitude per order, plus 1 %
  noise; this mimics the first coefficient's flux scale and the higher orders' shape
  information that the preset's normalisation (coefficient / first coefficient)
  exposes.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np

from kielnet.data.startable import StarTable

__all__ = ["synthetic_rvs_stars", "RVS_TOY_LABEL_RANGES", "CA_TRIPLET_NM"]

RVS_TOY_LABEL_RANGES = {"teff": (3705.0, 6395.0), "logg": (0.58, 4.70), "m_h": (-2.29, 0.55),
                        "alpha_m": (-0.18, 0.46), "fe_h": (-2.20, 0.54)}
CA_TRIPLET_NM = (849.80, 854.21, 866.21)
_FE_LINES_NM = (848.58, 851.40, 852.69, 858.23, 859.29, 861.18, 862.19, 864.80, 867.46, 868.86)
_ALPHA_LINES_NM = (850.21, 853.62, 855.61, 856.62, 863.48, 867.45, 869.93)
_N_PIX = 2401


def _grid() -> np.ndarray:
    return np.round(np.linspace(846.0, 870.0, _N_PIX), 2)


def synthetic_rvs_stars(n: int, *, seed: int = 0, id_prefix: str = "TOY") -> StarTable:
    """``n`` labelled toy stars with RVS spectra, G/BP/RP/parallax and 110 XP coefficients.

    Returns a :class:`StarTable` with scalars ``g, bp, rp`` (mag), ``parallax`` (mas),
    ``bp_0..bp_54``, ``rp_0..rp_54`` (archive coefficient units, e-/s scale), labels
    ``teff`` (K), ``logg``, ``m_h``, ``alpha_m``, ``fe_h`` (dex), and the spectrum on
    the 2,401-px RVS grid (nm) with its 1σ errors. Deterministic for a given seed.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    r = RVS_TOY_LABEL_RANGES
    teff = rng.uniform(*r["teff"], n)
    logg = rng.uniform(*r["logg"], n)
    m_h = rng.uniform(*r["m_h"], n)
    alpha_m = rng.uniform(*r["alpha_m"], n)
    fe_h = np.clip(m_h - 0.3 * alpha_m + rng.normal(0.0, 0.03, n), *r["fe_h"])
    wl = _grid()
    t = (teff[:, None] - 5000.0) / 1000.0
    depth = np.zeros((n, _N_PIX))
    ca = m_h + alpha_m
    for c in CA_TRIPLET_NM:
        x = wl[None, :] - c
        core = (0.55 + 0.05 * ca[:, None] - 0.05 * t) * np.exp(-0.5 * (x / 0.05) ** 2)
        gamma = 0.05 + 0.06 * logg[:, None] * 10 ** (0.3 * ca[:, None])
        wing = 0.35 * (1 + 0.3 * ca[:, None]) * gamma ** 2 / (x ** 2 + gamma ** 2)
        depth += np.clip(core + wing, 0, None)
    for c in _FE_LINES_NM:
        strength = 0.25 * 10 ** fe_h[:, None] * np.exp(-0.6 * t) * (1 + 0.05 * (4.5 - logg[:, None]))
        depth += strength * np.exp(-0.5 * ((wl[None, :] - c) / 0.02) ** 2)
    for c in _ALPHA_LINES_NM:
        strength = 0.15 * 10 ** (m_h + alpha_m)[:, None] * np.exp(-0.3 * t)
        depth += strength * np.exp(-0.5 * ((wl[None, :] - c) / 0.025) ** 2)
    flux_true = np.exp(-depth)  # saturating lines, continuum 1
    snr = np.exp(rng.uniform(np.log(20.0), np.log(300.0), n))
    err = np.repeat((1.0 / snr)[:, None], _N_PIX, axis=1)
    flux = flux_true + rng.normal(size=flux_true.shape) * err

    g = rng.uniform(9.01, 14.21, n)
    parallax = np.exp(rng.uniform(np.log(0.05), np.log(7.0), n))
    bp_rp = 0.8 - 0.55 * (teff - 5800.0) / 1000.0 + 0.2 * ((teff - 5800.0) / 1000.0) ** 2 + 0.03 * m_h
    bp = g + 0.45 * bp_rp + rng.normal(0, 0.003, n)
    rp = bp - bp_rp
    order = np.arange(55)
    scalars = {"g": g, "bp": bp, "rp": rp, "parallax": parallax}
    for band, mag, phase in (("bp", bp, 0.0), ("rp", rp, 1.3)):
        scale = 10 ** (-0.4 * (mag - 25.0))
        amp = np.exp(-order / 12.0)
        shape = (np.sin(0.7 * order[None, :] + phase + 0.9 * t)
                 + 0.3 * m_h[:, None] * np.cos(0.4 * order[None, :] + phase)) * amp[None, :]
        shape[:, 0] = 1.0
        coeff = scale[:, None] * shape * (1.0 + rng.normal(0.0, 0.01, (n, 55)))
        for k in range(55):
            scalars[f"{band}_{k}"] = coeff[:, k]
    ids = np.array([f"{id_prefix}{seed:03d}-{i:06d}" for i in range(n)])
    labels = {"teff": teff, "logg": logg, "m_h": m_h, "alpha_m": alpha_m, "fe_h": fe_h}
    return StarTable(ids=ids, flux=flux, flux_err=err, wavelength=wl * u.nm, scalars=scalars, labels=labels,
                     extra={"snr": snr}, meta={"source": f"<toy RVS generator, seed {seed}>"})
