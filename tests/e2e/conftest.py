"""End-to-end fixtures: an installed Spotrun, reached only through a kubeconfig, and a way to preempt a node.

On any cluster (kind, GKE, EKS) set:
    SPOTRUN_E2E_KUBECONFIG   a kubeconfig whose cluster has Spotrun installed (Helm chart or manifests)
    SPOTRUN_E2E_NAMESPACE    where to create TaskRuns; it must hold the S3 secret Spotrun is configured with
    SPOTRUN_E2E_PREEMPT      a shell command that reclaims node {node}, e.g. "kubectl drain {node}
                             --ignore-daemonsets --delete-emptydir-data" or a cloud CLI call
    SPOTRUN_E2E_EXAMPLES     where the pods find examples/ (default /opt/spotrun/examples: the image's)
    SPOTRUN_E2E_IMAGE        an image with the SDK, the examples and numpy (default ghcr.io/spotrun/spotrun:0.1.0)
    SPOTRUN_E2E_TORCH        a directory holding torch (pip install --target): runs the DDP example, with
                             its reference model computed here; the pods get it on PYTHONPATH unless
    SPOTRUN_E2E_DDP_IMAGE    names an image with the SDK, the examples and torch (`make test-ddp`);
    SPOTRUN_E2E_TORCH_MOUNT=1  the nodes can mount SPOTRUN_E2E_TORCH (hostPath): real nodes here
    SPOTRUN_E2E_MEMORY_LIMITS=1  the nodes enforce memory limits (any real node does; the local
                             cluster's process nodes do not): runs the OOM test too
Without SPOTRUN_E2E_KUBECONFIG the suite starts the local cluster (or reuses LOCALCLUSTER_STATE_DIR),
installs the Helm chart there and preempts with `python -m localcluster node preempt`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]


@dataclasses.dataclass
class E2E:
    env: dict[str, str]
    namespace: str
    examples: str
    image: str
    preempt: Callable[[str], None]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def apply_example(self, name: str, edit: Callable[[Obj], None] | None = None, **changes: Any) -> str:
        """Applies examples/NAME-taskrun.yaml with its paths and image pointed at this cluster's, `changes`
        to its spec and `edit(body)` last."""
        text = (REPO / "examples" / f"{name}-taskrun.yaml").read_text()
        text = text.replace("/opt/spotrun/examples", self.examples).replace("ghcr.io/spotrun/spotrun:0.1.0", self.image)
        body = json.loads(self.kubectl("create", "--dry-run=client", "-o", "json", "-f", "-", stdin=text))
        run_name = f"{body['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        body["metadata"]["name"] = run_name
        body["metadata"]["namespace"] = self.namespace  # the dry run filled in the kubeconfig's
        for key, value in changes.items():
            body["spec"][key] = value
        if edit is not None:
            edit(body)
        self.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(body))
        return run_name

    def apply_taskrun(self, prefix: str, spec: Obj) -> str:
        """Applies a TaskRun named PREFIX-xxxxx with `spec`; returns its name."""
        run_name = f"{prefix}-{uuid.uuid4().hex[:5]}"
        body = {
            "apiVersion": "spotrun.dev/v1alpha1",
            "kind": "TaskRun",
            "metadata": {"name": run_name, "namespace": self.namespace},
            "spec": spec,
        }
        self.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=json.dumps(body))
        return run_name

    def status(self, name: str) -> Obj:
        body: Obj = json.loads(self.kubectl("get", "taskruns.spotrun.dev", name, "-n", self.namespace, "-o", "json"))
        return body.get("status") or {}

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def finished(self, name: str, timeout: float = 300) -> Obj:
        return self.wait(
            lambda: (s := self.status(name)).get("phase") in ("Succeeded", "Failed") and s, timeout, f"{name} to finish"
        )


def _local(session: pytest.Session) -> Iterator[E2E]:
    # Imported here: on another cluster the suite needs no local-cluster code.
    from localcluster.cluster import Cluster  # noqa: PLC0415
    from localcluster.install import install  # noqa: PLC0415

    existing = os.environ.get("LOCALCLUSTER_STATE_DIR")
    cluster = Cluster(Path(existing) if existing else Path(tempfile.mkdtemp(prefix="spotrun-e2e-")))
    started = not cluster.running()
    cluster.up()
    env = {**os.environ, **cluster.env_vars()}
    env["PATH"] = f"{cluster.dir / 'bin'}:{env['PATH']}"
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    release_ns = f"{namespace}-spotrun"
    aws = {k: v for k, v in cluster.env_vars().items() if k.startswith("AWS_") and k != "AWS_DEFAULT_REGION"}

    prefix = f"s3://{cluster.config['bucket']}/e2e/"
    install(env, s3=aws, prefix=prefix, task_namespaces=[namespace], release_namespace=release_ns)

    def preempt(node: str) -> None:
        cluster.preempt_node(node, grace=5)
        cluster.add_node(node, "spot")  # the autoscaler brings capacity back

    try:
        yield E2E(env, namespace, str(REPO / "examples"), "ghcr.io/spotrun/spotrun:0.1.0", preempt)
    finally:
        subprocess.run(
            ["helm", "uninstall", "spotrun", "--namespace", release_ns], env=env, check=False, capture_output=True
        )
        if started:
            cluster.down()
        if not existing and session.testsfailed == 0:
            shutil.rmtree(cluster.dir, ignore_errors=True)  # kept after a failure: its logs say why


@pytest.fixture(scope="session")
def e2e(request: pytest.FixtureRequest) -> Iterator[E2E]:
    kubeconfig = os.environ.get("SPOTRUN_E2E_KUBECONFIG")
    if not kubeconfig:
        yield from _local(request.session)
        return
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    command = os.environ.get("SPOTRUN_E2E_PREEMPT", "kubectl drain {node} --ignore-daemonsets --delete-emptydir-data")

    def preempt(node: str) -> None:
        subprocess.run(command.format(node=node), shell=True, env=env, check=True, timeout=600)

    yield E2E(  # noqa: PT022 - one fixture for both modes; the local mode tears down
        env,
        os.environ.get("SPOTRUN_E2E_NAMESPACE", "default"),
        os.environ.get("SPOTRUN_E2E_EXAMPLES", "/opt/spotrun/examples"),
        os.environ.get("SPOTRUN_E2E_IMAGE", "ghcr.io/spotrun/spotrun:0.1.0"),
        preempt,
    )
