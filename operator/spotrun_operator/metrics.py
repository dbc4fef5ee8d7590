"""Prometheus metrics: TaskRuns by phase, interruptions by reason, failures, replacement latency."""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from spotrun_operator import names

Obj = dict[str, Any]
log = logging.getLogger("spotrun.metrics")

TASKRUNS = Gauge("spotrun_taskruns", "TaskRuns known to this operator, by phase.", ["phase"])
INTERRUPTIONS = Counter("spotrun_interruptions_total", "Attempts that ended interrupted, by reason.", ["reason"])
FAILURES = Counter("spotrun_failures_total", "Attempts that ended failed, by reason.", ["reason"])
REPLACEMENT = Histogram(
    "spotrun_replacement_latency_seconds",
    "From the end of an attempt (its pod terminal or deleted) to the creation of the next attempt's pod.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def start(port: int) -> None:
    if port:
        start_http_server(port)
        log.info("Serving metrics on :%d/metrics", port)


def _parse(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def ended_at(pod: Obj) -> datetime.datetime | None:
    """When a pod's attempt ended: its last container finish, else its deletion, else its disruption."""
    status = pod.get("status", {})
    finishes = [
        _parse(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for s in status.get("containerStatuses") or []
    ]
    known = [f for f in finishes if f is not None]
    if known:
        return max(known)
    deleted = _parse(pod["metadata"].get("deletionTimestamp"))
    if deleted is not None:
        return deleted
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget":
            return _parse(condition.get("lastTransitionTime"))
    return None


def observe_creation(taskrun: Obj, pods: list[Obj], now: datetime.datetime) -> None:
    previous = max(pods, key=lambda p: int(p["metadata"]["labels"].get(names.LABEL_ATTEMPT, 0)), default=None)
    if previous is None:
        return
    end = ended_at(previous)
    if end is not None:
        REPLACEMENT.observe(max(0.0, (now - end).total_seconds()))


def observe_status(taskrun: Obj, status: Obj) -> None:
    old = taskrun.get("status") or {}
    seen = int(old.get("accountedAttempt", 0))
    for entry in status.get("attempts") or []:
        if int(entry.get("attempt", 0)) <= seen:
            continue
        if entry.get("outcome") == names.OUTCOME_INTERRUPTED:
            INTERRUPTIONS.labels(entry.get("reason") or "Unknown").inc()
        elif entry.get("outcome") == names.OUTCOME_FAILED:
            FAILURES.labels(entry.get("reason") or "Unknown").inc()
    key = (taskrun["metadata"]["namespace"], taskrun["metadata"]["name"])
    with _lock:
        _phases[key] = status.get("phase", names.PENDING)
        _set_phase_gauges()


def forget(namespace: str, name: str) -> None:
    """A deleted TaskRun no longer counts in spotrun_taskruns."""
    with _lock:
        if _phases.pop((namespace, name), None) is not None:
            _set_phase_gauges()


def _set_phase_gauges() -> None:
    counts: dict[str, int] = {}
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase in (names.PENDING, names.RUNNING, names.BACKOFF, names.SUSPENDED, names.SUCCEEDED, names.FAILED):
        TASKRUNS.labels(phase).set(counts.get(phase, 0))
