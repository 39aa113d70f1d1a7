"""Known answers of the external-check helpers (Gaia-RVS hybrid CNN §6–7)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Galactic, SkyCoord

from kielnet.diagnostics.external import (LOGG_SUN, R0, cluster_metallicity, galactocentric_frame,
                                          galactocentric_rz, seismic_logg)


def test_seismic_logg_known_answers():
    # the Sun: log g = log g_sun = log10(G M_sun / R_sun^2) = 4.438 (cgs)
    assert LOGG_SUN == pytest.approx(4.438, abs=1e-3)
    assert seismic_logg(3090.0, 5777.0) == pytest.approx(LOGG_SUN, abs=1e-12)
    # a red-clump giant: numax 30 uHz, Teff 4800 K -> 4.438 + log10(30/3090) + 0.5 log10(4800/5777)
    expect = 4.438 + np.log10(30 / 3090) + 0.5 * np.log10(4800 / 5777)
    assert seismic_logg(30.0, 4800.0) == pytest.approx(expect, abs=2e-3)
    assert seismic_logg(30.0, 4800.0) == pytest.approx(2.385, abs=2e-3)
    # quantities are converted (30 uHz = 0.03 mHz); bad inputs give NaN
    assert seismic_logg(0.03 * u.mHz, 4800 * u.K) == pytest.approx(seismic_logg(30.0, 4800.0))
    out = seismic_logg(np.array([30.0, -1.0, np.nan, 100.0]), np.array([4800.0, 4800.0, 4800.0, 0.0]))
    assert np.isfinite(out[0]) and np.isnan(out[1:]).all()


def test_galactocentric_sun_and_centre():
    frame = galactocentric_frame()
    assert frame.galcen_distance.to_value(u.kpc) == pytest.approx(R0)
    vs = frame.galcen_v_sun
    v = (vs.d_xyz if hasattr(vs, "d_xyz") else vs.xyz).to_value(u.km / u.s)
    np.testing.assert_allclose(v, [11.1, 240.0 + 12.24, 7.25])
    # a star 1 pc from the Sun (any direction): R = R0 within 1 pc and Z = the Sun's height (~20.8 pc)
    r, z = galactocentric_rz(np.array([10.0, 200.0]), np.array([-30.0, 60.0]), distance=np.array([1e-3, 1e-3]))
    np.testing.assert_allclose(r, R0, atol=2e-3)
    z_sun = frame.z_sun.to_value(u.kpc)
    np.testing.assert_allclose(z, z_sun, atol=1.5e-3)
    # a star at the Galactic centre (l = b = 0, 8.19 kpc away) has R ~ 0, |Z| small
    gc = SkyCoord(l=0 * u.deg, b=0 * u.deg, frame=Galactic).icrs
    r, z = galactocentric_rz(gc.ra.deg, gc.dec.deg, parallax=1.0 / R0)
    assert r[()] < 0.05 and abs(z[()]) < 0.05
    # toward the anticentre at 2 kpc: R = R0 + 2
    ac = SkyCoord(l=180 * u.deg, b=0 * u.deg, frame=Galactic).icrs
    r, _ = galactocentric_rz(ac.ra.deg, ac.dec.deg, distance=2.0)
    assert r[()] == pytest.approx(R0 + 2.0, abs=0.01)
    # non-positive parallax: no distance, NaN
    r, z = galactocentric_rz([10.0], [10.0], parallax=[-0.5])
    assert np.isnan(r).all() and np.isnan(z).all()


def test_cluster_metallicity():
    names = np.array(["M67", "M67", "M67", "NGC188", "NGC188", "", "Solo"])
    feh = np.array([0.0, 0.1, np.nan, -0.1, -0.3, 0.5, 0.2])
    t = cluster_metallicity(names, feh)
    assert list(t["cluster"]) == ["M67", "NGC188", "Solo"]
    assert list(t["n"]) == [2, 2, 1]
    np.testing.assert_allclose(t["mean"][:2], [0.05, -0.2])
    np.testing.assert_allclose(t["std"][:2], [np.std([0, 0.1], ddof=1), np.std([-0.1, -0.3], ddof=1)])
    assert np.isnan(t["std"][2])
    assert list(cluster_metallicity(names, feh, min_members=2)["cluster"]) == ["M67", "NGC188"]
