"""What the operator reads of checkpoint storage, on the local cluster's S3 server (versitygw)."""

from __future__ import annotations

import json

import pytest
from spotrun import Checkpoint, open_storage

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.operator_fixtures import create_taskrun, steps_taskrun, taskrun, wait_phase

pytestmark = pytest.mark.integration


def test_a_taskrun_naming_another_tenants_prefix_gets_nothing_of_it_in_its_status(
    kube: Client, cluster: Cluster, task_namespace: str
) -> None:
    # Another tenant's checkpoint, under the prefix the operator assigned to their TaskRun.
    theirs = f"s3://{cluster.config['bucket']}/taskruns/other-tenant/their-run/"
    committed = Checkpoint(open_storage(theirs), attempt=1).write(b"their model", step=4242)
    # A task that never touches storage: whatever its status shows of a checkpoint, the operator read.
    body = taskrun("nosy", ["python", "-c", "import time; time.sleep(1)"], checkpoint={"uri": theirs})
    create_taskrun(kube, task_namespace, body)
    status = wait_phase(kube, task_namespace, "nosy", "Succeeded", timeout=120)
    assert status["checkpoint"] == {"uri": theirs}
    shown = json.dumps(status)
    assert committed.id not in shown
    assert "4242" not in shown
    (condition,) = [c for c in status["conditions"] if c["type"] == "CheckpointsRead"]
    assert (condition["status"], condition["reason"]) == ("False", "URINotAssigned")
    assert f"taskruns/{task_namespace}/nosy/" in condition["message"]
    (attempt,) = status["attempts"]
    assert "lostSeconds" not in attempt or attempt.get("lostSecondsEstimated") is True


def test_the_operator_shows_the_newest_checkpoint_under_the_prefix_it_assigned(
    kube: Client, task_namespace: str
) -> None:
    body = steps_taskrun("ours", steps=3, step_seconds=0.1)
    create_taskrun(kube, task_namespace, body)
    status = wait_phase(kube, task_namespace, "ours", "Succeeded", "Failed", timeout=120)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["checkpoint"]["step"] == 3  # read after its pod ended: its last commit
    assert all(c["type"] != "CheckpointsRead" for c in status.get("conditions", []))
