"""Reclaim notices on the local cluster: `node notice` taints a running node, and the process kubelet
rewrites a running pod's downward-API files when its annotations change, as the kubelet does."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from localcluster.cluster import NOTICE_TAINT, SPOT_TAINT, Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import SPOT_TOLERATION, container, create_pod, get_pod, pod, running_container, wait_for

pytestmark = pytest.mark.integration

ANNOTATION = "spotrun.dev/notice"
NOTICE_DIR = "/var/run/spotrun"  # where the operator mounts it (podbuild.NOTICE_DIR)
PROJECTED_DIR = "/var/run/spotrun-projected"
# Prints both files every 0.2 s, as the SDK polls the notice file.
PRINT_NOTICE = f"""
import pathlib, time
plain, projected = pathlib.Path('{NOTICE_DIR}/notice'), pathlib.Path('{PROJECTED_DIR}/notice')
while True:
    print(f'notice={{plain.read_text()}}|{{projected.read_text()}}', flush=True)
    time.sleep(0.2)
"""


def notice_pod(name: str) -> dict[str, object]:
    """A pod on a process node whose container mounts the notice annotation twice: as a downwardAPI
    volume (the operator's) and as a projected volume's downwardAPI source beside a token; and an
    emptyDir, which an annotation leaves alone."""
    item = {"path": "notice", "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION}']"}}
    body = pod(
        name,
        container(
            script=PRINT_NOTICE,
            volumeMounts=[
                {"name": "notice", "mountPath": NOTICE_DIR, "readOnly": True},
                {"name": "projected", "mountPath": PROJECTED_DIR, "readOnly": True},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        ),
        volumes=[
            {"name": "notice", "downwardAPI": {"items": [item]}},
            {
                "name": "projected",
                "projected": {"sources": [{"downwardAPI": {"items": [item]}}, {"serviceAccountToken": {"path": "t"}}]},
            },
            {"name": "scratch", "emptyDir": {}},
        ],
        nodeSelector={"node.kubernetes.io/instance-type": "localcluster-process"},
        tolerations=[SPOT_TOLERATION],
    )
    return body


def log_lines(kube: Client, namespace: str, name: str) -> list[str]:
    text: str = kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}/log")["text"]
    return text.splitlines()


def annotate(kube: Client, namespace: str, name: str, value: str | None) -> float:
    kube.merge_patch(f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"annotations": {ANNOTATION: value}}})
    return time.monotonic()


def test_running_pod_sees_its_notice_annotation_change_in_its_downward_api_files(
    cluster: Cluster, kube: Client, namespace: str
) -> None:
    create_pod(kube, namespace, notice_pod("reader"))
    started = wait_for(lambda: running_container(kube, namespace, "reader"), 60, "reader to run")
    first_id = started["status"]["containerStatuses"][0]["containerID"]
    # No annotation yet: both files exist and are empty, as the kubelet writes them.
    wait_for(lambda: "notice=|" in log_lines(kube, namespace, "reader"), 30, "the empty notice in the log")

    notice = json.dumps({"kind": "Reclaim", "taint": NOTICE_TAINT, "seconds": 120})  # quotes: written raw
    patched = annotate(kube, namespace, "reader", notice)
    wanted = f"notice={notice}|{notice}"
    wait_for(lambda: wanted in log_lines(kube, namespace, "reader"), 5, "the new notice in both files", 0.1)
    seen_after = time.monotonic() - patched
    assert seen_after < 5

    annotate(kube, namespace, "reader", None)  # removed again: empty files
    wait_for(lambda: log_lines(kube, namespace, "reader")[-1] == "notice=|", 5, "the notice gone again", 0.1)

    # Never a half-written file: every line shows each file empty or whole.
    allowed = {f"notice={a}|{b}" for a in ("", notice) for b in ("", notice)}
    assert set(log_lines(kube, namespace, "reader")) <= allowed
    status = get_pod(kube, namespace, "reader")["status"]["containerStatuses"][0]
    assert "running" in status["state"]
    assert (status["restartCount"], status["containerID"]) == (0, first_id)  # seen without a restart
    # Only the volumes that show the annotation were rewritten: not the service-account volume
    # (whose downward-API file is the namespace), nor the emptyDir.
    kubelet_log = (cluster.logs / f"kubelet-{started['spec']['nodeName']}.log").read_text().splitlines()
    updated = {line.split()[6] for line in kubelet_log if "Updated volume" in line and f" {namespace}/reader " in line}
    assert updated == {"notice", "projected"}


@pytest.fixture
def spot_node(cluster: Cluster, kube: Client) -> Iterator[str]:
    """A process spot node of the test's own, so tainting it leaves the shared nodes alone."""
    name = f"notice-{uuid.uuid4().hex[:6]}"
    cluster.add_node(name, "spot", real=False)
    yield name
    if cluster.node_running(name):
        cluster.kill_node(name)
    try:
        kube.delete(f"/api/v1/nodes/{name}")
    except ApiError as err:
        if err.status != 404:
            raise


def test_node_notice_taints_the_running_node_and_nothing_else(cluster: Cluster, kube: Client, spot_node: str) -> None:
    value = cluster.notice_node(spot_node)
    assert value.startswith("notice-")
    node = kube.get(f"/api/v1/nodes/{spot_node}")
    taints = node["spec"]["taints"]
    assert SPOT_TAINT in taints  # the node's own taint is kept
    assert {"key": NOTICE_TAINT, "value": value, "effect": "NoSchedule"} in taints
    assert not node["spec"].get("unschedulable")  # no cordon: the node only got the warning

    cluster.notice_node(spot_node, NOTICE_TAINT, "event-2")  # the same key again: replaced
    cluster.notice_node(spot_node, "karpenter.sh/disrupted", "")
    taints = kube.get(f"/api/v1/nodes/{spot_node}")["spec"]["taints"]
    assert [t for t in taints if t["key"] == NOTICE_TAINT] == [
        {"key": NOTICE_TAINT, "value": "event-2", "effect": "NoSchedule"}
    ]
    assert {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"} in taints
    assert SPOT_TAINT in taints
    assert cluster.node_running(spot_node)
    ready = next(c for c in kube.get(f"/api/v1/nodes/{spot_node}")["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_node_notice_on_a_node_that_does_not_run_says_so(cluster: Cluster) -> None:
    with pytest.raises(SystemExit, match="there is no node no-such-node"):
        cluster.notice_node("no-such-node")
