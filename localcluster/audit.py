"""The kube-apiserver's audit log (`up --audit`): the policy localcluster writes, and one user's requests in it.

Each request is one JSON line of `logs/audit.log`, written when its response completed, at level
Metadata (who, verb, resource, status code; no bodies). Heartbeats are left out: the Leases of
nodes (process kubelets, real kubelets, kwok) and of the control plane, nodes' status updates,
and health checks. A watch is one request, verb `watch`, logged when it ends: count a client's
watches once it has stopped (or its watches timed out).

    counts = audit.requests(cluster.logs / "audit.log", "system:serviceaccount:spotrun-system:spotrun-operator",
                            since=started, until=time.time())
    counts[("create", "pods")], counts.total()
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

from spotrun import _yaml

Obj = dict[str, Any]
When = float | datetime.datetime  # seconds since the epoch (time.time()), or an aware datetime

POLICY: Obj = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One event per request: RequestReceived would double it, ResponseStarted adds one per watch.
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        # Heartbeats: every node's Lease (kubelets and kwok) and the control plane's own Leases.
        {
            "level": "None",
            "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
            "namespaces": ["kube-node-lease", "kube-system"],
        },
        # Nodes' status: kubelets' and kwok's reports, the node lifecycle controller's conditions.
        {"level": "None", "verbs": ["update", "patch"], "resources": [{"group": "", "resources": ["nodes/status"]}]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*"]},
        {"level": "Metadata"},
    ],
}


def policy_text() -> str:
    return _yaml.dump_all([POLICY])


def apiserver_flags(policy_path: Path, log_path: Path) -> list[str]:
    """kube-apiserver's flags for the log backend: JSON lines, written before the response (blocking), never rotated."""
    return [
        f"--audit-policy-file={policy_path}",
        f"--audit-log-path={log_path}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxsize=0",
    ]


def requests(
    path: Path, user: str, since: When | None = None, until: When | None = None
) -> collections.Counter[tuple[str, str]]:
    """USER's requests in the audit log at PATH, by (verb, resource); `.total()` is how many in all.

    A request counts when it was received in [SINCE, UNTIL) (either may be None: unbounded), by
    `requestReceivedTimestamp`. The resource is `pods`, `pods/status`, `taskruns`, ... (the
    subresource after a slash), or the path for non-resource requests (`/api`, `/apis`). USER is
    the authenticated username (a ServiceAccount is `system:serviceaccount:NAMESPACE:NAME`);
    requests it made impersonating another are its own."""
    low, high = _epoch(since), _epoch(until)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    seen: set[str] = set()
    needle = json.dumps(user)
    with open(path, encoding="utf-8") as log:
        for line in log:
            if needle not in line:  # cheap: most lines are other users'
                continue
            try:
                event = json.loads(line)
            except ValueError:  # a line being written as we read
                continue
            if (event.get("user") or {}).get("username") != user or event.get("auditID") in seen:
                continue
            received = _parse_time(event.get("requestReceivedTimestamp", ""))
            if received is None or (low is not None and received < low) or (high is not None and received >= high):
                continue
            seen.add(event.get("auditID", ""))
            counts[(event.get("verb", ""), resource_of(event))] += 1
    return counts


def resource_of(event: Obj) -> str:
    ref = event.get("objectRef") or {}
    if resource := ref.get("resource"):
        return f"{resource}/{ref['subresource']}" if ref.get("subresource") else str(resource)
    return str(event.get("requestURI", "")).split("?", 1)[0]


def _epoch(when: When | None) -> float | None:
    if when is None or isinstance(when, float | int):
        return when
    if when.tzinfo is None:
        raise ValueError(f"{when!r} has no time zone; pass an aware datetime or time.time()")
    return when.timestamp()


def _parse_time(text: str) -> float | None:
    with contextlib.suppress(ValueError):
        return datetime.datetime.fromisoformat(text).timestamp()
    return None
