"""kielnet's compute core: one batched forward path for inference, training-time
evaluation and embeddings (:class:`EnsembleRunner`), the per-mode network layouts
(:mod:`kielnet.compute.plan`: oneDNN-fused channels-last for CPU inference, plain
Conv1d, or the module as trained), fp32/bf16 precision, thread and device control, and
noise realisations stacked into the batch dimension
(:mod:`kielnet.compute.realisations`), and the fusion embeddings with the embedding OOD
score computed from networks (:mod:`kielnet.compute.embeddings`). The trained-ensemble
type is :class:`kielnet.artifact.Bundle`.

Imports models, data, quality and the artifact digest; training and inference import
it, never the other way round.
"""

from kielnet.compute.embeddings import fusion_embeddings
from kielnet.compute.forward import (DEFAULT_BATCH_SIZE, EnsembleRunner, decode_outputs, ieee_fp32, member_predictions,
                                     resolve_device, resolve_layout, thread_scope)
from kielnet.compute.plan import LAYOUTS, PRECISIONS, FusedExecutor, ModuleExecutor, fused_supported
from kielnet.compute.realisations import realisation_statistics

__all__ = ["fusion_embeddings", "EnsembleRunner", "member_predictions", "decode_outputs", "DEFAULT_BATCH_SIZE", "LAYOUTS", "PRECISIONS", "FusedExecutor", "ModuleExecutor",
           "fused_supported", "ieee_fp32", "resolve_device", "resolve_layout", "thread_scope", "realisation_statistics"]
