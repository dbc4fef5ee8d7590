"""The operator's metrics: spotrun_taskruns counts the TaskRuns that exist, by phase."""

from __future__ import annotations

from prometheus_client import REGISTRY
from spotrun_operator import metrics


def _count(phase: str) -> float:
    return REGISTRY.get_sample_value("spotrun_taskruns", {"phase": phase}) or 0.0


def test_a_deleted_taskrun_stops_counting_in_spotrun_taskruns() -> None:
    before = _count("Running")
    for name in ("a", "b"):
        taskrun = {"metadata": {"namespace": "metrics-test", "name": name}, "status": {}}
        metrics.observe_status(taskrun, {"phase": "Running"})
    assert _count("Running") == before + 2
    metrics.forget("metrics-test", "a")
    assert _count("Running") == before + 1
    metrics.forget("metrics-test", "a")  # twice: a DELETED event after the deletion pass
    metrics.forget("metrics-test", "b")
    assert _count("Running") == before
    assert ("metrics-test", "a") not in metrics._phases
