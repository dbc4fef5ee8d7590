"""The local cluster behaves like Kubernetes: pod lifecycle, status, disruptions, RBAC, S3."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import (
    condition,
    container,
    create_pod,
    get_pod,
    phase_is,
    pod,
    pod_gone,
    running_container,
    wait_for,
)
from tests.integration.operator_fixtures import kubectl

pytestmark = pytest.mark.integration

WAIT_FOR_SIGTERM = """
import pathlib, signal, sys, time
out = pathlib.Path('/mnt/spotrun-test')
def on_term(signum, frame):
    (out / 'signal').write_text('SIGTERM')
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(out / 'started').write_text('yes')
time.sleep(600)
"""


@pytest.fixture
def node(cluster: Cluster, kube: Client) -> Iterator[str]:
    """A spot node of the test's own, so disrupting it leaves the shared nodes alone."""
    name = f"node-{uuid.uuid4().hex[:6]}"
    cluster.add_node(name, "spot")
    yield name
    if cluster.node_running(name):
        cluster.kill_node(name)
    try:
        kube.delete(f"/api/v1/nodes/{name}")
    except ApiError as err:
        if err.status != 404:
            raise


def host_volume(path: Path) -> dict[str, object]:
    return {"name": "out", "hostPath": {"path": str(path), "type": "Directory"}}


OUT_MOUNT = {"name": "out", "mountPath": "/mnt/spotrun-test"}


def test_pod_runs_with_env_secret_and_downward_api(cluster: Cluster, kube: Client, namespace: str) -> None:
    kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cr3t").decode()}},
    )
    script = (
        "import os, pathlib;"
        "labels = pathlib.Path('/etc/podinfo/labels').read_text();"
        "print('greeting', os.environ['GREETING']);"
        "pathlib.Path('/dev/termination-log').write_text("
        "f\"{os.environ['POD']}|{os.environ['NODE']}|{os.environ['TOKEN']}|{labels}|{os.getcwd()}\")"
    )
    body = pod(
        "env-pod",
        container(
            script=script,
            env=[
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "GREETING", "value": "hello from $(POD)"},
            ],
            volumeMounts=[{"name": "podinfo", "mountPath": "/etc/podinfo"}],
            workingDir="/tmp",
        ),
        volumes=[
            {
                "name": "podinfo",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels['app']"}}]},
            }
        ],
    )
    body["metadata"]["labels"] = {"app": "demo"}
    create_pod(kube, namespace, body)
    done = wait_for(lambda: phase_is(kube, namespace, "env-pod", "Succeeded", "Failed"), 60, "env-pod to finish")
    assert done["status"]["phase"] == "Succeeded"
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0
    assert state["reason"] == "Completed"
    pod_name, node_name, token, label, cwd = state["message"].split("|")
    assert (pod_name, token, label, cwd) == ("env-pod", "s3cr3t", "demo", "/tmp")
    assert node_name == done["spec"]["nodeName"]
    assert "greeting hello from env-pod" in kubectl(cluster, "-n", namespace, "logs", "env-pod").stdout


def test_exit_code_3_fails_with_reason_error(kube: Client, namespace: str) -> None:
    create_pod(kube, namespace, pod("exit-3", container(script="import sys; sys.exit(3)")))
    done = wait_for(lambda: phase_is(kube, namespace, "exit-3", "Failed", "Succeeded"), 60, "exit-3 to fail")
    assert done["status"]["phase"] == "Failed"
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert condition(done, "Ready")["reason"] == "PodCompleted"  # type: ignore[index]


def test_fallback_to_logs_on_error_reports_the_log_tail(kube: Client, namespace: str) -> None:
    script = "import sys; print('first line'); print('it broke', file=sys.stderr); sys.exit(2)"
    create_pod(
        kube, namespace, pod("fallback", container(script=script, terminationMessagePolicy="FallbackToLogsOnError"))
    )
    done = wait_for(lambda: phase_is(kube, namespace, "fallback", "Failed"), 60, "fallback to fail")
    message = done["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert "first line" in message
    assert "it broke" in message


def test_signal_death_is_128_plus_n(kube: Client, namespace: str) -> None:
    create_pod(
        kube, namespace, pod("killed", container(script="import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    )
    done = wait_for(lambda: phase_is(kube, namespace, "killed", "Failed"), 60, "killed to fail")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_missing_command_binary_is_a_start_error(kube: Client, namespace: str) -> None:
    body = pod("no-binary", {"name": "main", "image": "busybox", "command": ["no-such-binary-anywhere"]})
    create_pod(kube, namespace, body)
    done = wait_for(lambda: phase_is(kube, namespace, "no-binary", "Failed"), 60, "no-binary to fail")
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "StartError"
    assert terminated["exitCode"] == 128
    assert "no-such-binary-anywhere" in terminated["message"]


def test_delete_sends_sigterm_and_the_pod_goes_away(kube: Client, namespace: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    body = pod(
        "graceful",
        container(script=WAIT_FOR_SIGTERM, volumeMounts=[OUT_MOUNT]),
        volumes=[host_volume(tmp_path)],
        terminationGracePeriodSeconds=20,
    )
    create_pod(kube, namespace, body)
    wait_for((tmp_path / "started").exists, 60, "the container to start")
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/graceful")
    wait_for(lambda: pod_gone(kube, namespace, "graceful"), 30, "the pod to be removed after SIGTERM")
    assert (tmp_path / "signal").read_text() == "SIGTERM"


def test_init_containers_run_in_order_and_sidecars_stop_after_main(kube: Client, namespace: str) -> None:
    shared = [{"name": "work", "mountPath": "/work"}]
    sidecar_script = (
        "import pathlib, signal, sys, time\n"
        "def stop(s, f):\n"
        "    pathlib.Path('/work/sidecar-stopped').write_text('yes'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "pathlib.Path('/work/sidecar').write_text('up')\n"
        "time.sleep(600)\n"
    )
    main_script = (
        "import pathlib, time\n"
        "while not pathlib.Path('/work/sidecar').exists(): time.sleep(0.1)\n"
        "order = pathlib.Path('/work/order').read_text()\n"
        "pathlib.Path('/dev/termination-log').write_text(order + '|sidecar-seen')\n"
    )
    body = pod(
        "ordered",
        container(script=main_script, volumeMounts=shared),
        initContainers=[
            container("first", "import pathlib; pathlib.Path('/work/order').write_text('first')", volumeMounts=shared),
            container("sidecar", sidecar_script, volumeMounts=shared, restartPolicy="Always"),
            container(
                "second",
                "import pathlib; p = pathlib.Path('/work/order'); p.write_text(p.read_text() + ',second')",
                volumeMounts=shared,
            ),
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    create_pod(kube, namespace, body)
    done = wait_for(lambda: phase_is(kube, namespace, "ordered", "Succeeded", "Failed"), 60, "ordered to finish")
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "first,second|sidecar-seen"
    sidecar = next(s for s in done["status"]["initContainerStatuses"] if s["name"] == "sidecar")
    assert "terminated" in sidecar["state"]


def test_node_preempt_writes_the_graceful_shutdown_status(
    cluster: Cluster, kube: Client, namespace: str, node: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o777)
    body = pod(
        "on-spot",
        container(script=WAIT_FOR_SIGTERM.replace("sys.exit(0)", "sys.exit(143)"), volumeMounts=[OUT_MOUNT]),
        node=node,
        volumes=[host_volume(tmp_path)],
    )
    create_pod(kube, namespace, body)
    wait_for((tmp_path / "started").exists, 60, "the container to start")
    cluster.preempt_node(node, grace=5)
    done = get_pod(kube, namespace, "on-spot")
    assert done["status"]["phase"] == "Failed"
    assert done["status"]["reason"] == "Terminated"
    assert done["status"]["message"] == "Pod was terminated in response to imminent node shutdown."
    disruption = condition(done, "DisruptionTarget")
    assert disruption is not None
    assert (disruption["status"], disruption["reason"]) == ("True", "TerminationByKubelet")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert (tmp_path / "signal").read_text() == "SIGTERM"
    wait_for(lambda: _node_gone(kube, node), 30, "the Node to be deleted")


def _node_gone(kube: Client, name: str) -> bool:
    try:
        kube.get(f"/api/v1/nodes/{name}")
    except ApiError as err:
        return err.status == 404
    return False


def test_node_kill_leaves_it_to_the_controllers(cluster: Cluster, kube: Client, namespace: str, node: str) -> None:
    create_pod(kube, namespace, pod("doomed", container(script="import time; time.sleep(600)"), node=node))
    wait_for(lambda: running_container(kube, namespace, "doomed"), 60, "doomed to run")
    cluster.kill_node(node)

    def disrupted() -> dict[str, object] | None:
        current = get_pod(kube, namespace, "doomed")
        found = condition(current, "DisruptionTarget")
        return found if found and found["status"] == "True" else None

    disruption = wait_for(disrupted, 90, "a DisruptionTarget condition from the controllers")
    assert disruption["reason"] in ("DeletionByTaintManager", "DeletionByPodGC")
    # The node's Node object goes (the cloud stand-in), then PodGC removes its orphaned pods.
    wait_for(lambda: pod_gone(kube, namespace, "doomed"), 150, "PodGC to remove the pod", interval=1)


def test_eviction_api_marks_the_disruption_and_stops_the_pod(kube: Client, namespace: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    body = pod("evictee", container(script=WAIT_FOR_SIGTERM, volumeMounts=[OUT_MOUNT]), volumes=[host_volume(tmp_path)])
    create_pod(kube, namespace, body)
    wait_for((tmp_path / "started").exists, 60, "the container to start")
    kube.evict(namespace, "evictee")
    evicted = get_pod(kube, namespace, "evictee")
    disruption = condition(evicted, "DisruptionTarget")
    assert disruption is not None
    assert disruption["reason"] == "EvictionByEvictionAPI"
    wait_for(lambda: pod_gone(kube, namespace, "evictee"), 40, "the evicted pod to be removed")
    assert (tmp_path / "signal").read_text() == "SIGTERM"


def test_scheduler_preemption_marks_the_victim(kube: Client, namespace: str, node: str) -> None:
    for name, value in (("low", 10), ("high", 1000)):
        kube.create(
            "/apis/scheduling.k8s.io/v1/priorityclasses",
            {"metadata": {"name": f"{namespace}-{name}"}, "value": value},
        )
    try:
        big = {"requests": {"cpu": "6"}}
        # The victim lingers 3s after SIGTERM, so its DisruptionTarget can be read before it goes.
        slow_exit = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(3), sys.exit(0)))\n"
            "time.sleep(600)"
        )
        low = pod("victim", container(script=slow_exit, resources=big), node=node)
        low["spec"]["priorityClassName"] = f"{namespace}-low"
        create_pod(kube, namespace, low)
        wait_for(lambda: running_container(kube, namespace, "victim"), 60, "the victim to run")
        high = pod("preemptor", container(script="import time; time.sleep(1)", resources=big), node=node)
        high["spec"]["priorityClassName"] = f"{namespace}-high"
        create_pod(kube, namespace, high)

        def preempted() -> dict[str, object] | None:
            try:
                found = condition(get_pod(kube, namespace, "victim"), "DisruptionTarget")
            except ApiError as err:
                if err.status == 404:
                    raise AssertionError("the victim vanished before its DisruptionTarget was seen") from err
                raise
            return found

        disruption = wait_for(preempted, 60, "the scheduler to preempt the victim")
        assert disruption["reason"] == "PreemptionByScheduler"
        wait_for(lambda: phase_is(kube, namespace, "preemptor", "Succeeded"), 90, "the preemptor to run")
    finally:
        for name in ("low", "high"):
            kube.delete(f"/apis/scheduling.k8s.io/v1/priorityclasses/{namespace}-{name}")


def test_service_account_token_is_subject_to_rbac(kube: Client, namespace: str) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "reader"}})
    kube.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    kube.create(
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        {
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    script = """
import json, os, pathlib, ssl, urllib.error, urllib.request
sa = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount')
ns = (sa / 'namespace').read_text()
ctx = ssl.create_default_context(cafile=str(sa / 'ca.crt'))
base = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
def code(path):
    req = urllib.request.Request(base + path, headers={'Authorization': 'Bearer ' + (sa / 'token').read_text()})
    try:
        return urllib.request.urlopen(req, context=ctx).status
    except urllib.error.HTTPError as err:
        return err.code
pathlib.Path('/dev/termination-log').write_text(json.dumps({
    'pods': code(f'/api/v1/namespaces/{ns}/pods'),
    'secrets': code(f'/api/v1/namespaces/{ns}/secrets'),
}))
"""
    create_pod(kube, namespace, pod("rbac", container(script=script), serviceAccountName="reader"))
    done = wait_for(lambda: phase_is(kube, namespace, "rbac", "Succeeded", "Failed"), 60, "rbac to finish")
    answer = json.loads(done["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert answer == {"pods": 200, "secrets": 403}


def test_deployment_pod_runs(kube: Client, namespace: str) -> None:
    labels = {"app": "web"}
    kube.create(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container(script="import time; time.sleep(600)")]},
                },
            },
        },
    )

    def available() -> bool:
        status = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web").get("status", {})
        return bool(status.get("availableReplicas") == 1)

    wait_for(available, 90, "the Deployment to have an available replica")


def test_versitygw_serves_s3_with_conditional_writes(cluster: Cluster) -> None:
    s3 = cluster.s3_client()
    bucket = f"t-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"first")
    assert s3.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"first"
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key="a/b", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"first"
    s3.put_object(Bucket=bucket, Key="a/c", Body=b"new", IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="a/c")["Body"].read() == b"new"


def test_on_failure_restarts_with_back_off_and_keeps_previous_logs(
    cluster: Cluster, kube: Client, namespace: str
) -> None:
    script = (
        "import pathlib, sys\n"
        "marker = pathlib.Path('/scratch/failed-once')\n"
        "if marker.exists():\n"
        "    print('second run'); sys.exit(0)\n"
        "marker.write_text('x'); print('first run'); sys.exit(1)\n"
    )
    body = pod(
        "flaky",
        container(script=script, volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}]),
        restart="OnFailure",
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    create_pod(kube, namespace, body)

    def backing_off() -> dict[str, object] | None:
        statuses = get_pod(kube, namespace, "flaky").get("status", {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return statuses[0] if waiting.get("reason") == "CrashLoopBackOff" else None

    status = wait_for(backing_off, 60, "the container to back off after its first failure")
    assert status["lastState"]["terminated"]["exitCode"] == 1  # type: ignore[index]
    done = wait_for(lambda: phase_is(kube, namespace, "flaky", "Succeeded", "Failed"), 60, "flaky to finish")
    assert done["status"]["phase"] == "Succeeded"
    final = done["status"]["containerStatuses"][0]
    assert final["restartCount"] == 1
    assert final["lastState"]["terminated"]["exitCode"] == 1
    assert kubectl(cluster, "-n", namespace, "logs", "flaky").stdout.strip() == "second run"
    assert kubectl(cluster, "-n", namespace, "logs", "flaky", "--previous").stdout.strip() == "first run"
