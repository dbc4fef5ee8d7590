"""The examples on an installed Spotrun, with preemption from the outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.conftest import E2E, REPO

pytestmark = pytest.mark.e2e


def test_seed_with_3_retries_succeeds_with_result_9(e2e: E2E) -> None:
    name = e2e.apply_example("seed")
    final = e2e.finished(name)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["result"], final["attempt"], final["failures"], final["interruptions"]) == (9, 4, 3, 0)


def test_seed_with_2_retries_fails(e2e: E2E) -> None:
    name = e2e.apply_example("seed", retries=2)
    final = e2e.finished(name)
    assert final["phase"] == "Failed"
    assert "used up retries (2)" in final["message"]


def _preempt_mid_run(e2e: E2E, name: str, progressed: str) -> None:
    def running_node() -> str:
        status = e2e.status(name)
        pod = status.get("podName")
        if status.get("phase") != "Running" or not pod:
            return ""
        logs = e2e.kubectl("logs", "-n", e2e.namespace, pod, "--all-containers")
        return str(status.get("nodeName", "")) if progressed in logs else ""

    e2e.preempt(e2e.wait(running_node, 300, f"{name} to make progress"))


def test_training_preempted_mid_run_resumes_and_succeeds(e2e: E2E) -> None:
    name = e2e.apply_example("train")

    def checkpointed() -> bool:
        checkpoint = e2e.status(name).get("checkpoint", {})
        return bool(checkpoint.get("uri"))

    e2e.wait(checkpointed, 120, "the checkpoint URI")
    _preempt_mid_run(e2e, name, "step 100 loss")
    final = e2e.finished(name)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["interruptions"], final["failures"]) == (1, 0)
    resumed = final["result"]["resumed"]
    assert resumed[0] == 0
    assert resumed[1] > 0, f"attempt 2 started from zero: {resumed}"


def test_directory_mode_program_survives_a_preemption(e2e: E2E) -> None:
    name = e2e.apply_example("counter")
    _preempt_mid_run(e2e, name, "checkpoint 000001-000003")
    final = e2e.finished(name)
    assert final["phase"] == "Succeeded", final.get("message")
    assert final["interruptions"] == 1
    last_pod = final["podName"]
    logs = e2e.kubectl("logs", "-n", e2e.namespace, last_pod, "-c", "counter")
    starts = [int(n) for n in logs.rsplit("started at:", 1)[1].split()]
    assert starts[0] == 0
    assert starts[1] > 0, f"the second attempt did not resume from the synced directory: {starts}"
    assert json.dumps(final)  # the status is plain JSON


@pytest.mark.skipif(
    os.environ.get("SPOTRUN_E2E_MEMORY_LIMITS") != "1",
    reason="needs nodes that enforce memory limits (SPOTRUN_E2E_MEMORY_LIMITS=1; tests/real_nodes.py sets it)",
)
def test_an_oom_killed_attempt_gets_more_memory(e2e: E2E) -> None:
    """96 MiB written into a 64Mi limit: the runtime kills it; the next attempt gets 2x, capped at 128Mi."""
    task = {
        "name": "task",
        "image": e2e.image,
        "command": ["python", "-c", "data = b'x' * (96 * 2**20); print('wrote', len(data) >> 20, 'MiB')"],
        "resources": {"requests": {"memory": "32Mi"}, "limits": {"memory": "64Mi"}},
    }
    name = e2e.apply_taskrun(
        "oom",
        {
            "template": {"spec": {"containers": [task]}},
            "retries": 1,
            "backoff": {"initialSeconds": 1},
            "resources": {"onOOMKilled": {"factor": 3, "maxMemory": "128Mi"}},
        },
    )
    final = e2e.finished(name, timeout=180)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["failures"], final["oomKills"], final["attempt"]) == (1, 1, 2)
    first, second = final["attempts"]
    assert (first["reason"], first["exitCode"]) == ("OOMKilled", 137)
    assert first["memory"] == {"task": {"requests": "32Mi", "limits": "64Mi"}}
    assert second["memory"] == {"task": {"requests": "96Mi", "limits": "128Mi"}}, "x3, the limit capped at 128Mi"


TORCH = os.environ.get("SPOTRUN_E2E_TORCH", "")
DDP_IMAGE = os.environ.get("SPOTRUN_E2E_DDP_IMAGE", "")


@pytest.mark.skipif(not TORCH, reason="needs torch: SPOTRUN_E2E_TORCH (`make test-ddp` installs it)")
def test_ddp_gang_preempted_mid_run_resumes_every_rank_from_one_checkpoint(e2e: E2E) -> None:
    """examples/ddp_train.py with replicas: 2: rank 1's node is preempted mid-run; the whole gang
    restarts, both ranks from the same step, and the final model is the uninterrupted one's."""

    def point_at_torch(body: dict[str, Any]) -> None:
        pod = body["spec"]["template"]["spec"]
        container = pod["containers"][0]
        if DDP_IMAGE:
            container["image"] = DDP_IMAGE
            return
        # This machine's torch: process nodes' pods are its processes; real nodes mount it.
        container["image"] = e2e.image
        if os.environ.get("SPOTRUN_E2E_TORCH_MOUNT") == "1":  # where the image's user can read it
            pod["volumes"] = [{"name": "torch", "hostPath": {"path": TORCH, "type": "Directory"}}]
            container["volumeMounts"] = [{"name": "torch", "mountPath": "/opt/torch", "readOnly": True}]
            container["env"].append({"name": "PYTHONPATH", "value": "/opt/torch"})
        else:
            container["env"].append({"name": "PYTHONPATH", "value": TORCH})

    name = e2e.apply_example("ddp", edit=point_at_torch)

    def rank_1_node() -> str:
        """Rank 1's node, once the gang has committed step 60 (rank 1 says so once it is committed)."""
        status = e2e.status(name)
        assert status.get("phase") not in ("Succeeded", "Failed"), f"{name} ended before the preempt: {status}"
        if status.get("phase") != "Running":
            return ""
        pod = f"{name}-a1-r1"
        try:
            logs = e2e.kubectl("logs", "-n", e2e.namespace, pod)
        except AssertionError:  # not started yet
            return ""
        if "committed 000001-000003 at step 60" not in logs:
            return ""
        return str(json.loads(e2e.kubectl("get", "pod", "-n", e2e.namespace, pod, "-o", "json"))["spec"]["nodeName"])

    e2e.preempt(e2e.wait(rank_1_node, 300, f"{name} to commit step 60"))
    final = e2e.finished(name, timeout=600)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (2, 1, 0)
    result = final["result"]
    assert result["steps"] == 300
    first, second = result["resumed"]
    assert first == second, f"the ranks resumed from different steps: {result['resumed']}"
    assert first[0] == 0
    assert first[1] >= 60, f"attempt 2 started from step {first[1]}"
    reference = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ddp_train.py"), "--reference"],
        env={**os.environ, "PYTHONPATH": TORCH, "STEPS": "300", "WORLD_SIZE": "2"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    expected = json.loads(reference.stdout)
    assert len(result["parameters"]) == len(expected)
    worst = max(abs(a - b) for a, b in zip(result["parameters"], expected, strict=True))
    assert worst < 1e-4, f"the interrupted run's model differs from the uninterrupted one by {worst}"
    print(f"ddp: both ranks resumed {first}; {len(expected)} parameters within {worst:.1e} of the reference")
