"""Spotrun TaskRuns against batch/v1 Jobs at scale, side by side in one run on one cluster of kwok nodes.

A cluster of its own (`Cluster(DIR).up(kwok_nodes=NODES, default_nodes=False, audit=True)`: simulated
nodes only, two thirds spot, and the apiserver's audit log), the operator as two processes of its
ServiceAccount with leader election (replica-a leads, replica-b stands by), and five phases (burst
of TaskRuns, of Jobs; storm of TaskRuns, of Jobs; failover), each in a namespace of its own whose
objects, then itself, are deleted before the next:

1. Burst: N TaskRuns created at once (16 threads), each pod ending after --run-seconds (kwok's
   run-seconds annotation); then N Jobs with the same pod template and placement (spot nodeSelector
   and toleration, restartPolicy Never) and the nearest budget: backoffLimit 3 with podFailurePolicy
   Ignore on DisruptionTarget, so disruptions do not count, as a TaskRun's interruptions do not.
   Measured from the first create: the creates themselves, every pod seen, every TaskRun Succeeded
   (every Job Complete); and per object, where the time goes: object seen -> its pod seen, its pod
   seen Succeeded -> the object seen done.
2. Storm (TaskRuns, then Jobs): N running without end; 30% of the spot kwok nodes deleted at once.
   For every TaskRun (Job) whose pod was on a deleted node: from its node's deletion to its
   replacement pod, both as seen by watches here (local receive time of the first event); p50,
   p99, max (and node deleted -> old pod seen deleted). Per TaskRun, from the pod watch, the most
   pods alive at once (not Succeeded, Failed or deleted); and the counts: every TaskRun hit at
   attempt 2 with 1 interruption, the others at 1 and 0. Jobs are replaced once PodGC has deleted
   the pods of gone nodes (a 40 s quarantine, checked every 20 s). The deleted capacity is added
   back after each storm.
3. Cost: every replica's RSS (VmRSS) and CPU seconds (utime + stime) after the burst, after
   the TaskRun storm and at the end; the operator's requests counted by the apiserver (audit log, its
   ServiceAccount) during the TaskRun burst by verb and resource, and in a 60 s idle window with N
   TaskRuns running (before the storm): per TaskRun per minute apart from watches, and the Lease's
   requests per replica (user agent `spotrun-operator (IDENTITY)`) apart.
4. Failover: a second TaskRun storm on N fresh TaskRuns with the leader SIGKILLed as the nodes are
   deleted: until the standby holds the Lease (Lease watch), until its first pod create (audit
   log, by user agent), the replacements' latencies, the most live pods per TaskRun and the counts.

A table at the end: every number, the ratios TaskRun/Job (<= 1.0: Spotrun is no slower), the
machine, the operator's and controller-manager's client settings, and issue 10's targets (burst
and storm ratio <= 1.0, storm p99 <= 5 s, no request per idle TaskRun but watches, operator RSS
<= 256 MiB at 5,000 TaskRuns), each met or missed, with what explains a miss.

    python bench/scale.py [--taskruns 1000] [--nodes 200] [--run-seconds 10] [--skip-jobs]
    python bench/scale.py --state-dir DIR   # a cluster running there (started with kwok and audit)

Everything started is torn down at the end (operators stopped, cluster down, temporary directories
removed) unless --keep; a cluster found running in --state-dir is left running, without the
namespaces made here. About 20-30 minutes at 1,000 on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotrun_operator.__main__ import EVENTS_QPS  # noqa: E402
from spotrun_operator.config import Config  # noqa: E402

from localcluster import audit, kwok  # noqa: E402
from localcluster.cluster import Cluster  # noqa: E402
from localcluster.kube import ApiError, Client  # noqa: E402
from tests.integration.helpers import SPOT_TOLERATION  # noqa: E402
from tests.integration.operator_fixtures import Operator, install  # noqa: E402

Obj = dict[str, Any]
OPERATOR_USER = "system:serviceaccount:spotrun-system:spotrun-operator"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/spotrun-system/leases"
LEASE_NAME = "spotrun-operator"
TASKRUN_LABEL = "spotrun.dev/taskrun"
SPOT: Obj = {"nodeSelector": {"spotrun.dev/capacity": "spot"}, "tolerations": [SPOT_TOLERATION]}
THREADS = 16
STORM_FRACTION = 0.3
IDLE_SECONDS = 60
# Issue 10's targets.
TARGET_RATIO = 1.0
TARGET_STORM_P99 = 5.0
TARGET_RSS_MIB = 256
TARGET_RSS_AT = 5000
TARGET_TAKEOVER = 15.0  # tests/integration/test_leader_election.py: a standby takes over within 15 s


def note(message: str) -> None:
    print(f"scale {time.strftime('%H:%M:%S')}: {message}", file=sys.stderr, flush=True)


# ----- watches ---------------------------------------------------------------------------------


class Watch:
    """One watch of a collection (recovery_latency.PodWatch's idea, for any kind): when each object
    was first seen, first seen in each state that STATE names, and seen deleted (local monotonic
    receive times). Lists again when the watch expires (410), so nothing is missed for long: what
    changed in the gap is recorded at the list's time."""

    def __init__(
        self,
        cluster: Cluster,
        path: str,
        state: Callable[[Obj], str | None] = lambda _: None,
        **params: str,
    ) -> None:
        self.cluster, self.path, self.params = cluster, path, params
        self.state_of = state
        self.lock = threading.Lock()
        self.seen: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.state: dict[str, str | None] = {}
        self.reached: dict[str, dict[str, float]] = collections.defaultdict(dict)  # state -> name -> time
        self.ready = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True, name=f"watch {path}").start()
        if not self.ready.wait(60):
            raise SystemExit(f"scale: could not list {path}")

    def _run(self) -> None:
        kube = self.cluster.admin()
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list(kube)
                    self.ready.set()
                for event in kube.watch(self.path, version, timeout_seconds=30, **self.params):
                    now = time.monotonic()
                    if self._stop.is_set():
                        return
                    if event["type"] == "ERROR":  # 410 Gone: the version is too old
                        version = ""
                        break
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        with self.lock:
                            self._record(event["type"], obj, now)
            except (ApiError, urllib3.exceptions.HTTPError, OSError, ValueError) as err:
                if isinstance(err, ApiError) and err.status == 410:
                    version = ""
                time.sleep(0.5)

    def _list(self, kube: Client) -> str:
        listed = kube.get(self.path, **self.params)
        now = time.monotonic()
        with self.lock:
            names = set()
            for item in listed["items"]:
                names.add(item["metadata"]["name"])
                self._record("ADDED", item, now)
            for name in [n for n in self.seen if n not in names and n not in self.deleted]:
                self._record("DELETED", {"metadata": {"name": name}}, now)
        return str(listed["metadata"]["resourceVersion"])

    def _record(self, kind: str, obj: Obj, now: float) -> None:
        name = obj["metadata"]["name"]
        self.seen.setdefault(name, now)
        if kind == "DELETED":
            self.deleted.setdefault(name, now)
            return
        state = self.state_of(obj)
        self.state[name] = state
        if state:
            self.reached[state].setdefault(name, now)

    def count(self, state: str, names: Iterable[str]) -> int:
        with self.lock:
            return sum(self.state.get(n) == state for n in names)

    def last_reached(self, state: str, names: Iterable[str]) -> float:
        with self.lock:
            return max(self.reached[state][n] for n in names)

    def stop(self) -> None:
        self._stop.set()  # the thread ends with its watch (30 s at most); it is a daemon


def _phase(pod: Obj) -> str | None:
    phase = pod.get("status", {}).get("phase")
    return str(phase) if phase else None


class PodWatch(Watch):
    """The pods of one namespace: their owner (TaskRun or Job), node and phase, and per owner the
    pods alive now (not Succeeded, Failed or deleted) and the most ever alive at once."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.owner: dict[str, str] = {}
        self.node: dict[str, str] = {}
        self.phase: dict[str, str] = {}
        self.pods_of: dict[str, list[str]] = collections.defaultdict(list)
        self.live: dict[str, set[str]] = collections.defaultdict(set)
        self.max_live: dict[str, int] = collections.defaultdict(int)
        super().__init__(cluster, f"/api/v1/namespaces/{namespace}/pods", state=_phase)

    def _record(self, kind: str, obj: Obj, now: float) -> None:
        name = obj["metadata"]["name"]
        first = name not in self.seen
        super()._record(kind, obj, now)
        if kind != "DELETED":
            labels = obj["metadata"].get("labels") or {}
            owner = self.owner.setdefault(name, labels.get(TASKRUN_LABEL) or labels.get("job-name", ""))
            if first:
                self.pods_of[owner].append(name)
            self.node[name] = obj.get("spec", {}).get("nodeName") or self.node.get(name, "")
            self.phase[name] = obj.get("status", {}).get("phase", "")
        owner = self.owner.get(name, "")
        if kind == "DELETED" or self.phase.get(name) in ("Succeeded", "Failed"):
            self.live[owner].discard(name)
        elif name not in self.deleted:
            self.live[owner].add(name)
            self.max_live[owner] = max(self.max_live[owner], len(self.live[owner]))

    def owners_with_pods(self, owners: set[str]) -> int:
        with self.lock:
            return sum(1 for o in owners if self.pods_of.get(o))

    def first_pod(self, owner: str) -> float:
        with self.lock:
            return min(self.seen[p] for p in self.pods_of[owner])

    def running_one(self, owners: set[str]) -> int:
        """How many of OWNERS have exactly one live pod, and it Running."""
        with self.lock:
            return sum(
                1 for o in owners if len(self.live[o]) == 1 and self.phase[next(iter(self.live[o]))] == "Running"
            )


def until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> bool:
    """Polls CHECK until true; False (and a note) after TIMEOUT seconds: a bench reports what it got."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    note(f"gave up after {timeout:.0f}s waiting for {what}")
    return False


# ----- objects ---------------------------------------------------------------------------------


def pod_template(run_seconds: float | None) -> Obj:
    """The same pod for both kinds: kwok nodes only, ending after RUN_SECONDS (None: when deleted)."""
    annotations = {} if run_seconds is None else {kwok.RUN_SECONDS: str(run_seconds)}
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "nodeSelector": {kwok.NODE_LABEL: "true"},
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "task", "image": "busybox", "command": ["true"]}],
        },
    }


def taskrun(name: str, run_seconds: float | None) -> Obj:
    # Spot placement (nodeSelector and toleration) comes from the operator's generic profile.
    return {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {"retries": 3, "maxInterruptions": 20, "template": pod_template(run_seconds)},
    }


def job(name: str, run_seconds: float | None) -> Obj:
    template = pod_template(run_seconds)
    template["spec"] |= {
        "restartPolicy": "Never",
        "nodeSelector": {**template["spec"]["nodeSelector"], **SPOT["nodeSelector"]},
        "tolerations": SPOT["tolerations"],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 3,
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
            "template": template,
        },
    }


@dataclass(frozen=True)
class Kind:
    """TaskRun or Job: where they are created, how one is built, what their watch calls done."""

    name: str
    collection: str  # under /apis/.../namespaces/NS/
    build: Callable[[str, float | None], Obj]
    state: Callable[[Obj], str | None]
    done: str


def _job_state(obj: Obj) -> str | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


TASKRUNS = Kind(
    "TaskRun", "apis/spotrun.dev/v1alpha1", taskrun, lambda o: (o.get("status") or {}).get("phase"), "Succeeded"
)
JOBS = Kind("Job", "apis/batch/v1", job, _job_state, "Complete")


def collection(kind: Kind, namespace: str) -> str:
    return f"/{kind.collection}/namespaces/{namespace}/{kind.name.lower()}s"


def create(kube: Client, path: str, body: Obj) -> None:
    """Creates BODY, retried while the apiserver is overloaded (429, 5xx, timeouts)."""
    for attempt in range(8):
        try:
            kube.create(path, body)
            return
        except ApiError as err:
            if err.status == 409 and attempt:  # an earlier try went through before it timed out
                return
            if err.status not in (429, 500, 503, 504):
                raise
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(min(0.25 * 2**attempt, 5))
    raise SystemExit(f"scale: could not create {path}/{body['metadata']['name']}")


def create_all(cluster: Cluster, path: str, bodies: list[Obj]) -> float:
    """Creates BODIES from THREADS threads, a client each; the seconds it took."""
    local = threading.local()

    def one(body: Obj) -> None:
        if not hasattr(local, "kube"):
            local.kube = cluster.admin()
        create(local.kube, path, body)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, bodies))
    return time.monotonic() - started


def make_namespace(kube: Client, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def delete_all(cluster: Cluster, path: str) -> None:
    """Deletes every object of the collection at PATH, one request each from THREADS threads: one
    DELETE of the collection stops where the apiserver's 60 s request timeout finds it (hundreds of
    a thousand TaskRuns were left, on a loaded machine)."""
    local = threading.local()

    def one(name: str) -> None:
        if not hasattr(local, "kube"):
            local.kube = cluster.admin()
        for attempt in range(8):
            try:
                local.kube.request("DELETE", f"{path}/{name}", {"propagationPolicy": "Background"})
                return
            except ApiError as err:
                if err.status == 404:
                    return
                if err.status not in (429, 500, 503, 504):
                    raise
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(min(0.25 * 2**attempt, 5))

    names = [item["metadata"]["name"] for item in cluster.admin().get(path)["items"]]
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, names))


def delete_namespace(cluster: Cluster, namespace: str, kind: Kind, timeout: float) -> None:
    """Deletes the TaskRuns or Jobs of NAMESPACE, then, once their pods are gone, NAMESPACE; waits
    until it is gone, so that the next phase starts on a quiet cluster.

    Not the namespace at once: Kubernetes 1.36 deletes a namespace's pods first and everything else
    only once they are gone (OrderedNamespaceDeletion), and the operator, whose pass for an
    interrupted pod then fails to create the next one (403 NamespaceTerminating), skips the TaskRun
    without releasing the pod's accounting finalizer: the namespace stays Terminating for ever."""
    started = time.monotonic()
    kube = cluster.admin()
    delete_all(cluster, collection(kind, namespace))

    def empty(path: str) -> bool:
        return not kube.get(path, limit=1)["items"]

    until(
        lambda: empty(collection(kind, namespace)) and empty(f"/api/v1/namespaces/{namespace}/pods"),
        timeout,
        f"the {kind.name}s of {namespace} and their pods to be deleted",
        interval=2,
    )
    with contextlib.suppress(ApiError):
        kube.delete(f"/api/v1/namespaces/{namespace}")

    def gone() -> bool:
        try:
            kube.get(f"/api/v1/namespaces/{namespace}")
        except ApiError as err:
            return err.status == 404
        return False

    if until(gone, timeout, f"namespace {namespace} to be deleted", interval=2):
        note(f"deleted namespace {namespace} in {time.monotonic() - started:.0f}s")


# ----- the operator's cost ---------------------------------------------------------------------


@dataclass
class Sample:
    when: str
    replica: str
    rss_mib: float
    cpu_seconds: float


def process_cost(pid: int) -> tuple[float, float]:
    """VmRSS in MiB and utime + stime in seconds of process PID."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return rss_kib / 1024, ticks / os.sysconf("SC_CLK_TCK")


CLUSTER_PROCESSES = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")


def cpu_by_process(cluster: Cluster, replicas: list[Operator]) -> dict[str, float]:
    """CPU seconds so far of the cluster's busy processes and of each live replica, by name."""
    pids = {name: int((cluster.pids / f"{name}.pid").read_text()) for name in CLUSTER_PROCESSES}
    pids.update({r.env["SPOTRUN_POD_NAME"]: r.proc.pid for r in replicas if r.proc and r.proc.poll() is None})
    seconds = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            seconds[name] = process_cost(pid)[1]
    return seconds


def metric(replica: Operator, name: str) -> float | None:
    """The sum of metric NAME's samples on the replica's metrics endpoint (None: unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(rf"{name}(\{{| )", line)]
    return sum(values) if values else None


class DepthSampler:
    """spotrun_workqueue_depth of the leader every second: its peak and its samples."""

    def __init__(self, replica: Operator) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        started = time.monotonic()

        def run() -> None:
            while not self._stop.wait(1):
                depth = metric(replica, "spotrun_workqueue_depth")
                if depth is not None:
                    self.samples.append((time.monotonic() - started, depth))

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> float:
        self._stop.set()
        return max((d for _, d in self.samples), default=0.0)


def quiet(replica: Operator, timeout: float = 600) -> None:
    """Until the leader's work queue and its Events waiting to be posted (on a budget of their own,
    they outlast a burst by minutes) have been empty for 3 s in a row."""
    zeros = [0]

    def settled() -> bool:
        idle = metric(replica, "spotrun_workqueue_depth") == 0 and metric(replica, "spotrun_events_waiting") in (
            0,
            None,
        )
        zeros[0] = zeros[0] + 1 if idle else 0
        return zeros[0] >= 4

    until(settled, timeout, "the operator's work queue and Events to empty", interval=1)


@dataclass(frozen=True)
class Request:
    received: float  # epoch seconds
    replica: str  # SPOTRUN_POD_NAME, from the user agent
    verb: str
    resource: str


def operator_requests(log: Path, since: float, until_: float) -> list[Request]:
    """The operator's requests in the audit log, received in [SINCE, UNTIL_), each with its replica:
    audit.requests counts by verb and resource, this tells the replicas apart by user agent."""
    found, ids = [], set()
    needle = json.dumps(OPERATOR_USER)
    with open(log, encoding="utf-8") as lines:
        for line in lines:
            if needle not in line:
                continue
            try:
                event = json.loads(line)
                received = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            except (ValueError, KeyError):
                continue
            if event.get("auditID") in ids or not since <= received < until_:
                continue
            ids.add(event.get("auditID"))
            agent = re.search(r"\(([^()]+)_[0-9a-f]{6}\)", event.get("userAgent", ""))
            replica = agent.group(1) if agent else event.get("userAgent", "?")
            found.append(Request(received, replica, event.get("verb", ""), audit.resource_of(event)))
    return found


# ----- phases ----------------------------------------------------------------------------------


@dataclass
class Burst:
    n: int
    create_seconds: float = math.nan
    pods_seconds: float = math.nan
    done_seconds: float = math.nan
    pods_seen: int = 0
    done: int = 0
    failed: int = 0
    window: tuple[float, float] = (0.0, 0.0)  # epoch seconds, for the audit log
    depth_peak: float = math.nan
    pod_lags: list[float] = field(default_factory=list)  # object seen -> its pod seen
    finish_lags: list[float] = field(default_factory=list)  # its pod seen Succeeded -> object seen done


def burst(cluster: Cluster, kind: Kind, namespace: str, n: int, run_seconds: float, timeout: float) -> Burst:
    names = [f"{kind.name.lower()}-{i:05d}" for i in range(n)]
    wanted = set(names)
    pods = PodWatch(cluster, namespace)
    objects = Watch(cluster, collection(kind, namespace), state=kind.state)
    result = Burst(n)
    try:
        wall, started = time.time(), time.monotonic()
        result.create_seconds = create_all(
            cluster, collection(kind, namespace), [kind.build(name, run_seconds) for name in names]
        )
        note(f"created {n} {kind.name}s in {result.create_seconds:.1f}s")
        if until(lambda: pods.owners_with_pods(wanted) == n, timeout, f"a pod of each of {n} {kind.name}s"):
            result.pods_seconds = max(pods.first_pod(o) for o in names) - started
        result.pods_seen = pods.owners_with_pods(wanted)
        note(f"{result.pods_seen} {kind.name}s have a pod")
        if (
            until(
                lambda: objects.count(kind.done, wanted) + objects.count("Failed", wanted) == n,
                timeout,
                f"{n} {kind.name}s to be {kind.done}",
                interval=1,
            )
            and objects.count(kind.done, wanted) == n
        ):
            result.done_seconds = objects.last_reached(kind.done, wanted) - started
        result.done, result.failed = objects.count(kind.done, wanted), objects.count("Failed", wanted)
        with pods.lock, objects.lock:
            for owner in names:
                first = min(pods.pods_of[owner], key=pods.seen.__getitem__, default=None)
                if first is None or owner not in objects.seen:
                    continue
                result.pod_lags.append(pods.seen[first] - objects.seen[owner])
                ended, done = pods.reached["Succeeded"].get(first), objects.reached[kind.done].get(owner)
                if ended is not None and done is not None:
                    result.finish_lags.append(done - ended)
        note(f"{result.done} {kind.name}s {kind.done}, {result.failed} Failed")
        result.window = (wall, time.time())
    finally:
        pods.stop()
        objects.stop()
    return result


@dataclass
class Storm:
    nodes_deleted: int = 0
    spot_nodes: int = 0
    delete_seconds: float = math.nan
    hit: int = 0
    latencies: list[float] = field(default_factory=list)  # per pod lost: its node deleted -> its successor seen
    twice: int = 0  # owners whose replacement landed on a node deleted a moment later
    gone_latencies: list[float] = field(default_factory=list)  # node deleted -> the old pod seen deleted
    missing: int = 0
    max_live: int = 0
    over_one: list[str] = field(default_factory=list)
    counts_exact: bool | None = None
    count_problems: list[str] = field(default_factory=list)
    takeover_seconds: float = math.nan  # failover only
    first_create_seconds: float = math.nan
    first_create_local_seconds: float = math.nan
    window: tuple[float, float] = (0.0, 0.0)  # epoch seconds: the deletion -> the last replacement seen
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the window, by process
    requests: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)  # in the window


def start_running(cluster: Cluster, kind: Kind, namespace: str, n: int, timeout: float) -> tuple[PodWatch, Watch]:
    """N objects of KIND whose pods run until deleted, each with one Running pod; the watches on them."""
    names = [f"{kind.name.lower()}-{i:05d}" for i in range(n)]
    pods = PodWatch(cluster, namespace)
    objects = Watch(cluster, collection(kind, namespace), state=kind.state)
    took = create_all(cluster, collection(kind, namespace), [kind.build(name, None) for name in names])
    note(f"created {n} {kind.name}s to run without end in {took:.1f}s")
    wanted = set(names)

    def running() -> bool:
        return pods.running_one(wanted) == n and (kind is not TASKRUNS or objects.count("Running", wanted) == n)

    until(running, timeout, f"{n} {kind.name}s to run", interval=1)
    note(f"{pods.running_one(wanted)} {kind.name}s run one pod each")
    return pods, objects


def delete_at_once(cluster: Cluster, names: list[str]) -> None:
    """cluster.delete_kwok_nodes deletes one node after another (a GET and a DELETE each, 11 s for 40
    on a loaded machine): from 8 threads, so that a storm's nodes go together, as in a cloud's reclaim."""
    chunks = [names[i::8] for i in range(8) if names[i::8]]
    with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(cluster.delete_kwok_nodes, chunks))


def storm(
    cluster: Cluster,
    kind: Kind,
    namespace: str,
    pods: PodWatch,
    nodes: Watch,
    timeout: float,
    rng: random.Random,
    at_deletion: Callable[[], None] | None = None,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> Storm:
    """Deletes STORM_FRACTION of the spot kwok nodes at once (AT_DELETION first: the leader's SIGKILL);
        until every pod that was on them has its successor; then the capacity comes back. A replacement
        may land on a node deleted a moment later, and be replaced in its turn: each loss counts. CPU: the
    CPU seconds by process (`cpu()` before and after), where the window's time went."""
    result = Storm()
    spot = sorted(cluster.kwok_nodes("spot"))
    gone = set(rng.sample(spot, round(len(spot) * STORM_FRACTION)))
    result.spot_nodes, result.nodes_deleted = len(spot), len(gone)
    with pods.lock:
        owners = {o for o, live in pods.live.items() if o and live}
    cpu_before = cpu() if cpu else {}
    wall, started = time.time(), time.monotonic()
    if at_deletion is not None:
        at_deletion()
    delete_at_once(cluster, sorted(gone))
    result.delete_seconds = time.monotonic() - started

    def losses() -> dict[str, list[tuple[str, str | None]]]:
        """Per owner, each pod it lost on a deleted node and its successor (None: not yet)."""
        lost: dict[str, list[tuple[str, str | None]]] = {}
        with pods.lock:
            for owner in owners:
                mine = pods.pods_of[owner]
                for i, pod in enumerate(mine):
                    if pods.node.get(pod) in gone:
                        lost.setdefault(owner, []).append((pod, mine[i + 1] if i + 1 < len(mine) else None))
        return lost

    first = losses()
    result.hit = len(first)
    note(
        f"deleted {len(gone)} of {len(spot)} spot nodes in {result.delete_seconds:.1f}s: {result.hit} {kind.name}s hit"
    )
    until(
        lambda: all(new is not None for pairs in losses().values() for _, new in pairs),
        timeout,
        f"replacements of the pods of {result.hit} {kind.name}s",
    )
    cpu_after = cpu() if cpu else {}
    result.cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before}
    lost = losses()
    with pods.lock, nodes.lock:
        for pairs in lost.values():
            for pod, new in pairs:
                if new is None:
                    result.missing += 1
                    continue
                # From the node's deletion, or the pod's creation if it was bound to a node going away.
                since = max(nodes.deleted.get(pods.node[pod], started), pods.seen[pod])
                result.latencies.append(pods.seen[new] - since)
                if pod in pods.deleted:
                    result.gone_latencies.append(pods.deleted[pod] - since)
    result.twice = sum(len(pairs) > 1 for pairs in lost.values())
    result.window = (wall, time.time())
    note(f"{len(result.latencies)} pods of {len(lost)} {kind.name}s replaced ({result.twice} {kind.name}s twice)")
    if kind is TASKRUNS:
        check_counts(cluster, namespace, {o: len(p) for o, p in lost.items()}, owners, result)
    with pods.lock:
        result.max_live = max(pods.max_live.values(), default=0)
        result.over_one = sorted(o for o, m in pods.max_live.items() if m > 1)
    if kind is JOBS:
        jobs = cluster.admin().get(collection(JOBS, namespace))["items"]
        failed = [j["metadata"]["name"] for j in jobs if (j.get("status") or {}).get("failed")]
        result.counts_exact = not failed
        result.count_problems = [f"{len(failed)} Jobs count a failed pod: {failed[:5]}"] if failed else []
    cluster.add_kwok_nodes(len(gone), "spot")  # the autoscaler brings the capacity back
    return result


def check_counts(cluster: Cluster, namespace: str, hits: dict[str, int], everyone: set[str], result: Storm) -> None:
    """Every TaskRun that lost K pods at attempt K + 1 with K interruptions (1 and 0 for the others),
    Running, read from the API."""
    kube = cluster.admin()
    path = collection(TASKRUNS, namespace)

    def statuses() -> dict[str, Obj]:
        return {t["metadata"]["name"]: t.get("status") or {} for t in kube.get(path)["items"]}

    def wrong(now: dict[str, Obj]) -> list[str]:
        problems = []
        for name in sorted(everyone):
            st = now.get(name, {})
            expected = (hits.get(name, 0) + 1, hits.get(name, 0))
            got = (st.get("attempt"), st.get("interruptions"))
            if got != expected or st.get("phase") != "Running":
                ready: Obj = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
                problems.append(
                    f"{name} (lost {hits.get(name, 0)} pods): attempt/interruptions {got}, phase "
                    f"{st.get('phase')} ({ready.get('reason')}: {ready.get('message')}); expected {expected}"
                )
        return problems

    last: list[list[str]] = [[]]

    def exact() -> bool:
        last[0] = wrong(statuses())
        return not last[0]

    result.counts_exact = until(exact, 120, "every TaskRun's counts", interval=3)
    result.count_problems = last[0]
    if last[0]:
        note(f"{len(last[0])} TaskRuns with other counts: " + "; ".join(last[0][:10]))


# ----- report ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least Q of the values at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def secs(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"


def ratio(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) or b <= 0 else a / b


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    memory = f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "? GiB"
    return f"{os.cpu_count()} CPUs ({model.group(1).strip() if model else 'unknown model'}), {memory} memory"


def controller_manager_settings(cluster: Cluster) -> str:
    """Its client flags as it runs (its command line), else its defaults (its --help)."""
    pid = int((cluster.pids / "kube-controller-manager.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    wanted = ("--kube-api-qps", "--kube-api-burst", "--concurrent-job-syncs")
    set_flags = [a for a in argv if a.split("=", 1)[0] in wanted]
    helptext = subprocess.run([argv[0], "--help"], capture_output=True, text=True, check=False).stdout
    defaults = []
    for flag in wanted:
        if not any(a.startswith(flag + "=") for a in set_flags):
            found = re.search(rf"{flag} \S+\s.*\(default ([^)]+)\)", helptext)
            defaults.append(f"{flag}={found.group(1) if found else '?'}")
    said = f"set: {' '.join(set_flags)}; " if set_flags else ""
    return f"{said}not set, so kube-controller-manager's defaults apply: {' '.join(defaults)}"


def operator_version() -> str:
    """The commit the operator runs from, and whether operator/ differs from it."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "status", "--porcelain", "operator"], capture_output=True, text=True, check=False)
    return head.stdout.strip()[:100] + (" (with uncommitted changes in operator/)" if dirty.stdout.strip() else "")


def operator_log_problems(replicas: list[Operator]) -> list[str]:
    lines = []
    for replica in replicas:
        if not replica.log.exists():
            continue
        text = replica.log.read_text(errors="replace").splitlines()
        bad = [line for line in text if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)]
        if bad:
            lines.append(f"{replica.log.name}: {len(bad)} warning/error lines, the first:")
            lines += [f"    {line[:300]}" for line in bad[:12]]
    return lines


@dataclass
class Results:
    args: argparse.Namespace
    settings: list[str] = field(default_factory=list)
    bursts: dict[str, Burst] = field(default_factory=dict)
    storms: dict[str, Storm] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    burst_requests: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    burst_until_done: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    config: Config = field(default_factory=Config)
    burst_by_replica: collections.Counter[str] = field(default_factory=collections.Counter)
    idle: list[Request] = field(default_factory=list)
    idle_running: int = 0
    idle_depth: float | None = None
    durations: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def report(r: Results) -> None:
    n = r.args.taskruns
    rows: list[tuple[str, ...]] = []
    verdicts: list[tuple[str, bool | None]] = []

    def row(what: str, a: str, b: str = "", rat: float = math.nan, target: str = "", met: bool | None = None) -> None:
        if target:
            verdicts.append((f"{what}: {target}", met))
        mark = ("yes" if met else "NO" if met is False else "-") if target else ""
        rows.append((what, a, b, "" if math.isnan(rat) else f"{rat:.2f}", target, mark))

    def ratio_met(rat: float) -> bool | None:
        return None if math.isnan(rat) else rat <= TARGET_RATIO

    tr, jb = r.bursts.get("TaskRun"), r.bursts.get("Job")
    if tr is not None:
        row(
            "burst: creating the N objects (16 threads)", secs(tr.create_seconds), secs(jb.create_seconds) if jb else ""
        )
        for what, a, b in (
            ("burst: first create -> all pods exist", tr.pods_seconds, jb.pods_seconds if jb else math.nan),
            ("burst: first create -> all Succeeded / Complete", tr.done_seconds, jb.done_seconds if jb else math.nan),
        ):
            rat = ratio(a, b)
            row(what, secs(a), secs(b), rat, f"ratio <= {TARGET_RATIO}", ratio_met(rat))
        row(
            "burst: with a pod / done / Failed",
            f"{tr.pods_seen}/{tr.done}/{tr.failed}",
            f"{jb.pods_seen}/{jb.done}/{jb.failed}" if jb else "",
        )
        for what, attr in (
            ("burst: object seen -> its pod seen", "pod_lags"),
            ("burst: pod Succeeded -> object done", "finish_lags"),
        ):
            a_lags, b_lags = getattr(tr, attr), getattr(jb, attr) if jb else []
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                a, b = percentile(a_lags, q), percentile(b_lags, q)
                row(f"{what}, {name}", secs(a), secs(b), ratio(a, b))
        row("burst: leader's work queue depth, peak", f"{tr.depth_peak:.0f}")
    if r.burst_requests:
        total = r.burst_requests.total()
        writes = sum(c for (v, _), c in r.burst_requests.items() if v not in ("get", "list", "watch"))
        row("burst: operator requests, all / writes / per TaskRun", f"{total} / {writes} / {total / n:.1f}")
    for key in ("storm", "failover"):
        s, sj = r.storms.get(f"{key}-TaskRun"), r.storms.get(f"{key}-Job")
        if s is None:
            continue
        row(
            f"{key}: spot nodes deleted / owners hit",
            f"{s.nodes_deleted} of {s.spot_nodes} / {s.hit}",
            f"{sj.nodes_deleted} of {sj.spot_nodes} / {sj.hit}" if sj else "",
        )
        for q, name in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
            a = percentile(s.latencies, q)
            b = percentile(sj.latencies, q) if sj else math.nan
            rat = ratio(a, b)
            what = f"{key}: node deleted -> replacement pod seen, {name}"
            if key == "storm" and name == "p50":
                row(what, secs(a), secs(b), rat, f"ratio <= {TARGET_RATIO}", ratio_met(rat))
            elif key == "storm" and name == "p99":
                within = not math.isnan(a) and a <= TARGET_STORM_P99 and s.missing == 0
                row(what, secs(a), secs(b), rat, f"<= {TARGET_STORM_P99:.0f} s", within)
                row(f"{key}: p99 ratio", "", "", rat, f"ratio <= {TARGET_RATIO}", ratio_met(rat))
            else:
                row(what, secs(a), secs(b), rat)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a = percentile(s.gone_latencies, q)
            b = percentile(sj.gone_latencies, q) if sj else math.nan
            row(f"{key}: node deleted -> old pod gone, {name}", secs(a), secs(b), ratio(a, b))
        row(f"{key}: pods lost, not replaced", str(s.missing), str(sj.missing) if sj else "")
        row(f"{key}: owners that lost two pods", str(s.twice), str(sj.twice) if sj else "")
        row(
            f"{key}: most live pods of one owner at once",
            str(s.max_live),
            str(sj.max_live) if sj else "",
            target="1",
            met=s.max_live == 1,
        )
        exact = {True: "yes", False: "no", None: "-"}
        row(
            f"{key}: counts exact (K pods lost: attempt K+1, K interruptions; Jobs: failed 0)",
            exact[s.counts_exact],
            exact[sj.counts_exact] if sj else "",
            target="exact",
            met=s.counts_exact,
        )
        if key == "failover":
            row(
                "failover: SIGKILL -> standby holds the Lease",
                secs(s.takeover_seconds),
                target=f"<= {TARGET_TAKEOVER:.0f} s",
                met=None if math.isnan(s.takeover_seconds) else s.takeover_seconds <= TARGET_TAKEOVER,
            )
            row("failover: SIGKILL -> standby's first pod create (audit)", secs(s.first_create_seconds))
            row("failover: SIGKILL -> first new pod seen (watch)", secs(s.first_create_local_seconds))
    if r.idle_running:
        minutes = IDLE_SECONDS / 60
        other = [q for q in r.idle if q.verb != "watch" and q.resource != "leases"]
        leases = collections.Counter(q.replica for q in r.idle if q.resource == "leases")
        per = len(other) / r.idle_running / minutes
        row(
            f"idle {IDLE_SECONDS} s: requests per TaskRun per minute (not watch, not Lease)",
            f"{per:.4f}",
            target="0",
            met=per == 0,
        )
        row(
            "idle: Lease requests per minute, by replica",
            ", ".join(f"{k} {v / minutes:.0f}" for k, v in sorted(leases.items())) or "0",
        )
        row("idle: watches that ended in the window", str(sum(q.verb == "watch" for q in r.idle)))
    for sample in r.samples:
        leading = sample.replica.endswith("(leader)")
        row(
            f"operator RSS {sample.when}: {sample.replica}",
            f"{sample.rss_mib:.0f} MiB",
            target=f"<= {TARGET_RSS_MIB} MiB at {TARGET_RSS_AT}" if leading else "",
            met=sample.rss_mib <= TARGET_RSS_MIB,
        )
        row(f"operator CPU {sample.when}: {sample.replica}", f"{sample.cpu_seconds:.1f} s")

    print()
    print(
        f"Spotrun TaskRuns against batch/v1 Jobs at scale: N = {n}, {r.args.nodes} kwok nodes, "
        f"burst pods run {r.args.run_seconds:g} s"
    )
    for line in r.settings:
        print(line)
    print()
    header = ("measure", "TaskRun", "Job", "TR/Job", "target", "met")
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    for cells in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    print()
    if r.burst_requests:
        print("operator requests during the TaskRun burst (audit log), by verb and resource:")
        for (verb, resource), count in r.burst_requests.most_common():
            print(f"  {count:8}  {verb:8} {resource}")
        print("  by replica: " + ", ".join(f"{k} {v}" for k, v in sorted(r.burst_by_replica.items())))
    if r.idle_running:
        idle = collections.Counter((q.verb, q.resource) for q in r.idle if q.verb != "watch" and q.resource != "leases")
        listed = ", ".join(f"{v} {res} {c}" for (v, res), c in idle.most_common()) or "none"
        print(
            f"operator requests in the idle window but watches and the Lease: {listed}; "
            f"work queue depth after it {r.idle_depth}"
        )
    if r.metrics:
        print("leader's metrics at the end: " + ", ".join(f"{k} {v}" for k, v in r.metrics.items()))
    print("phases took: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.durations.items()))
    for key, s in r.storms.items():
        if s.cpu:
            # Where the window's time went: a sum near the cores' capacity means the machine, not a
            # request budget, bounded the replacements.
            capacity = (s.window[1] - s.window[0]) * (os.cpu_count() or 1)
            busy = ", ".join(f"{k} {v:.1f}" for k, v in sorted(s.cpu.items(), key=lambda kv: -kv[1]))
            print(
                f"{key}: CPU seconds from the deletion to the last replacement, by process: {busy}; "
                f"{sum(s.cpu.values()):.1f} of the {capacity:.0f} the {os.cpu_count()} cores had"
            )
    print()
    print("issue 10's targets:")
    for what, met in verdicts:
        print(f"  {({True: 'met', False: 'MISSED', None: 'not measured'})[met]:12}  {what}")
    if n < TARGET_RSS_AT:
        print(f"  (the RSS target is stated for {TARGET_RSS_AT} TaskRuns; this run had {n})")
    for key, s in r.storms.items():
        if s.count_problems:
            print(
                f"{key}: {len(s.count_problems)} TaskRuns/Jobs with other counts, the first: "
                + "; ".join(s.count_problems[:5])
            )
        if s.over_one:
            print(f"{key}: owners with two live pods at once: {s.over_one[:10]}")
    if r.problems:
        print("what the operator said, and what bears on a miss:")
        for line in r.problems:
            print(f"  {line}")


# ----- main ------------------------------------------------------------------------------------


def lease_holder(kube: Client) -> str:
    try:
        return str(kube.get(f"{LEASES}/{LEASE_NAME}")["spec"].get("holderIdentity") or "")
    except ApiError:
        return ""


class Bench:
    """One run: the cluster, the two operator replicas, the long-lived watches (kwok nodes, the Lease)
    and the results; one method per phase, each in a namespace of its own deleted after it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.n = args, args.taskruns
        self.results = Results(args)
        self.rng = random.Random(args.seed)
        self.timeout = 600 + self.n * 0.5  # for each wait: generous, a bench reports what it got
        self.made_dir = args.state_dir is None
        self.state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="spotrun-scale-", dir="/tmp"))
        self.cluster = Cluster(self.state_dir)
        self.reused = self.cluster.running()
        self.workdir = Path(tempfile.mkdtemp(prefix="spotrun-scale-operator-", dir="/tmp"))
        self.replicas: list[Operator] = []
        self.watches: list[Watch] = []
        self.namespaces: dict[str, Kind] = {}

    @property
    def kinds(self) -> list[Kind]:
        return [TASKRUNS] if self.args.skip_jobs else [TASKRUNS, JOBS]

    def setup(self) -> None:
        started = time.monotonic()
        self.cluster.up(kwok_nodes=self.args.nodes, default_nodes=False, audit=True)
        self.results.durations["cluster up"] = time.monotonic() - started
        self.kube = self.cluster.admin()
        self.log = self.cluster.logs / "audit.log"
        first = install(self.cluster, self.kube, self.workdir)
        self.replicas = [
            Operator(
                self.cluster,
                first.kubeconfig,
                self.workdir / f"replica-{x}.log",
                SPOTRUN_LEADER_ELECTION="true",
                SPOTRUN_POD_NAME=f"replica-{x}",
            )
            for x in "ab"
        ]
        # What the replicas will read: this environment is theirs too.
        config = Config.from_env({**os.environ, **self.replicas[0].env})
        self.results.config = config
        knobs = (config.api_qps, config.api_burst, config.workers)
        defaults = (Config.api_qps, Config.api_burst, Config.workers)
        self.results.settings = [
            f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}",
            f"operator: 2 replicas with leader election; SPOTRUN_API_QPS={knobs[0]} SPOTRUN_API_BURST={knobs[1]} "
            f"SPOTRUN_WORKERS={knobs[2]}" + (" (the defaults)" if knobs == defaults else ""),
            f"operator code: {operator_version()}",
            f"controller-manager: {controller_manager_settings(self.cluster)}",
            f"kwok nodes: {len(self.cluster.kwok_nodes('spot'))} spot, "
            f"{len(self.cluster.kwok_nodes('on-demand'))} on-demand; storms delete {STORM_FRACTION:.0%} "
            f"of the spot nodes (seed {self.args.seed})",
        ]
        for line in self.results.settings:
            note(line)
        a, b = self.replicas
        a.start()
        if not until(lambda: lease_holder(self.kube).startswith("replica-a_"), 60, "replica-a to lead"):
            raise SystemExit(f"scale: replica-a never took the Lease; see {a.log}")
        b.start()
        until(lambda: metric(b, "spotrun_leader") == 0.0, 60, "replica-b to stand by")
        self.nodes = Watch(self.cluster, "/api/v1/nodes", labelSelector=f"{kwok.NODE_LABEL}=true")
        self.lease = Watch(
            self.cluster,
            LEASES,
            state=lambda o: o["spec"].get("holderIdentity"),
            fieldSelector=f"metadata.name={LEASE_NAME}",
        )
        self.watches += [self.nodes, self.lease]

    def leader(self) -> Operator:
        holder = lease_holder(self.kube)
        return next(r for r in self.replicas if holder.startswith(r.env["SPOTRUN_POD_NAME"] + "_"))

    def sample(self, when: str) -> None:
        """RSS and CPU of every live replica."""
        holder = lease_holder(self.kube)
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                name = replica.env["SPOTRUN_POD_NAME"]
                role = "leader" if holder.startswith(name + "_") else "standby"
                rss, cpu = process_cost(replica.proc.pid)
                self.results.samples.append(Sample(when, f"{name} ({role})", rss, cpu))

    def cpu_now(self) -> dict[str, float]:
        return cpu_by_process(self.cluster, self.replicas)

    def namespace(self, prefix: str, kind: Kind) -> str:
        name = make_namespace(self.kube, prefix)
        self.namespaces[name] = kind
        return name

    def done_with(self, namespace: str) -> None:
        delete_namespace(self.cluster, namespace, self.namespaces.pop(namespace), self.timeout)

    def bursts(self) -> None:
        for kind in self.kinds:
            started = time.monotonic()
            namespace = self.namespace(f"burst-{kind.name.lower()}", kind)
            sampler = DepthSampler(self.leader())
            result = burst(self.cluster, kind, namespace, self.n, self.args.run_seconds, self.timeout)
            result.depth_peak = sampler.stop()
            self.results.bursts[kind.name] = result
            if kind is TASKRUNS:
                quiet(self.leader())
                time.sleep(2)  # the last responses' audit lines
                since, end = result.window[0], time.time()
                self.results.burst_requests = audit.requests(self.log, OPERATOR_USER, since, end)
                self.results.burst_until_done = audit.requests(self.log, OPERATOR_USER, *result.window)
                by = collections.Counter(q.replica for q in operator_requests(self.log, since, end))
                self.results.burst_by_replica = by
                self.sample("after the burst")
            self.results.durations[f"burst {kind.name}s"] = time.monotonic() - started
            self.done_with(namespace)

    def idle(self, pods: PodWatch, objects: Watch) -> None:
        """IDLE_SECONDS with N TaskRuns running and nothing happening: what the operator asks for."""
        quiet(self.leader())
        self.results.idle_running = pods.running_one(set(objects.seen))
        note(f"idle for {IDLE_SECONDS}s with {self.results.idle_running} TaskRuns running")
        since = time.time()
        time.sleep(IDLE_SECONDS)  # the window measured: nothing is to happen in it
        end = time.time()
        self.results.idle_depth = metric(self.leader(), "spotrun_workqueue_depth")
        time.sleep(2)
        self.results.idle = operator_requests(self.log, since, end)

    def storms(self) -> None:
        for kind in self.kinds:
            started = time.monotonic()
            namespace = self.namespace(f"storm-{kind.name.lower()}", kind)
            pods, objects = start_running(self.cluster, kind, namespace, self.n, self.timeout)
            try:
                if kind is TASKRUNS:
                    self.idle(pods, objects)
                result = storm(
                    self.cluster, kind, namespace, pods, self.nodes, self.timeout, self.rng, cpu=self.cpu_now
                )
                if kind is TASKRUNS:
                    result.requests = audit.requests(self.log, OPERATOR_USER, *result.window)
                self.results.storms[f"storm-{kind.name}"] = result
            finally:
                pods.stop()
                objects.stop()
            self.results.durations[f"storm {kind.name}s"] = time.monotonic() - started
            if kind is TASKRUNS:
                quiet(self.leader())
                self.sample("after the storm")
            self.done_with(namespace)

    def failover(self) -> None:
        """A TaskRun storm on fresh TaskRuns, the leader SIGKILLed as the nodes go."""
        started = time.monotonic()
        namespace = self.namespace("failover", TASKRUNS)
        pods, objects = start_running(self.cluster, TASKRUNS, namespace, self.n, self.timeout)
        try:
            quiet(self.leader())
            dying = self.leader()
            standby = next(r for r in self.replicas if r is not dying)
            name = standby.env["SPOTRUN_POD_NAME"]
            killed: list[float] = []

            def kill() -> None:
                killed.extend([time.time(), time.monotonic()])
                dying.kill()

            note(f"SIGKILL to the leader {dying.env['SPOTRUN_POD_NAME']} as the nodes are deleted")
            result = storm(
                self.cluster, TASKRUNS, namespace, pods, self.nodes, self.timeout, self.rng, kill, self.cpu_now
            )
            wall, mono = killed
            with self.lease.lock:
                took = [t for h, by in self.lease.reached.items() if h.startswith(name + "_") for t in by.values()]
            result.takeover_seconds = min(took) - mono if took else math.nan
            with pods.lock:
                after = [t for t in pods.seen.values() if t >= mono]
            result.first_create_local_seconds = min(after) - mono if after else math.nan
            time.sleep(2)
            creates = [
                q.received
                for q in operator_requests(self.log, wall, time.time())
                if q.replica == name and (q.verb, q.resource) == ("create", "pods")
            ]
            result.first_create_seconds = min(creates) - wall if creates else math.nan
            result.requests = audit.requests(self.log, OPERATOR_USER, *result.window)
            self.results.storms["failover-TaskRun"] = result
            quiet(standby)
            self.sample("at the end, after the failover")
            self.results.metrics = {
                m: metric(standby, m)
                for m in (
                    "spotrun_workqueue_depth",
                    "spotrun_pod_rereads_total",
                    "spotrun_events_waiting",
                    "spotrun_events_dropped_total",
                )
            }
        finally:
            pods.stop()
            objects.stop()
        self.results.durations["failover"] = time.monotonic() - started
        if self.reused:  # a cluster of our own goes with all it holds (at 5,000 a namespace takes 7 min)
            self.done_with(namespace)

    def teardown(self) -> None:
        for watch in self.watches:
            watch.stop()
        if self.reused and not self.args.keep:  # not ours to stop: only what was made here goes
            for namespace, kind in list(self.namespaces.items()):
                with contextlib.suppress(ApiError):  # while an operator runs: it releases the pods
                    delete_namespace(self.cluster, namespace, kind, 300)
        for replica in self.replicas:
            replica.stop()
        if self.args.keep:
            note(f"kept: the cluster in {self.state_dir}, the operators' logs in {self.workdir}")
            return
        if not self.reused:
            self.cluster.down()
            if self.made_dir:
                shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def rates(r: Results, counts: collections.Counter[tuple[str, str]], seconds: float) -> str:
    """COUNTS over SECONDS against the operator's budgets: the workers' (SPOTRUN_API_QPS) and the Events'."""
    events = sum(c for (_, res), c in counts.items() if res == "events")
    apart = sum(c for (v, res), c in counts.items() if res in ("events", "leases") or v == "watch")
    work = counts.total() - apart
    return (
        f"{work} requests on the workers' budget in {seconds:.0f} s, {work / seconds:.0f}/s (SPOTRUN_API_QPS "
        f"{r.config.api_qps}, burst {r.config.api_burst}); {events} Events, {events / seconds:.0f}/s (their own "
        f"budget: {EVENTS_QPS}/s)"
    )


def explain(r: Results, replicas: list[Operator]) -> list[str]:
    """What the run saw that bears on a missed target: the operator's own warnings, its request rates."""
    lines = operator_log_problems(replicas)
    tr = r.bursts.get("TaskRun")
    if tr is not None and r.burst_until_done and not math.isnan(tr.done_seconds):
        lines.append(
            f"TaskRun burst, first create -> all Succeeded: {rates(r, r.burst_until_done, tr.done_seconds)}; "
            f"leader's work queue peak {tr.depth_peak:.0f}"
        )
    for key, s in r.storms.items():
        if s.requests:
            took = s.window[1] - s.window[0]
            lines.append(f"{key}, deletion -> last replacement seen: {rates(r, s.requests, took)}")
            lines.append(
                "  by verb and resource: " + ", ".join(f"{v} {res} {c}" for (v, res), c in s.requests.most_common())
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taskruns", type=int, default=1000, help="N: TaskRuns (and Jobs) per phase")
    parser.add_argument("--nodes", type=int, default=200, help="kwok nodes, two thirds spot")
    parser.add_argument("--run-seconds", type=float, default=10, help="how long a burst's pod runs")
    parser.add_argument("--skip-jobs", action="store_true", help="TaskRuns only")
    parser.add_argument("--state-dir", type=Path, help="the cluster's state directory (reused when running)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster, the operators' logs and namespaces")
    parser.add_argument("--seed", type=int, default=10, help="which spot nodes each storm deletes")
    bench = Bench(parser.parse_args())
    began = time.monotonic()
    try:
        bench.setup()
        bench.bursts()
        bench.storms()
        bench.failover()
        bench.results.durations["in all"] = time.monotonic() - began
        bench.results.settings[0] += f", at the end {os.getloadavg()[0]:.1f}"
        bench.results.problems = explain(bench.results, bench.replicas)
        report(bench.results)
    except BaseException:
        for line in operator_log_problems(bench.replicas):  # before teardown removes the logs
            note(line)
        raise
    finally:
        bench.teardown()


if __name__ == "__main__":
    main()
