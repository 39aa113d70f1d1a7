"""Data layer: the star table, preprocessing, label transforms, weights and splits.

Nothing in here reads files; :mod:`kielnet.io` builds star tables.
"""

from kielnet.data.preprocess import Prepared, Preprocessor
from kielnet.data.splits import crc32_holdout, ensemble_heldout, group_split
from kielnet.data.startable import StarTable
from kielnet.data.transforms import LabelTransform, Scaler
from kielnet.data.weighting import kde_inverse_density_weights

__all__ = ["StarTable", "Preprocessor", "Prepared", "Scaler", "LabelTransform",
           "kde_inverse_density_weights", "crc32_holdout", "group_split", "ensemble_heldout"]
