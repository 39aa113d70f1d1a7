"""Simulation with spectral emulators: noisy spectra, Cramér–Rao bounds and χ² label fits.

* :mod:`kielnet.simulation.emulator` — :class:`PayneEmulator` (per-pixel network,
  analytic Jacobian), :func:`sample_labels`, :func:`simulate` (noisy spectra on the
  full apStar grid as a :class:`~kielnet.data.StarTable`);
* :mod:`kielnet.simulation.crb` — Cramér–Rao bounds from a Jacobian;
* :mod:`kielnet.simulation.fit` — bounded χ² fits of labels to spectra.

Nothing here reads files; :func:`kielnet.io.emulator.load_payne_emulator` reads an
emulator.
"""

from kielnet.simulation.crb import cramer_rao_bound, emulator_crb, fisher_matrix
from kielnet.simulation.emulator import (DEFAULT_LABEL_NAMES, PayneEmulator, apstar_wavelength, noise_sigma,
                                         sample_labels, simulate)
from kielnet.simulation.fit import FitResult, fit_spectra, fit_spectrum

__all__ = ["PayneEmulator", "DEFAULT_LABEL_NAMES", "apstar_wavelength", "noise_sigma", "sample_labels",
           "simulate", "cramer_rao_bound", "fisher_matrix", "emulator_crb", "FitResult", "fit_spectrum",
           "fit_spectra"]
