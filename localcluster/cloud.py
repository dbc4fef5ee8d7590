"""A stand-in for the cloud provider's node lifecycle controller: deletes Nodes whose VM is gone.

On a cloud, cloud-controller-manager deletes a NotReady Node once the provider says its instance
no longer exists. Here an instance is a kubelet process; one that died (`node kill`) is gone. A
kwok node's instance is the kwok process: when kwok is stopped, its nodes are gone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

from localcluster import kwok
from localcluster.cluster import Cluster
from localcluster.kube import ApiError

log = logging.getLogger("cloud-controller")

# How long a node must be NotReady with its VM gone before its Node is deleted. Long enough
# for the node lifecycle controller's taint eviction to act first, as it does on a real cloud.
GONE_FOR_SECONDS = 15
PERIOD_SECONDS = 2


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m localcluster.cloud")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = Cluster(args.state_dir)
    client = cluster.admin()
    gone_since: dict[str, float] = {}
    while True:
        with contextlib.suppress(Exception):
            # While kwok runs, its nodes' "VM" exists: leave them out of the list (there may be thousands).
            params = {"labelSelector": f"!{kwok.NODE_LABEL}"} if cluster._pid("kwok") is not None else {}
            for node in client.get("/api/v1/nodes", **params)["items"]:
                name = node["metadata"]["name"]
                ready = any(
                    c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
                )
                simulated = node["metadata"].get("labels", {}).get(kwok.NODE_LABEL) == "true"
                if ready or (not simulated and cluster._pid(f"kubelet-{name}") is not None):
                    gone_since.pop(name, None)
                    continue
                first = gone_since.setdefault(name, time.monotonic())
                if time.monotonic() - first >= GONE_FOR_SECONDS:
                    try:
                        client.delete(f"/api/v1/nodes/{name}")
                        log.info("Deleted node %s: its instance no longer exists", name)
                    except ApiError as err:
                        if err.status != 404:
                            raise
                    gone_since.pop(name, None)
        time.sleep(PERIOD_SECONDS)


if __name__ == "__main__":
    main()
