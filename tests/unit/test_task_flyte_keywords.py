"""flytekit's `@task` keywords under `@spotrun.task`: Flyte code runs with only its import changed.

retries, timeout and interruptible keep their meaning; flytekit's other keywords are accepted with
one warning saying where each belongs; a keyword flytekit has not either, or a bad value, is
refused when the function is decorated.
"""

from __future__ import annotations

import datetime
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import spotrun
import yaml
from spotrun import IgnoredTaskOptionWarning, TaskTimeoutError, _cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def outside_a_taskrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPOTRUN_TASKRUN", "SPOTRUN_CHECKPOINT_URI", "SPOTRUN_ATTEMPT", "SPOTRUN_RESUME_FROM"):
        monkeypatch.delenv(name, raising=False)


def test_flyte_code_with_its_usual_keywords_runs_and_warns_once_naming_the_ignored_ones() -> None:
    attempts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @spotrun.task(
            cache=True,
            cache_version="1.0",
            retries=1,
            interruptible=True,
            timeout=datetime.timedelta(minutes=5),
            requests={"cpu": "2"},  # flytekit.Resources in Flyte code: any object is accepted
            limits={"memory": "4Gi"},
            container_image="ghcr.io/me/train:1",
            enable_deck=True,
        )
        def train(epochs: int) -> int:
            cp = spotrun.current_context().checkpoint
            done = int(cp.read() or b"0")
            attempts.append(done)
            cp.write(str(epochs).encode())
            if done == 0:
                raise RuntimeError("the first attempt fails")
            return done

    assert train(3) == 3
    assert attempts == [0, 3]  # retries=1: a second attempt, resumed from the first's checkpoint
    ignored = [w for w in caught if issubclass(w.category, IgnoredTaskOptionWarning)]
    assert len(ignored) == 1, [str(w.message) for w in caught]
    message = str(ignored[0].message)
    for name in ("cache", "cache_version", "requests", "limits", "container_image", "enable_deck"):
        assert f"{name}:" in message
    assert "no cache of task outputs" in message
    assert "spec.template" in message
    assert ignored[0].filename == __file__  # points at the decorated function, not at spotrun
    assert train.spotrun_options.interruptible is True  # type: ignore[attr-defined]
    assert train.spotrun_options.timeout == 300  # type: ignore[attr-defined]


def test_the_honoured_keywords_alone_warn_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @spotrun.task(retries=0, timeout=10, interruptible=False)
        def quiet() -> str:
            return "ok"

    assert quiet() == "ok"


def test_deprecated_warns_with_the_tasks_message() -> None:
    with pytest.warns(FutureWarning, match="task old is deprecated: use new"):

        @spotrun.task(deprecated="use new")
        def old() -> None:
            pass


@pytest.mark.parametrize(
    ("keywords", "error", "message"),
    [
        ({"retires": 3}, TypeError, "unexpected keyword argument 'retires'; it takes retries, timeout, interruptible"),
        ({"catch": True}, TypeError, "accepts \\(without effect\\) flytekit's .*cache"),
        ({"retries": "3"}, TypeError, "retries=...\\) takes a whole number, not str '3'"),
        ({"retries": True}, TypeError, "takes a whole number, not bool"),
        ({"retries": 1.5}, TypeError, "takes a whole number, not float"),
        ({"retries": -1}, ValueError, "retries must be 0 or more, not -1"),
        ({"timeout": "5m"}, TypeError, "timeout=...\\) takes seconds or a datetime.timedelta, not str '5m'"),
        ({"timeout": None}, TypeError, "takes seconds or a datetime.timedelta, not NoneType"),
        ({"timeout": False}, TypeError, "not bool"),
        ({"timeout": -1}, ValueError, "timeout must be 0 \\(no limit\\) or more seconds, not -1"),
        ({"timeout": datetime.timedelta(seconds=-5)}, ValueError, "timeout must be 0"),
        ({"timeout": math.nan}, ValueError, "timeout must be 0"),
        ({"interruptible": "yes"}, TypeError, "interruptible=...\\) takes True, False or None, not str 'yes'"),
        ({"interruptible": 0}, TypeError, "not int 0"),
        ({"deprecated": True}, TypeError, "deprecated=...\\) takes the deprecation message as a str, not bool"),
    ],
)
def test_bad_keywords_are_refused_at_decoration(keywords: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        spotrun.task(**keywords)


def test_a_bad_keyword_is_refused_on_the_bare_form_too() -> None:
    def work() -> None:
        pass

    with pytest.raises(TypeError, match="unexpected keyword argument 'retry'"):
        spotrun.task(work, retry=1)  # type: ignore[call-overload]


def armed() -> tuple[float, Any]:
    """What SIGALRM is set to now (pytest-timeout arms it around each test): seconds left, handler."""
    return signal.getitimer(signal.ITIMER_REAL)[0], signal.getsignal(signal.SIGALRM)


def left_as_it_was(before: tuple[float, Any], started: float) -> bool:
    """Whether SIGALRM is back as `before` had it, less the time since `started`."""
    left, handler = armed()
    if before[0] == 0:
        return left == 0 and handler == before[1]
    return handler == before[1] and abs(before[0] - left - (time.monotonic() - started)) < 0.5


def test_timeout_stops_an_attempt_and_a_retry_gets_a_fresh_one() -> None:
    attempts = []
    before = armed()

    @spotrun.task(retries=1, timeout=0.3)
    def slow() -> str:
        attempt = spotrun.current_context().attempt
        attempts.append(attempt)
        if attempt == 1:
            time.sleep(30)
        time.sleep(0.2)  # under the limit: each attempt has its own
        return "done"

    started = time.monotonic()
    assert slow() == "done"
    assert attempts == [1, 2]
    assert time.monotonic() - started < 5
    assert left_as_it_was(before, started)  # nothing of the task's left armed


def test_timeout_raises_a_timeout_error_saying_which_task_and_limit() -> None:
    @spotrun.task(timeout=datetime.timedelta(milliseconds=200))
    def stuck() -> None:
        time.sleep(30)

    with pytest.raises(TaskTimeoutError, match=r"task stuck ran longer than its timeout of 0\.2s") as raised:
        stuck()
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.seconds == 0.2


def test_a_nested_tasks_timeout_leaves_the_outer_one_armed() -> None:
    @spotrun.task(timeout=0.2)
    def inner(sleep: float) -> None:
        time.sleep(sleep)

    @spotrun.task(timeout=1.0)
    def outer() -> float:
        with pytest.raises(TaskTimeoutError, match="task inner"):
            inner(30)  # the inner limit fires first
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.3 < left < 0.85  # the outer limit is back, less the time spent
        time.sleep(30)
        return left

    before, started = armed(), time.monotonic()
    with pytest.raises(TaskTimeoutError, match="task outer"):
        outer()
    assert left_as_it_was(before, started)


def test_outside_the_main_thread_a_timeout_is_not_enforced_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    @spotrun.task(timeout=0.1)
    def brief() -> str:
        time.sleep(0.3)
        return "finished"

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(brief()))
    thread.start()
    thread.join(10)
    assert results == ["finished"]
    assert "timeout=0.1s is not enforced outside the main thread" in caplog.text


def test_in_a_pod_a_timed_out_task_fails_its_attempt(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        import spotrun

        @spotrun.task(timeout=0.3)
        def work():
            time.sleep(30)

        work()
        """
    )
    env = {
        **os.environ,
        "SPOTRUN_TASKRUN": "demo",
        "SPOTRUN_ATTEMPT": "1",
        "SPOTRUN_CHECKPOINT_URI": str(tmp_path / "cp"),
        "SPOTRUN_RESULT_PATH": str(tmp_path / "termination-log"),
    }
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=20)
    assert run.returncode == 1
    assert "TaskTimeoutError: task work ran longer than its timeout of 0.3s" in run.stderr
    assert not (tmp_path / "termination-log").exists()


TASKS = """
import spotrun
from datetime import timedelta

@spotrun.task(retries=4, interruptible=False, cache=True)
def steady(n: int):
    pass

@spotrun.task(interruptible=True)
def cheap(n: int):
    pass

RETRIES = 2

@spotrun.task(retries=RETRIES, timeout=timedelta(hours=1))
def named(n: int):
    pass
"""


@pytest.mark.parametrize(
    ("task", "flags", "capacity", "retries"),
    [
        ("steady", [], "on-demand", 4),  # interruptible=False: on-demand; retries as written
        ("steady", ["--capacity", "spot", "--retries", "1"], "spot", 1),  # the command line wins
        ("cheap", [], "spot", None),  # no retries written: the operator's default
        ("named", [], "spot", None),  # a name is not evaluated (the file is never imported)
    ],
)
def test_submit_takes_interruptible_and_retries_from_the_decorator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, flags: list[str], capacity: str, retries: int | None
) -> None:
    file = tmp_path / "tasks.py"
    file.write_text(TASKS)
    argv = ["submit", str(file), task, "--n", "1", "--image", "img:1", "--name", "t", "--dry-run", *flags]
    assert _cli.main(argv) == 0
    _, taskrun = yaml.safe_load_all(capsys.readouterr().out)
    assert taskrun["spec"]["capacity"] == {"type": capacity}
    assert taskrun["spec"].get("retries") == retries
