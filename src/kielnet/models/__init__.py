"""Network building blocks (pure torch modules that see tensors only)."""

from kielnet.models.hybrid import ACTIVATIONS, DenseBranch, HybridNet, SpectrumBranch, make_activation

__all__ = ["ACTIVATIONS", "HybridNet", "SpectrumBranch", "DenseBranch", "make_activation"]
