"""A stop written from a stale view of a pod that has just failed on its own (issue 25, defect 9),
against the real API server of the local cluster: the stop carries the resourceVersion the pass
read, so the API server refuses it, and the failure is counted as one, not as Stopped."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from spotrun_operator import names
from spotrun_operator.api import Api, Conflict
from spotrun_operator.cache import PodStore
from spotrun_operator.config import Config
from spotrun_operator.controller import Controller

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import SECRET, create_taskrun, status, taskrun

Obj = dict[str, Any]


@pytest.fixture
def own_controller(cluster: Cluster, task_namespace: str, no_other_operator: None) -> Iterator[Controller]:
    """A Controller in this process on the test's namespace, informers running, no workers: the test
    runs its passes and can hold its pod cache back. The session's operator is paused meanwhile."""
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.dir / "kubeconfig"))
    config = Config(
        namespaces=(task_namespace,),
        checkpoint_prefix=f"s3://{cluster.config['bucket']}/taskruns/",
        checkpoint_secret=SECRET,
        leader_election=False,
        metrics_port=0,
    )
    controller = Controller(Api(client), config, workers=0)
    controller.start_informers()
    assert controller.synced(timeout=30)
    try:
        yield controller
    finally:
        controller.stop()


def cached_pod(controller: Controller, namespace: str, phase: str) -> Obj | None:
    pods = controller.pods.of_taskrun(namespace, "train")
    return pods[0] if pods and pods[0].get("status", {}).get("phase") == phase else None


def test_a_pod_that_failed_on_its_own_is_counted_as_a_failure_not_stopped(
    kube: Client, task_namespace: str, own_controller: Controller
) -> None:
    ns, key, ctl = task_namespace, (task_namespace, "train"), own_controller
    create_taskrun(kube, ns, taskrun("train", ["python", "-c", "import time; time.sleep(2); raise SystemExit(3)"]))
    wait_for(lambda: ctl.taskruns.get(key), 30, "the TaskRun in the cache")
    ctl.sync(key)  # creates attempt 1's pod
    stale = copy.deepcopy(wait_for(lambda: cached_pod(ctl, ns, "Running"), 60, "the pod running"))
    failed = wait_for(lambda: cached_pod(ctl, ns, "Failed"), 60, "the pod failed on its own")
    # The cache held back: the passes read a store that has the pod running still, while the informer
    # goes on filling the real one.
    caught_up, ctl.pods = ctl.pods, PodStore()
    ctl.pods.put(stale)
    kube.merge_patch(f"/apis/spotrun.dev/v1alpha1/namespaces/{ns}/taskruns/train", {"spec": {"suspend": True}})
    wait_for(lambda: (ctl.taskruns.get(key) or {}).get("spec", {}).get("suspend"), 30, "the suspension cached")
    with pytest.raises(Conflict):  # the stop, written on the pod as the pass saw it, is refused
        ctl.sync(key)
    live = kube.get(f"/api/v1/namespaces/{ns}/pods/{failed['metadata']['name']}")
    assert names.ANNOTATION_STOPPED_BY not in (live["metadata"].get("annotations") or {})
    ctl.pods = caught_up
    wait_for(lambda: cached_pod(ctl, ns, "Failed"), 10, "the cache caught up")

    def counted() -> list[Obj] | None:
        try:
            ctl.sync(key)
        except Conflict:  # the TaskRun's cache behind its own status write: the next try
            return None
        attempts: list[Obj] | None = status(kube, ns, "train").get("attempts")
        return attempts

    wait_for(counted, 30, "attempt 1 counted")
    (attempt,) = status(kube, ns, "train")["attempts"]
    assert (attempt["outcome"], attempt.get("exitCode")) == ("Failed", 3), attempt
