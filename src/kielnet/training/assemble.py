"""The last stage of training: the bundle assembled from the plan, the members and
their calibration — training label and input ranges, the training-data summary —
with the quality fits attached (:mod:`kielnet.training.quality`).
"""

from __future__ import annotations

import numpy as np
import torch

from kielnet.artifact import Bundle, MemberInfo
from kielnet.training.calibrate import Calibration, training_stars_digest
from kielnet.training.plan import TrainingPlan
from kielnet.training.quality import attach_quality

__all__ = ["assemble_bundle", "training_ranges"]


def training_ranges(plan: TrainingPlan) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """(label ranges, input ranges) of the trained rows, in label / feature units: the
    finite reference labels within their valid range, and the raw scalar features."""
    cfg, table, prep, rows = plan.config, plan.table, plan.rows.prep, plan.rows.rows
    label_ranges = {}
    for j, name in enumerate(cfg.label_names):
        v = table.labels[name][rows]
        v = v[np.isfinite(v) & ~prep.label_out_of_range[rows, j]]
        label_ranges[name] = (float(v.min()), float(v.max()))
    raw = plan.preprocessor.raw_features(table)[rows]
    feature_ranges = {f.name: (float(np.nanmin(raw[:, i])), float(np.nanmax(raw[:, i])))
                      for i, f in enumerate(cfg.features)}
    return label_ranges, feature_ranges


def assemble_bundle(plan: TrainingPlan, states: list[dict[str, torch.Tensor]], infos: list[MemberInfo],
                    cal: Calibration, *, train_seconds: float, log=print) -> Bundle:
    """The trained bundle: members ``states`` / ``infos`` (ensemble order), the fits of
    ``cal``, the training ranges and summary (``train_seconds``: wall time so far), and
    the quality fits of ``config.quality`` on the trained rows."""
    cfg, table, prep, rows = plan.config, plan.table, plan.rows.prep, plan.rows.rows
    label_ranges, feature_ranges = training_ranges(plan)
    training_data = {
        "source": table.source, "n_rows": int(len(table)), "n_unique_ids": int(len(np.unique(table.ids))),
        "n_trained": int(len(rows)), "missing": table.missing_report(),
        "stars_digest": training_stars_digest(table, cfg),
        "n_pix": plan.n_pix, "train_seconds": round(train_seconds, 1),
        "label_counts": {n: int(np.isfinite(prep.targets[rows, j]).sum()) for j, n in enumerate(cfg.label_names)},
        "n_implausible_spectra": int(prep.implausible.sum()),
        "warnings": plan.warnings,
    }
    if plan.selection is not None:
        training_data["selection"] = plan.selection
    bundle = Bundle(config=cfg, preprocessor=plan.preprocessor, members=states, member_info=infos,
                    running_dispersion=cal.running, label_ranges=label_ranges, feature_ranges=feature_ranges,
                    training_data=training_data, validation=cal.validation, sigma_model=cal.sigma_model,
                    neighbours=cal.neighbours, tail_regimes=cal.tail_regimes)
    return attach_quality(bundle, prep.take(rows), heldout=plan.rows.heldout, log=log)
