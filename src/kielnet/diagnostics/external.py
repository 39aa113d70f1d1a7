"""External checks of a catalogue (Guiglion, Nepal et al. 2024, Gaia-RVS hybrid CNN, §6–7).

* :func:`seismic_logg`: surface gravity from the asteroseismic scaling relation
  g / g⊙ = (ν_max / ν_max,⊙) (Teff / Teff,⊙)^½ with ν_max,⊙ = 3090 µHz, Teff,⊙ = 5777 K
  and g⊙ = G M⊙ / R⊙² (IAU nominal values, log g⊙ = 4.438 dex, cgs);
* :func:`cluster_metallicity`: mean, spread and median of [Fe/H] (or any label) per open
  cluster;
* :func:`galactocentric_rz`: Galactocentric cylindrical radius R and height Z (kpc) with
  astropy's :class:`~astropy.coordinates.Galactocentric` frame, R0 = 8.19 kpc,
  v_LSR = 240 km/s and the Sun's peculiar velocity (U, V, W) = (11.1, 12.24, 7.25) km/s
  (Schönrich et al. 2010), as the paper's Sect. 7.
"""

from __future__ import annotations

import astropy.constants as const
import astropy.units as u
import numpy as np
from astropy.coordinates import CartesianDifferential, Galactocentric, SkyCoord
from astropy.table import Table

from kielnet.stats import robust_sigma

__all__ = ["NUMAX_SUN", "TEFF_SUN", "LOGG_SUN", "R0", "V_LSR", "V_SUN_PECULIAR", "seismic_logg",
           "cluster_metallicity", "galactocentric_frame", "galactocentric_rz"]

#: solar ν_max [µHz] and effective temperature [K] of the scaling relation (paper §6)
NUMAX_SUN = 3090.0
TEFF_SUN = 5777.0
#: log10 of the solar surface gravity in cgs [dex], G M⊙ / R⊙² with the IAU nominal values
LOGG_SUN = float(np.log10((const.GM_sun / const.R_sun ** 2).to_value(u.cm / u.s ** 2)))
#: distance of the Sun from the Galactic centre [kpc] and circular velocity of the LSR [km/s]
R0 = 8.19
V_LSR = 240.0
#: peculiar velocity of the Sun w.r.t. the LSR, (U, V, W) [km/s]
V_SUN_PECULIAR = (11.1, 12.24, 7.25)


def _value(x, unit) -> np.ndarray:
    """Plain float array of ``x`` in ``unit`` (a Quantity is converted; numbers are taken as given)."""
    if isinstance(x, u.Quantity):
        return np.asarray(x.to_value(unit), dtype=float)
    return np.asarray(np.ma.filled(np.ma.asarray(x, dtype=float), np.nan), dtype=float)


def seismic_logg(numax, teff, *, numax_sun: float = NUMAX_SUN, teff_sun: float = TEFF_SUN,
                 logg_sun: float = LOGG_SUN) -> np.ndarray:
    """Asteroseismic log g [dex, cgs] from ν_max [µHz] and Teff [K] (Quantities are converted):
    log g = log g⊙ + log10(ν_max / ν_max,⊙) + ½ log10(Teff / Teff,⊙). Non-positive or
    non-finite inputs give NaN."""
    nu = _value(numax, u.uHz)
    t = _value(teff, u.K)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (nu > 0) & (t > 0)
        out = logg_sun + np.log10(np.where(ok, nu, np.nan) / numax_sun) \
            + 0.5 * np.log10(np.where(ok, t, np.nan) / teff_sun)
    return out


def cluster_metallicity(cluster, values, *, min_members: int = 1) -> Table:
    """Mean, standard deviation, median and robust σ (1.4826 MAD) of ``values`` (e.g. [Fe/H]
    in dex) per cluster name, over the members whose value is finite (NaN = label withheld:
    not counted). Columns: ``cluster``, ``n``, ``mean``, ``std`` (ddof 1; NaN for one star),
    ``median``, ``robust_sigma``; clusters with fewer than ``min_members`` are left out;
    rows sorted by cluster name."""
    names = np.asarray(np.ma.filled(np.ma.asarray(cluster).astype(str), "")).astype(str)
    v = _value(values, u.dimensionless_unscaled) if not isinstance(values, u.Quantity) else values.value
    v = np.asarray(v, dtype=float)
    keep = np.isfinite(v) & (np.char.strip(names) != "")
    rows = []
    for name in np.unique(names[keep]):
        x = v[keep & (names == name)]
        if x.size < min_members:
            continue
        rows.append((str(name), int(x.size), float(np.mean(x)),
                     float(np.std(x, ddof=1)) if x.size > 1 else np.nan, float(np.median(x)),
                     float(robust_sigma(x)) if x.size > 1 else np.nan))
    return Table(rows=rows or None, names=("cluster", "n", "mean", "std", "median", "robust_sigma"),
                 dtype=(str, int, float, float, float, float))


def galactocentric_frame() -> Galactocentric:
    """astropy's Galactocentric frame with the paper's solar parameters (R0, v_LSR, peculiar velocity)."""
    u_sun, v_sun, w_sun = V_SUN_PECULIAR
    return Galactocentric(galcen_distance=R0 * u.kpc,
                          galcen_v_sun=CartesianDifferential([u_sun, V_LSR + v_sun, w_sun] * (u.km / u.s)))


def galactocentric_rz(ra, dec, *, distance=None, parallax=None) -> tuple[np.ndarray, np.ndarray]:
    """Galactocentric cylindrical radius R and height Z above the plane, both in kpc.

    ``ra``, ``dec`` in degrees (ICRS); the distance either as ``distance`` [kpc] or as
    ``parallax`` [mas] (distance = 1 / parallax; parallaxes ≤ 0 or non-finite give NaN).
    Quantities are converted. Uses :func:`galactocentric_frame`.
    """
    ra_v, dec_v = _value(ra, u.deg), _value(dec, u.deg)
    if distance is not None:
        d = _value(distance, u.kpc)
    elif parallax is not None:
        p = _value(parallax, u.mas)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(p > 0, 1.0 / p, np.nan)
    else:
        raise ValueError("galactocentric_rz needs distance [kpc] or parallax [mas]")
    ra_v, dec_v, d = np.broadcast_arrays(ra_v, dec_v, d)
    ok = np.isfinite(ra_v) & np.isfinite(dec_v) & np.isfinite(d) & (d > 0)
    r = np.full(ra_v.shape, np.nan)
    z = np.full(ra_v.shape, np.nan)
    if ok.any():
        c = SkyCoord(ra=ra_v[ok] * u.deg, dec=dec_v[ok] * u.deg, distance=d[ok] * u.kpc, frame="icrs")
        g = c.transform_to(galactocentric_frame())
        r[ok] = np.hypot(g.x.to_value(u.kpc), g.y.to_value(u.kpc))
        z[ok] = g.z.to_value(u.kpc)
    return r, z
