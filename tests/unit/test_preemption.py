"""SIGTERM handling: callbacks then exit 143, or cooperative stop when the task polls preempted()."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

COOPERATIVE = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    import spotrun

    assert not spotrun.preempted()
    assert spotrun.seconds_left() == 7.0   # the whole grace period, before SIGTERM
    print("ready", flush=True)
    while not spotrun.preempted():
        time.sleep(0.01)
    left = spotrun.seconds_left()
    time.sleep(0.5)
    print(f"stopping cleanly with {{left:.1f}}s then {{spotrun.seconds_left():.1f}}s left", flush=True)
    """
)

UNAWARE = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    import spotrun
    spotrun.current_context()   # a task that never asks about preemption
    print("ready", flush=True)
    time.sleep(60)
    """
)


def run_and_terminate(script: str, tmp_path: Path) -> tuple[int, str]:
    env = {**os.environ, "SPOTRUN_GRACE_SECONDS": "7", "SPOTRUN_CHECKPOINT_URI": str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-c", script.format(repo=str(REPO))], env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_a_task_that_polls_preempted_stops_by_itself(tmp_path: Path) -> None:
    code, out = run_and_terminate(COOPERATIVE, tmp_path)
    assert code == 0
    match = re.search(r"with ([\d.]+)s then ([\d.]+)s left", out)
    assert match, out
    left, later = float(match.group(1)), float(match.group(2))
    assert 6.0 <= left <= 7.0
    assert later < left


def test_a_task_unaware_of_preemption_exits_143_at_once(tmp_path: Path) -> None:
    code, _ = run_and_terminate(UNAWARE, tmp_path)
    assert code == 143
