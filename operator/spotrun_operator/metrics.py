"""Prometheus metrics: TaskRuns by phase, interruptions by reason, failures, replacement latency."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from spotrun_operator import names
from spotrun_operator.accounting import ended_at

Obj = dict[str, Any]
log = logging.getLogger("spotrun.metrics")

TASKRUNS = Gauge("spotrun_taskruns", "TaskRuns known to this operator, by phase.", ["phase"])
INTERRUPTIONS = Counter("spotrun_interruptions_total", "Attempts that ended interrupted, by reason.", ["reason"])
FAILURES = Counter("spotrun_failures_total", "Attempts that ended failed, by reason.", ["reason"])
LOST_WORK = Histogram(
    "spotrun_lost_work_seconds",
    "Work lost by an interrupted or failed attempt: from the last committed checkpoint to the end of its pod.",
    ["reason"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
REPLACEMENT = Histogram(
    "spotrun_replacement_latency_seconds",
    "From the end of an attempt (its pod terminal or deleted) to the creation of the next attempt's pod.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)

LEADING = Gauge(
    "spotrun_leader",
    "1 while this replica holds the leader Lease (it alone writes), 0 while it stands by.",
    ["identity"],
)
LEASE_HOLDER = Gauge(
    "spotrun_lease_holder", "The replica that holds the leader Lease, as this one last saw it.", ["holder"]
)
POD_REREADS = Counter(
    "spotrun_pod_rereads_total",
    "Passes that found the pod of an attempt not yet counted missing from the watch cache, and listed the pods live.",
)
EVENTS_DROPPED = Counter("spotrun_events_dropped_total", "Events not posted: too many were waiting.")
EVENTS_FAILED = Counter(
    "spotrun_events_failed_total", "Events not posted: the request failed (refused, or no connection)."
)
EVENTS_WAITING = Gauge("spotrun_events_waiting", "Events not posted yet: waiting for their turn, or being posted.")
INFORMER_FAILURES = Counter(
    "spotrun_informer_failures_total",
    "Lists and watches of a watch cache that failed (each is followed by a list, after a backoff).",
    ["kind", "namespace"],
)
INFORMER_HEALTHY = Gauge(
    "spotrun_informer_healthy",
    "1 while a watch cache is listed and its lists and watches have not kept failing for longer than "
    "a minute; 0 otherwise (the operator's /readyz fails then too).",
    ["kind", "namespace"],
)
QUEUE_DEPTH = Gauge("spotrun_workqueue_depth", "TaskRuns waiting for a pass now.")
SCHEDULED = Gauge("spotrun_workqueue_scheduled", "TaskRuns waiting for a due time (backoff, deadline, TTL).")

_phases: dict[tuple[str, str], str] = {}
_holder = [""]


def leadership(identity: str, leading: bool, holder: str) -> None:
    LEADING.labels(identity).set(1 if leading else 0)
    with _lock:
        if _holder[0] != holder:
            if _holder[0]:
                LEASE_HOLDER.remove(_holder[0])
            _holder[0] = holder
            if holder:
                LEASE_HOLDER.labels(holder).set(1)


_lock = threading.Lock()


def start(port: int) -> None:
    if port:
        start_http_server(port)
        log.info("Serving metrics on :%d/metrics", port)


def informer_started(kind: str, namespace: str, healthy: Callable[[], bool]) -> None:
    """The informer's series, 0 failures from the start; its health is read at each scrape, so that
    it turns 0 when the failures have lasted long enough, not only when one more happens."""
    INFORMER_FAILURES.labels(kind, namespace)
    INFORMER_HEALTHY.labels(kind, namespace).set_function(lambda: 1.0 if healthy() else 0.0)


def informer_failed(kind: str, namespace: str) -> None:
    INFORMER_FAILURES.labels(kind, namespace).inc()


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
        if "lostSeconds" in entry:
            LOST_WORK.labels(entry.get("reason") or "Unknown").observe(float(entry["lostSeconds"]))
        if entry.get("outcome") == names.OUTCOME_INTERRUPTED:
            INTERRUPTIONS.labels(entry.get("reason") or "Unknown").inc()
        elif entry.get("outcome") == names.OUTCOME_FAILED:
            FAILURES.labels(entry.get("reason") or "Unknown").inc()
    key = (taskrun["metadata"]["namespace"], taskrun["metadata"]["name"])
    phase = status.get("phase", names.PENDING)
    with _lock:
        before = _phases.get(key)
        if before != phase:
            if before is not None:
                TASKRUNS.labels(before).dec()
            _phases[key] = phase
            TASKRUNS.labels(phase).inc()


def forget(namespace: str, name: str) -> None:
    """A deleted TaskRun no longer counts in spotrun_taskruns."""
    with _lock:
        before = _phases.pop((namespace, name), None)
        if before is not None:
            TASKRUNS.labels(before).dec()


for _phase in (names.PENDING, names.RUNNING, names.BACKOFF, names.SUSPENDED, names.SUCCEEDED, names.FAILED):
    TASKRUNS.labels(_phase).set(0)
