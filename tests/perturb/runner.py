"""One run: operator replicas behind their proxies, a workload of TaskRuns, a schedule played out,
then the invariants. `run(...)` returns a Report whose `violations` name the invariant, the TaskRun
and (in `str(report)`) the schedule."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.operator_fixtures import Operator, create_taskrun, get_taskrun
from tests.perturb import invariants, schedule
from tests.perturb.invariants import Violation
from tests.perturb.proxy import Proxy
from tests.perturb.schedule import Action, Schedule
from tests.perturb.truth import Truth

Obj = dict[str, Any]
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/spotrun-system/leases/spotrun-operator"
TASKRUNS = "/apis/spotrun.dev/v1alpha1/namespaces/{ns}/taskruns"
SETTLE_SECONDS = 120.0  # after the schedule, how long the TaskRuns have to reach their terminal phase


@dataclasses.dataclass
class Workload:
    taskruns: list[Obj]
    replicas: int = 1  # 2: leader election between replicas a and b
    namesakes: bool = False  # a PodDisruptionBudget of each TaskRun's name, made beforehand by another
    spacing: float = 0.0  # seconds between the TaskRuns' creations


@dataclasses.dataclass
class Report:
    schedule: Schedule
    violations: list[Violation]
    log: list[str]

    def __str__(self) -> str:
        broken = [str(v) for v in self.violations] or ["no invariant broken"]
        lines = [str(self.schedule), *broken]
        return "\n".join([*lines, "what happened:", *[f"  {line}" for line in self.log[-80:]]])


class Replica:
    """An operator process with a proxy of its own in front of the API server."""

    def __init__(
        self, cluster: Cluster, base: Operator, name: str, seed: int, workdir: Path, election: bool, started: float
    ) -> None:
        self.name = name
        self.proxy = Proxy(cluster.config["apiserver"], cluster.dir / "pki" / "ca.crt", name, seed, started)
        port = self.proxy.start()
        config = json.loads(base.kubeconfig.read_text())
        config["clusters"][0]["cluster"] = {"server": f"http://127.0.0.1:{port}"}
        kubeconfig = workdir / f"replica-{name}.kubeconfig"
        kubeconfig.write_text(json.dumps(config))
        env = {
            "SPOTRUN_LEADER_ELECTION": "true" if election else "false",
            "SPOTRUN_POD_NAME": f"perturb-{name}",
            "AWS_ENDPOINT_URL": self.proxy.relay_s3(cluster.env_vars()["AWS_ENDPOINT_URL"]),
        }
        self.process = Operator(cluster, kubeconfig, workdir / f"replica-{name}.log", **env)
        self.down_until: float | None = None  # restarting: start again at this time

    def running(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None


class Run:
    def __init__(self, cluster: Cluster, kube: Client, base: Operator, namespace: str, workdir: Path) -> None:
        self.cluster, self.kube, self.base, self.namespace, self.workdir = cluster, kube, base, namespace, workdir
        self.log: list[str] = []
        self.started = time.monotonic()
        self.wall_started = time.time()

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:7.2f}s runner: {what}")

    def taskruns_path(self) -> str:
        return TASKRUNS.format(ns=self.namespace)

    def play(self, plan: Schedule, workload: Workload) -> Report:
        truth = Truth(self.kube, self.namespace)
        truth.start()
        replicas: list[Replica] = []
        namesakes: list[tuple[str, str, str, str]] = []
        try:
            with self._replicas(plan, workload, replicas):
                namesakes = self._make_namesakes(workload)
                anchor = time.monotonic()
                # TaskRuns keep coming while the schedule plays when the workload spaces them.
                creator = threading.Thread(target=self._create, args=(workload,), name="creator", daemon=True)
                creator.start()
                if plan.anchor == schedule.RUNNING:
                    truth.wait(lambda t: any(p.running for p in t.pods.values()), 90, "a pod of the run to be Running")
                    anchor = time.monotonic()
                    self.note("anchored: a pod is Running")
                self._act(plan, replicas, truth, anchor)
                creator.join()
                self._settle(workload, replicas)
        finally:
            truth.stop()
        return Report(plan, self._check(plan, workload, truth, namesakes), self._merged_log(replicas))

    def _create(self, workload: Workload) -> None:
        for n, body in enumerate(workload.taskruns):
            if n and workload.spacing:
                time.sleep(workload.spacing)  # the spacing is the workload's shape: no condition to wait on
            create_taskrun(self.kube, self.namespace, body)
            self.note(f"created TaskRun {body['metadata']['name']}")

    @contextlib.contextmanager
    def _replicas(self, plan: Schedule, workload: Workload, replicas: list[Replica]) -> Iterator[None]:
        election = max(workload.replicas, plan.replicas) > 1
        try:
            if election:
                with contextlib.suppress(ApiError):
                    self.kube.delete(LEASE_PATH)  # a dead replica's Lease would hold up the first one
            for name in "ab"[: max(workload.replicas, plan.replicas)]:
                replica = Replica(self.cluster, self.base, name, plan.seed, self.workdir, election, self.started)
                replicas.append(replica)
                replica.process.start()
                if election and name == "a":  # a leads, b stands by
                    self._wait(lambda: self._holder().startswith("perturb-a_"), 30)
                    self.note(f"replica a leads as {self._holder()}")
            for replica in replicas:  # each one's caches listed before the first TaskRun
                self._wait(lambda r=replica: {"pods", "taskruns"} <= r.proxy.watches, 60)
            yield
        finally:
            for replica in replicas:
                replica.process.stop()
                replica.proxy.stop()

    def _holder(self) -> str:
        try:
            return str(self.kube.get(LEASE_PATH)["spec"].get("holderIdentity") or "")
        except ApiError:
            return ""

    @staticmethod
    def _wait(predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the replicas")
            time.sleep(0.2)  # polling the Lease: a watch for one Lease read is not worth it

    def _make_namesakes(self, workload: Workload) -> list[tuple[str, str, str, str]]:
        """(TaskRun, kind, name, uid) of each object made beforehand with a name the TaskRun's child will want."""
        made: list[tuple[str, str, str, str]] = []
        if not workload.namesakes:
            return made
        for body in workload.taskruns:
            name = body["metadata"]["name"]
            budget = self.kube.create(
                f"/apis/policy/v1/namespaces/{self.namespace}/poddisruptionbudgets",
                {
                    "metadata": {"name": name, "labels": {"made-by": "someone-else"}},
                    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": f"not-{name}"}}},
                },
            )
            made.append((name, "poddisruptionbudgets", name, budget["metadata"]["uid"]))
            self.note(f"made PodDisruptionBudget {name} beforehand, uid {budget['metadata']['uid']}")
        return made

    # ----- the schedule ----------------------------------------------------------------------------

    def _act(self, plan: Schedule, replicas: list[Replica], truth: Truth, anchor: float) -> None:
        pending = sorted(plan.actions, key=lambda a: a.at)
        armed: list[Action] = []
        by_name = {r.name: r for r in replicas}
        while pending or armed or any(r.down_until for r in replicas) or time.monotonic() < anchor + plan.length:
            now = time.monotonic()
            while pending and anchor + pending[0].at <= now:
                action = pending.pop(0)
                if action.kind == schedule.SUSPEND_AFTER_FAILURE:
                    armed.append(action)
                else:
                    self._do(action, by_name.get(action.replica, replicas[0]), replicas, truth)
            for action in list(armed):
                failed = [p for p in truth.own_failures() if p.attempt == 1]
                if failed:
                    armed.remove(action)
                    self._suspend(failed[0].taskrun, True)
            for replica in replicas:
                if replica.down_until is not None and now >= replica.down_until:
                    replica.down_until = None
                    replica.process.start()
                    self.note(f"started replica {replica.name} again")
            time.sleep(0.05)  # the schedule's clock

    def _do(self, action: Action, replica: Replica, replicas: list[Replica], truth: Truth) -> None:
        if action.kind in schedule.PROXY_KINDS:
            replica.proxy.apply(action)
        elif action.kind == schedule.RESTART:
            replica.process.kill()
            replica.down_until = time.monotonic() + action.seconds
            self.note(f"SIGKILLed replica {replica.name}")
        elif action.kind == schedule.HANDOVER:
            leader = next((r for r in replicas if self._holder().startswith(f"perturb-{r.name}_")), replica)
            leader.process.stop()
            leader.down_until = time.monotonic() + action.seconds
            self.note(f"SIGTERMed the leader, replica {leader.name}")
        elif action.kind == schedule.RESUME:
            for body in self.kube.get(self.taskruns_path())["items"]:
                if body["spec"].get("suspend"):
                    self._suspend(body["metadata"]["name"], False)
        elif action.kind == schedule.DELETE_POD:
            running = [p for p in truth.running() if not p.last["metadata"].get("deletionTimestamp")]
            if running:
                pod = running[0]
                truth.deleted_by_harness(pod.uid)
                with contextlib.suppress(ApiError):
                    self.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{pod.name}")
                self.note(f"deleted running pod {pod.name}")

    def _suspend(self, name: str, suspend: bool) -> None:
        self.kube.merge_patch(f"{self.taskruns_path()}/{name}", {"spec": {"suspend": suspend}})
        self.note(f"{'suspended' if suspend else 'resumed'} TaskRun {name}")

    def _settle(self, workload: Workload, replicas: list[Replica]) -> None:
        """Until every TaskRun has ended; a replica that exited (it lost the Lease) is started again,
        as its Deployment's kubelet would."""
        deadline = time.monotonic() + SETTLE_SECONDS
        names = [b["metadata"]["name"] for b in workload.taskruns]
        while time.monotonic() < deadline:
            for replica in replicas:
                if not replica.running():
                    self.note(f"replica {replica.name} had exited; started again")
                    replica.process.start()
            phases = [(get_taskrun(self.kube, self.namespace, n).get("status") or {}).get("phase") for n in names]
            if all(p in ("Succeeded", "Failed") for p in phases):
                self.note("every TaskRun has ended")
                return
            time.sleep(0.5)  # polling a few TaskRuns' phases
        self.note("gave up waiting for the TaskRuns to end")

    # ----- the invariants -----------------------------------------------------------------------------

    def _check(
        self, plan: Schedule, workload: Workload, truth: Truth, namesakes: list[tuple[str, str, str, str]]
    ) -> list[Violation]:
        found = invariants.two_live_pods(truth.pods.values())
        for body in workload.taskruns:
            taskrun = get_taskrun(self.kube, self.namespace, body["metadata"]["name"])
            found += invariants.terminal(taskrun)
            found += invariants.counted_once(taskrun, truth.pods.values())
        for owner, kind, name, uid in namesakes:
            try:
                now: Obj | None = self.kube.get(f"/apis/policy/v1/namespaces/{self.namespace}/{kind}/{name}")
            except ApiError as err:
                if err.status != 404:
                    raise
                now = None
            found += invariants.namesakes_kept(owner, kind, name, uid, now)
        audit = self.cluster.logs / "audit.log"
        if max(workload.replicas, plan.replicas) > 1 and audit.exists():
            events = invariants.audit_events(audit, self.wall_started)
            names = [b["metadata"]["name"] for b in workload.taskruns]
            found += invariants.no_write_after_lease_taken(events, "spotrun-operator", names)
        return found

    def _merged_log(self, replicas: list[Replica]) -> list[str]:
        lines = list(self.log)
        for replica in replicas:
            lines += replica.proxy.log
        return sorted(lines, key=lambda line: float(line.split("s", 1)[0]))
