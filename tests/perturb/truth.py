"""Ground truth: every pod of the run's namespace, as the API server itself tells it (the admin's own
watch, never through the proxy), and what the harness did to them."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from localcluster.kube import ApiError, Client

Obj = dict[str, Any]
LABEL_TASKRUN = "spotrun.dev/taskrun"
LABEL_ATTEMPT = "spotrun.dev/attempt"
LABEL_RANK = "spotrun.dev/rank"
STOPPED_BY = "spotrun.dev/stopped-by"
TERMINAL = ("Succeeded", "Failed")


@dataclasses.dataclass
class PodLife:
    """One pod (by UID): when it came, when it stopped being live (terminal or gone), and how it ended."""

    uid: str
    name: str
    taskrun: str
    attempt: int
    rank: int
    created: float
    ended: float | None = None  # terminal phase or deleted, whichever first
    running: bool = False
    failed_on_its_own: bool = False  # Failed, with no deletion, no stop and no disruption before it
    deleted_by_harness: bool = False  # deleted by the harness while it ran
    last: Obj = dataclasses.field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.ended is None


class Truth:
    """Watches NAMESPACE's pods from the API server directly, in a thread of its own."""

    def __init__(self, kube: Client, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.pods: dict[str, PodLife] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="truth", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops watching (the thread ends with its watch, in at most 2 s; the run does not wait)."""
        self._stopping.set()

    def _run(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        version = ""
        while not self._stopping.is_set():
            try:
                if not version:
                    answer = self.kube.get(path)
                    for pod in answer["items"]:
                        self._see("ADDED", pod)
                    version = answer["metadata"]["resourceVersion"]
                for event in self.kube.watch(path, version, timeout_seconds=2):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = ""
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if event.get("type") != "BOOKMARK":
                        self._see(str(event["type"]), obj)
            except ApiError:
                version = ""
            except Exception:  # the API server is slow to answer: watch again
                time.sleep(0.2)

    def _see(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        if LABEL_TASKRUN not in labels:
            return
        now = time.time()
        with self._changed:
            life = self.pods.get(meta["uid"])
            if life is None:
                life = PodLife(
                    meta["uid"],
                    meta["name"],
                    labels[LABEL_TASKRUN],
                    int(labels.get(LABEL_ATTEMPT, 0)),
                    int(labels.get(LABEL_RANK, 0)),
                    now,
                )
                self.pods[meta["uid"]] = life
            phase = (pod.get("status") or {}).get("phase")
            if life.ended is None:
                if phase == "Running":
                    life.running = True
                if phase in TERMINAL or kind == "DELETED":
                    life.ended = now
                if phase == "Failed" and not _stopped_or_disrupted(pod) and not life.deleted_by_harness:
                    life.failed_on_its_own = True
            life.last = pod
            self._changed.notify_all()

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        """Until predicate(self) is true (it reads under the lock); returns what it returned."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (found := predicate(self)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
                self._changed.wait(min(left, 0.5))
            return found

    def running(self) -> list[PodLife]:
        with self._lock:
            return [p for p in self.pods.values() if p.live and p.running]

    def own_failures(self) -> list[PodLife]:
        with self._lock:
            return [p for p in self.pods.values() if p.failed_on_its_own]

    def deleted_by_harness(self, uid: str) -> None:
        with self._lock:
            life = self.pods.get(uid)
            if life is not None and life.live:
                life.deleted_by_harness = True


def _stopped_or_disrupted(pod: Obj) -> bool:
    meta = pod["metadata"]
    if meta.get("deletionTimestamp") or STOPPED_BY in (meta.get("annotations") or {}):
        return True
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions)
