"""Every install variant runs a TaskRun, sees it preempted and resume, and runs a gang, with no 403.

The variants come from the tree, so that a new one cannot be added untested: the kustomize base and
every directory under manifests/overlays; the Helm chart with each capacity profile its template
allows (values.yaml otherwise) and with each other values file beside values.yaml. Each is rendered
by the real tool (kubectl kustomize, helm template), and what the operator's identity and
configuration are made of is applied (the CRD, namespaces, ServiceAccount, RBAC, ConfigMap); then
the operator runs as a local process with exactly that: the ServiceAccount's token and the
Deployment's environment (its ConfigMap and env), so that a rule missing from a variant's RBAC shows
as a 403 here, and a watch that keeps failing as /readyz failing. Only the checkpoint location (the
local S3) and the ports are the test's own, as an installer sets them. The operator is not run as
a Deployment: process nodes have no image, and a pod would only add its start-up to each variant.

Cloud profiles select nodes by their own labels, which the local spot nodes carry already; their
taints are set to the profile's for its run (generic's spotrun.dev/capacity=spot otherwise).

About 100 s for the 12 variants (5-8 s each) with the cluster's start, measured on the 2-core machine
shared with other work (one cluster, one S3 for them all).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from spotrun_operator.config import PROFILES

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import (
    CRD,
    RBAC,
    REPO,
    SPOT_NODES,
    Operator,
    add_s3_secret,
    create_taskrun,
    current_pod,
    kubectl,
    refill_spot_pool,
    steps_taskrun,
    wait_phase,
    wait_step,
)

pytestmark = pytest.mark.integration
Obj = dict[str, Any]
CHART = REPO / "charts" / "spotrun"
OVERLAYS = REPO / "manifests" / "overlays"
# What makes the operator's identity and configuration; the Deployment, its PodDisruptionBudget and
# Service, and Helm's hooks are not run here.
APPLIED = {
    "CustomResourceDefinition",
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ConfigMap",
}
DENIED = re.compile(r"\b403\b|forbidden|cannot (list|watch|get|create|patch|update|delete)", re.IGNORECASE)


def chart_profiles() -> list[str]:
    """The capacity profiles the chart's template allows (it refuses any other)."""
    template = (CHART / "templates" / "deployment.yaml").read_text()
    listed = re.search(r"\$profiles := list ((?:\"[a-z-]+\"\s*)+)", template)
    assert listed, "the chart's template no longer lists its capacity profiles as $profiles"
    return re.findall(r'"([a-z-]+)"', listed.group(1))


@dataclass(frozen=True)
class Variant:
    tool: str  # kustomize or helm
    source: str  # the kustomization directory, or the values file
    profile: str = ""  # helm: capacityProfile set on the command line

    @property
    def id(self) -> str:
        return f"{self.tool}-{Path(self.source).stem if self.tool == 'helm' else Path(self.source).name}" + (
            f"-{self.profile}" if self.profile else ""
        )


def variants() -> list[Variant]:
    found = [Variant("kustomize", "manifests/base")]
    found += [
        Variant("kustomize", f"manifests/overlays/{d.name}")
        for d in sorted(OVERLAYS.iterdir())
        if (d / "kustomization.yaml").exists()
    ]
    found += [Variant("helm", "values.yaml", profile) for profile in chart_profiles()]
    found += [Variant("helm", f.name) for f in sorted(CHART.glob("values*.yaml")) if f.name != "values.yaml"]
    return found


def helm(cluster: Cluster, *args: str) -> str:
    env = {**os.environ, **cluster.env_vars(), "HELM_CACHE_HOME": str(cluster.dir / "helm")}
    return subprocess.run(
        [str(cluster.dir / "bin" / "helm"), *args], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout


def render(cluster: Cluster, variant: Variant) -> list[Obj]:
    if variant.tool == "kustomize":
        out = kubectl(cluster, "kustomize", str(REPO / variant.source)).stdout
    else:
        namespace = f"spotrun-{variant.id}"[:63]
        extra = ["--set", f"capacityProfile={variant.profile}"] if variant.profile else []
        values = ["-f", str(CHART / variant.source)]
        out = helm(
            cluster, "template", "spotrun", str(CHART), "--namespace", namespace, "--include-crds", *values, *extra
        )
    return [doc for doc in yaml.safe_load_all(out) if doc]


def the(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig_for(cluster: Cluster, kube: Client, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a token of the ServiceAccount namespace/account: the operator's identity."""
    answer = wait_for(
        lambda: _token(kube, namespace, account), 30, f"a token of the ServiceAccount {namespace}/{account}"
    )
    ca = base64.b64encode((cluster.dir / "pki" / "ca.crt").read_bytes()).decode()
    server = {"server": cluster.config["apiserver"], "certificate-authority-data": ca}
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": server}],
                "users": [{"name": account, "user": {"token": answer}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": account}}],
                "current-context": "c",
            }
        )
    )
    return path


def _token(kube: Client, namespace: str, account: str) -> str | None:
    try:
        answer = kube.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
        )
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    return str(answer["status"]["token"])


def deployment_env(objects: list[Obj]) -> tuple[str, dict[str, str]]:
    """The operator Deployment's namespace and environment: its ConfigMap's data and its env (the
    fieldRefs as the kubelet would fill them)."""
    deployment = the(objects, "Deployment")
    namespace = deployment["metadata"]["namespace"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == ref["name"])
            env.update(config.get("data") or {})
    fields = {"metadata.name": f"{deployment['metadata']['name']}-local", "metadata.namespace": namespace}
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in (var.get("valueFrom") or {}):
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    env.pop("TMPDIR", None)  # the pod's emptyDir; the process keeps the host's
    return namespace, env


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def message_of(line: str) -> str:
    """A log line's message, without its time (whose milliseconds can read 403)."""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return str(json.loads(line)["message"])
    return line.split(" ", 2)[-1]


def metric_samples(text: str, name: str) -> dict[str, float]:
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    }


@contextlib.contextmanager
def spot_taints_of(kube: Client, profile: str) -> Iterator[None]:
    """The spot nodes tainted as the profile's spot nodes are (its tolerations say how), for this run."""
    placement = PROFILES[profile]["spot"]
    taints = [{k: t[k] for k in ("key", "value", "effect")} for t in placement.get("tolerations", [])]
    before = {name: kube.get(f"/api/v1/nodes/{name}")["spec"].get("taints") for name in SPOT_NODES}
    for name in SPOT_NODES:
        kube.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": taints or None}})
    try:
        yield
    finally:
        for name, old in before.items():
            kube.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": old}})


@pytest.fixture(scope="module")
def variants_cluster(cluster: Cluster, kube: Client, operator: Operator) -> Iterator[Cluster]:
    """The session's operator stopped while the variants run (two operators would both act), the
    spot pool whole; after them, the CRD and the session operator's RBAC as they were (the namespaced
    overlay narrows the same ClusterRole) and the session operator running again."""
    operator.stop()
    refill_spot_pool(cluster, kube)
    os.environ.update({k: v for k, v in cluster.env_vars().items() if k.startswith("AWS_")})
    try:
        yield cluster
    finally:
        kubectl(cluster, "apply", "-f", str(CRD), "-f", str(RBAC))
        operator.start()


ALL = variants()


def test_the_variants_are_every_overlay_the_base_and_each_chart_profile_and_values_file() -> None:
    ids = [v.id for v in ALL]
    overlays = [d.name for d in OVERLAYS.iterdir() if d.is_dir()]
    assert {f"kustomize-{o}" for o in overlays} | {"kustomize-base"} <= set(ids)
    assert {f"helm-values-{p}" for p in ("generic", "gke", "eks", "karpenter", "aks")} <= set(ids)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("variant", ALL, ids=[v.id for v in ALL])
def test_each_install_variant_runs_preempts_and_resumes_a_taskrun_and_a_gang_without_a_403(
    variants_cluster: Cluster, kube: Client, variant: Variant, tmp_path: Path
) -> None:
    cluster = variants_cluster
    started = time.monotonic()
    objects = render(cluster, variant)
    namespace, env = deployment_env(objects)
    watched = [n for n in env.get("SPOTRUN_NAMESPACES", "").split(",") if n]
    # The release namespace and the watched ones exist before an install (the overlay says so).
    for name in [namespace, *watched]:
        with contextlib.suppress(ApiError):
            kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    applied = [
        o for o in objects if o["kind"] in APPLIED and "helm.sh/hook" not in o["metadata"].get("annotations", {})
    ]
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump_all(applied))
    kubectl(cluster, "wait", "--for=condition=Established", "crd/taskruns.spotrun.dev", "--timeout=60s")
    account = the(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = kubeconfig_for(cluster, kube, namespace, account, tmp_path / "kubeconfig")

    # Where the TaskRuns go: a watched namespace, or one of their own.
    tasks = watched[0] if watched else f"v-{os.urandom(3).hex()}"
    with contextlib.suppress(ApiError):
        kube.create("/api/v1/namespaces", {"metadata": {"name": tasks}})
    wait_for(lambda: kube.get(f"/api/v1/namespaces/{tasks}/serviceaccounts/default"), 30, "the default ServiceAccount")
    with contextlib.suppress(ApiError):
        add_s3_secret(cluster, kube, tasks)

    bucket = cluster.config["bucket"]
    health, metrics_port = free_port(), free_port()
    process_env = {
        **os.environ,
        **{k: v for k, v in cluster.env_vars().items() if k.startswith("AWS_")},
        **env,
        "KUBECONFIG": str(kubeconfig),
        "SPOTRUN_CHECKPOINT_PREFIX": f"s3://{bucket}/variants/{variant.id}/",
        "SPOTRUN_CHECKPOINT_SECRET": "spotrun-s3",
        "SPOTRUN_METRICS_PORT": str(metrics_port),
    }
    log = tmp_path / "operator.log"
    names = (f"solo-{variant.id}", f"gang-{variant.id}")  # a variant after this one may watch here too
    profile = env.get("SPOTRUN_CAPACITY_PROFILE", "generic")
    with spot_taints_of(kube, profile), log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotrun_operator", "--liveness", f"http://127.0.0.1:{health}/healthz"],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            ready = f"http://127.0.0.1:{health}/readyz"
            wait_for(lambda: get(ready)[0] == 200, 60, f"{ready} to answer 200 (last: {get(ready)})")
            run(kube, tasks, variant, *names)
            # Every cache was listed and is watched, and nothing was refused along the way.
            assert get(ready) == (200, "ok\n")
            denied = [line for line in log.read_text().splitlines() if DENIED.search(message_of(line))]
            assert not denied, f"{variant.id}: the operator was refused:\n" + "\n".join(denied[:10])
            text = get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            healthy = metric_samples(text, "spotrun_informer_healthy")
            assert healthy, "no spotrun_informer_healthy in /metrics"
            assert set(healthy.values()) == {1.0}, healthy
            failures = metric_samples(text, "spotrun_informer_failures_total")
            assert set(failures.values()) == {0.0}, failures
        finally:
            # Deleted, not waited for: a later variant's operator, or the session's, lets them go.
            for name in names:
                with contextlib.suppress(ApiError):
                    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{tasks}/taskruns/{name}")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not watched:
                kube.delete(f"/api/v1/namespaces/{tasks}")
            print(f"{variant.id}: {time.monotonic() - started:.1f}s")


def run(kube: Client, namespace: str, variant: Variant, solo: str, gang: str) -> None:
    """A TaskRun that runs, whose pod is deleted (as an eviction would) and that resumes from its
    checkpoint; beside it a 2-rank gang, whose Service and pods the variant's RBAC must allow."""
    create_taskrun(kube, namespace, steps_taskrun(solo, steps=10, step_seconds=0.2))
    create_taskrun(kube, namespace, steps_taskrun(gang, steps=2, step_seconds=0.2, replicas=2))
    wait_step(kube, namespace, solo, 2)
    pod = current_pod(kube, namespace, solo)
    assert pod is not None
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
    ran = wait_phase(kube, namespace, solo, "Succeeded", "Failed", timeout=60)
    assert ran["phase"] == "Succeeded", (variant.id, ran.get("message"))
    assert (ran["attempt"], ran["interruptions"]) == (2, 1), (variant.id, ran.get("attempts"))
    assert ran["result"]["resumed"][1] >= 2, (variant.id, ran["result"])
    ganged = wait_phase(kube, namespace, gang, "Succeeded", "Failed", timeout=60)
    assert ganged["phase"] == "Succeeded", (variant.id, ganged.get("message"))
    assert kube.get(f"/api/v1/namespaces/{namespace}/services/{gang}")["spec"]["clusterIP"] == "None"
