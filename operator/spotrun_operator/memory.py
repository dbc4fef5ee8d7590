"""Memory after an OOM kill: Kubernetes quantities, and the next attempt's memory (resources.onOOMKilled). Pure."""

from __future__ import annotations

import copy
import decimal
import math
import re
from typing import Any

Obj = dict[str, Any]
MIB = 2**20
DEFAULT_FACTOR = 1.5
MOST_FACTOR = 16  # the CRD's bound
MOST_KILLS = 64  # factor ** kills grows no further: at factor 1.5 that is 1e11 times the template's
MOST_BYTES = 2**62  # 4 EiB: more than any node has, and still an int64 for the API server
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIXES: dict[str, int | decimal.Decimal] = {
    "": 1,
    "n": decimal.Decimal("1e-9"),
    "u": decimal.Decimal("1e-6"),
    "m": decimal.Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
OOM_KILLED = "OOMKilled"
EVICTED = "Evicted"
# The kubelet's eviction message names each container that used more than its request of the
# starved resource (pkg/kubelet/eviction/helpers.go, containerMessageFmt: "Container %s was using
# %s, request is %s, has larger consumption of %v. "). Under memory pressure the kubelet evicts such
# pods first: the task outgrew its memory, as with an OOM kill.
_OVER_REQUEST = re.compile(r"Container (\S+) was using (\S+), request is (\S+), has larger consumption of memory\.")


def parse_quantity(value: str | int | float) -> int:
    """Bytes in a Kubernetes quantity ("512Mi", "1.5G", "1e9", 1024), rounded up as the API server
    rounds memory. ValueError names a value that is not a quantity."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a quantity")
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity (e.g. 512Mi, 2Gi, 1e9)")
    number, suffix = decimal.Decimal(match.group(1)), match.group(2) or ""
    try:
        exponent = decimal.Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else None
        scale = exponent if exponent is not None else decimal.Decimal(_SUFFIXES[suffix])
        return math.ceil(number * scale)
    except ArithmeticError as err:  # 1e99999999 and the like
        raise ValueError(f"{value!r} is not a quantity this operator can hold: {err}") from None


def format_bytes(count: int) -> str:
    """A quantity for `count` bytes: in Mi when whole (what the scaling yields), else plain bytes."""
    for suffix, size in (("Gi", 2**30), ("Mi", MIB)):
        if count % size == 0 and count >= size:
            return f"{count // size}{suffix}"
    return str(count)


def oom_killed(pod: Obj | None) -> bool:
    """Whether a container of the pod was killed for exceeding its memory: the kubelet's OOMKilled, or
    an eviction under memory pressure that names a container using more than its request."""
    status = (pod or {}).get("status") or {}
    entries = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    killed = any(((e.get("state") or {}).get("terminated") or {}).get("reason") == OOM_KILLED for e in entries)
    return killed or bool(evicted_over_request(pod))


def evicted_over_request(pod: Obj | None) -> list[str]:
    """The containers that a memory-pressure eviction of the pod names as using more memory than they
    requested (empty: not such an eviction). The message is the pod's, and its DisruptionTarget's."""
    status = (pod or {}).get("status") or {}
    if status.get("reason") != EVICTED:
        return []
    texts = [str(status.get("message") or "")]
    texts += [
        str(c.get("message") or "") for c in status.get("conditions") or [] if c.get("type") == "DisruptionTarget"
    ]
    return sorted({m.group(1) for text in texts for m in _OVER_REQUEST.finditer(text)})


def _scaled(value: Any, times: float, ceiling: int | None) -> Any:
    """`value` times `times`, rounded up to the MiB, at most `ceiling` (never below `value`). A value
    that is no quantity is left as it is (validate.py fails such a run before its pod is built)."""
    try:
        base = parse_quantity(value)
    except ValueError:
        return value
    grown = min(math.ceil(base * times / MIB) * MIB, MOST_BYTES)
    if ceiling is not None:
        grown = min(grown, max(ceiling, base))
    return format_bytes(max(grown, base))


def scale(pod_spec: Obj, oom_kills: int, policy: Obj | None) -> Obj:
    """The pod spec with every container's memory request and limit multiplied by
    factor ** oom_kills, capped at maxMemory: the next attempt's memory after `oom_kills` OOM kills
    under `policy` (spec.resources.onOOMKilled); pod-level resources (spec.resources) too, so that
    the containers still fit in them. A container without a limit gets none; without a request,
    none either. No policy, or no kill yet: the spec as it is. ValueError: maxMemory or factor
    cannot be used (the CRD refuses what this refuses)."""
    if policy is None or oom_kills <= 0:
        return pod_spec
    factor = read_factor(policy)
    try:
        ceiling = read_ceiling(policy)
    except ValueError as err:
        raise ValueError(f"maxMemory: {err}") from None
    times = factor ** min(oom_kills, MOST_KILLS)
    spec = copy.deepcopy(pod_spec)
    for amounts in _memory_holders(spec):
        amounts["memory"] = _scaled(amounts["memory"], times, ceiling)
    return spec


def read_factor(policy: Obj) -> float:
    """onOOMKilled's factor. ValueError: it is not a number in (1, MOST_FACTOR]."""
    try:
        factor = float(policy.get("factor", DEFAULT_FACTOR))
    except (TypeError, ValueError):
        raise ValueError(f"factor {policy.get('factor')!r} is not a number") from None
    if not 1 < factor <= MOST_FACTOR:
        raise ValueError(f"factor {factor} is not in (1, {MOST_FACTOR}]")
    return factor


def read_ceiling(policy: Obj) -> int | None:
    """onOOMKilled's maxMemory in bytes, None when unset. ValueError: it is not a quantity."""
    return parse_quantity(policy["maxMemory"]) if policy.get("maxMemory") is not None else None


def _memory_holders(pod_spec: Obj) -> list[Obj]:
    """The requests and limits that set memory: the pod's own (spec.resources), its init containers'
    and its containers'."""
    found = []
    for holder in [pod_spec, *(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        resources = holder.get("resources") or {}
        for kind in ("requests", "limits"):
            amounts = resources.get(kind) or {}
            if amounts.get("memory") is not None:
                found.append(amounts)
    return found


def sets_memory(pod_spec: Obj) -> bool:
    """Whether the pod, or a container of it, has a memory request or limit: what onOOMKilled grows."""
    return bool(_memory_holders(pod_spec))


def of_pod(pod: Obj | None) -> Obj:
    """The memory each container of a pod ran with: {container: {requests, limits}}, only those set."""
    found: Obj = {}
    spec = (pod or {}).get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = container.get("resources") or {}
        amounts = {
            kind: str(resources[kind]["memory"])
            for kind in ("requests", "limits")
            if (resources.get(kind) or {}).get("memory")
        }
        if amounts:
            found[str(container.get("name", ""))] = amounts
    return found
