"""Bad input to every `spotrun` command, as a user types it: the wrong type, a missing value, an
unreachable endpoint, missing credentials, an unwritable or missing path.

Each case runs the real command in a subprocess and checks what a user sees: exit code 2 when what
was typed or configured must change (1 when the same command may work later: a store that cannot
be reached, a checkpoint that fails verification), one line naming what is wrong and what to do
(argparse's usage lines before it for a malformed command line), never a traceback, and nothing
left behind in the working directory. Wrong credentials and a missing bucket need a real S3
server: tests/integration/test_bad_input_cli_s3.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import spotrun

REPO = Path(__file__).resolve().parents[2]
SEED = str(REPO / "examples" / "checkpoint_seed.py")
NO_AWS = {  # no credentials anywhere: not in the environment, no files, no instance metadata
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_REGION": "us-east-1",
}
FAKE_AWS = {**NO_AWS, "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


@dataclasses.dataclass(frozen=True)
class Case:
    argv: list[str]  # "{tmp}" is the test's directory, "{store}" a checkpoint store in it
    code: int
    says: str  # in the error line (or stdout, for a command that succeeds saying nothing is there)
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)


def store_with_one_checkpoint(tmp: Path) -> None:
    cp = spotrun.Checkpoint(spotrun.open_storage(str(tmp / "store")), attempt=1)
    cp.save(_tree(tmp / "src", {"weights.bin": os.urandom(100 << 10)}), step=1)  # over 64 KiB: an object


def store_with_a_corrupt_checkpoint(tmp: Path) -> None:
    store_with_one_checkpoint(tmp)
    (data,) = (p for p in (tmp / "store" / "data").rglob("*") if p.is_file())
    data.write_bytes(os.urandom(data.stat().st_size))  # same size, other bytes: fails its digest


def store_with_a_manifest_that_is_no_json(tmp: Path) -> None:
    store_with_one_checkpoint(tmp)
    (tmp / "store" / "manifests" / "000001-000002.json").write_text("{not json")


def store_with_a_manifest_that_loops(tmp: Path) -> None:
    """A manifest that is a symlink to itself: an OSError (ELOOP) no check of Spotrun's foresees."""
    store_with_one_checkpoint(tmp)
    manifest = tmp / "store" / "manifests" / "000001-000001.json"
    manifest.unlink()
    manifest.symlink_to(manifest.name)


STORES = {  # a directory named in a case's argv, and what makes the store in it
    "{tmp}/corrupt": store_with_a_corrupt_checkpoint,
    "{tmp}/garbled": store_with_a_manifest_that_is_no_json,
    "{tmp}/looped": store_with_a_manifest_that_loops,
}


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def a_file_and_bad_python(tmp: Path) -> None:
    (tmp / "file").write_text("not a directory")
    (tmp / "bad.py").write_text("def f(:\n")


CASES: dict[str, Case] = {
    # spotrun checkpoints list|show|download
    "list without a uri": Case(["checkpoints", "list"], 2, "the following arguments are required: NAME|URI"),
    "list a path through a file": Case(
        ["checkpoints", "list", "{tmp}/file/runs"], 2, "{tmp}/file is a file; give a directory"
    ),
    "list a missing directory": Case(["checkpoints", "list", "{tmp}/missing"], 0, "(the directory does not exist)"),
    "list an unknown scheme": Case(["checkpoints", "list", "ftp://host/x"], 2, "unsupported scheme 'ftp'; use s3://"),
    "list s3 without a bucket": Case(["checkpoints", "list", "s3://"], 2, "names no bucket; write it as s3://BUCKET"),
    "list with an endpoint that is no url": Case(
        ["checkpoints", "list", "s3://b/p"],
        2,
        "set AWS_ENDPOINT_URL to a URL such as http://HOST:PORT",
        {**FAKE_AWS, "AWS_ENDPOINT_URL": "notaurl"},
    ),
    "list with an unreachable endpoint": Case(
        ["checkpoints", "list", "s3://b/p"],
        1,
        "check that the S3 endpoint http://127.0.0.1:9 is up and reachable from here",
        {**FAKE_AWS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    ),
    "list without credentials": Case(
        ["checkpoints", "list", "s3://b/p"],
        2,
        "no S3 credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        {**NO_AWS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
    ),
    "list with an unknown option": Case(
        ["checkpoints", "list", "{store}", "--jsn"], 2, "unrecognized arguments: --jsn"
    ),
    "show an unknown id": Case(["checkpoints", "show", "{store}", "000009-000009"], 2, "no checkpoint '000009-000009'"),
    "show of no checkpoints": Case(["checkpoints", "show", "{tmp}/missing"], 2, "no committed checkpoints in"),
    "show an id that reaches out of the store": Case(
        ["checkpoints", "show", "{store}", "../x"], 2, "argument id: '../x' is not a checkpoint id: give one as"
    ),
    "show an id of another form": Case(["checkpoints", "show", "{store}", "1-1"], 2, "'1-1' is not a checkpoint id"),
    "show a manifest that is no json": Case(
        ["checkpoints", "show", "{tmp}/garbled/store", "000001-000002"],
        1,
        "checkpoint 000001-000002 in {tmp}/garbled/store has an unreadable manifest: Expecting",
    ),
    "list a store with an os error no check foresaw": Case(
        ["checkpoints", "list", "{tmp}/looped/store"],
        1,
        "spotrun: Too many levels of symbolic links: {tmp}/looped/store/manifests/000001-000001.json "
        "(SPOTRUN_DEBUG=1 shows the traceback)",
    ),
    "download under a file": Case(
        ["checkpoints", "download", "{store}", "{tmp}/file/out"], 2, "cannot use {tmp}/file/out: {tmp}/file is a file"
    ),
    "download a rank that is no number": Case(
        ["checkpoints", "download", "{store}", "{tmp}/out", "--rank", "one"], 2, "'one' is not a whole number"
    ),
    "download a negative rank": Case(
        ["checkpoints", "download", "{store}", "{tmp}/out", "--rank", "-1"], 2, "-1 is below 0: give 0 or more"
    ),
    "download a rank of a single writer's checkpoint": Case(
        ["checkpoints", "download", "{store}", "{tmp}/out", "--rank", "1"], 2, "was written by one rank"
    ),
    "download of no checkpoints": Case(
        ["checkpoints", "download", "{tmp}/missing", "{tmp}/new/out"], 1, "no committed checkpoints in"
    ),
    "download of a corrupt checkpoint": Case(
        ["checkpoints", "download", "{tmp}/corrupt/store", "{tmp}/new/out"], 1, "no intact checkpoint in"
    ),
    # spotrun restore|sync (directory mode)
    "restore without a checkpoint uri": Case(
        ["restore", "{tmp}/work"], 2, "set SPOTRUN_CHECKPOINT_URI", {"SPOTRUN_CHECKPOINT_URI": None}
    ),
    "restore into a file": Case(
        ["restore", "{tmp}/file"], 2, "cannot use {tmp}/file: {tmp}/file is a file; give a directory"
    ),
    "restore under a file": Case(["restore", "{tmp}/file/sub"], 2, "{tmp}/file is a file; give a directory"),
    "restore with a bad attempt number": Case(
        ["restore", "{tmp}/work"], 2, "SPOTRUN_ATTEMPT='zero' is not a whole number", {"SPOTRUN_ATTEMPT": "zero"}
    ),
    "restore from a uri through a file": Case(
        ["restore", "{tmp}/work"], 2, "{tmp}/file is a file", {"SPOTRUN_CHECKPOINT_URI": "{tmp}/file/store"}
    ),
    "sync with a zero interval": Case(["sync", "{tmp}/work", "--interval", "0"], 2, "0 is not a number of seconds"),
    "sync with an interval that is no number": Case(
        ["sync", "{tmp}/work", "--interval", "soon"], 2, "'soon' is not a number of seconds"
    ),
    "sync with an infinite interval": Case(["sync", "{tmp}/work", "--interval", "inf"], 2, "above 0"),
    "sync a directory under a file": Case(
        ["sync", "{tmp}/file/work"], 2, "{tmp}/file is a file", {"SPOTRUN_CHECKPOINT_URI": "{tmp}/store"}
    ),
    # spotrun run
    "run a missing file": Case(["run", "{tmp}/missing.py", "t"], 2, "{tmp}/missing.py is not a file"),
    "run a file that is no python": Case(["run", "{tmp}/bad.py", "f"], 2, "{tmp}/bad.py is not valid Python: line 1"),
    "run a missing task": Case(["run", SEED, "nosuch"], 2, "defines no function 'nosuch'"),
    "run with an argument of the wrong type": Case(
        ["run", SEED, "checkpointing_example", "--n_iterations", "ten"], 2, "--n_iterations='ten' is not a valid int"
    ),
    "run without a required argument": Case(
        ["run", SEED, "checkpointing_example"], 2, "checkpointing_example() needs --n_iterations"
    ),
    # spotrun submit and the cluster commands (no cluster needed to refuse these)
    "submit without an image": Case(
        ["submit", SEED, "checkpointing_example", "--n_iterations", "1", "--dry-run"], 2, "--image IMAGE is required"
    ),
    "submit with negative retries": Case(
        ["submit", SEED, "checkpointing_example", "--n_iterations", "1", "--image", "i:1", "--retries", "-1"],
        2,
        "argument --retries: -1 is below 0: give 0 or more",
    ),
    "submit with interruptions that are no number": Case(
        ["submit", SEED, "checkpointing_example", "--image", "i:1", "--max-interruptions", "many"],
        2,
        "argument --max-interruptions: 'many' is not a whole number",
    ),
    "submit with a name kubernetes refuses": Case(
        ["submit", SEED, "checkpointing_example", "--image", "i:1", "--name", "Train_1"],
        2,
        "argument --name: 'Train_1' is not a Kubernetes name",
    ),
    "submit on unknown capacity": Case(
        ["submit", SEED, "checkpointing_example", "--image", "i:1", "--capacity", "cheap"],
        2,
        "argument --capacity: invalid choice: 'cheap'",
    ),
    "get a name kubernetes refuses": Case(["get", "My Run"], 2, "argument name: 'My Run' is not a Kubernetes name"),
    "get in a namespace kubernetes refuses": Case(["get", "-n", "ML Team"], 2, "'ML Team' is not a Kubernetes name"),
    "logs of attempt 0": Case(["logs", "train", "--attempt", "0"], 2, "argument --attempt: 0 is below 1"),
    "get with no cluster": Case(
        ["get"], 2, "no cluster reachable with the current context", {"KUBECONFIG": "{tmp}/missing-kubeconfig"}
    ),
    "an unknown command": Case(["train"], 2, "invalid choice: 'train'"),
}


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gets_one_clear_line_the_right_code_and_leaves_nothing(case: Case, tmp_path: Path) -> None:
    a_file_and_bad_python(tmp_path)
    if any("{store}" in a for a in case.argv):
        store_with_one_checkpoint(tmp_path)
    for where, make in STORES.items():
        if any(where in a for a in case.argv):
            make(tmp_path / where.removeprefix("{tmp}/"))
    before = _files(tmp_path)

    def fill(text: str) -> str:
        return text.replace("{store}", str(tmp_path / "store")).replace("{tmp}", str(tmp_path))

    env = {**os.environ, "SPOTRUN_CHECKPOINT_URI": str(tmp_path / "store"), "SPOTRUN_ATTEMPT": "2"}
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = fill(value)
    run = subprocess.run(
        [sys.executable, "-m", "spotrun", *map(fill, case.argv)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == case.code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    says = fill(case.says)
    if case.code == 0:
        assert says in run.stdout
    else:
        lines = [line for line in run.stderr.splitlines() if " WARNING " not in line and " ERROR " not in line]
        if lines and lines[0].startswith("usage:"):  # argparse: usage, then one error line
            lines = [line for line in lines if "error:" in line]
        assert len(lines) == 1, run.stderr
        assert says in lines[0], run.stderr
    assert _files(tmp_path) == before  # nothing written, nothing left behind


def test_spotrun_debug_shows_the_traceback_of_an_unexpected_error(tmp_path: Path) -> None:
    store_with_a_manifest_that_loops(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "spotrun", "checkpoints", "list", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SPOTRUN_DEBUG": "1"},
        timeout=120,
    )
    assert run.returncode == 1
    assert "Traceback" in run.stderr
    assert "OSError: [Errno 40] Too many levels of symbolic links" in run.stderr
