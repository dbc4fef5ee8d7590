"""Lost work, usage and cost of a TaskRun's attempts. Pure.

Work is lost from the last checkpoint committed (by any attempt) to the moment an interrupted or
failed attempt's pod stopped: the next attempt starts again from that checkpoint. Only Spotrun
knows that moment of the last verified commit; other systems estimate lost work from configured
checkpoint intervals. Times are the kubelet's (startTime, finishedAt: whole seconds) and the
checkpoint manifest's (the pod's clock), so a figure is good to about a second.
"""

from __future__ import annotations

import datetime
from typing import Any

from spotrun_operator import names
from spotrun_operator.config import Prices

Obj = dict[str, Any]
LOSING = (names.OUTCOME_INTERRUPTED, names.OUTCOME_FAILED)


def parse_time(text: str | None) -> datetime.datetime | None:
    """A Kubernetes or manifest time (Z or an offset; naive taken as UTC), None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def ended_at(pod: Obj) -> datetime.datetime | None:
    """When a pod's attempt ended: its last container finish, else its deletion, else its disruption."""
    status = pod.get("status", {})
    finishes = [
        parse_time(((s.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for s in status.get("containerStatuses") or []
    ]
    known = [f for f in finishes if f is not None]
    if known:
        return max(known)
    deleted = parse_time(pod["metadata"].get("deletionTimestamp"))
    if deleted is not None:
        return deleted
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget":
            return parse_time(condition.get("lastTransitionTime"))
    return None


def run_seconds(entry: Obj) -> float:
    """How long an attempt's pod ran: from its start to its end (0 when it never started)."""
    start, end = parse_time(entry.get("startTime")), parse_time(entry.get("endTime"))
    if start is None or end is None:
        return 0.0
    return max(0.0, (end - start).total_seconds())


def lost_seconds(entry: Obj, last_commit: str | None) -> float:
    """Work an attempt lost: from the later of its start and `last_commit` (the time of the newest
    checkpoint committed before it ended, by any attempt) to its end."""
    start, end = parse_time(entry.get("startTime")), parse_time(entry.get("endTime"))
    if start is None or end is None:
        return 0.0
    commit = parse_time(last_commit)
    since = max(start, commit) if commit is not None else start
    return round(max(0.0, (end - since).total_seconds()), 1)


def account(status: Obj, entry: Obj, last_commit: str | None, prices: Prices) -> None:
    """Adds one counted attempt (its history `entry`, given `endTime`, `capacity`, `outcome`) to
    status: the entry's lostSeconds (interrupted or failed), status.lostSeconds, status.usage and,
    with prices, status.cost. Called once per attempt, when it is counted. A gang's attempt (entry
    `replicas`) used that many pods: its usage and cost are theirs together; lostSeconds is time."""
    seconds = run_seconds(entry) * int(entry.get("replicas", 1))
    if entry.get("outcome") in LOSING:
        entry["lostSeconds"] = lost_seconds(entry, last_commit)
        status["lostSeconds"] = round(float(status.get("lostSeconds", 0)) + entry["lostSeconds"], 1)
    usage = status.setdefault("usage", {"spotSeconds": 0.0, "onDemandSeconds": 0.0})
    spot = entry.get("capacity") != names.CAPACITY_ON_DEMAND
    field = "spotSeconds" if spot else "onDemandSeconds"
    usage[field] = round(float(usage.get(field, 0)) + seconds, 1)
    if not prices.known:
        return
    kind = names.CAPACITY_SPOT if spot else names.CAPACITY_ON_DEMAND
    instance = str(entry.get("instanceType") or "")
    price, on_demand = prices.hourly(kind, instance), prices.hourly(names.CAPACITY_ON_DEMAND, instance)
    if price is None or on_demand is None:
        return  # no price for it: the cost of the other attempts stays right, this one is left out
    cost = status.setdefault("cost", {"spent": 0.0, "onDemand": 0.0})
    cost["spent"] = round(float(cost.get("spent", 0)) + seconds * price / 3600, 6)
    cost["onDemand"] = round(float(cost.get("onDemand", 0)) + seconds * on_demand / 3600, 6)
    if prices.currency:
        cost["currency"] = prices.currency
    if cost["onDemand"] > 0:
        cost["savedPercent"] = round(100 * (1 - cost["spent"] / cost["onDemand"]), 1)
