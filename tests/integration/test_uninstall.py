"""`helm uninstall` leaves nothing stuck: its pre-delete hook removes Spotrun's finalizers, never data."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import running_container, wait_for
from tests.integration.operator_fixtures import (
    SECRET,
    checkpoint_step,
    create_taskrun,
    get_taskrun,
    kubectl,
    status,
    steps_taskrun,
    wait_phase,
    wait_step,
)
from tests.integration.test_chart import CHART, helm

pytestmark = pytest.mark.integration
Obj = dict[str, Any]
TASKRUN_FINALIZER = "spotrun.dev/finalizer"
POD_FINALIZER = "spotrun.dev/accounting"


def gone(kube: Client, path: str) -> bool:
    try:
        kube.get(path)
    except ApiError as err:
        if err.status == 404:
            return True
        raise
    return False


def test_helm_uninstall_leaves_no_taskrun_pod_or_namespace_stuck(
    cluster: Cluster, kube: Client, no_other_operator: None
) -> None:
    # Not the `namespace` fixture: deleting the namespace is what this test checks.
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    wait_for(
        lambda: kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default"), 30, "the default ServiceAccount"
    )
    env = cluster.env_vars()
    aws = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    data = {k: base64.b64encode(v.encode()).decode() for k, v in aws.items()}
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": SECRET}, "data": data})
    release_ns = f"{namespace}-spotrun"
    kube.create("/api/v1/namespaces", {"metadata": {"name": release_ns}})
    try:
        helm(
            cluster,
            "install",
            "spotrun",
            str(CHART),
            "--namespace",
            release_ns,
            "--set",
            f"checkpoint.prefix=s3://{env['LOCALCLUSTER_BUCKET']}/uninstall/",
            "--set",
            f"checkpoint.secret={SECRET}",
            "--set",
            f"watchNamespaces={{{namespace}}}",
        )
        deployment = f"/apis/apps/v1/namespaces/{release_ns}/deployments/spotrun-operator"
        wait_for(lambda: kube.get(deployment).get("status", {}).get("availableReplicas") == 2, 120, "the operator")
        # Annotated to delete its checkpoints, it carries kopf's finalizer too (the others carry none).
        body = steps_taskrun("long", steps=2000, step_seconds=0.2)
        body["metadata"]["annotations"] = {"spotrun.dev/delete-checkpoints": "true"}
        create_taskrun(kube, namespace, body)
        wait_phase(kube, namespace, "long", "Running")
        pod_name = status(kube, namespace, "long")["podName"]
        wait_for(lambda: running_container(kube, namespace, pod_name), 60, f"pod {pod_name} to run")
        wait_step(kube, namespace, "long", 1)
        assert TASKRUN_FINALIZER in get_taskrun(kube, namespace, "long")["metadata"]["finalizers"]
        pod_path = f"/api/v1/namespaces/{namespace}/pods/{pod_name}"
        assert POD_FINALIZER in kube.get(pod_path)["metadata"]["finalizers"]

        uninstall = helm(cluster, "uninstall", "spotrun", "--namespace", release_ns, "--wait", check=False)
        if uninstall.returncode != 0:
            logs = kubectl(cluster, "-n", release_ns, "logs", "job/spotrun-operator-uninstall", check=False)
            pytest.fail(f"helm uninstall failed: {uninstall.stderr}\nhook Job's log:\n{logs.stdout}{logs.stderr}")

        assert gone(kube, deployment)
        assert TASKRUN_FINALIZER not in (get_taskrun(kube, namespace, "long")["metadata"].get("finalizers") or [])
        pod = kube.get(pod_path)
        assert POD_FINALIZER not in (pod["metadata"].get("finalizers") or [])
        assert pod["status"]["phase"] == "Running"  # the cleanup stops nothing of the user's
        assert checkpoint_step(kube, namespace, "long") >= 1  # and deletes no checkpoint
        jobs = kube.get(f"/apis/batch/v1/namespaces/{release_ns}/jobs")["items"]
        assert not jobs, "the hook Job outlived a successful uninstall"
        roles = kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{release_ns}/roles")["items"]
        assert not roles, f"hook RBAC left behind: {[r['metadata']['name'] for r in roles]}"
        cluster_roles = kube.get("/apis/rbac.authorization.k8s.io/v1/clusterroles")["items"]
        assert not [r for r in cluster_roles if r["metadata"]["name"].endswith(f"-{release_ns}")]

        kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/long")
        wait_for(
            lambda: gone(kube, f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/long"), 30, "the TaskRun"
        )
        wait_for(lambda: gone(kube, pod_path), 60, f"pod {pod_name} to be collected")
        kube.delete(f"/api/v1/namespaces/{namespace}")
        wait_for(lambda: gone(kube, f"/api/v1/namespaces/{namespace}"), 120, f"namespace {namespace} to be deleted")
    finally:
        helm(cluster, "uninstall", "spotrun", "--namespace", release_ns, "--no-hooks", check=False)
        for ns in (namespace, release_ns):
            kubectl(cluster, "delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
