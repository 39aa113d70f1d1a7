"""Training: single networks (resumable) and deep ensembles."""

from kielnet.training.ensemble import train_ensemble
from kielnet.training.trainer import train_member

__all__ = ["train_ensemble", "train_member"]
