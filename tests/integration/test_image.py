"""The Dockerfile's install steps, without a Docker engine: the built wheel in a fresh virtualenv."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"

pytestmark = pytest.mark.integration


def entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    command: list[str] = json.loads(match.group(1))
    return command


def test_the_wheel_installs_in_a_fresh_venv_and_the_entrypoint_runs(tmp_path: Path) -> None:
    # Stage one: `python -m build --wheel`, as the build stage runs it.
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)], check=True, capture_output=True
    )
    (wheel,) = dist.glob("spotrun-*.whl")
    # Stage two: the wheel with its operator extra into a clean interpreter, as the final stage does.
    env_dir = tmp_path / "image"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{wheel}[operator]"], check=True, capture_output=True
    )
    subprocess.run([str(python), "-m", "pip", "check"], check=True, capture_output=True)
    command = entrypoint()
    assert command[:3] == ["python", "-m", "spotrun_operator"]
    # The entrypoint starts and checks its configuration before it needs a cluster.
    run = subprocess.run(
        [str(python), *command[1:], "--help"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "Spotrun TaskRun operator" in run.stdout
    bad = subprocess.run(
        [str(python), *command[1:]],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "SPOTRUN_CAPACITY_PROFILE": "nonsense"},
    )
    assert bad.returncode == 2
    assert "SPOTRUN_CAPACITY_PROFILE='nonsense'" in bad.stderr
    # The same image serves task images: the SDK and its CLI are there.
    cli = subprocess.run([str(env_dir / "bin" / "spotrun"), "--help"], capture_output=True, text=True, check=False)
    assert cli.returncode == 0
    assert "checkpoints" in cli.stdout
