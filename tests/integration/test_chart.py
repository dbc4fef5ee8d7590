"""The Helm chart: lint, template, its CRD identical to manifests', and a real install on the local cluster."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import REPO, SECRET, create_taskrun, kubectl, steps_taskrun, wait_phase

pytestmark = pytest.mark.integration
CHART = REPO / "charts" / "spotrun"


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.env_vars(), "HELM_CACHE_HOME": str(cluster.dir / "helm")}
    return subprocess.run(
        [str(cluster.dir / "bin" / "helm"), *args], env=env, capture_output=True, text=True, timeout=300, check=check
    )


def test_the_charts_crd_is_byte_identical_to_the_manifests() -> None:
    chart_crd = (CHART / "crds" / "taskruns.spotrun.dev.yaml").read_bytes()
    assert chart_crd == (REPO / "manifests" / "crd" / "taskruns.spotrun.dev.yaml").read_bytes()


def test_helm_lint_and_template(cluster: Cluster) -> None:
    lint = helm(cluster, "lint", str(CHART), "--strict", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = helm(cluster, "template", "t", str(CHART), "--set", "capacityProfile=karpenter").stdout
    assert 'SPOTRUN_CAPACITY_PROFILE: "karpenter"' in rendered
    assert "ServiceMonitor" not in rendered
    monitored = helm(cluster, "template", "t", str(CHART), "--set", "metrics.serviceMonitor.enabled=true").stdout
    assert "kind: ServiceMonitor" in monitored
    refused = helm(cluster, "template", "t", str(CHART), "--set", "capacityProfile=cheap", check=False)
    assert refused.returncode != 0
    assert "capacityProfile must be one of generic, gke, eks, karpenter, aks" in refused.stderr


def test_helm_install_runs_the_operator_in_cluster(cluster: Cluster, kube: Client, namespace: str) -> None:
    env = cluster.env_vars()
    aws = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    data = {k: base64.b64encode(v.encode()).decode() for k, v in aws.items()}
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": SECRET}, "data": data})
    release_ns = f"{namespace}-spotrun"
    kube.create("/api/v1/namespaces", {"metadata": {"name": release_ns}})
    kube.create(f"/api/v1/namespaces/{release_ns}/secrets", {"metadata": {"name": "operator-s3"}, "data": data})
    try:
        helm(
            cluster,
            "install",
            "spotrun",
            str(CHART),
            "--namespace",
            release_ns,
            "--set",
            f"checkpoint.prefix=s3://{env['LOCALCLUSTER_BUCKET']}/helm/",
            "--set",
            f"checkpoint.secret={SECRET}",
            "--set",
            "operatorS3Secret=operator-s3",
            "--set",
            f"watchNamespaces={{{namespace}}}",
        )
        deployment = f"/apis/apps/v1/namespaces/{release_ns}/deployments/spotrun-operator"
        wait_for(lambda: kube.get(deployment).get("status", {}).get("availableReplicas") == 1, 120, "the operator")
        create_taskrun(kube, namespace, steps_taskrun("by-helm", steps=3, step_seconds=0.1))
        final = wait_phase(kube, namespace, "by-helm", "Succeeded", "Failed")
        assert final["phase"] == "Succeeded"
        assert final["checkpoint"]["uri"].startswith(f"s3://{env['LOCALCLUSTER_BUCKET']}/helm/")
        assert final["checkpoint"]["attempt"] == 1  # the operator read the manifest with its own secret
        pods = kube.get(f"/api/v1/namespaces/{release_ns}/pods")["items"]
        assert pods[0]["spec"]["serviceAccountName"] == "spotrun-operator"
    finally:
        helm(cluster, "uninstall", "spotrun", "--namespace", release_ns, "--wait", check=False)
        kubectl(cluster, "delete", "namespace", release_ns, "--wait=false", check=False)
