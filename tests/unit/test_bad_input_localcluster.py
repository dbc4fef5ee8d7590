"""Bad input to every `python -m localcluster` command, as a user types it, with no cluster running:
the wrong type, a missing value, a negative or zero count, a negative grace or timeout, a name
Kubernetes would refuse, a state directory that is a regular file or lies under one (unwritable,
even for root), a node or cluster that is not there.

Each case runs the real command in a subprocess against a state directory in the test's tmp_path
(LOCALCLUSTER_STATE_DIR, or --state-dir before or after the subcommand), which is missing, empty, a
regular file, or under a regular file. Nothing is built and nothing starts: every case ends in well
under a second. It checks what a user sees:

- exit code 2 when what was typed or set must change: argparse's errors (a missing or malformed
  value, a count below 1, a negative grace, a timeout not above 0, a name or taint Kubernetes
  would refuse) and a state directory that is a file or lies under one; one line naming what is
  wrong and what to write (argparse's usage lines before it for a malformed command line);
- exit code 1 when nothing is running there: `status` ("no cluster in DIR", as it always said),
  `env`, `kwok start|add|delete`, `node preempt|reclaim|notice|kill|add` ("no cluster is running in
  DIR; `up` first"), `audit` ("there is no DIR/logs/audit.log; start the cluster with `up
  --audit`"). The same command works once `up` has run: it is not what was typed that is wrong, so
  not 2, and not 0, since what was asked for did not happen. A node name that a *running* cluster
  does not have is "there is no node NAME in DIR" (exit 1; tests/unit/test_localcluster_cli.py);
- exit code 0 where stopping what is not running is done already: `down` ("nothing was running",
  safe to run twice) and `kwok stop`;
- never a traceback, and nothing created or changed on disk: the tmp directory's listing and
  contents are the same after the command as before. LOCALCLUSTER_STATE_DIR_DEFAULT and
  LOCALCLUSTER_KIND_STATE_DIR point into tmp_path too, so no case can touch the repository's own
  `.localcluster/` or `.kind/`; an `up` case has its state under a regular file, so that even a
  regression could not start anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localcluster.__main__ import main
from localcluster.cluster import MARKER, Cluster

REPO = Path(__file__).resolve().parents[2]
NO_CLUSTER = "no cluster is running in {state}; `up` first"
A_FILE = "cannot use LOCALCLUSTER_STATE_DIR={state}: {state} is a file; give a directory"
UNDER_A_FILE = "cannot use LOCALCLUSTER_STATE_DIR={state}: {tmp}/file is a file; give a directory"
UNDER_A_FILE_GIVEN = "cannot use --state-dir {state}: {tmp}/file is a file; give a directory"


@dataclasses.dataclass(frozen=True)
class Case:
    argv: list[str]  # "{state}": the state directory (then LOCALCLUSTER_STATE_DIR is unset), "{tmp}": tmp_path
    code: int
    says: str  # in the one error line (for code 0: in what it prints)
    state: str = "missing"  # the state directory: missing, empty, file (a regular file), under-file (FILE/sub)


CASES: dict[str, Case] = {
    # the command line itself
    "no command": Case([], 2, "the following arguments are required: command"),
    "an unknown command": Case(["start"], 2, "argument command: invalid choice: 'start'"),
    "a state dir without a value": Case(["--state-dir"], 2, "argument --state-dir: expected one argument"),
    "an empty state dir": Case(["--state-dir", "", "status"], 2, "argument --state-dir: '' is no directory"),
    "an empty state dir after the command": Case(
        ["status", "--state-dir", ""], 2, "argument --state-dir: '' is no directory"
    ),
    "build with an unknown option": Case(["build", "--frob"], 2, "unrecognized arguments: --frob"),
    "paths with an argument": Case(["paths", "all"], 2, "unrecognized arguments: all"),
    "image with an unknown option": Case(["image", "--import"], 2, "unrecognized arguments: --import"),
    # up (its state under a file: even if a check regressed, nothing could start)
    "up with kwok nodes that are no number": Case(
        ["up", "--kwok-nodes", "many"], 2, "argument --kwok-nodes: 'many' is not a whole number", "under-file"
    ),
    "up with a negative number of kwok nodes": Case(
        ["up", "--kwok-nodes", "-1"], 2, "argument --kwok-nodes: -1 is below 0: give 0 or more", "under-file"
    ),
    "up with an unknown option": Case(["up", "--nodes", "3"], 2, "unrecognized arguments: --nodes 3", "under-file"),
    "up in a state dir that is a file": Case(["up"], 2, A_FILE, "file"),
    "up under a file": Case(["up", "--state-dir", "{state}"], 2, UNDER_A_FILE_GIVEN, "under-file"),
    # status, env, down
    "status with no cluster": Case(["status"], 1, "no cluster in {state}"),
    "status in an empty directory": Case(["--state-dir", "{state}", "status"], 1, "no cluster in {state}", "empty"),
    "status in a state dir that is a file": Case(["status"], 2, A_FILE, "file"),
    "status with an argument": Case(["status", "now"], 2, "unrecognized arguments: now"),
    "env with no cluster": Case(["env"], 1, NO_CLUSTER),
    "env in an empty directory": Case(["env"], 1, NO_CLUSTER, "empty"),
    "env under a file": Case(["env"], 2, UNDER_A_FILE, "under-file"),
    "down on nothing": Case(["down"], 0, "nothing was running"),
    "down in an empty directory": Case(["down"], 0, "nothing was running", "empty"),
    "down in a state dir that is a file": Case(["down"], 2, A_FILE, "file"),
    "down under a file": Case(["down", "--state-dir", "{state}"], 2, UNDER_A_FILE_GIVEN, "under-file"),
    # kwok start|stop|add|delete
    "kwok without a command": Case(["kwok"], 2, "the following arguments are required: kwok_command"),
    "kwok add a count that is no number": Case(
        ["kwok", "add", "two"], 2, "argument COUNT: 'two' is not a whole number"
    ),
    "kwok add 0": Case(["kwok", "add", "0"], 2, "argument COUNT: 0 is below 1: give 1 or more"),
    "kwok add -1": Case(["kwok", "add", "-1"], 2, "argument COUNT: -1 is below 1: give 1 or more"),
    "kwok add without a count": Case(["kwok", "add"], 2, "the following arguments are required: COUNT"),
    "kwok add on unknown capacity": Case(
        ["kwok", "add", "2", "--capacity", "cloud"], 2, "argument --capacity: invalid choice: 'cloud'"
    ),
    "kwok add with no cluster": Case(["kwok", "add", "2"], 1, NO_CLUSTER),
    "kwok add under a file": Case(["kwok", "add", "2"], 2, UNDER_A_FILE, "under-file"),
    "kwok start with no cluster": Case(["kwok", "start"], 1, NO_CLUSTER, "empty"),
    "kwok stop with nothing running": Case(["kwok", "stop"], 0, "kwok was not running"),
    "kwok stop in a state dir that is a file": Case(["kwok", "stop"], 2, A_FILE, "file"),
    "kwok delete with no cluster": Case(["kwok", "delete", "nosuch"], 1, NO_CLUSTER),
    "kwok delete --all with no cluster": Case(["kwok", "delete", "--all"], 1, NO_CLUSTER),
    "kwok delete without names": Case(["kwok", "delete"], 2, "error: give node names or --all"),
    "kwok delete names and --all": Case(
        ["kwok", "delete", "kwok-spot-1", "--all"], 2, "error: give node names or --all, not both"
    ),
    "kwok delete a name kubernetes refuses": Case(
        ["kwok", "delete", "Kwok_1"], 2, "argument NAME: 'Kwok_1' is not a Kubernetes name"
    ),
    "kwok delete under a file": Case(["kwok", "delete", "--all"], 2, UNDER_A_FILE, "under-file"),
    # audit
    "audit without a user": Case(["audit"], 2, "the following arguments are required: user"),
    "audit since a time that is no time": Case(
        ["audit", "U", "--since", "yesterday-ish"],
        2,
        "argument --since: 'yesterday-ish' is not a time: give ISO 8601 (2026-01-31T12:00:00, UTC unless it"
        " names a zone) or epoch seconds",
    ),
    "audit until a time that is no number": Case(
        ["audit", "U", "--until", "nan"], 2, "argument --until: 'nan' is not a time"
    ),
    "audit with no cluster": Case(
        ["audit", "U"], 1, "there is no {state}/logs/audit.log; start the cluster with `up --audit`"
    ),
    "audit in a state dir that is a file": Case(["audit", "U"], 2, A_FILE, "file"),
    # node preempt|reclaim|notice|kill|add
    "node without a command": Case(["node"], 2, "the following arguments are required: node_command"),
    "node with an unknown command": Case(["node", "drain", "spot-1"], 2, "invalid choice: 'drain'"),
    "node preempt without a name": Case(["node", "preempt"], 2, "the following arguments are required: name"),
    "node preempt with no cluster": Case(["node", "preempt", "nosuch"], 1, NO_CLUSTER),
    "node preempt with a grace that is no number": Case(
        ["node", "preempt", "spot-1", "--grace", "soon"], 2, "argument --grace: 'soon' is not a number of seconds"
    ),
    "node preempt with a negative grace": Case(
        ["node", "preempt", "spot-1", "--grace", "-5"], 2, "argument --grace: -5 is not a number of seconds, 0 or more"
    ),
    "node preempt with an infinite grace": Case(
        ["node", "preempt", "spot-1", "--grace", "inf"], 2, "argument --grace: inf is not a number of seconds, 0 or"
    ),
    "node preempt without a grace value": Case(
        ["node", "preempt", "spot-1", "--grace"], 2, "argument --grace: expected one argument"
    ),
    "node preempt a path": Case(
        ["node", "preempt", "../spot-1"], 2, "argument name: '../spot-1' is not a Kubernetes name"
    ),
    "node preempt under a file": Case(
        ["node", "preempt", "spot-1", "--state-dir", "{state}"], 2, UNDER_A_FILE_GIVEN, "under-file"
    ),
    "node reclaim with a timeout that is no number": Case(
        ["node", "reclaim", "x", "--timeout", "soon"], 2, "argument --timeout: 'soon' is not a number of seconds"
    ),
    "node reclaim with a negative timeout": Case(
        ["node", "reclaim", "x", "--timeout", "-1"], 2, "argument --timeout: -1 is not a number of seconds above 0"
    ),
    "node reclaim with a zero timeout": Case(
        ["node", "reclaim", "x", "--timeout", "0"], 2, "argument --timeout: 0 is not a number of seconds above 0"
    ),
    "node reclaim with a taint and its value": Case(
        ["node", "reclaim", "x", "--taint", "karpenter.sh/disrupted=yes"],
        2,
        "argument --taint: 'karpenter.sh/disrupted=yes' is not a taint key: write PREFIX/NAME",
    ),
    "node reclaim with no cluster": Case(["node", "reclaim", "nosuch"], 1, NO_CLUSTER, "empty"),
    "node notice without a name": Case(["node", "notice"], 2, "the following arguments are required: name"),
    "node notice with no cluster": Case(["node", "notice", "nosuch"], 1, NO_CLUSTER),
    "node notice with an empty taint key": Case(
        ["node", "notice", "spot-1", "--taint", ""], 2, "argument --taint: '' is not a taint key"
    ),
    "node notice with a value kubernetes refuses": Case(
        ["node", "notice", "spot-1", "--value", "event 1"], 2, "argument --value: 'event 1' is not a taint value"
    ),
    "node notice in a state dir that is a file": Case(["node", "notice", "spot-1"], 2, A_FILE, "file"),
    "node kill without a name": Case(["node", "kill"], 2, "the following arguments are required: name"),
    "node kill with no cluster": Case(["node", "kill", "nosuch"], 1, NO_CLUSTER),
    "node kill under a file": Case(
        ["node", "--state-dir", "{state}", "kill", "spot-1"], 2, UNDER_A_FILE_GIVEN, "under-file"
    ),
    "node add without a capacity": Case(["node", "add", "n"], 2, "the following arguments are required: --capacity"),
    "node add without a value for capacity": Case(
        ["node", "add", "n", "--capacity"], 2, "argument --capacity: expected one argument"
    ),
    "node add on unknown capacity": Case(
        ["node", "add", "n", "--capacity", "cloud"], 2, "argument --capacity: invalid choice: 'cloud'"
    ),
    "node add without a name": Case(
        ["node", "add", "--capacity", "spot"], 2, "the following arguments are required: name"
    ),
    "node add real and process": Case(
        ["node", "add", "n", "--capacity", "spot", "--real", "--process"],
        2,
        "argument --process: not allowed with argument --real",
    ),
    "node add a path": Case(
        ["node", "add", "../../etc", "--capacity", "spot"], 2, "argument name: '../../etc' is not a Kubernetes name"
    ),
    "node add with no cluster": Case(["node", "add", "n", "--capacity", "spot"], 1, NO_CLUSTER),
    "node add in a state dir that is a file": Case(["node", "add", "n", "--capacity", "on-demand"], 2, A_FILE, "file"),
    # kind (its own state directory: LOCALCLUSTER_KIND_STATE_DIR, or --state-dir after `kind`)
    "kind with the state dir before it": Case(
        ["--state-dir", "{state}", "kind", "env"], 2, "kind takes its --state-dir after its command"
    ),
    "kind with an unknown command": Case(["kind", "start"], 2, "argument command: invalid choice: 'start'"),
    "kind exec without a command": Case(["kind", "exec"], 2, "error: exec needs a command"),
}


def _state_dir(tmp: Path, state: str) -> Path:
    """The case's state directory; tmp/file is always a regular file."""
    (tmp / "file").write_text("not a directory\n")
    if state == "empty":
        (tmp / "state").mkdir()
    return {"file": tmp / "file", "under-file": tmp / "file" / "sub"}.get(state, tmp / "state")


def _listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ROOT, with a file's bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _run(argv: list[str], tmp: Path, state_dir: Path | None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LOCALCLUSTER_STATE_DIR_DEFAULT": str(tmp / "default"),  # never the repository's .localcluster/
        "LOCALCLUSTER_KIND_STATE_DIR": str(tmp / "file" / "kind"),  # never the repository's .kind/
    }
    env.pop("LOCALCLUSTER_STATE_DIR", None)
    if state_dir is not None:
        env["LOCALCLUSTER_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "localcluster", *argv],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
        timeout=30,  # each ends in well under a second; one that builds or waits for a cluster fails here
    )


def _error_line(stderr: str) -> str:
    """The one line that says what is wrong (after argparse's usage lines, when it printed them)."""
    lines = stderr.splitlines()
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if "error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gets_one_clear_line_the_right_code_and_leaves_nothing(case: Case, tmp_path: Path) -> None:
    tmp = tmp_path.resolve()
    state = _state_dir(tmp, case.state)
    before = _listing(tmp)

    def fill(text: str) -> str:
        return text.replace("{state}", str(state)).replace("{tmp}", str(tmp))

    given = any("{state}" in arg for arg in case.argv)
    run = _run([fill(arg) for arg in case.argv], tmp, None if given else state)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == case.code, run.stderr
    if case.code == 0:
        assert fill(case.says) in run.stdout + run.stderr
    else:
        assert fill(case.says) in _error_line(run.stderr), run.stderr
    assert _listing(tmp) == before  # nothing created, nothing changed


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_down_on_nothing_succeeds_twice_and_creates_nothing(tmp_path: Path, state: str) -> None:
    tmp = tmp_path.resolve()
    state_dir = _state_dir(tmp, state)
    before = _listing(tmp)
    for _ in range(2):
        run = _run(["down"], tmp, state_dir)
        assert run.returncode == 0, run.stderr
        assert run.stderr == "localcluster: nothing was running\n"
    assert _listing(tmp) == before


def _commands(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The subcommands that `ARGV --help` lists, as argparse's {a,b,c} shows them."""
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    choices = re.search(r"\{([a-z,-]+)\}", capsys.readouterr().out)
    assert choices is not None
    return choices.group(1).split(",")


def test_every_command_has_a_case(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [c for c in _commands([], capsys) if c not in ("kwok", "node")]
    commands += [f"{group} {c}" for group in ("kwok", "node") for c in _commands([group], capsys)]
    covered = {" ".join(a for a in case.argv if not a.startswith("-") and "{" not in a) for case in CASES.values()}
    missing = [c for c in commands if not any(f"{cover} ".startswith(f"{c} ") for cover in covered)]
    assert not missing, f"add a case of bad input for: {missing}"


# ----- state left behind: pid files whose pids went to other processes, files cut short --------


@pytest.fixture
def process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts `sleep`, in a session of its own (a process group, as the cluster's processes are), with
    the environment given; the cluster's marker in it makes it one of the cluster's processes."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "120"], start_new_session=True, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _stale_state(tmp: Path, pid: int) -> Path:
    """A state dir as a machine's reboot leaves it: pid files naming PID (which the kernel has since
    given to a process that is not the cluster's), a garbled pid file, a process node's container."""
    state = tmp / "state"
    (state / "pids").mkdir(parents=True)
    for name in ("etcd", "kube-apiserver", "kwok", "kubelet-spot-1"):
        (state / "pids" / f"{name}.pid").write_text(f"{pid}\n")
    (state / "pids" / "versitygw.pid").write_text("garbage\n")
    (state / "cluster.json").write_text(json.dumps({"apiserver": "https://127.0.0.1:1"}))
    node = state / "nodes" / "spot-1"
    (node / "pods" / "uid-1" / "pids").mkdir(parents=True)
    (node / "pods" / "uid-1" / "pids" / "main-0").write_text(str(pid))
    (node / "config.json").write_text(json.dumps({"name": "spot-1", "index": 1, "real": False}))
    return state


STALE = {
    "down": (["down"], 0, "nothing was running"),
    "kwok stop": (["kwok", "stop"], 0, "kwok was not running"),
    "status": (["status"], 1, "apiserver: not reachable"),
    "env": (["env"], 1, "no cluster is running in {state}; `up` first"),
    "node kill": (["node", "kill", "spot-1"], 1, "no cluster is running in {state}; `up` first"),
    "node preempt": (["node", "preempt", "spot-1", "--grace", "0"], 1, "no cluster is running in {state}; `up` first"),
}


@pytest.mark.parametrize(("argv", "code", "says"), STALE.values(), ids=STALE.keys())
def test_a_stale_pid_file_never_signals_a_process_that_is_not_the_clusters(
    argv: list[str], code: int, says: str, tmp_path: Path, process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    stranger = process()
    state = _stale_state(tmp_path.resolve(), stranger.pid)
    run = _run(argv, tmp_path.resolve(), state)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == code, run.stderr
    assert says.replace("{state}", str(state)) in run.stdout + run.stderr
    time.sleep(0.2)  # a signal sent would have ended `sleep` by now
    assert stranger.poll() is None, f"{argv} signalled pid {stranger.pid}, which is not the cluster's"


def test_down_stops_the_clusters_own_processes_named_in_pid_files(
    tmp_path: Path, process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # The other side of the check above: a process with the cluster's marker is stopped.
    state = tmp_path.resolve() / "state"
    ours = process({**os.environ, MARKER: str(state)})
    stranger = process()
    _stale_state(tmp_path.resolve(), stranger.pid)
    (state / "pids" / "etcd.pid").write_text(str(ours.pid))
    run = _run(["down"], tmp_path.resolve(), state)
    assert run.returncode == 0, run.stderr
    assert "stopped 1 processes" in run.stderr
    assert ours.wait(timeout=10) == -signal.SIGTERM
    assert stranger.poll() is None
    assert not list((state / "pids").glob("*.pid"))  # every pid file gone, the stale ones too


@pytest.mark.parametrize("text", ['{"apiserver": ', "[]", "\xff\xfe"], ids=["cut short", "not an object", "not text"])
def test_a_garbled_cluster_json_gets_one_clear_line(
    text: str, tmp_path: Path, process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    state = tmp_path.resolve() / "state"
    apiserver = process({**os.environ, MARKER: str(state)})  # the cluster's, so it must read cluster.json
    (state / "pids").mkdir(parents=True)
    (state / "pids" / "kube-apiserver.pid").write_text(str(apiserver.pid))
    (state / "cluster.json").write_bytes(text.encode("latin-1"))
    for argv in (["env"], ["kwok", "add", "1"], ["node", "kill", "spot-1"]):
        run = _run(argv, tmp_path.resolve(), state)
        assert "Traceback" not in run.stderr, run.stderr
        assert run.returncode == 1, run.stderr
        line = _error_line(run.stderr)
        assert f"{state}/cluster.json" in line
        assert "run `down`, then `up` for a fresh cluster" in line
    assert apiserver.poll() is None


def test_down_goes_on_past_a_garbled_node_config(
    tmp_path: Path, process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    state = tmp_path.resolve() / "state"
    kubelet = process({**os.environ, MARKER: str(state)})
    (state / "nodes" / "spot-1").mkdir(parents=True)
    (state / "nodes" / "spot-1" / "config.json").write_text('{"name": "spot-1", ')
    (state / "pids").mkdir()
    (state / "pids" / "kubelet-spot-1.pid").write_text(str(kubelet.pid))
    run = _run(["down"], tmp_path.resolve(), state)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    assert f"cannot read {state}/nodes/spot-1/config.json" in run.stderr
    assert kubelet.wait(timeout=10) == -signal.SIGTERM


def test_a_process_just_spawned_is_the_clusters_while_it_is_still_in_execve(tmp_path: Path) -> None:
    # Popen returns once execve has closed the close-on-exec pipe, and the kernel sets the new
    # image's environment after that: until then /proc/PID/environ reads empty. A binary read from
    # disk rather than the page cache widens that window; `_wait` then took kwok or a fresh
    # kube-apiserver for "exited during start-up" (CI, 2026-12-03). The pid file's check reads the
    # environment again while it is empty.
    binary = tmp_path / "sleep"
    shutil.copy("/usr/bin/sleep", binary)
    os.sync()
    cluster = Cluster(tmp_path / "state")
    cluster.pids.mkdir(parents=True)
    for attempt in range(5):
        fd = os.open(binary, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # this file only, out of the page cache
        os.close(fd)
        proc = subprocess.Popen([str(binary), "30"], env={MARKER: str(cluster.dir)}, stdout=subprocess.DEVNULL)
        (cluster.pids / "sleeper.pid").write_text(str(proc.pid))  # as _spawn does, then _wait checks
        try:
            assert cluster._pid("sleeper") == proc.pid, f"attempt {attempt}"
        finally:
            proc.kill()
            proc.wait()
        assert cluster._pid("sleeper") is None
