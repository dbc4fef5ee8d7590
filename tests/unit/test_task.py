"""`@spotrun.task` locally (retries from the checkpoint) and in a pod (run once, report, exit codes)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import spotrun
from spotrun import RecoverableError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "checkpoint_seed.py"


def load_seed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("checkpoint_seed", SEED)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def outside_a_taskrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPOTRUN_TASKRUN", "SPOTRUN_CHECKPOINT_URI", "SPOTRUN_ATTEMPT", "SPOTRUN_RESUME_FROM"):
        monkeypatch.delenv(name, raising=False)


def test_the_seed_returns_9_locally_each_retry_resuming(caplog: pytest.LogCaptureFixture) -> None:
    seed = load_seed()
    assert seed.checkpointing_example(n_iterations=10) == 9
    retries = [r.getMessage() for r in caplog.records if "retrying from its checkpoint" in r.getMessage()]
    assert [m.split("Failed at iteration ")[1].split(",")[0] for m in retries] == ["3", "6", "9"]


def test_the_seed_with_two_retries_raises() -> None:
    seed = load_seed()
    two_retries = spotrun.task(retries=2)(seed.use_checkpoint.__wrapped__)
    with pytest.raises(RecoverableError, match="Failed at iteration 9"):
        two_retries(n_iterations=10)


def test_each_local_run_starts_fresh_unless_a_checkpoint_uri_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = load_seed()
    assert seed.checkpointing_example(n_iterations=10) == 9
    assert seed.checkpointing_example(n_iterations=10) == 9
    monkeypatch.setenv("SPOTRUN_CHECKPOINT_URI", str(tmp_path / "kept"))
    assert seed.checkpointing_example(n_iterations=10) == 9
    # A second run resumes from the kept checkpoint ("10"): nothing is left to iterate.
    assert seed.checkpointing_example(n_iterations=10) == 0


def test_local_attempts_are_numbered_and_see_earlier_checkpoints() -> None:
    seen = []

    @spotrun.task(retries=2)
    def flaky() -> int:
        ctx = spotrun.current_context()
        seen.append((ctx.attempt, ctx.checkpoint.read()))
        ctx.checkpoint.write(f"attempt {ctx.attempt}".encode())
        if ctx.attempt < 3:
            raise ValueError("not yet")
        return ctx.attempt

    assert flaky() == 3
    assert seen == [(1, None), (2, b"attempt 1"), (3, b"attempt 2")]


def test_spotrun_run_cli_runs_the_seed_with_typed_arguments() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "spotrun", "run", str(SEED), "checkpointing_example", "--n_iterations", "10"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "9"


def test_spotrun_run_rejects_unknown_parameters() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "spotrun", "run", str(SEED), "checkpointing_example", "--n", "10"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert run.returncode == 2
    assert "has no parameter 'n'" in run.stderr


IN_POD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import spotrun

    @spotrun.task(retries=5)
    def work(mode):
        spotrun.current_context().checkpoint.write(b"progress")
        if mode == "recoverable":
            raise spotrun.RecoverableError("try again")
        if mode == "crash":
            raise KeyError("bug")
        return {{"loss": 0.25, "mode": mode}}

    work(sys.argv[1])
    """
)


@pytest.mark.parametrize(("mode", "code"), [("ok", 0), ("recoverable", 75), ("crash", 1)])
def test_in_a_pod_a_task_runs_once_and_reports(tmp_path: Path, mode: str, code: int) -> None:
    result_path = tmp_path / "termination-log"
    env = {
        **os.environ,
        "SPOTRUN_TASKRUN": "demo",
        "SPOTRUN_ATTEMPT": "4",
        "SPOTRUN_CHECKPOINT_URI": str(tmp_path / "cp"),
        "SPOTRUN_RESULT_PATH": str(result_path),
    }
    run = subprocess.run(
        [sys.executable, "-c", IN_POD.format(repo=str(REPO)), mode],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == code, run.stderr
    infos = spotrun.Checkpoint(spotrun.open_storage(str(tmp_path / "cp"))).list()
    assert [(i.attempt, i.sequence) for i in infos] == [(4, 1)]  # once, as attempt 4: no local retries
    if code == 0:
        assert json.loads(result_path.read_text()) == {"result": {"loss": 0.25, "mode": "ok"}}
    else:
        assert not result_path.exists()


def test_current_context_outside_a_task_says_what_to_set() -> None:
    with pytest.raises(spotrun.ConfigError, match="SPOTRUN_CHECKPOINT_URI"):
        spotrun.current_context()


def test_bad_attempt_number_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTRUN_ATTEMPT", "zero")
    with pytest.raises(spotrun.ConfigError, match="SPOTRUN_ATTEMPT='zero' is not a whole number"):
        spotrun.Settings.from_env()


def test_if_corrupt_comes_from_the_environment_and_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(spotrun.ConfigError, match="SPOTRUN_CHECKPOINT_IF_CORRUPT='panic' must be one of start-over"):
        spotrun.Settings.from_env({"SPOTRUN_CHECKPOINT_IF_CORRUPT": "panic"})
    store = tmp_path / "store"
    spotrun.Checkpoint(spotrun.open_storage(str(store)), attempt=1).write(os.urandom(100 << 10))
    (data,) = (p for p in (store / "data").rglob("*") if p.is_file())
    data.write_bytes(os.urandom(data.stat().st_size))  # the only checkpoint fails its digest
    monkeypatch.setenv("SPOTRUN_CHECKPOINT_URI", str(store))

    @spotrun.task
    def resume() -> bytes | None:
        return spotrun.current_context().checkpoint.read()

    assert resume() is None  # the default: start over (logged, and `corrupt` names it)
    monkeypatch.setenv("SPOTRUN_CHECKPOINT_IF_CORRUPT", "raise")
    with pytest.raises(spotrun.NoIntactCheckpointError):
        resume()
