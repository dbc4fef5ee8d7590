"""SIGTERM and interruption notices: callbacks, exit 143 or a cooperative stop, the notice file's watcher."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from spotrun import _preemption

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
    """A task in a subprocess with a notice file in a downward-API volume; its stdout lines are read
    with a deadline."""

    def __init__(self, script: str, tmp_path: Path, poll: str | None = None) -> None:
        self.volume = tmp_path / "podinfo"
        self.volume.mkdir()
        self.notice_file = self.volume / "notice"  # missing until the first write_notice
        self.writes = 0
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
        """Changes the value as the kubelet's atomic writer does: written into a fresh timestamped
        directory, `..data` swapped to it by renaming a symlink over it, the old directory removed.
        The file is a symlink through `..data`, made at the first write."""
        self.writes += 1
        fresh = self.volume / f"..2025_01_01_00_00_00.{self.writes:09d}"
        fresh.mkdir()
        (fresh / "notice").write_text(text)
        self.point_data_at(fresh.name)
        if not self.notice_file.is_symlink():
            self.notice_file.symlink_to("..data/notice")

    def point_data_at(self, target: str) -> None:
        """Swaps `..data` to `target` atomically and removes the directory it pointed at before."""
        data, temp = self.volume / "..data", self.volume / "..data_tmp"
        old = os.readlink(data) if data.is_symlink() else None
        temp.symlink_to(target)
        os.replace(temp, data)
        if old is not None and (self.volume / old).is_dir():
            shutil.rmtree(self.volume / old)

    def ask(self) -> dict[str, str]:
        """The task's state (MONITOR): the next line must answer, not some callback."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("state\n")
        self.proc.stdin.flush()
        line = self.line()
        assert line.startswith("state "), line
        return dict(item.split("=", 1) for item in line.split()[1:])

    def wait_until(self, condition: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        deadline = time.monotonic() + 5
        while True:
            state = self.ask()
            if condition(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within 5s: {state}")
            time.sleep(0.02)

    def wait_reads(self, n: int) -> dict[str, str]:
        """Waits until the watcher has read the file `n` more times (and taken what it read)."""
        start = int(self.ask()["reads"])
        # One read more than asked: the state answered after a read's opening may predate its taking.
        return self.wait_until(lambda state: int(state["reads"]) > start + n, f"{n} reads of the notice file")

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
        task.write_notice("")
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


# ----- withdrawn and changed notices ---------------------------------------------------------------

MONITOR = textwrap.dedent(
    """
    import os, signal, sys, threading
    sys.path.insert(0, {repo!r})

    path, reads = os.environ["SPOTRUN_NOTICE_FILE"], 0

    def count(event, args):   # every opening of the notice file, failed ones included
        global reads
        if event == "open" and args[0] == path:
            reads += 1

    sys.addaudithook(count)
    import spotrun

    def describe():
        n = spotrun.notice()
        fields = (None, None, None) if n is None else (n.reason, n.kind, f"{{n.seconds:.0f}}")
        return (
            f"preempted={{spotrun.preempted()}} left={{spotrun.seconds_left():.1f}} "
            + "reason={{}} kind={{}} seconds={{}}".format(*fields)
        )

    # The application's: it returns, so the task runs on after SIGTERM too.
    signal.signal(signal.SIGTERM, lambda signum, frame: print("application sigterm", flush=True))
    calls = []

    @spotrun.on_preemption
    def save():
        calls.append(1)
        print(f"callback {{len(calls)}}: {{describe()}}", flush=True)

    print("ready", flush=True)
    while sys.stdin.readline():
        watching = "spotrun-notice" in [t.name for t in threading.enumerate()]
        print(f"state reads={{reads}} watching={{watching}} {{describe()}}", flush=True)
    """
)

CORDONED = json.dumps({"time": "2025-01-01T00:00:00Z", "reason": "Cordoned", "kind": "Drain", "seconds": 120})


def noticed(state: dict[str, str]) -> tuple[str, str, str, str]:
    return state["preempted"], state["reason"], state["kind"], state["seconds"]


def test_a_withdrawn_notice_is_no_longer_a_preemption(tmp_path: Path) -> None:
    task = Task(MONITOR, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        task.write_notice(notice_json(age=0, seconds=120, kind="Drain"))
        assert callback_line(task.line())["n"] == "1"
        assert task.ask()["preempted"] == "True"
        task.write_notice("")  # the operator emptied the annotation: the node was uncordoned
        state = task.wait_until(lambda state: state["preempted"] == "False", "withdrawn")
        assert (state["reason"], state["left"], state["watching"]) == ("None", "7.0", "True")
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err
    assert err.count("Saw the interruption notice (aws-node-termination-handler/spot-itn, Drain) withdrawn") == 1


def test_a_notice_given_again_after_its_withdrawal_runs_the_callbacks_again(tmp_path: Path) -> None:
    task = Task(MONITOR, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        task.write_notice(CORDONED)
        assert callback_line(task.line())["n"] == "1"
        task.write_notice("")
        task.wait_until(lambda state: state["preempted"] == "False", "withdrawn")
        task.write_notice(CORDONED)  # cordoned again: the same value is a new notice after a withdrawal
        again = callback_line(task.line())
        assert (again["n"], again["preempted"], again["reason"]) == ("2", "True", "Cordoned")
        assert float(again["left"]) == 0.0  # given long ago: no warning left
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err
    assert err.count("Received an interruption notice (Cordoned, Drain)") == 2


def test_a_changed_notice_is_the_new_notice(tmp_path: Path) -> None:
    task = Task(MONITOR, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        task.write_notice(notice_json(age=0, seconds=120, kind="Drain"))
        first = callback_line(task.line())
        assert (first["n"], first["kind"], first["seconds"]) == ("1", "Drain", "120")
        task.write_notice(notice_json(age=0, seconds=30, kind="Reclaim"))  # a reclaim taint came too
        second = callback_line(task.line())
        assert (second["n"], second["kind"], second["seconds"]) == ("2", "Reclaim", "30")
        assert 28.0 <= float(second["left"]) <= 30.0  # the new notice's warning, not the old one's
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err


def test_sigterm_stays_final_when_the_notice_is_withdrawn(tmp_path: Path) -> None:
    task = Task(MONITOR, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        task.write_notice(CORDONED)
        assert callback_line(task.line())["n"] == "1"
        task.proc.send_signal(signal.SIGTERM)
        assert callback_line(task.line())["n"] == "2"
        assert task.line() == "application sigterm"
        task.write_notice("")  # uncordoned: too late, the pod is going
        state = task.wait_until(lambda state: state["watching"] == "False", "done watching after SIGTERM")
        assert noticed(state) == ("True", "Cordoned", "Drain", "120")
        assert 6.0 <= float(state["left"]) <= 7.0  # the grace period's
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err
    assert "withdrawn" not in err


def test_an_unreadable_notice_file_keeps_the_notice(tmp_path: Path) -> None:
    task = Task(MONITOR, tmp_path, poll="0.05")
    try:
        assert task.line() == "ready"
        task.write_notice(CORDONED)
        assert callback_line(task.line())["n"] == "1"
        task.point_data_at("..gone")  # the symlink dangles, as when `..data` is swapped mid-open
        assert noticed(task.wait_reads(3)) == ("True", "Cordoned", "Drain", "120")
        task.write_notice(CORDONED)  # readable again, the same value: nothing new
        assert noticed(task.wait_reads(3)) == ("True", "Cordoned", "Drain", "120")
        code, err = task.finish()
    finally:
        task.close()
    assert code == 0, err  # no second callback line came before the states
    assert err.count("Received an interruption notice") == 1
    assert "withdrawn" not in err


NOTICE = CORDONED.encode()
OTHER = notice_json(age=0, seconds=30).encode()


@pytest.mark.parametrize(
    ("held_before", "once_before", "read", "held", "once"),
    [
        (b"", None, NOTICE, NOTICE, None),  # a notice is taken at its first read
        (NOTICE, None, OTHER, OTHER, None),  # and so is a changed one
        (NOTICE, None, None, NOTICE, None),  # unreadable: nothing changes
        (NOTICE, b"", None, NOTICE, b""),
        (NOTICE, None, b"", NOTICE, b""),  # empty once: maybe truncated for a rewrite
        (NOTICE, b"", NOTICE, NOTICE, None),  # it was: the notice holds
        (NOTICE, b"", b"", b"", None),  # empty twice: withdrawn
        (NOTICE, None, NOTICE[:20], NOTICE, NOTICE[:20]),  # torn JSON once
        (NOTICE, NOTICE[:20], b"", NOTICE, b""),  # another torn read: still not taken
        (b"", None, b"not JSON", b"", b"not JSON"),  # malformed: taken when read again
        (b"", b"not JSON", b"not JSON", b"not JSON", None),
    ],
    ids=[
        "notice",
        "changed",
        "unreadable",
        "unreadable-after-empty",
        "empty-once",
        "torn-empty",
        "withdrawn",
        "torn-json",
        "torn-twice",
        "malformed-once",
        "malformed-twice",
    ],
)
def test_a_torn_or_unreadable_read_never_changes_the_notice(
    held_before: bytes, once_before: bytes | None, read: bytes | None, held: bytes, once: bytes | None
) -> None:
    assert _preemption._Reading(held_before, once_before).after(read) == _preemption._Reading(held, once)
