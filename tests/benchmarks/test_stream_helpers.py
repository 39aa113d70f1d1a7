"""benchmarks/_stream.py: the seconds per stage read back from kielnet predict's report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kielnet.inference.streaming import PredictionSummary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _stream import stage_seconds_of  # noqa: E402


def test_stage_seconds_round_trip_through_the_report():
    stages = {"reading": 31.25, "networks": 45.0, "labels": 8.1, "writing": 2.04, "assembling": 0.3}
    summary = PredictionSummary(output=Path("cat.parquet"), rows=10, flag_counts={"ok": 10}, seconds=90.0,
                                chunks=1, stage_seconds=stages)
    got = stage_seconds_of(summary.report())
    assert list(got) == list(stages)
    assert got == pytest.approx({k: round(v, 1) for k, v in stages.items()})


def test_a_report_without_times_is_refused():
    summary = PredictionSummary(output=Path("cat.parquet"), rows=10, flag_counts={"ok": 10}, seconds=9.0, chunks=1)
    with pytest.raises(RuntimeError, match="no 'time:' line"):
        stage_seconds_of(summary.report())
