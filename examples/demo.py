"""`make demo`: the whole mission on the local cluster, from a fresh clone.

Builds what is missing, starts the local cluster, installs Spotrun with its Helm chart, runs the
training example as a TaskRun on spot capacity, preempts its spot node in the middle of the run,
and shows the TaskRun resume from its checkpoint and succeed. Running it twice works; `make
demo-down` cleans up.

With `--real` (`make demo REAL=1`) the nodes run the real kubelet with containerd and runc, the
operator and the task run in the images built from the project's Dockerfile and
examples/Dockerfile, and the preemption is the kubelet's graceful node shutdown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotrun import Checkpoint, open_storage  # noqa: E402

from localcluster.cluster import Cluster  # noqa: E402
from localcluster.kube import ApiError  # noqa: E402

NAMESPACE = "default"
TASKRUN = f"/apis/spotrun.dev/v1alpha1/namespaces/{NAMESPACE}/taskruns/train"


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(cluster: Cluster, *argv: str) -> str:
    env = {**os.environ, **cluster.env_vars(), "HELM_CACHE_HOME": str(cluster.dir / "helm")}
    binary = str(cluster.dir / "bin" / argv[0])
    return subprocess.run([binary, *argv[1:]], env=env, check=True, capture_output=True, text=True).stdout


def main() -> None:
    real = "--real" in sys.argv[1:]
    cluster = Cluster()
    if real and cluster.running() and not cluster.real_nodes:
        say("Stopping the running cluster of process nodes to start one with real nodes")
        cluster.down()
    if not real and cluster.running() and cluster.real_nodes:
        say("Stopping the running cluster of real nodes to start one with process nodes")
        cluster.down()
    say("Starting the local cluster (the first run builds Kubernetes from source: minutes)")
    cluster.up(real_nodes=real)
    image_settings: list[str] = []
    if real:
        from localcluster import images  # noqa: PLC0415 - buildah and debootstrap only for real nodes

        say("Building the Dockerfile's image and the examples' image (cached), importing them into every node")
        cluster.add_real_images(list(images.build_project_images(REPO).values()))
        image_settings = ["--set", "image.pullPolicy=Never"]
    kube = cluster.admin()
    env = cluster.env_vars()
    aws = {k: v for k, v in env.items() if k.startswith("AWS_") and k != "AWS_DEFAULT_REGION"}
    os.environ.update(aws)  # this script reads the checkpoints' progress from S3 as the SDK does

    say("Installing Spotrun with its Helm chart")
    for namespace in (NAMESPACE, "spotrun-system"):
        try:
            kube.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
        except ApiError as err:
            if err.status != 409:
                raise
        try:
            kube.delete(f"/api/v1/namespaces/{namespace}/secrets/spotrun-s3")
        except ApiError as err:
            if err.status != 404:
                raise
        kube.create(f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "spotrun-s3"}, "stringData": aws})
    print(
        run(
            cluster,
            "helm",
            "upgrade",
            "--install",
            "spotrun",
            str(REPO / "charts" / "spotrun"),
            "--namespace",
            "spotrun-system",
            "--wait",
            "--timeout",
            "120s",
            "--set",
            f"checkpoint.prefix=s3://{env['LOCALCLUSTER_BUCKET']}/demo/",
            "--set",
            "checkpoint.secret=spotrun-s3",
            "--set",
            "operatorS3Secret=spotrun-s3",
            "--set",
            "logFormat=text",
            *image_settings,
        ).strip()
    )

    say("Applying the training TaskRun (examples/train-taskrun.yaml) on spot capacity")
    try:
        kube.delete(TASKRUN)
        while True:
            kube.get(TASKRUN)
            time.sleep(0.5)
    except ApiError as err:
        if err.status != 404:
            raise
    manifest = (REPO / "examples" / "train-taskrun.yaml").read_text()
    if real:  # the examples' image: the Spotrun image with numpy
        manifest = manifest.replace("ghcr.io/spotrun/spotrun:0.1.0", "ghcr.io/spotrun/spotrun-examples:0.1.0")
    else:  # process nodes have no images: the task runs examples/train.py from this checkout
        manifest = manifest.replace("/opt/spotrun/examples", str(REPO / "examples"))
    run_with_input(cluster, manifest)
    # A fresh prefix for every demo run, so it starts from step 0.
    kube.merge_patch(TASKRUN, {"metadata": {"annotations": {"spotrun.dev/delete-checkpoints": "true"}}})

    started = time.monotonic()
    last_table = ""
    preempted_at: float | None = None
    old_pod = ""
    recovery: float | None = None
    autoscaler: threading.Thread | None = None
    while True:
        table = run(cluster, "kubectl", "get", "taskruns", "-n", NAMESPACE)
        # Print the table when something but its AGE column changed.
        if table.rsplit(" ", 1)[0] != last_table.rsplit(" ", 1)[0]:
            print(f"[{time.monotonic() - started:5.1f}s]\n{table.rstrip()}", flush=True)
            last_table = table
        status = kube.get(TASKRUN).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        if preempted_at is None and status.get("phase") == "Running" and step(status) >= 100:
            old_pod, node = status["podName"], status["nodeName"]
            say(f"Preempting spot node {node} at step {step(status)}: the VM is reclaimed, the pod gets SIGTERM")
            cluster.preempt_node(node, grace=5)
            preempted_at = time.monotonic()
            # The autoscaler brings a node back, while the TaskRun has already moved on.
            autoscaler = threading.Thread(target=cluster.add_node, args=(node, "spot"))
            autoscaler.start()
        if preempted_at is not None and recovery is None and status.get("podName") not in ("", old_pod):
            pod = kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{status['podName']}")
            if pod.get("status", {}).get("phase") == "Running":
                recovery = time.monotonic() - preempted_at
        time.sleep(0.5)

    if autoscaler is not None:
        autoscaler.join()
    result = status.get("result") or {}
    resumed = result.get("resumed", [])
    say("Done")
    print(f"phase:            {status.get('phase')} ({status.get('message')})")
    counts = f"interruptions: {status.get('interruptions')}  failures: {status.get('failures')}"
    print(f"attempts:         {status.get('attempt')}  {counts}")
    print(f"resumed from:     step {resumed[-1] if len(resumed) > 1 else 0} (steps each attempt started at: {resumed})")
    if recovery is not None:
        print(f"recovery:         {recovery:.1f}s from the node's reclaim to the next attempt running")
    print(f"final loss:       {result.get('loss')}")
    if status.get("phase") != "Succeeded":
        raise SystemExit(1)


def step(status: dict[str, object]) -> int:
    uri = (status.get("checkpoint") or {}).get("uri")  # type: ignore[union-attr]
    if not uri:
        return -1
    latest = Checkpoint(open_storage(str(uri), read_only=True)).latest()
    return -1 if latest is None or latest.step is None else latest.step


def run_with_input(cluster: Cluster, manifest: str) -> None:
    env = {**os.environ, **cluster.env_vars()}
    subprocess.run(
        [str(cluster.dir / "bin" / "kubectl"), "apply", "-n", NAMESPACE, "-f", "-"],
        input=manifest,
        env=env,
        check=True,
        text=True,
    )


if __name__ == "__main__":
    main()
