"""Two operator processes elect a leader on a Lease: the standby writes nothing, and takes over when
the leader is SIGKILLed, within the Lease's duration and two tries (14 s); a leader cut off from the
API server has exited before the standby takes over."""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import (
    LivePods,
    Operator,
    create_taskrun,
    current_pod,
    steps_taskrun,
    wait_phase,
    wait_step,
)

LEASE = "/apis/coordination.k8s.io/v1/namespaces/spotrun-system/leases/spotrun-operator"
TAKEOVER_LIMIT = 15.0  # issue 10: a standby takes over within 15 s of the leader's death
RENEW_DEADLINE = 7.0  # spotrun_operator.leader.RENEW_DEADLINE


def holder(kube: Client) -> str:
    try:
        return str(kube.get(LEASE)["spec"].get("holderIdentity") or "")
    except Exception:  # no Lease yet
        return ""


def leading(replica: Operator) -> float | None:
    """spotrun_leader of this replica, from its own metrics endpoint (None: not serving yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("spotrun_leader{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def replicas(
    operator: Operator, kube: Client, task_namespace: str, no_other_operator: None
) -> Iterator[tuple[Operator, Operator]]:
    """Replicas a (leading) and b (standing by) with leader election, while the session's single
    operator is stopped."""

    def replica(n: str) -> Operator:
        log = operator.log.parent / f"replica-{n}.log"
        env = {"SPOTRUN_LEADER_ELECTION": "true", "SPOTRUN_POD_NAME": f"replica-{n}"}
        return Operator(operator.cluster, operator.kubeconfig, log, **env)

    pair = (replica("a"), replica("b"))
    try:
        pair[0].start()
        wait_for(lambda: holder(kube).startswith("replica-a_"), 30, "replica a to take the Lease")
        pair[1].start()
        wait_for(lambda: leading(pair[1]) == 0.0, 30, "replica b to stand by")
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def test_the_standby_takes_over_when_the_leader_is_killed_and_never_two_pods_run(
    replicas: tuple[Operator, Operator], cluster: Cluster, kube: Client, task_namespace: str
) -> None:
    a, b = replicas
    name = "failover"
    create_taskrun(kube, task_namespace, steps_taskrun(name, steps=80, step_seconds=0.25, maxInterruptions=5))
    wait_step(kube, task_namespace, name, 2)
    assert leading(a) == 1.0
    assert leading(b) == 0.0
    assert "Created pod" not in b.log.read_text(), "the standby wrote"

    with LivePods(kube, task_namespace, name) as live:
        old = current_pod(kube, task_namespace, name)
        assert old is not None
        a.kill()  # SIGKILL: the Lease is not given up
        killed = time.monotonic()
        # An interruption while nobody leads: only the new leader can replace the pod.
        kube.delete(f"/api/v1/namespaces/{task_namespace}/pods/{old['metadata']['name']}")
        replacement = wait_for(
            lambda: next(
                (
                    p
                    for p in kube.get(
                        f"/api/v1/namespaces/{task_namespace}/pods", labelSelector=f"spotrun.dev/taskrun={name}"
                    )["items"]
                    if p["metadata"]["labels"].get("spotrun.dev/attempt") == "2"
                ),
                None,
            ),
            60,
            "the replacement pod",
            interval=0.1,
        )
        took = time.monotonic() - killed
        final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=180)
    print(f"standby took over and replaced the pod {took:.1f}s after the leader's SIGKILL")
    assert took <= TAKEOVER_LIMIT, f"the standby needed {took:.1f}s"
    assert holder(kube).startswith("replica-b_")
    assert leading(b) == 1.0
    assert replacement["metadata"]["name"] == f"{name}-a2"
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (2, 1, 0)
    assert max(live.counts) == 1, "two pods of one TaskRun were alive at once"


def test_a_leader_stopped_with_sigterm_hands_over_at_once(
    replicas: tuple[Operator, Operator], kube: Client, task_namespace: str
) -> None:
    a, _ = replicas
    stopped = time.monotonic()
    a.stop()  # SIGTERM: the passes under way finish, the Lease is given up
    after = holder(kube)
    assert after == "" or after.startswith("replica-b_"), f"replica a kept the Lease after it stopped: {after}"
    wait_for(lambda: holder(kube).startswith("replica-b_"), 15, "replica b to take the Lease", interval=0.1)
    took = time.monotonic() - stopped
    print(f"replica b led {took:.1f}s after replica a's SIGTERM")
    assert took < 7.5  # a's shutdown and b's next try (every 2 s); without the hand-over, 8 s or more
    create_taskrun(kube, task_namespace, steps_taskrun("handed-over", steps=3, step_seconds=0.1))
    assert wait_phase(kube, task_namespace, "handed-over", "Succeeded", "Failed")["phase"] == "Succeeded"


class BlackHole:
    """A TCP proxy between one replica and the API server. `swallow()` makes it a dead network path:
    every connection stays open, old and new, and no byte goes through either way from then on (held,
    never delivered), so that the replica's requests hang until their own timeouts."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.swallowing, self.closed = threading.Event(), threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, name="black-hole", daemon=True).start()

    def swallow(self) -> None:
        self.swallowing.set()

    def close(self) -> None:
        self.closed.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(near)
            if self.swallowing.is_set():
                continue  # accepted at the TCP level, never answered
            far = socket.create_connection(self.upstream)
            self.sockets.append(far)
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.swallowing.is_set():
                    self.closed.wait()  # hold it: the connection stays open, the bytes go nowhere
                    return
                dst.sendall(data)


@pytest.fixture
def black_holed_leader(
    operator: Operator, cluster: Cluster, kube: Client, task_namespace: str, no_other_operator: None
) -> Iterator[tuple[Operator, Operator, BlackHole]]:
    """Replica a leads through a BlackHole to the API server, replica b stands by on a direct path."""
    server = urllib.parse.urlsplit(cluster.config["apiserver"])
    hole = BlackHole((server.hostname or "127.0.0.1", server.port or 443))
    config = json.loads(operator.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{hole.port}"
    through_hole = operator.kubeconfig.parent / "black-holed.kubeconfig"
    through_hole.write_text(json.dumps(config))

    def replica(n: str, kubeconfig: Path) -> Operator:
        env = {"SPOTRUN_LEADER_ELECTION": "true", "SPOTRUN_POD_NAME": f"replica-{n}"}
        return Operator(operator.cluster, kubeconfig, operator.log.parent / f"replica-{n}.log", **env)

    a, b = replica("a", through_hole), replica("b", operator.kubeconfig)
    try:
        a.start()
        wait_for(lambda: holder(kube).startswith("replica-a_"), 30, "replica a to take the Lease")
        b.start()
        wait_for(lambda: leading(b) == 0.0, 30, "replica b to stand by")
        yield a, b, hole
    finally:
        hole.close()
        for r in (a, b):
            r.stop()


def test_a_leader_cut_off_from_the_api_server_exits_before_the_standby_takes_over(
    black_holed_leader: tuple[Operator, Operator, BlackHole], kube: Client
) -> None:
    a, b, hole = black_holed_leader
    assert a.proc is not None
    exited: list[datetime.datetime] = []

    def watch_exit() -> None:
        assert a.proc is not None
        a.proc.wait()
        exited.append(datetime.datetime.now(datetime.UTC))

    threading.Thread(target=watch_exit, daemon=True).start()
    cut = time.monotonic()
    hole.swallow()
    wait_for(lambda: holder(kube).startswith("replica-b_"), 40, "replica b to take the Lease", interval=0.1)
    acquired = datetime.datetime.fromisoformat(kube.get(LEASE)["spec"]["acquireTime"].replace("Z", "+00:00"))
    assert exited, f"replica a still ran when replica b took the Lease at {acquired}: two leaders"
    print(
        f"replica a exited {exited[0].isoformat()}, {(acquired - exited[0]).total_seconds():.1f}s before "
        f"replica b took the Lease ({time.monotonic() - cut:.1f}s after the cut)"
    )
    assert exited[0] < acquired
    assert a.proc.returncode == 1
    assert "Lost the Lease" in a.log.read_text()
    wait_for(lambda: leading(b) == 1.0, 10, "replica b to report leading")
