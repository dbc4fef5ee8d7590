"""The invariants checked after every run, each a function of the ground truth: a list of
Violations, each naming the invariant, the TaskRun and what was seen."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.perturb.truth import PodLife

Obj = dict[str, Any]
TWO_LIVE = "never two live pods for one (attempt, rank)"
COUNTED_ONCE = "interruptions, failures and attempts counted exactly once"
NOT_OWNED = "no object deleted that the TaskRun does not own (by UID)"
LEASE = "no write by a replica after another took the Lease"
TERMINAL = "every TaskRun reaches its terminal phase"
WRITES = ("create", "update", "patch", "delete", "deletecollection")
AGENT = re.compile(r"spotrun-operator \(([^)]+)\)")


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: str
    taskrun: str
    detail: str

    def __str__(self) -> str:
        return f"VIOLATED [{self.invariant}] TaskRun {self.taskrun}: {self.detail}"


def two_live_pods(pods: Iterable[PodLife]) -> list[Violation]:
    found = []
    by_slot: dict[tuple[str, int, int], list[PodLife]] = collections.defaultdict(list)
    for pod in pods:
        by_slot[(pod.taskrun, pod.attempt, pod.rank)].append(pod)
    for (taskrun, attempt, rank), lives in sorted(by_slot.items()):
        lives.sort(key=lambda p: p.created)
        for first, second in itertools.pairwise(lives):
            if first.ended is None or first.ended > second.created:
                found.append(
                    Violation(
                        TWO_LIVE, taskrun, f"attempt {attempt} rank {rank}: {first.uid} and {second.uid} live at once"
                    )
                )
    return found


def counted_once(taskrun: Obj, pods: Iterable[PodLife]) -> list[Violation]:
    """Failures equal the attempts with a pod that failed on its own, interruptions the attempts
    with a pod the harness deleted while it ran (an attempt with both may be either); each attempt
    created is in the history once, and status names the last one."""
    name = taskrun["metadata"]["name"]
    st = taskrun.get("status") or {}
    attempts: dict[int, list[PodLife]] = collections.defaultdict(list)
    for pod in pods:
        if pod.taskrun == name:
            attempts[pod.attempt].append(pod)
    failed = {n for n, ps in attempts.items() if any(p.failed_on_its_own for p in ps)}
    interrupted = {n for n, ps in attempts.items() if any(p.deleted_by_harness for p in ps)}
    both = failed & interrupted
    found = []
    failures, interruptions = int(st.get("failures", 0)), int(st.get("interruptions", 0))
    if not len(failed - both) <= failures <= len(failed):
        found.append(
            Violation(
                COUNTED_ONCE,
                name,
                f"failures counted {failures}, but {len(failed)} attempt(s) had a pod that failed on its own "
                f"({sorted(failed)}; {sorted(both)} also interrupted); attempts: {_history(st)}",
            )
        )
    if not len(interrupted - both) <= interruptions <= len(interrupted):
        found.append(
            Violation(
                COUNTED_ONCE,
                name,
                f"interruptions counted {interruptions}, but {len(interrupted)} attempt(s) had a pod deleted by "
                f"someone else while it ran ({sorted(interrupted)}); attempts: {_history(st)}",
            )
        )
    history = [int(a.get("attempt", 0)) for a in st.get("attempts") or []]
    repeated = sorted(n for n, c in collections.Counter(history).items() if c > 1)
    if repeated:
        found.append(Violation(COUNTED_ONCE, name, f"attempt(s) {repeated} counted more than once: {_history(st)}"))
    if attempts and int(st.get("attempt", 0)) != max(attempts):
        found.append(
            Violation(COUNTED_ONCE, name, f"status names attempt {st.get('attempt')}, pods exist up to {max(attempts)}")
        )
    return found


def _history(st: Obj) -> str:
    return ", ".join(f"{a.get('attempt')}:{a.get('outcome')}/{a.get('reason')}" for a in st.get("attempts") or [])


def terminal(taskrun: Obj) -> list[Violation]:
    st = taskrun.get("status") or {}
    if st.get("phase") in ("Succeeded", "Failed"):
        return []
    detail = f"phase {st.get('phase')} at the end ({st.get('message', '')})"
    return [Violation(TERMINAL, taskrun["metadata"]["name"], detail)]


def namesakes_kept(taskrun: str, kind: str, name: str, uid: str, now: Obj | None) -> list[Violation]:
    """A namesake made beforehand by someone else is still there, the same object."""
    if now is not None and now["metadata"]["uid"] == uid:
        return []
    what = "deleted" if now is None else f"replaced by {now['metadata']['uid']}"
    return [Violation(NOT_OWNED, taskrun, f"{kind} {name} (uid {uid}, not the TaskRun's) was {what}")]


def audit_events(path: Path, since: float) -> list[Obj]:
    """The operators' requests in the audit log received since SINCE, in the order received."""
    events = []
    with open(path, encoding="utf-8") as log:
        for line in log:
            if "spotrun-operator (" not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if _time(event.get("requestReceivedTimestamp")) >= since:
                events.append(event)
    events.sort(key=lambda e: _time(e.get("requestReceivedTimestamp")))
    return events


def no_write_after_lease_taken(events: list[Obj], lease: str, taskruns: Iterable[str]) -> list[Violation]:
    """A replica whose Lease another took (a successful Lease write by another identity, when the
    answer was sent) writes nothing received after it (Lease writes aside: they are the election).
    Each write is told under the TaskRun whose name its object's name starts with (TASKRUNS)."""
    known = sorted(taskruns, key=len, reverse=True)
    taken: dict[str, float] = {}  # identity -> when another took the Lease from it
    holder = ""
    for event in sorted(events, key=lambda e: _time(e.get("stageTimestamp"))):
        ref = event.get("objectRef") or {}
        code = int((event.get("responseStatus") or {}).get("code", 0))
        me = _identity(event)
        if ref.get("resource") == "leases" and ref.get("name") == lease and event.get("verb") in WRITES and code < 300:
            if holder and me and me != holder and holder not in taken:
                taken[holder] = _time(event.get("stageTimestamp"))
            holder = me
    found = []
    late_writes: collections.Counter[tuple[str, str]] = collections.Counter()  # (replica, TaskRun): told once
    for event in events:
        ref = event.get("objectRef") or {}
        me = _identity(event)
        received = _time(event.get("requestReceivedTimestamp"))
        if event.get("verb") not in WRITES or ref.get("resource") == "leases" or me not in taken:
            continue
        if received > taken[me]:
            answered = (event.get("responseStatus") or {}).get("code")
            late = received - taken[me]
            what = f"{event['verb']} {ref.get('resource')}/{ref.get('subresource') or ''} {ref.get('name', '')}"
            name = str(ref.get("name", ""))
            taskrun = next((t for t in known if name.startswith(t)), name)
            late_writes[(me, taskrun)] += 1
            if late_writes[(me, taskrun)] == 1:
                found.append(
                    Violation(
                        LEASE,
                        taskrun,
                        f"replica {me} sent {what} (answered {answered}) {late:.1f}s after another replica "
                        "took the Lease",
                    )
                )
    return [
        dataclasses.replace(v, detail=f"{v.detail}; {n - 1} more late write(s) for it") if n > 1 else v
        for v in found
        for n in [next(c for (me, t), c in late_writes.items() if t == v.taskrun and me in v.detail)]
    ]


def _identity(event: Obj) -> str:
    match = AGENT.search(str(event.get("userAgent", "")))
    return match.group(1) if match else ""


def _time(text: Any) -> float:
    try:
        return datetime.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0
