"""`spotrun submit` without a cluster: the task's signature from its source, arguments, the code, the YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from spotrun import _cli, _submit, _yaml
from spotrun._errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "checkpoint_seed.py"

SOURCE = """
import torch  # not installed where submit runs: the file is read, never imported
from __future__ import annotations


@spotrun.task
def train(epochs: int, lr: float = 0.1, name: str = "run", verbose: bool = False, layers: list[int] = (), tag=None):
    pass


async def later(when: "int"):
    pass


def _helper():
    pass
"""


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SOURCE)
    return path


def test_the_signature_is_read_from_the_source_without_importing_it(task_file: Path) -> None:
    found = {p.name: (p.kind, p.required) for p in _submit.parameters(task_file, "train")}
    assert found == {
        "epochs": (int, True),
        "lr": (float, False),
        "name": (str, False),
        "verbose": (bool, False),
        "layers": (None, False),
        "tag": (str, False),
    }
    assert [p.kind for p in _submit.parameters(task_file, "later")] == [int]


@pytest.mark.parametrize(
    ("extra", "argv"),
    [
        (["--epochs", "3"], ["--epochs=3"]),
        (["--epochs=3", "--lr", "0.5", "--verbose", "true"], ["--epochs=3", "--lr=0.5", "--verbose=true"]),
        (["--epochs", "3", "--layers", "[1, 2]"], ["--epochs=3", "--layers=[1, 2]"]),
        (["--epochs", "3", "--name", "x"], ["--epochs=3", "--name=x"]),
        (["--epochs=-3", "--name=-h"], ["--epochs=-3", "--name=-h"]),  # stays a value in the pod
        (["--epochs", "3", "--name="], ["--epochs=3", "--name="]),
    ],
)
def test_task_arguments_are_checked_and_passed_on(task_file: Path, extra: list[str], argv: list[str]) -> None:
    assert _submit.task_arguments(task_file, "train", extra) == argv


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "train() needs --epochs"),
        (["--epochs", "three"], "--epochs='three' is not a valid int"),
        (["--epochs", "3", "--momentum", "0.9"], "train() has no parameter 'momentum'; it takes epochs, lr"),
        (["--epochs"], "--epochs needs a value"),
        (["3"], "task arguments are --name value; got '3'"),
        (["--epochs", "3", "--layers", "[1,"], "--layers='[1,' is not a valid list"),
        (["--epochs", "3", "--verbose", "maybe"], "--verbose='maybe' is not a valid bool"),
    ],
)
def test_bad_task_arguments_are_refused_saying_what_to_fix(task_file: Path, extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _submit.task_arguments(task_file, "train", extra)


def test_a_missing_function_or_file_is_named(task_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"defines no function 'fit' at module level \(it defines: _helper, later, train\)"
    ):
        _submit.parameters(task_file, "fit")
    with pytest.raises(ConfigError, match="is not a file"):
        _submit.code_files(tmp_path / "nope.py", None)
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    with pytest.raises(ConfigError, match="is not valid Python: line 1"):
        _submit.parameters(broken, "f")


def test_a_package_ships_its_files_and_leaves_caches_out(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "main.py").write_text("from pkg import util\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    (root / ".git" / "HEAD").write_text("ref")
    (root / "data.bin").write_bytes(b"\xff\xfe")
    files, entry = _submit.code_files(root / "pkg" / "util.py", root)
    assert sorted(files) == ["data.bin", "main.py", "pkg/util.py"]
    assert entry == "pkg/util.py"
    body = _submit.configmap("t-code", "ml", files)
    assert body["binaryData"] == {"f0": "//4="}
    assert body["data"] == {"f1": "from pkg import util\n", "f2": "X = 1\n"}
    volume = _submit.volume("t-code", files)
    assert volume["configMap"]["items"] == [
        {"key": "f0", "path": "data.bin"},
        {"key": "f1", "path": "main.py"},
        {"key": "f2", "path": "pkg/util.py"},
    ]


def test_code_too_large_for_a_configmap_or_outside_the_package_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_bytes(b"#" * (_submit.MOST_CODE_BYTES + 1))
    with pytest.raises(ConfigError, match="at most 900 KiB travels in a ConfigMap"):
        _submit.code_files(tmp_path / "big.py", None)
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "t.py").write_text("")
    with pytest.raises(ConfigError, match="is not inside --package"):
        _submit.code_files(tmp_path / "t.py", other)


def test_the_taskrun_runs_the_task_from_the_shipped_code() -> None:
    files, entry = _submit.code_files(SEED, None)
    sub = _submit.Submission(
        name="seed-1", file=SEED, task="use_checkpoint", image="img:1", arguments=["--n_iterations=10"], retries=3
    )
    body = _submit.taskrun(sub, files, entry)
    (container,) = body["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "spotrun",
        "run",
        "/var/run/spotrun-code/checkpoint_seed.py",
        "use_checkpoint",
        "--n_iterations=10",
    ]
    assert container["volumeMounts"] == [
        {"name": "spotrun-code", "mountPath": "/var/run/spotrun-code", "readOnly": True}
    ]
    assert body["spec"]["retries"] == 3
    assert "maxInterruptions" not in body["spec"]
    assert body["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "seed-1-code"


def test_dry_run_prints_yaml_that_kubectl_would_read(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["submit", str(SEED), "use_checkpoint", "--n_iterations", "10", "--image", "img:1", "--name", "seed-1"]
    assert _cli.main([*argv, "--retries", "3", "--dry-run"]) == 0
    code, taskrun = yaml.safe_load_all(capsys.readouterr().out)
    assert code["data"]["f0"] == SEED.read_text()
    assert taskrun["metadata"]["name"] == "seed-1"
    assert taskrun["spec"]["retries"] == 3


def test_submit_without_an_image_says_what_image_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["submit", str(SEED), "use_checkpoint", "--n_iterations", "10", "--dry-run"]) == 2
    assert "--image IMAGE is required: an image with the spotrun SDK" in capsys.readouterr().err


def test_a_task_parameter_named_like_an_option_goes_after_a_double_dash(task_file: Path, capsys: Any) -> None:
    argv = ["submit", str(task_file), "train", "--image", "i", "--name", "run-1", "--dry-run", "--epochs", "2"]
    assert _cli.main([*argv, "--", "--name", "x"]) == 0
    _, taskrun = yaml.safe_load_all(capsys.readouterr().out)
    assert taskrun["metadata"]["name"] == "run-1"
    assert taskrun["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--epochs=2", "--name=x"]


@pytest.mark.parametrize(
    "value",
    [
        {"a": "line\n  indented\n", "b": [1, True, None, {"c": "x"}], "d": {}, "e": []},
        {"s": " leading", "t": "trailing  \nx", "u": "\n", "v": "a\n\n", "w": "tab\tin\nit", "x": "é\n"},
    ],
)
def test_the_yaml_reads_back_as_what_was_written(value: Any) -> None:
    assert yaml.safe_load(_yaml.dump_all([value])) == value


def test_submits_own_options_are_never_taken_shortened_from_the_tasks(task_file: Path, capsys: Any) -> None:
    """--re is no --retries, --w no --wait: they are the task's, and train() has no such parameters."""
    for shortened in ("--re", "--w", "--imag"):
        argv = ["submit", str(task_file), "train", "--image", "i", "--dry-run", "--epochs", "2", shortened, "4"]
        assert _cli.main(argv) == 2
        assert f"train() has no parameter {shortened[2:]!r}" in capsys.readouterr().err


def test_a_symlink_out_of_the_package_is_left_behind(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "main.py").write_text("")
    (root / "config.txt").symlink_to(secret)
    files, _ = _submit.code_files(root / "main.py", root)
    assert sorted(files) == ["main.py"]


def test_characters_outside_the_basic_plane_are_written_as_yaml_escapes_not_surrogate_pairs() -> None:
    text = _yaml.dump_all([{"msg": "\U0001f600 ok", "tabbed": "a\tb\n\U0001f600\n"}])
    assert "\\ud83d" not in text
    assert yaml.safe_load(text) == {"msg": "\U0001f600 ok", "tabbed": "a\tb\n\U0001f600\n"}


def test_a_taskrun_name_is_looked_up_even_when_a_directory_has_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train").mkdir()
    asked: list[str] = []
    monkeypatch.setattr(
        "spotrun._cluster.Kubectl.taskrun",
        lambda self, name: asked.append(name) or {"status": {"checkpoint": {"uri": str(tmp_path / "train")}}},
    )
    assert _cli.main(["checkpoints", "list", "train"]) == 0
    assert asked == ["train"]
    assert _cli.main(["checkpoints", "list", "./train"]) == 0
    assert asked == ["train"], "./train is the directory"
