"""Real nodes against process nodes, measured side by side in one run: start-up, idle memory, pod start.

    python bench/real_nodes.py [--pods 10] [--cold-build]

For each kind of node it starts a fresh local cluster (warm binary and image caches), then:
- `up`: seconds until every node is Ready (real nodes: their images imported too);
- idle memory: resident set of each node's own processes (kubelet; for a real node also
  containerd, its private D-Bus and the logind stand-in), read from /proc;
- node add: seconds from `node add` until the new node is Ready;
- pod start: `kubectl apply`-equivalent create of a pod to its Running phase, one pod at a time.
Ratios are real / process. `--cold-build` also times building the real nodes' pieces (kubelet,
kube-proxy, containerd, CNI plugins, the images) into empty caches (the Go module cache stays).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcluster import images, toolchain  # noqa: E402
from localcluster.cluster import Cluster, _rss_bytes  # noqa: E402
from tests.integration.helpers import container, create_pod, phase_is, pod, wait_for  # noqa: E402

Obj = dict[str, Any]


def sleeper(name: str, node: str, real: bool) -> Obj:
    image = {"image": images.PROJECT_IMAGE, "imagePullPolicy": "Never"} if real else {"image": "python"}
    script = "import time; time.sleep(600)"
    return pod(name, container(script=script, **image), node=node, terminationGracePeriodSeconds=0)


def node_rss(cluster: Cluster, node: str) -> float:
    """MiB resident in the node's own processes."""
    total = 0
    for process in ("kubelet", "containerd", "dbus", "logind"):
        pid = cluster._pid(f"{process}-{node}")
        if pid:
            total += _rss_bytes(pid)
    return total / 2**20


def measure(real: bool, pods: int) -> dict[str, Any]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="spotrun-bench-nodes-")))
    started = time.monotonic()
    try:
        cluster.up(real_nodes=real)
        if real:
            cluster.add_real_images(list(images.build_project_images(REPO).values()))
        up = time.monotonic() - started
        time.sleep(10)  # idle: let start-up work settle before reading memory
        rss = [node_rss(cluster, n) for n in ("spot-1", "spot-2", "ondemand-1")]
        added = time.monotonic()
        cluster.add_node("spot-3", "spot")
        add = time.monotonic() - added
        kube = cluster.admin()
        ns = f"bench-{uuid.uuid4().hex[:5]}"
        kube.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        wait_for(lambda: kube.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 30, "the namespace")
        starts = []
        for i in range(pods):
            name = f"p{i}"
            t0 = time.monotonic()
            create_pod(kube, ns, sleeper(name, "spot-1", real))
            wait_for(lambda name=name: phase_is(kube, ns, name, "Running"), 120, f"{name} to run", interval=0.02)
            starts.append(time.monotonic() - t0)
            kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
        return {"up": up, "rss": rss, "add": add, "starts": starts}
    finally:
        cluster.down(quiet=True)
        shutil.rmtree(cluster.dir, ignore_errors=True)


def cold_build() -> dict[str, float]:
    """Seconds to build the real nodes' pieces and the images into empty caches."""
    cache = Path(tempfile.mkdtemp(prefix="spotrun-bench-cache-"))
    env = {**os.environ, "SPOTRUN_CACHE_DIR": str(cache), "GOCACHE": str(cache / "go-build")}
    times = {}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "localcluster", "build", "--real-nodes"], env=env, check=True, cwd=REPO)
    times["all binaries (control plane + real nodes), empty GOCACHE"] = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "localcluster.images", "build"], env=env, check=True, cwd=REPO)
    times["images (debootstrap, base, Dockerfile, examples)"] = time.monotonic() - t0
    with contextlib.suppress(OSError):
        subprocess.run(["rm", "-rf", str(cache)], check=False)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--cold-build", action="store_true")
    args = parser.parse_args()
    toolchain.build(real_nodes=True)
    process = measure(False, args.pods)
    real = measure(True, args.pods)

    def row(what: str, p: float, r: float, unit: str) -> None:
        print(f"{what:34} {p:9.2f}{unit:3} {r:9.2f}{unit:3} {r / max(p, 1e-6):8.2f}x")

    print(f"\n{'':34} {'process':>12} {'real':>12} {'real/process':>9}")
    row("up (all nodes Ready)", process["up"], real["up"], "s")
    row("idle RSS per node (mean)", statistics.mean(process["rss"]), statistics.mean(real["rss"]), "MiB")
    row("node add to Ready", process["add"], real["add"], "s")
    row(
        "pod start p50 (create to Running)",
        statistics.median(process["starts"]),
        statistics.median(real["starts"]),
        "s",
    )
    row("pod start max", max(process["starts"]), max(real["starts"]), "s")
    print(f"\nreal pod starts: {', '.join(f'{s:.2f}' for s in real['starts'])} s")
    print(f"real idle RSS per node: {', '.join(f'{r:.0f}' for r in real['rss'])} MiB")
    if args.cold_build:
        for what, seconds in cold_build().items():
            print(f"cold build, {what}: {seconds:.0f}s")


if __name__ == "__main__":
    main()
