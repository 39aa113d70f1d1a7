"""Invertible label transforms and scalers.

Labels are learned in a transformed, scaled space: ``y = scale(transform(x))``.
``transform`` is ``none`` or ``log10`` (Teff in K → log10 Teff); ``scale`` is a
z-score ``(t − mean)/std`` or a min-max map ``(t − min)/(max − min)`` onto [0, 1].
Both are exactly invertible, and their state is a small JSON-able dict so that a
model bundle can restore them without the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Scaler", "LabelTransform"]


@dataclass
class Scaler:
    """Affine scaler ``y = (x − centre) / scale`` fitted on finite values.

    ``kind='zscore'``: centre = mean, scale = standard deviation.
    ``kind='minmax'``: centre = min, scale = max − min (so y ∈ [0, 1] on the fit set).
    ``kind='none'``: identity.
    """

    kind: Literal["zscore", "minmax", "none"] = "zscore"
    centre: float = 0.0
    scale: float = 1.0

    def fit(self, x: np.ndarray) -> "Scaler":
        v = np.asarray(x, dtype=np.float64)
        v = v[np.isfinite(v)]
        if self.kind == "none":
            self.centre, self.scale = 0.0, 1.0
            return self
        if v.size == 0:
            raise ValueError("cannot fit a scaler on no finite values")
        if self.kind == "zscore":
            self.centre, self.scale = float(v.mean()), float(v.std())
        else:
            self.centre, self.scale = float(v.min()), float(v.max() - v.min())
        if not self.scale > 0:
            self.scale = 1.0
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.centre) / self.scale

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) * self.scale + self.centre

    def to_dict(self) -> dict:
        return {"kind": self.kind, "centre": self.centre, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        return cls(kind=d["kind"], centre=float(d["centre"]), scale=float(d["scale"]))


@dataclass
class LabelTransform:
    """Physical label ↔ network target: ``transform`` then :class:`Scaler`."""

    name: str
    transform: Literal["none", "log10"]
    scaler: Scaler

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Physical units → scaled network space (NaN stays NaN)."""
        v = np.asarray(x, dtype=np.float64)
        if self.transform == "log10":
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        return self.scaler.forward(v)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Scaled network space → physical units."""
        v = self.scaler.inverse(y)
        if self.transform == "log10":
            with np.errstate(over="ignore"):  # absurd network outputs become inf and are flagged
                v = np.power(10.0, v)
        return v

    def fit(self, x: np.ndarray) -> "LabelTransform":
        v = np.asarray(x, dtype=np.float64)
        if self.transform == "log10":
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        self.scaler.fit(v)
        return self

    def to_dict(self) -> dict:
        return {"name": self.name, "transform": self.transform, "scaler": self.scaler.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelTransform":
        return cls(name=d["name"], transform=d["transform"], scaler=Scaler.from_dict(d["scaler"]))
