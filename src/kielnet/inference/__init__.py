"""Applying trained ensembles: bundles, prediction, uncertainties, chunked streaming."""

from kielnet.artifact import Bundle, load_bundle, save_bundle
from kielnet.inference.predict import predict

__all__ = ["Bundle", "load_bundle", "save_bundle", "predict"]
