"""Tenant safety on the local cluster: what a TaskRun's author can make the operator do with its credentials."""

from __future__ import annotations

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import create_taskrun, steps_taskrun, taskrun_gone, wait_phase

pytestmark = pytest.mark.integration


def test_the_delete_checkpoints_annotation_never_deletes_a_prefix_the_operator_did_not_assign(
    kube: Client, cluster: Cluster, task_namespace: str
) -> None:
    # Another tenant's data, in the bucket the operator's credentials reach.
    bucket = cluster.config["bucket"]
    s3 = cluster.s3_client()
    s3.put_object(Bucket=bucket, Key="someone-else/precious/data.bin", Body=b"not yours")
    body = steps_taskrun("greedy", steps=3, step_seconds=0.1)
    body["metadata"]["annotations"] = {"spotrun.dev/delete-checkpoints": "true"}
    body["spec"]["checkpoint"] = {"uri": f"s3://{bucket}/someone-else/"}
    create_taskrun(kube, task_namespace, body)
    wait_phase(kube, task_namespace, "greedy", "Succeeded", "Failed", timeout=120)
    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{task_namespace}/taskruns/greedy")
    wait_for(lambda: taskrun_gone(kube, task_namespace, "greedy"), 60, "the TaskRun to be deleted")
    assert s3.get_object(Bucket=bucket, Key="someone-else/precious/data.bin")["Body"].read() == b"not yours"
    events = kube.get(f"/api/v1/namespaces/{task_namespace}/events")["items"]
    kept = [e for e in events if e["involvedObject"].get("name") == "greedy" and e.get("reason") == "CheckpointsKept"]
    assert kept, "no CheckpointsKept Event"
    assert "not the prefix the operator assigned" in kept[0]["message"]
