"""`spotrun` and `kubectl spotrun` on the local cluster's TaskRuns: get, describe, logs across a
preemption, checkpoints by name, suspend, resume, delete, and the errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from spotrun import Checkpoint, open_storage

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import (
    create_taskrun,
    current_pod,
    status,
    steps_taskrun,
    taskrun_gone,
    wait_phase,
    wait_step,
)

pytestmark = pytest.mark.integration
SEED = Path(__file__).resolve().parents[2] / "examples" / "checkpoint_seed.py"


def _env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, **cluster.env_vars(), "PATH": f"{cluster.dir / 'bin'}:{os.environ['PATH']}"}


def spotrun(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spotrun", *args],
        env=_env(cluster),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_submit_runs_the_seed_example_from_its_file_and_waits_for_its_result(
    cluster: Cluster, kube: Client, task_namespace: str
) -> None:
    done = spotrun(
        cluster,
        "submit",
        str(SEED),
        "use_checkpoint",
        "--n_iterations",
        "10",
        "--image",
        "ghcr.io/spotrun/spotrun:0.1.0",
        "--retries",
        "3",
        "--name",
        "seed-submitted",
        "--wait",
        "-n",
        task_namespace,
        timeout=300,
    )
    print(done.stdout)  # shown with -rP: the README's example of `spotrun submit --wait`
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip().splitlines()[-1] == "9", done.stdout
    assert "taskrun/seed-submitted: Succeeded" in done.stdout
    final = status(kube, task_namespace, "seed-submitted")
    assert (final["result"], final["attempt"], final["failures"]) == (9, 4, 3)
    code = kube.get(f"/api/v1/namespaces/{task_namespace}/configmaps/seed-submitted-code")
    (owner,) = code["metadata"]["ownerReferences"]
    taskrun = kube.get(f"/apis/spotrun.dev/v1alpha1/namespaces/{task_namespace}/taskruns/seed-submitted")
    assert (owner["kind"], owner["uid"]) == ("TaskRun", taskrun["metadata"]["uid"]), "it goes with the TaskRun"
    every = spotrun(cluster, "logs", "seed-submitted", "--all", "-n", task_namespace)
    assert every.returncode == 0, every.stderr
    for attempt in (1, 2, 3):
        assert f"[attempt {attempt}] spotrun: recoverable failure, exiting with code 75" in every.stdout
    assert every.stdout.rstrip().endswith("[attempt 4] 9"), every.stdout
    second = spotrun(cluster, "logs", "seed-submitted", "--attempt", "2", "-n", task_namespace)
    assert "Failed at iteration" in second.stdout
    assert "[attempt" not in second.stdout
    again = spotrun(
        cluster,
        "submit",
        str(SEED),
        "use_checkpoint",
        "--n_iterations",
        "1",
        "--image",
        "i",
        "--name",
        "seed-submitted",
        "-n",
        task_namespace,
    )
    assert again.returncode == 2
    assert "TaskRun seed-submitted exists already" in again.stderr


def test_logs_follow_a_taskrun_across_a_preemption_and_describe_tells_of_it(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    create_taskrun(kube, task_namespace, steps_taskrun("followed", steps=30, step_seconds=0.3))
    wait_for(lambda: status(kube, task_namespace, "followed").get("podName"), 30, "the first pod")
    follow = subprocess.Popen(
        [sys.executable, "-m", "spotrun", "logs", "followed", "-f", "-n", task_namespace],
        env=_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_step(kube, task_namespace, "followed", 5)
        live = current_pod(kube, task_namespace, "followed")
        assert live is not None
        cluster.preempt_node(live["spec"]["nodeName"], grace=3)
        final = wait_phase(kube, task_namespace, "followed", "Succeeded", "Failed", timeout=180)
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert final["phase"] == "Succeeded", final.get("message")
    assert follow.returncode == 0, err
    resumed = final["result"]["resumed"]
    assert "attempt 1 resumed from step 0" in out, out
    assert f"attempt 2 resumed from step {resumed[1]}" in out, out
    assert "--- attempt 2 (followed-a2) ---" in out
    assert out.index("attempt 1 resumed") < out.index("--- attempt 2") < out.index("attempt 2 resumed")

    # The preempted node went, and attempt 1's logs with it: its pod is gone, or still names a node
    # that came back under the same name and does not know it (either way, it says so).
    every = spotrun(cluster, "logs", "followed", "--all", "-n", task_namespace)
    assert every.returncode == 0, every.stderr
    assert "spotrun: the logs of attempt 1 (followed-a1) " in every.stderr
    assert f"[attempt 2] attempt 2 resumed from step {resumed[1]}" in every.stdout

    described = spotrun(cluster, "describe", "followed", "-n", task_namespace)
    print(described.stdout)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert "Phase:          Succeeded" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and line.split()[0] in ("1", "2")]
    assert rows[0][4:6] == ["Interrupted", "TerminationByKubelet"], text
    assert rows[1][4] == "Succeeded"
    assert rows[1][-1] == final["attempts"][1]["resumedFrom"], "the checkpoint attempt 2 started from"
    assert "AttemptInterrupted" in text

    listed = spotrun(cluster, "checkpoints", "list", "followed", "-n", task_namespace)
    assert listed.returncode == 0, listed.stderr
    newest = Checkpoint(open_storage(final["checkpoint"]["uri"], read_only=True)).latest()
    assert newest is not None
    assert newest.id in listed.stdout
    got = spotrun(cluster, "get", "followed", "-n", task_namespace)
    assert "Succeeded" in got.stdout


def test_suspend_resume_and_delete_by_name(cluster: Cluster, kube: Client, task_namespace: str) -> None:
    create_taskrun(kube, task_namespace, steps_taskrun("paused", steps=400, step_seconds=0.2))
    wait_step(kube, task_namespace, "paused", 3)
    suspended = spotrun(cluster, "suspend", "paused", "-n", task_namespace)
    assert suspended.returncode == 0, suspended.stderr
    wait_phase(kube, task_namespace, "paused", "Suspended", timeout=60)
    resumed = spotrun(cluster, "resume", "paused", "-n", task_namespace)
    assert resumed.returncode == 0, resumed.stderr
    wait_for(
        lambda: (s := status(kube, task_namespace, "paused")).get("phase") == "Running" and s["attempt"] == 2,
        60,
        "attempt 2 running",
    )
    uri = status(kube, task_namespace, "paused")["checkpoint"]["uri"]
    gone = spotrun(cluster, "delete", "paused", "--checkpoints", "--wait", "-n", task_namespace, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.strip() == "taskrun/paused deleted; the operator deletes its checkpoints"
    assert taskrun_gone(kube, task_namespace, "paused")
    assert Checkpoint(open_storage(uri, read_only=True)).latest() is None


def test_errors_say_what_to_do(cluster: Cluster, task_namespace: str, tmp_path: Path) -> None:
    missing = spotrun(cluster, "describe", "nothing-here", "-n", task_namespace)
    assert missing.returncode == 2
    assert f"TaskRun nothing-here: not found in the current context, namespace {task_namespace}" in missing.stderr
    closed = tmp_path / "kubeconfig"
    closed.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    unreachable = spotrun(cluster, "get", "--kubeconfig", str(closed))
    assert unreachable.returncode == 2
    assert "no cluster reachable" in unreachable.stderr, unreachable.stderr
    no_run = spotrun(cluster, "logs", "nothing-here", "-n", task_namespace)
    assert (no_run.returncode, "not found" in no_run.stderr) == (2, True)


def test_kubectl_runs_it_as_a_plugin(cluster: Cluster, task_namespace: str) -> None:
    plugin = Path(sys.executable).parent / "kubectl-spotrun"
    assert plugin.exists(), "installed with the package (pyproject's scripts)"
    env = {**_env(cluster), "PATH": f"{plugin.parent}:{_env(cluster)['PATH']}"}
    done = subprocess.run(
        ["kubectl", "spotrun", "get", "-n", task_namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"No TaskRuns in the current context, namespace {task_namespace}" in done.stderr
