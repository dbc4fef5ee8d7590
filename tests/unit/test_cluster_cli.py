"""`spotrun` on a cluster's TaskRuns, without a cluster: kubectl's errors, describe's text, each attempt's pod."""

from __future__ import annotations

import datetime
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from spotrun import _cli
from spotrun._cluster import ClusterError, Kubectl, NotFoundError
from spotrun._cluster_cli import attempt_pods, describe_text

Obj = dict[str, Any]
NOW = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("stderr", "kind", "fragments"),
    [
        (
            'error: the server doesn\'t have a resource type "taskruns"',
            ClusterError,
            ["TaskRun CRD is not installed", "helm install"],
        ),
        (
            'Error from server (NotFound): taskruns.spotrun.dev "train" not found',
            NotFoundError,
            ["TaskRun train", "not found in context prod, namespace ml", "spotrun get"],
        ),
        (
            "The connection to the server localhost:8080 was refused - did you specify the right host or port?",
            ClusterError,
            ["no cluster reachable", "kubectl config current-context"],
        ),
        (
            "Unable to connect to the server: dial tcp: lookup nowhere: no such host",
            ClusterError,
            ["no cluster reachable"],
        ),
        ('error: context "nope" does not exist', ClusterError, ["the kubeconfig cannot be used", "get-contexts"]),
        (
            "Error in configuration: context was not found for specified context: nope",
            ClusterError,
            ["the kubeconfig cannot be used", "context was not found"],
        ),
        (
            "Unable to connect to the server: getting credentials: exec: executable gke-gcloud-auth-plugin not found",
            ClusterError,
            ["the kubeconfig cannot be used", "gke-gcloud-auth-plugin"],
        ),
        ('Error from server (NotFound): namespaces "ml" not found', ClusterError, ["no namespace ml there"]),
        (
            'Error from server (Forbidden): taskruns.spotrun.dev is forbidden: User "u" cannot list resource',
            ClusterError,
            ["refused it to you", "cannot list"],
        ),
    ],
)
def test_kubectl_errors_become_what_to_do(stderr: str, kind: type[Exception], fragments: list[str]) -> None:
    err = Kubectl(namespace="ml", context="prod").explain(stderr, "TaskRun train")
    assert type(err) is kind
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not in {err}"


def test_without_kubectl_the_error_says_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterError, match="kubectl is not on PATH"):
        Kubectl().run("get", "pods")


def test_the_cluster_flags_go_to_kubectl_as_kubectl_takes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _: "/usr/bin/kubectl")
    argv = Kubectl(namespace="ml", context="prod", kubeconfig="/k").argv("get", "taskruns.spotrun.dev")
    assert argv == [
        "/usr/bin/kubectl",
        "--kubeconfig",
        "/k",
        "--context",
        "prod",
        "--namespace",
        "ml",
        "get",
        "taskruns.spotrun.dev",
    ]
    assert Kubectl().argv("get")[1:] == ["get"]


def taskrun(**status: Any) -> Obj:
    return {
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {"template": {}, "capacity": {"type": "spot"}},
        "status": status,
    }


HISTORY = [
    {
        "attempt": 1,
        "pod": "train-a1",
        "node": "spot-1",
        "capacity": "spot",
        "outcome": "Interrupted",
        "reason": "TerminationByKubelet",
        "exitCode": 143,
        "lostSeconds": 2.5,
    },
    {
        "attempt": 2,
        "pod": "train-a2",
        "node": "spot-2",
        "capacity": "spot",
        "outcome": "Failed",
        "reason": "Error",
        "exitCode": 1,
        "lostSeconds": 4.0,
        "resumedFrom": "00001-00003",
    },
]


def test_describe_shows_every_attempt_with_where_it_ran_how_it_ended_and_what_it_resumed_from() -> None:
    tr = taskrun(
        phase="Running",
        message="attempt 3 is running on ondemand-1",
        attempt=3,
        failures=1,
        interruptions=1,
        capacity="on-demand",
        podName="train-a3",
        nodeName="ondemand-1",
        checkpoint={"uri": "s3://b/ml/train/", "id": "00002-00001", "step": 9, "attempt": 2},
        lostSeconds=6.5,
        startCheckpoint={"attempt": 3, "id": "00002-00001"},
        attempts=HISTORY,
        conditions=[{"type": "Ready", "status": "True", "reason": "PodRunning", "message": "attempt 3 is running"}],
    )
    events = [
        {
            "type": "Warning",
            "reason": "AttemptInterrupted",
            "message": "Attempt 1 (train-a1) interrupted",
            "lastTimestamp": "2026-12-02T11:58:00Z",
        },
    ]
    text = describe_text(tr, events, NOW)
    assert "Phase:          Running: attempt 3 is running on ondemand-1" in text
    assert "Attempt:        3 (failures 1, interruptions 1)" in text
    assert "s3://b/ml/train/ (newest 00002-00001, step 9, attempt 2)" in text
    assert "Lost work:      6.5s" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert rows[0] == ["1", "train-a1", "spot-1", "spot", "Interrupted", "TerminationByKubelet", "143", "2.5s", "-"]
    assert rows[1] == ["2", "train-a2", "spot-2", "spot", "Failed", "Error", "1", "4.0s", "00001-00003"]
    assert rows[2] == ["3", "train-a3", "ondemand-1", "on-demand", "(Running)", "-", "-", "-", "00002-00001"]
    assert "PodRunning" in text
    assert "2m" in text
    assert "AttemptInterrupted" in text


def test_describe_of_a_new_taskrun_says_there_is_nothing_yet() -> None:
    text = describe_text(taskrun(), [], NOW)
    assert "Attempts:\n  none yet" in text
    assert "Events:\n  none" in text


def test_the_pods_of_each_attempt_come_from_the_history_and_the_current_attempt() -> None:
    assert attempt_pods(taskrun(attempt=3, podName="train-a3", attempts=HISTORY)) == {
        1: "train-a1",
        2: "train-a2",
        3: "train-a3",
    }
    assert attempt_pods(taskrun()) == {}


def test_checkpoints_take_a_uri_a_directory_or_a_taskrun_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_taskrun(self: Kubectl, name: str) -> Obj:
        asked.append(name)
        return {"status": {"checkpoint": {"uri": str(tmp_path)}}}

    monkeypatch.setattr(Kubectl, "taskrun", fake_taskrun)
    assert _cli.main(["checkpoints", "list", "train", "-n", "ml"]) == 0
    assert asked == ["train"]
    assert _cli.main(["checkpoints", "list", str(tmp_path)]) == 0
    assert asked == ["train"], "a directory is not looked up"


def test_a_taskrun_without_a_checkpoint_uri_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Kubectl, "taskrun", lambda self, name: {"status": {}})
    assert _cli.main(["checkpoints", "list", "train"]) == 2
    assert "TaskRun train has no checkpoint URI yet" in capsys.readouterr().err


def test_every_cluster_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("submit", "get", "describe", "logs", "suspend", "resume", "delete"):
        with pytest.raises(SystemExit) as done:
            _cli.main([command, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        for part in ("examples:", "--context", "--namespace"):
            assert part in out, command


@pytest.mark.parametrize("command", ["run", "checkpoints", "restore", "sync", "completion"])
def test_every_other_command_has_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _cli.main([command, "--help"])
    assert done.value.code == 0
    assert "examples" in capsys.readouterr().out


def test_kubectl_spotrun_names_itself_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli.main(["--help"], prog="kubectl spotrun")
    assert capsys.readouterr().out.startswith("usage: kubectl spotrun")


def _complete(script: str, *words: str) -> list[str]:
    line = " ".join(words)
    program = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _spotrun; echo "${{COMPREPLY[@]}}"'
    done = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}
    )
    return done.stdout.split()


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_script_completes_commands_and_their_options(shell: str, capsys: Any) -> None:
    assert _cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    if shell == "zsh":
        assert script.startswith("autoload -U +X bashcompinit && bashcompinit")
        script = script.split("\n", 1)[1]
    assert _complete(script, "spotrun", "lo") == ["logs"]
    assert _complete(script, "spotrun", "s") == ["submit", "suspend", "sync"]
    assert _complete(script, "spotrun", "logs", "--fo") == ["--follow"]
    assert _complete(script, "spotrun", "submit", "--im") == ["--image"]
    assert _complete(script, "spotrun", "checkpoints", "d") == ["download"]


class FakeCluster:
    """kubectl as `logs` sees it: the TaskRun's status at each read, each pod's log lines, and each
    pod's phase at each look (the last one repeats; a pod without phases is gone)."""

    def __init__(
        self, statuses: list[Obj], logs: dict[str, list[str]], phases: dict[str, list[str]] | None = None
    ) -> None:
        self.statuses, self.logs_of, self.reads = statuses, logs, 0
        self.phases = phases or {}
        self.followed: list[tuple[str, bool]] = []

    def taskrun(self, name: str) -> Obj:
        st = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return {"metadata": {"name": name}, "status": st}

    def pod_phase(self, pod: str) -> str | None:
        phases = self.phases.get(pod)
        if not phases:
            return None
        return phases.pop(0) if len(phases) > 1 else phases[0]

    def logs(self, pod: str, *, follow: bool, container: str | None = None) -> Any:
        self.followed.append((pod, follow))
        starting = self.phases.get(pod, [""])[0] == "Pending"
        lines = [] if starting else [f"{line}\n" for line in self.logs_of.get(pod, [])]
        code = 1 if starting or pod not in self.logs_of else 0
        error = "is waiting to start" if starting else "" if code == 0 else 'pods "x" not found'
        return type(
            "P",
            (),
            {"stdout": iter(lines), "stderr": io.StringIO(error), "wait": lambda self: None, "returncode": code},
        )()


def _running(attempt: int, history: list[Obj], phase: str = "Running") -> Obj:
    return {"phase": phase, "attempt": attempt, "podName": f"t-a{attempt}", "attempts": history}


A1 = {"attempt": 1, "pod": "t-a1", "outcome": "Interrupted"}
A2 = {"attempt": 2, "pod": "t-a2", "outcome": "Succeeded"}


def _logs(monkeypatch: pytest.MonkeyPatch, fake: FakeCluster, *argv: str) -> int:
    monkeypatch.setattr("spotrun._cluster_cli.kubectl", lambda args: fake)
    monkeypatch.setattr("spotrun._cluster_cli.POLL_SECONDS", 0)
    return _cli.main(["logs", "t", *argv])


def test_logs_follow_goes_on_to_the_next_attempt_until_the_run_ends(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeCluster(
        [_running(1, []), _running(1, [A1]), _running(2, [A1]), _running(2, [A1, A2], "Succeeded")],
        {"t-a1": ["one"], "t-a2": ["two"]},
        {"t-a1": ["Failed"], "t-a2": ["Succeeded"]},
    )
    assert _logs(monkeypatch, fake, "-f") == 0
    assert capsys.readouterr().out == "one\n--- attempt 2 (t-a2) ---\ntwo\n"
    assert fake.followed == [("t-a1", True), ("t-a2", True)]


def test_logs_follow_waits_for_a_pod_whose_containers_have_not_started(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses = [_running(1, []), _running(1, []), _running(1, []), _running(1, [], "Succeeded")]
    fake = FakeCluster(statuses, {"t-a1": ["one"]}, {"t-a1": ["Pending", "Pending", "Running", "Succeeded"]})
    assert _logs(monkeypatch, fake, "-f") == 0
    assert capsys.readouterr().out == "one\n"
    assert fake.followed == [("t-a1", True), ("t-a1", True), ("t-a1", True), ("t-a1", False)]


def test_logs_follow_takes_a_broken_stream_up_again_without_printing_lines_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """kubectl's stream ended while the pod still runs (a connection broke): followed again, from where it was."""
    fake = FakeCluster(
        [_running(1, []), _running(1, []), _running(1, [], "Succeeded")],
        {"t-a1": ["one", "two"]},
        {"t-a1": ["Running", "Succeeded"]},
    )
    real_logs = fake.logs

    def growing(pod: str, *, follow: bool, container: str | None = None) -> Any:
        if len(fake.followed) == 1:
            fake.logs_of["t-a1"].append("three")  # written while the stream was down
        return real_logs(pod, follow=follow, container=container)

    fake.logs = growing  # type: ignore[method-assign]
    assert _logs(monkeypatch, fake, "-f") == 0
    assert capsys.readouterr().out == "one\ntwo\nthree\n"


def test_logs_all_prefixes_each_attempt_and_says_which_are_gone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeCluster([_running(2, [A1, A2], "Succeeded")], {"t-a2": ["two"]})
    assert _logs(monkeypatch, fake, "--all") == 0
    out = capsys.readouterr()
    assert out.out == "[attempt 2] two\n"
    assert "the logs of attempt 1 (t-a1) are gone with its pod" in out.err
    assert fake.followed == [("t-a1", False), ("t-a2", False)]


def test_logs_of_one_attempt_and_of_an_attempt_there_is_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeCluster([_running(2, [A1])], {"t-a1": ["one"], "t-a2": ["two"]})
    assert _logs(monkeypatch, fake, "--attempt", "1") == 0
    assert capsys.readouterr().out == "one\n"
    assert _logs(monkeypatch, fake, "--attempt", "7") == 2
    assert "TaskRun t has no attempt 7; its attempts: [1, 2]" in capsys.readouterr().err


def test_wait_reports_each_phase_then_the_result_and_exits_0_only_on_success(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("spotrun._cluster_cli.POLL_SECONDS", 0)
    from spotrun._cluster_cli import _wait  # noqa: PLC0415

    ok = FakeCluster(
        [{"phase": "Pending"}, {"phase": "Running", "message": "m"}, {"phase": "Succeeded", "result": 9}], {}
    )
    assert _wait(ok, "t") == 0
    assert capsys.readouterr().out.splitlines() == [
        "taskrun/t: Pending",
        "taskrun/t: Running: m",
        "taskrun/t: Succeeded",
        "9",
    ]
    failed = FakeCluster([{"phase": "Failed", "message": "4 failures used up retries (3)"}], {})
    assert _wait(failed, "t") == 1
    pull = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "ImagePullBackOff"}]}
    assert _wait(FakeCluster([pull], {}), "t") == 1
    assert "the image of t cannot be pulled (ImagePullBackOff): check --image" in capsys.readouterr().err
