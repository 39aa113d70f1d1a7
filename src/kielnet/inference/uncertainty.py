"""Uncertainties of ensemble predictions: re-exported from :mod:`kielnet.quality.uncertainty`
(the fits live in the quality layer so that training and inference both use them) and
the per-star σ model, :mod:`kielnet.quality.sigma`."""

from kielnet.quality.sigma import SigmaModel, fit_sigma_model
from kielnet.quality.uncertainty import RunningDispersion, fit_running_dispersion, robust_sigma, total_sigma

__all__ = ["RunningDispersion", "fit_running_dispersion", "robust_sigma", "total_sigma", "SigmaModel",
           "fit_sigma_model"]
