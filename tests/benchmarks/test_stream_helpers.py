"""benchmarks/_stream.py: the seconds per stage read back from kielnet predict's report, and
the all-sky projection made from them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kielnet.inference.streaming import PredictionSummary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _stream import all_sky_hours, paired_ratios, stage_cores_of, stage_seconds_of, worker_busy_rate  # noqa: E402


def test_stage_seconds_round_trip_through_the_report():
    stages = {"reading": 31.25, "networks": 45.0, "labels": 8.1, "writing": 2.04, "assembling": 0.3}
    summary = PredictionSummary(output=Path("cat.parquet"), rows=10, flag_counts={"ok": 10}, seconds=90.0,
                                chunks=1, stage_seconds=stages)
    got = stage_seconds_of(summary.report())
    assert list(got) == list(stages)
    assert got == pytest.approx({k: round(v, 1) for k, v in stages.items()})
    assert stage_cores_of(summary.report()) == {}
    cpu = {"reading": 54.4, "networks": 87.75}  # the cores per stage where its CPU seconds are known
    with_cpu = PredictionSummary(output=Path("cat.parquet"), rows=10, flag_counts={"ok": 10}, seconds=90.0,
                                 chunks=1, stage_seconds=stages, stage_cpu_seconds=cpu)
    assert stage_seconds_of(with_cpu.report()) == got
    assert stage_cores_of(with_cpu.report()) == pytest.approx({"reading": 1.74, "networks": 1.95})


def test_a_report_without_times_is_refused():
    summary = PredictionSummary(output=Path("cat.parquet"), rows=10, flag_counts={"ok": 10}, seconds=9.0, chunks=1)
    with pytest.raises(RuntimeError, match="no 'time:' line"):
        stage_seconds_of(summary.report())


def test_the_busy_rate_counts_every_worker_stage_and_not_the_assembly():
    stages = {"reading": 30.0, "networks": 50.0, "labels": 15.0, "writing": 5.0, "assembling": 40.0}
    assert worker_busy_rate(40_000, stages) == pytest.approx(400.0)
    with pytest.raises(KeyError):  # a report without one of the worker stages is not read as zero
        worker_busy_rate(40_000, {"reading": 30.0, "networks": 50.0})


def test_all_sky_hours_scale_with_stars_and_workers_and_add_the_row_count():
    base = all_sky_hours(2.2e8, 100, 500.0)
    assert base == pytest.approx(2.2e8 / 500.0 / 100 / 3600)
    assert all_sky_hours(2.2e8, 200, 500.0) == pytest.approx(base / 2)
    # counting the rows at 1e-4 worker seconds per star adds 2.2e4 worker seconds in all
    assert all_sky_hours(2.2e8, 100, 500.0, 1e-4) == pytest.approx(base + 2.2e8 * 1e-4 / 100 / 3600)
    for bad in ((0, 500.0, 0.0), (100, 0.0, 0.0), (100, 500.0, -1.0)):
        with pytest.raises(ValueError):
            all_sky_hours(2.2e8, *bad)


def test_paired_ratios_use_the_networks_measured_around_each_run():
    got = paired_ratios([2800.0, 3000.0, 2900.0], [5600.0, 6000.0, 5800.0, 5000.0])
    assert got["faster"] == pytest.approx([2800 / 6000, 3000 / 6000, 2900 / 5800])
    assert got["slower"] == pytest.approx([2800 / 5600, 3000 / 5800, 2900 / 5000])
    assert got["median_faster"] == pytest.approx(0.5) and got["median_run"] == 2   # 2,900: the middle rate
    assert paired_ratios([1.0, 3.0], [1.0, 1.0, 1.0])["median_run"] == 0          # even: the slower middle one
    with pytest.raises(ValueError, match="one networks rate before each run"):
        paired_ratios([1.0, 2.0], [1.0, 1.0])
