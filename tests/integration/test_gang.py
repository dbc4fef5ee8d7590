"""Gangs on the local cluster: a TaskRun with replicas: 2 whose rank loses its spot node mid-run.

The light task (tasks/steps.py) on each rank saves every step; a gang's save is collective, so the
ranks move in step as the ranks of a data-parallel job do. The DDP example (examples/ddp_train.py)
runs in tests/e2e.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from spotrun import open_storage
from spotrun._manifest import Manifest, manifest_key

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.operator_fixtures import Operator, create_taskrun, steps_taskrun, wait_phase, wait_step

pytestmark = pytest.mark.integration

Obj = dict[str, Any]


def _ranks(kube: Client, namespace: str, name: str) -> list[Obj]:
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"spotrun.dev/taskrun={name}")["items"]
    return sorted(pods, key=lambda p: (int(p["metadata"]["labels"]["spotrun.dev/attempt"]), p["metadata"]["name"]))


def _spread() -> Obj:
    """Ranks on different nodes when there is room (so that a node's loss is one rank's)."""
    term = {
        "labelSelector": {"matchLabels": {"spotrun.dev/taskrun": "gang"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }
    }


def test_a_gang_restarts_together_and_every_rank_resumes_from_the_same_checkpoint(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    body = steps_taskrun("gang", steps=16, step_seconds=0.4, replicas=2, pod={"affinity": _spread()})
    create_taskrun(kube, task_namespace, body)
    wait_step(kube, task_namespace, "gang", 4)
    first = [p for p in _ranks(kube, task_namespace, "gang") if p["metadata"]["labels"]["spotrun.dev/attempt"] == "1"]
    assert [p["metadata"]["name"] for p in first] == ["gang-a1-r0", "gang-a1-r1"]
    env = {e["name"]: e.get("value") for e in first[1]["spec"]["containers"][0]["env"]}
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("1", "2", f"gang-a1-r0.gang.{task_namespace}.svc")
    lost = first[1]["spec"]["nodeName"]
    assert first[0]["spec"]["nodeName"] != lost, "the ranks share a node"
    cluster.preempt_node(lost, grace=3)

    final = wait_phase(kube, task_namespace, "gang", "Succeeded", "Failed", timeout=180)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (2, 1, 0)
    attempt = final["attempts"][0]
    assert (attempt["outcome"], attempt["replicas"]) == ("Interrupted", 2)
    assert (attempt["rank"], attempt["node"]) == (1, lost), "the rank on the lost node decided it"
    resumed = final["result"]["resumed"]
    assert resumed[0] == 0
    assert resumed[1] >= 4, f"rank 0 restarted from {resumed[1]}"
    # Rank 1's own state is in its part of the last checkpoint: it resumed from the same step.
    storage = open_storage(final["checkpoint"]["uri"], read_only=True)
    newest = Manifest.from_json(storage.get(manifest_key(final["checkpoint"]["id"])))
    assert newest.ranks == 2
    states = [eval(storage.get(newest.part(r)[0].key).decode()) for r in (0, 1)]
    assert [s["resumed"] for s in states] == [resumed, resumed]
    assert [s["step"] for s in states] == [16, 16]
    service = kube.get(f"/api/v1/namespaces/{task_namespace}/services/gang")
    assert service["spec"]["clusterIP"] == "None"
    # Attempt 2 began only after every pod of attempt 1 had ended: never two gangs at once.
    second = [p for p in _ranks(kube, task_namespace, "gang") if p["metadata"]["labels"]["spotrun.dev/attempt"] == "2"]
    began = min(
        datetime.datetime.fromisoformat(p["metadata"]["creationTimestamp"].replace("Z", "+00:00")) for p in second
    )
    ended = datetime.datetime.fromisoformat(attempt["endTime"].replace("Z", "+00:00"))
    assert began >= ended - datetime.timedelta(seconds=1), (began, ended)


def test_a_rank_missing_from_a_stale_cache_is_looked_up_live_not_counted_as_an_interruption(
    operator: Operator, cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None, tmp_path: Path
) -> None:
    """The operator restarts and its pod informer's first list lacks rank 1 (a seam in the test:
    tests/integration/seams/sitecustomize.py): the pass must read the TaskRun's pods live before it
    counts rank 1 gone, so the gang runs on as attempt 1, with no interruption."""
    name = "stale"
    create_taskrun(kube, task_namespace, steps_taskrun(name, steps=24, step_seconds=0.4, replicas=2))
    wait_step(kube, task_namespace, name, 3)
    hidden = tmp_path / "hidden"
    seams = Path(__file__).resolve().parent / "seams"
    stale = Operator(
        cluster,
        operator.kubeconfig,
        tmp_path / "stale-operator.log",
        PYTHONPATH=os.pathsep.join([str(seams), os.environ.get("PYTHONPATH", "")]),
        SPOTRUN_TEST_HIDE_POD=f"{name}-a1-r1",
        SPOTRUN_TEST_HIDDEN=str(hidden),
    )
    operator.stop()
    try:
        stale.start()
        final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=120)
    finally:
        stale.stop()
        operator.start()
    assert hidden.read_text() == f"{name}-a1-r1", "the seam did not hide rank 1"
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (1, 0, 0)
