"""`make demo`: the whole mission on the local cluster, from a fresh clone.

Builds what is missing, starts the local cluster, installs Spotrun with its Helm chart, runs the
training example as a TaskRun on spot capacity, preempts its spot node in the middle of the run,
and shows the TaskRun resume from its checkpoint and succeed. Running it twice works; `make
demo-down` cleans up.

With `--real` (`make demo REAL=1`) the nodes run the real kubelet with containerd and runc, the
operator and the task run in the images built from the project's Dockerfile and
examples/Dockerfile, and the preemption is the kubelet's graceful node shutdown.

With `--kind` (`make kind-demo`) the same on kind (`kind/cluster.yaml`, `python -m localcluster
kind up`), where the node is reclaimed as a drain does: `kubectl drain`, then `kubectl uncordon`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotrun import Checkpoint, open_storage  # noqa: E402

from localcluster.images import EXAMPLES_IMAGE, PROJECT_IMAGE  # noqa: E402
from localcluster.install import install  # noqa: E402

NAMESPACE = "default"


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


@dataclasses.dataclass
class Lab:
    """Where the demo runs: how to reach the cluster and S3, and how a node is lost and comes back."""

    env: dict[str, str]  # for kubectl and helm: KUBECONFIG, PATH
    pod_s3: dict[str, str]  # the S3 settings as pods see them (the Secret)
    bucket: str
    helm_settings: list[str]
    examples_image: bool  # the task runs in the examples' image (else from this checkout)
    reclaim: Callable[[str], None]  # the node is lost...
    bring_back: Callable[[str], None]  # ...and capacity comes back, as an autoscaler does
    how: str  # the reclaim, in words

    def kubectl(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            ["kubectl", *argv], env=self.env, input=stdin, capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def get(self, *argv: str) -> dict[str, object]:
        out = self.kubectl("get", *argv, "-o", "json", check=False)
        return json.loads(out) if out else {}


def local_lab(real: bool) -> Lab:
    from localcluster.cluster import Cluster  # noqa: PLC0415

    cluster = Cluster()
    if cluster.running() and cluster.real_nodes != real:
        say(f"Stopping the running cluster of {'process' if real else 'real'} nodes to start one of the other kind")
        cluster.down()
    say("Starting the local cluster (the first run builds Kubernetes from source: minutes)")
    cluster.up(real_nodes=real)
    settings: list[str] = []
    if real:
        from localcluster import images  # noqa: PLC0415 - buildah and debootstrap only for real nodes

        say("Building the Dockerfile's image and the examples' image (cached), importing them into every node")
        cluster.add_real_images(list(images.build_project_images(REPO).values()))
        settings = ["--set", "image.pullPolicy=Never"]
    env = {**os.environ, **cluster.env_vars(), "HELM_CACHE_HOME": str(cluster.dir / "helm")}
    env["PATH"] = f"{cluster.dir / 'bin'}:{env['PATH']}"
    s3 = {k: v for k, v in cluster.env_vars().items() if k.startswith("AWS_") and k != "AWS_DEFAULT_REGION"}
    os.environ.update(s3)  # this script reads the checkpoints' progress from S3 as the SDK does
    how = "the VM is reclaimed, the kubelet's graceful shutdown gives the pod SIGTERM"
    return Lab(
        env,
        s3,
        cluster.config["bucket"],
        settings,
        real,
        lambda node: cluster.preempt_node(node, grace=5),
        lambda node: cluster.add_node(node, "spot"),
        how,
    )


def kind_lab() -> Lab:
    from localcluster import kind  # noqa: PLC0415

    cluster = kind.Kind()
    say("Starting kind with spot and on-demand pools (the first run builds kind's pieces and images: minutes)")
    cluster.up()
    cluster.enter()  # where the cluster's published ports are (the stand-in engine's network)
    keys = kind.s3_keys(cluster.dir)
    os.environ.update({**keys, "AWS_ENDPOINT_URL": kind.S3_FROM_HOST})
    lab = Lab(
        cluster.env(),
        {**keys, "AWS_ENDPOINT_URL": kind.S3_IN_CLUSTER},
        kind.S3_BUCKET,
        ["--set", "image.pullPolicy=Never"],  # loaded into the nodes by `kind load`
        True,
        lambda node: None,
        lambda node: None,
        "`kubectl drain`: its pods are evicted, the pod gets SIGTERM",
    )
    lab.reclaim = lambda node: lab.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data") and None
    lab.bring_back = lambda node: lab.kubectl("uncordon", node) and None
    return lab


def main() -> None:
    args = sys.argv[1:]
    lab = kind_lab() if "--kind" in args else local_lab(real="--real" in args)

    say("Installing Spotrun with its Helm chart")
    # Example hourly prices (an m5.large's on-demand and a typical spot price): status.cost and SAVED.
    prices = '{"spot": 0.0301, "on-demand": 0.096, "currency": "USD"}'
    settings = ["--set", "logFormat=text", "--set-json", f"prices={prices}", *lab.helm_settings]
    prefix = f"s3://{lab.bucket}/demo/"
    print(
        install(
            lab.env,
            s3=lab.pod_s3,
            prefix=prefix,
            task_namespaces=[NAMESPACE],
            watch_only_tasks=False,
            settings=settings,
        ).strip()
    )

    say("Applying the training TaskRun (examples/train-taskrun.yaml) on spot capacity")
    lab.kubectl("-n", NAMESPACE, "delete", "taskruns.spotrun.dev", "train", "--ignore-not-found", "--wait=true")
    manifest = (REPO / "examples" / "train-taskrun.yaml").read_text()
    if lab.examples_image:  # the Spotrun image with numpy
        manifest = manifest.replace(PROJECT_IMAGE, EXAMPLES_IMAGE)
    else:  # process nodes have no images: the task runs examples/train.py from this checkout
        manifest = manifest.replace("/opt/spotrun/examples", str(REPO / "examples"))
    lab.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=manifest)
    # A fresh prefix for every demo run, so it starts from step 0.
    lab.kubectl("-n", NAMESPACE, "annotate", "taskruns.spotrun.dev", "train", "spotrun.dev/delete-checkpoints=true")

    started = time.monotonic()
    last_table = ""
    preempted_at: float | None = None
    old_pod = ""
    recovery: float | None = None
    disruption: threading.Thread | None = None
    while True:
        table = lab.kubectl("get", "taskruns", "-n", NAMESPACE, "-o", "wide")
        # Print the table when something but its AGE column changed.
        if without_age(table) != without_age(last_table):
            print(f"[{time.monotonic() - started:5.1f}s]\n{table.rstrip()}", flush=True)
            last_table = table
        status: dict[str, object] = lab.get("taskruns.spotrun.dev", "train", "-n", NAMESPACE).get("status") or {}  # type: ignore[assignment]
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        if preempted_at is None and status.get("phase") == "Running" and step(status) >= 100:
            old_pod, node = str(status["podName"]), str(status["nodeName"])
            say(f"Reclaiming spot node {node} at step {step(status)}: {lab.how}")
            preempted_at = time.monotonic()

            def lose_and_bring_back(node: str = node) -> None:
                lab.reclaim(node)
                lab.bring_back(node)  # while the TaskRun has already moved on

            disruption = threading.Thread(target=lose_and_bring_back)
            disruption.start()
        if preempted_at is not None and recovery is None and status.get("podName") not in ("", old_pod):
            pod = lab.get("pod", str(status["podName"]), "-n", NAMESPACE)
            if (pod.get("status") or {}).get("phase") == "Running":  # type: ignore[union-attr]
                recovery = time.monotonic() - preempted_at
        time.sleep(0.5)

    if disruption is not None:
        disruption.join()
    result: dict[str, object] = status.get("result") or {}  # type: ignore[assignment]
    resumed: list[int] = result.get("resumed", [])  # type: ignore[assignment]
    say("Done")
    print(f"phase:            {status.get('phase')} ({status.get('message')})")
    counts = f"interruptions: {status.get('interruptions')}  failures: {status.get('failures')}"
    print(f"attempts:         {status.get('attempt')}  {counts}")
    print(f"resumed from:     step {resumed[-1] if len(resumed) > 1 else 0} (steps each attempt started at: {resumed})")
    if recovery is not None:
        print(f"recovery:         {recovery:.1f}s from the node's reclaim to the next attempt running")
    usage: dict[str, float] = status.get("usage") or {}  # type: ignore[assignment]
    cost: dict[str, object] = status.get("cost") or {}  # type: ignore[assignment]
    print(f"lost work:        {status.get('lostSeconds', 0)}s (from the last checkpoint to the reclaimed pod's end)")
    print(f"ran:              {usage.get('spotSeconds', 0)}s on spot, {usage.get('onDemandSeconds', 0)}s on demand")
    if cost:
        print(
            f"cost:             {cost.get('spent')} {cost.get('currency', '')} against {cost.get('onDemand')} on demand"
        )
        print(f"saved:            {cost.get('savedPercent')}%")
    print(f"final loss:       {result.get('loss')}")
    if status.get("phase") != "Succeeded" or len(resumed) < 2 or resumed[-1] <= 0:
        raise SystemExit("demo: the TaskRun did not succeed after resuming from a checkpoint")


def without_age(table: str) -> list[list[str]]:
    """The table's cells, cut where the header's columns start, without the AGE column."""
    lines = table.rstrip().splitlines()
    if not lines:
        return []
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    rows = [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)] for line in lines]
    if "AGE" not in rows[0]:
        return rows
    age = rows[0].index("AGE")
    return [row[:age] + row[age + 1 :] for row in rows]


def step(status: dict[str, object]) -> int:
    uri = (status.get("checkpoint") or {}).get("uri")  # type: ignore[union-attr]
    if not uri:
        return -1
    latest = Checkpoint(open_storage(str(uri), read_only=True)).latest()
    return -1 if latest is None or latest.step is None else latest.step


if __name__ == "__main__":
    main()
