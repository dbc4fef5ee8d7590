"""SIGTERM and interruption notices: callbacks, exit 143 or a cooperative stop, the notice file's watcher."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

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


# ----- interruption notices ------------------------------------------------------------------------

NO_NOTICE = textwrap.dedent(
    """
    import sys, threading, time
    sys.path.insert(0, {repo!r})
    import spotrun

    assert not spotrun.preempted()
    assert "spotrun-notice" in [t.name for t in threading.enumerate()]
    print("ready", flush=True)
    sys.stdin.readline()   # the test made the file empty and let the watcher read it a few times
    print(f"preempted={{spotrun.preempted()}} notice={{spotrun.notice()}}", flush=True)
    """
)

NOTICED = textwrap.dedent(
    """
    import sys, threading, time
    sys.path.insert(0, {repo!r})
    import spotrun

    calls = []

    @spotrun.on_preemption
    def save():
        assert threading.current_thread() is threading.main_thread()
        calls.append(1)
        n = spotrun.notice()
        print(
            f"callback {{len(calls)}}: preempted={{spotrun.preempted()}} left={{spotrun.seconds_left():.1f}} "
            f"reason={{n.reason}} kind={{n.kind}} seconds={{n.seconds:.0f}}",
            flush=True,
        )

    print("ready", flush=True)
    reported = False
    while True:
        time.sleep(0.05)
        if calls and not reported:
            print("running on after the notice", flush=True)
            reported = True
    """
)


class Task:
    """A task in a subprocess with a notice file; its stdout lines are read with a deadline."""

    def __init__(self, script: str, tmp_path: Path, poll: str | None = None) -> None:
        self.notice_file = tmp_path / "notice"
        env = {
            **os.environ,
            "SPOTRUN_GRACE_SECONDS": "7",
            "SPOTRUN_CHECKPOINT_URI": str(tmp_path / "store"),
            "SPOTRUN_NOTICE_FILE": str(self.notice_file),
        }
        if poll is not None:
            env["SPOTRUN_NOTICE_POLL_SECONDS"] = poll
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script.format(repo=str(REPO))],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def line(self, timeout: float = 5) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None

    def write_notice(self, text: str) -> None:
        """Replaces the file atomically, as the kubelet's atomic writer does."""
        temp = self.notice_file.with_name(".notice.tmp")
        temp.write_text(text)
        os.replace(temp, self.notice_file)

    def finish(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate()


def notice_json(age: float, seconds: float, kind: str = "Reclaim") -> str:
    given = (datetime.now(UTC) - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reason = "aws-node-termination-handler/spot-itn"
    return json.dumps({"time": given, "reason": reason, "kind": kind, "seconds": seconds, "future": "ignored"})


def callback_line(line: str) -> dict[str, str]:
    match = re.fullmatch(r"callback (\d): (.*)", line)
    assert match, line
    return {"n": match.group(1), **dict(item.split("=", 1) for item in match.group(2).split())}


def test_without_a_notice_the_task_is_not_preempted(tmp_path: Path) -> None:
    task = Task(NO_NOTICE, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"  # the file is missing: no notice
        task.notice_file.write_text("")
        deadline = time.monotonic() + 0.5  # ten reads of the empty file
        while time.monotonic() < deadline:
            assert task.proc.poll() is None
            time.sleep(0.05)
        assert task.proc.stdin is not None
        task.proc.stdin.write("go\n")
        task.proc.stdin.flush()
        assert task.line() == "preempted=False notice=None"
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err


def test_a_notice_preempts_runs_the_callbacks_in_the_main_thread_and_the_task_runs_on(tmp_path: Path) -> None:
    task = Task(NOTICED, tmp_path)  # the default poll interval, 0.5 s
    try:
        assert task.line() == "ready"
        written = time.monotonic()
        task.write_notice(notice_json(age=10, seconds=120))
        first = callback_line(task.line(timeout=5))
        assert time.monotonic() - written < 1.5
        assert first["n"] == "1"
        assert first["preempted"] == "True"
        assert 108.0 <= float(first["left"]) <= 110.5  # 120 s from a notice given 10 s ago
        assert (first["reason"], first["kind"], first["seconds"]) == (
            "aws-node-termination-handler/spot-itn",
            "Reclaim",
            "120",
        )
        assert task.line() == "running on after the notice"
        assert task.proc.poll() is None

        task.write_notice(notice_json(age=0, seconds=30, kind="Drain"))  # a second notice changes nothing
        task.proc.send_signal(signal.SIGTERM)
        second = callback_line(task.line())
        assert second["n"] == "2"
        assert 6.0 <= float(second["left"]) <= 7.0  # SIGTERM's grace period is the truth now
        assert (second["kind"], second["seconds"]) == ("Reclaim", "120")
        code, err = task.finish()
    finally:
        task.close()
    assert code == 143, err
    assert err.count("Received an interruption notice (aws-node-termination-handler/spot-itn, Reclaim)") == 1


@pytest.mark.parametrize(
    "text", ["not JSON", '{"reason": "no time given", "kind": "Drain", "seconds": 60}'], ids=["not-json", "no-time"]
)
def test_a_malformed_notice_is_a_notice_of_unknown_reason(tmp_path: Path, text: str) -> None:
    task = Task(NOTICED, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        task.write_notice(text)
        first = callback_line(task.line())
        assert (first["preempted"], first["reason"], first["kind"]) == ("True", "Unknown", "Reclaim")
        assert 6.0 <= float(first["left"]) <= 7.0  # SPOTRUN_GRACE_SECONDS
        assert task.line() == "running on after the notice"
        task.proc.send_signal(signal.SIGTERM)
        assert callback_line(task.line())["n"] == "2"
        code, err = task.finish()
    finally:
        task.close()
    assert code == 143, err
    assert err.count("Read a malformed interruption notice") == 1


# ----- chaining to the application's handlers -------------------------------------------------------

KILL_SELF = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    import spotrun

    calls = []

    def terminate_self(expected):
        os.kill(os.getpid(), signal.SIGTERM)   # a real signal: its handler runs in the main thread
        deadline = time.monotonic() + 5
        while len(calls) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
    """
)


def run_script(body: str, tmp_path: Path, **env: str) -> tuple[int, list[str], str]:
    script = (KILL_SELF + textwrap.dedent(body)).format(repo=str(REPO))
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "SPOTRUN_GRACE_SECONDS": "7", "SPOTRUN_CHECKPOINT_URI": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return run.returncode, run.stdout.splitlines(), run.stderr


def test_an_application_sigterm_handler_installed_first_runs_once_per_sigterm_and_decides(tmp_path: Path) -> None:
    code, out, err = run_script(
        """
        def mine(signum, frame):   # a graceful stop of the application's own
            calls.append(signum)

        signal.signal(signal.SIGTERM, mine)
        spotrun.current_context()   # installs Spotrun's handler, which chains to mine
        terminate_self(1)
        print(f"after one SIGTERM: calls={{len(calls)}} preempted={{spotrun.preempted()}}", flush=True)
        terminate_self(2)
        print(f"after two: calls={{len(calls)}}", flush=True)
        """,
        tmp_path,
    )
    assert code == 0, err  # mine returned: the task goes on, as it would without Spotrun
    assert out == ["after one SIGTERM: calls=1 preempted=True", "after two: calls=2"], err
    assert err.count("Received SIGTERM") == 1


def test_the_callbacks_run_before_the_application_handler_whose_exit_stands(tmp_path: Path) -> None:
    code, out, err = run_script(
        """
        def mine(signum, frame):
            print("application handler", flush=True)
            sys.exit(3)

        signal.signal(signal.SIGTERM, mine)

        @spotrun.on_preemption
        def save():
            print(f"callback: preempted={{spotrun.preempted()}}", flush=True)

        terminate_self(1)
        print("not reached", flush=True)
        """,
        tmp_path,
    )
    assert code == 3, err
    assert out == ["callback: preempted=True", "application handler"], err


def test_sigterm_ignored_before_spotrun_is_recorded_and_the_process_goes_on(tmp_path: Path) -> None:
    code, out, err = run_script(
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        spotrun.on_preemption(lambda: calls.append("saved"))   # callbacks would make SIGTERM exit 143
        terminate_self(1)
        print(f"going on: calls={{calls}} preempted={{spotrun.preempted()}}", flush=True)
        """,
        tmp_path,
    )
    assert code == 0, err
    assert out == ["going on: calls=['saved'] preempted=True"], err


def test_a_handler_installed_after_spotrun_replaces_it_and_may_chain_to_it(tmp_path: Path) -> None:
    code, out, err = run_script(
        """
        spotrun.current_context()
        previous = signal.getsignal(signal.SIGTERM)   # Spotrun's: Python's own rule, the last one wins

        def mine(signum, frame):
            calls.append(signum)
            print("mine", flush=True)
            previous(signum, frame)   # keeps Spotrun's: it records the preemption and exits 143

        signal.signal(signal.SIGTERM, mine)
        spotrun.current_context()   # does not take SIGTERM back
        assert signal.getsignal(signal.SIGTERM) is mine
        terminate_self(1)
        print("not reached", flush=True)
        """,
        tmp_path,
    )
    assert code == 143, err
    assert out == ["mine"], err
    assert "Received SIGTERM" in err


NOTICE_CHAINED = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import spotrun
    from spotrun._preemption import NOTICE_SIGNAL

    signal.signal(NOTICE_SIGNAL, lambda signum, frame: print("application handler", flush=True))

    @spotrun.on_preemption   # installs Spotrun's NOTICE_SIGNAL handler over the application's
    def save():
        print("callback", flush=True)

    print("ready", flush=True)
    os.kill(os.getpid(), NOTICE_SIGNAL)   # the application's own use of the signal, before any notice
    sys.stdin.readline()
    """
)


def test_an_application_handler_of_the_notice_signal_still_runs(tmp_path: Path) -> None:
    task = Task(NOTICE_CHAINED, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        assert task.line() == "application handler"  # a delivery not Spotrun's: only the chain runs
        task.write_notice(notice_json(age=0, seconds=60))
        assert task.line() == "callback"  # Spotrun's wake-up: the callbacks, then the chain
        assert task.line() == "application handler"
        assert task.proc.stdin is not None
        task.proc.stdin.write("done\n")
        task.proc.stdin.flush()
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err
