"""Runs the operator against the local cluster, as its own ServiceAccount, and builds TaskRuns."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spotrun import Checkpoint, open_storage

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "taskruns.spotrun.dev.yaml"
RBAC = REPO / "manifests" / "operator" / "rbac.yaml"
STEPS_TASK = REPO / "tests" / "integration" / "tasks" / "steps.py"
SEED = REPO / "examples" / "checkpoint_seed.py"
SECRET = "spotrun-s3"
Obj = dict[str, Any]


def kubectl(
    cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.env_vars()}
    return subprocess.run(
        [str(cluster.dir / "bin" / "kubectl"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


class Operator:
    """The operator process: started with the ServiceAccount's token, restartable, killable."""

    def __init__(self, cluster: Cluster, kubeconfig: Path, log: Path, **env: str) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.log = log
        # One replica: no leader election (a SIGKILLed leader's Lease would hold up each restart
        # for its duration); tests of the election pass SPOTRUN_LEADER_ELECTION="true".
        self.env = {"SPOTRUN_LEADER_ELECTION": "false", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = int(s.getsockname()[1])

    def start(self) -> None:
        env = {
            **os.environ,
            **{k: v for k, v in self.cluster.env_vars().items() if k.startswith("AWS_")},
            "KUBECONFIG": str(self.kubeconfig),
            "SPOTRUN_CHECKPOINT_PREFIX": f"s3://{self.cluster.config['bucket']}/taskruns/",
            "SPOTRUN_CHECKPOINT_SECRET": SECRET,
            "SPOTRUN_METRICS_PORT": str(self.metrics_port),
            **self.env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spotrun_operator", "--liveness", ""],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def install(cluster: Cluster, kube: Client, workdir: Path) -> Operator:
    kubectl(cluster, "apply", "-f", str(CRD), "-f", str(RBAC))
    kubectl(cluster, "wait", "--for=condition=Established", "crd/taskruns.spotrun.dev", "--timeout=60s")
    answer = kube.create(
        "/api/v1/namespaces/spotrun-system/serviceaccounts/spotrun-operator/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 14400}},
    )
    ca = base64.b64encode((cluster.dir / "pki" / "ca.crt").read_bytes()).decode()
    kubeconfig = workdir / "operator.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": cluster.config["apiserver"], "certificate-authority-data": ca}}
                ],
                "users": [{"name": "spotrun-operator", "user": {"token": answer["status"]["token"]}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "spotrun-operator"}}],
                "current-context": "c",
            }
        )
    )
    return Operator(cluster, kubeconfig, workdir / "operator.log")


@pytest.fixture(scope="session")
def operator(cluster: Cluster, kube: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    # The tests read checkpoints from S3 as the SDK does, with the cluster's credentials.
    os.environ.update({k: v for k, v in cluster.env_vars().items() if k.startswith("AWS_")})
    running = install(cluster, kube, tmp_path_factory.mktemp("operator"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def no_other_operator(operator: Operator) -> Iterator[None]:
    """The session's cluster-wide operator paused for a test that runs one of its own (in cluster, by
    Helm or kustomize, or as replicas): two operators would both act on the test's TaskRuns."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def add_s3_secret(cluster: Cluster, kube: Client, namespace: str) -> None:
    """The Secret SECRET in NAMESPACE with the cluster's S3 endpoint and keys, for its pods' envFrom."""
    env = cluster.env_vars()
    data = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": SECRET}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}},
    )


def new_task_namespace(cluster: Cluster, kube: Client, prefix: str) -> str:
    """A namespace PREFIX-xxxxxx, its default ServiceAccount there, with the S3 Secret: for benchmarks."""
    namespace = f"{prefix}-{os.urandom(3).hex()}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    wait_for(lambda: kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default"), 30, "the namespace")
    add_s3_secret(cluster, kube, namespace)
    return namespace


@pytest.fixture
def task_namespace(namespace: str, kube: Client, cluster: Cluster, operator: Operator) -> str:
    add_s3_secret(cluster, kube, namespace)
    return namespace


def taskrun(name: str, command: list[str], env: dict[str, str] | None = None, **spec: Any) -> Obj:
    container = {
        "name": "task",
        "image": "python:3.11-slim",
        "command": command,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    template_spec = {"containers": [container], "terminationGracePeriodSeconds": 5}
    template_spec.update(spec.pop("pod", {}))
    return {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {"template": {"spec": template_spec}, **spec},
    }


def steps_taskrun(name: str, steps: int = 30, step_seconds: float = 0.3, **spec: Any) -> Obj:
    env = {"STEPS": str(steps), "STEP_SECONDS": str(step_seconds), **spec.pop("env", {})}
    return taskrun(name, ["python", str(STEPS_TASK)], env, **spec)


def create_taskrun(kube: Client, namespace: str, body: Obj) -> Obj:
    return kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)


def get_taskrun(kube: Client, namespace: str, name: str) -> Obj:
    return kube.get(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/{name}")


def taskrun_gone(kube: Client, namespace: str, name: str) -> bool:
    try:
        get_taskrun(kube, namespace, name)
    except ApiError as err:
        if err.status == 404:
            return True
        raise
    return False


def status(kube: Client, namespace: str, name: str) -> Obj:
    result: Obj = get_taskrun(kube, namespace, name).get("status") or {}
    return result


def wait_phase(kube: Client, namespace: str, name: str, *phases: str, timeout: float = 120) -> Obj:
    seen: Obj = {}

    def reached() -> Obj | None:
        current = status(kube, namespace, name)
        seen.clear()
        seen.update(current)
        return seen if seen.get("phase") in phases else None

    try:
        return wait_for(reached, timeout, f"TaskRun {name} to reach {'/'.join(phases)}")
    except AssertionError as err:
        last = {k: seen.get(k) for k in ("phase", "attempt", "failures", "interruptions", "message")}
        raise AssertionError(f"{err}; it was last {last}, attempts {seen.get('attempts')}") from None


def checkpoint_step(kube: Client, namespace: str, name: str) -> int:
    """The step of the newest committed checkpoint, read from S3 as the SDK reads it (-1: none)."""
    uri = status(kube, namespace, name).get("checkpoint", {}).get("uri")
    if not uri:
        return -1
    latest = Checkpoint(open_storage(uri, read_only=True)).latest()
    return -1 if latest is None or latest.step is None else latest.step


def wait_step(kube: Client, namespace: str, name: str, step: int, timeout: float = 60) -> None:
    """Until the task has committed a checkpoint at `step` or beyond."""
    wait_for(
        lambda: checkpoint_step(kube, namespace, name) >= step, timeout, f"TaskRun {name} to checkpoint step {step}"
    )


class LivePods:
    """`with LivePods(kube, ns, name) as live:` polls the TaskRun's pods every 50 ms while the block
    runs; `max(live.counts)` is the most that were alive (not Succeeded or Failed) at once."""

    def __init__(self, kube: Client, namespace: str, name: str) -> None:
        self.kube, self.path, self.selector = (
            kube,
            f"/api/v1/namespaces/{namespace}/pods",
            f"spotrun.dev/taskrun={name}",
        )
        self.counts: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.is_set():
            pods = self.kube.get(self.path, labelSelector=self.selector)["items"]
            self.counts.append(sum(p["status"].get("phase") not in ("Succeeded", "Failed") for p in pods))
            time.sleep(0.05)

    def start(self) -> LivePods:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def __enter__(self) -> LivePods:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def current_pod(kube: Client, namespace: str, name: str) -> Obj | None:
    pod_name = status(kube, namespace, name).get("podName")
    if not pod_name:
        return None
    try:
        return kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod_name}")
    except ApiError:
        return None


SPOT_NODES = ("spot-1", "spot-2")
NOTICE_TAINTS = ("aws-node-termination-handler/spot-itn",)  # what tests put on spot nodes


def refill_spot_pool(cluster: Cluster, kube: Client) -> None:
    """Two plain spot nodes: each one gone or off comes back (as an autoscaler would bring it), each
    one cordoned or noticed is made schedulable again."""
    present = {n["metadata"]["name"]: n for n in kube.get("/api/v1/nodes")["items"]}
    for name in SPOT_NODES:
        node = present.get(name)
        if node is None or not cluster.node_running(name):
            with contextlib.suppress(SystemExit):
                cluster.kill_node(name)
            cluster.add_node(name, "spot")
            continue
        taints = [t for t in node["spec"].get("taints", []) if t["key"] not in NOTICE_TAINTS]
        if node["spec"].get("unschedulable") or taints != node["spec"].get("taints", []):
            kube.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": None, "taints": taints}})


@pytest.fixture
def spot_pool(cluster: Cluster, kube: Client) -> Iterator[None]:
    """Two plain spot nodes before and after a test that destroys, cordons, notices or drains one."""
    refill_spot_pool(cluster, kube)
    yield
    refill_spot_pool(cluster, kube)
