"""Pod spec to host process: $(VAR) expansion, env sources, image entrypoints, downward-API values and
the process kubelet's volume writer."""

from __future__ import annotations

import base64
import os
import re
import threading
from pathlib import Path

import pytest

from localcluster import podspec
from localcluster.volumes import DATA_DIR, write_volume

POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}, "annotations": {}},
    "spec": {"nodeName": "spot-1", "serviceAccountName": "sa"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)", "x1y2"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("cost $$5", "cost $5"),
        ("$(A", "$(A"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert podspec.expand(text, {"A": "1", "B": "2"}) == expected


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("python:3.11", "python"),
        ("ghcr.io/spotrun/spotrun:0.1.0", "ghcr.io/spotrun/spotrun"),
        ("registry:5000/app", "registry:5000/app"),
        ("registry:5000/app:v1@sha256:abc", "registry:5000/app"),
    ],
)
def test_image_repository_strips_tag_and_digest(image: str, repository: str) -> None:
    assert podspec.image_repository(image) == repository


def test_resolve_argv_uses_command_and_expands_args() -> None:
    container = {"name": "c", "image": "any", "command": ["echo"], "args": ["$(WHO)"]}
    assert podspec.resolve_argv(container, {"WHO": "me"}, {}) == ["echo", "me"]


def test_resolve_argv_falls_back_to_the_image_entrypoint_and_cmd() -> None:
    images = {"ghcr.io/spotrun/spotrun": {"entrypoint": ["python", "-m", "spotrun_operator"], "cmd": ["--verbose"]}}
    container = {"name": "op", "image": "ghcr.io/spotrun/spotrun:1.0"}
    assert podspec.resolve_argv(container, {}, images) == ["python", "-m", "spotrun_operator", "--verbose"]
    with_args = {**container, "args": ["--quiet"]}
    assert podspec.resolve_argv(with_args, {}, images) == ["python", "-m", "spotrun_operator", "--quiet"]


def test_resolve_argv_without_command_or_known_image_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="image map"):
        podspec.resolve_argv({"name": "c", "image": "unknown:1"}, {}, {})


def test_container_env_orders_sources_and_resolves_references() -> None:
    secret = {"data": {"KEY": base64.b64encode(b"secret-value").decode(), "OTHER": base64.b64encode(b"o").decode()}}
    config = {"data": {"MODE": "fast"}}

    def lookup(kind: str, name: str) -> dict[str, object] | None:
        return {("secret", "s"): secret, ("configmap", "c"): config}.get((kind, name))

    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CFG_"}, {"secretRef": {"name": "s"}}],
        "env": [
            {"name": "OTHER", "value": "overridden"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "GREETING", "value": "$(POD) on $(NODE)"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        ],
    }
    env = podspec.container_env(POD, container, {"PATH": "/bin"}, lookup)
    assert env == {
        "PATH": "/bin",
        "CFG_MODE": "fast",
        "KEY": "secret-value",
        "OTHER": "overridden",
        "POD": "p",
        "APP": "x",
        "NODE": "spot-1",
        "GREETING": "p on spot-1",
    }


def test_container_env_missing_required_key_names_it() -> None:
    container = {"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]}
    with pytest.raises(podspec.MissingReference, match='key "nope" in secret "s"'):
        podspec.container_env(POD, container, {}, lambda kind, name: {"data": {}})


def test_field_value_rejects_unknown_paths() -> None:
    with pytest.raises(ValueError, match="unsupported fieldRef"):
        podspec.field_value(POD, "spec.bogus")


def _pod_with_annotations(annotations: dict[str, str]) -> podspec.Obj:
    return {"metadata": {"name": "p", "labels": {"app": "x"}, "annotations": annotations}, "spec": {}}


def test_field_value_of_one_annotation_is_raw_and_absent_is_empty() -> None:
    pod = _pod_with_annotations({"spotrun.dev/notice": 'at "12:00"\nnow'})
    assert podspec.field_value(pod, "metadata.annotations['spotrun.dev/notice']") == 'at "12:00"\nnow'
    assert podspec.field_value(pod, "metadata.annotations['missing']") == ""
    assert podspec.field_value({**POD, "metadata": {"name": "p"}}, "metadata.labels['app']") == ""


def test_field_value_of_all_annotations_is_the_kubelets_sorted_go_quoted_lines() -> None:
    annotations = {"z": "plain", "a": 'say "hi"', "m": "two\nlines\tand \\ back", "u": "日本\u00a0\x01"}
    pod = _pod_with_annotations(annotations)
    # As Go's fmt.Sprintf("%v=%q\n") per key, joined, without the last newline (fieldpath.FormatMap).
    assert podspec.field_value(pod, "metadata.annotations") == (
        'a="say \\"hi\\""\nm="two\\nlines\\tand \\\\ back"\nu="日本\\u00a0\\x01"\nz="plain"'
    )
    assert podspec.field_value(POD, "metadata.labels") == 'app="x"'
    assert podspec.field_value(POD, "metadata.annotations") == ""


@pytest.mark.parametrize(
    ("text", "quoted"),
    [  # checked against Go 1.26's strconv.Quote
        ("", '""'),
        ("\x07\x08\x0c\r\x0b", '"\\a\\b\\f\\r\\v"'),
        ("\x00\x1f\x7f\x80", '"\\x00\\x1f\\x7f\\u0080"'),
        ("\u200b\u2028\ufeff", '"\\u200b\\u2028\\ufeff"'),
        ("\U000e0001 é 😀", '"\\U000e0001 é 😀"'),
        ("it's", '"it\'s"'),
    ],
)
def test_go_quote_escapes_as_strconv_quote(text: str, quoted: str) -> None:
    assert podspec.go_quote(text) == quoted


def _payloads(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if p.name.startswith("..") and p.name != DATA_DIR)


def test_write_volume_uses_the_kubelets_data_symlink_layout(tmp_path: Path) -> None:
    target = tmp_path / "podinfo"
    assert write_volume(target, {"notice": (b"", 0o644), "dir/key": (b"v", 0o600)})
    payload = os.readlink(target / DATA_DIR)
    assert re.fullmatch(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\w+", payload)
    assert (target / payload).is_dir()
    assert os.readlink(target / "notice") == f"{DATA_DIR}/notice"
    assert os.readlink(target / "dir") == f"{DATA_DIR}/dir"
    assert (target / "notice").read_bytes() == b""
    assert (target / "dir" / "key").read_bytes() == b"v"
    assert (target / payload / "dir" / "key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith("..")) == ["dir", "notice"]


def test_write_volume_replaces_files_atomically_in_the_same_directory(tmp_path: Path) -> None:
    target = tmp_path / "podinfo"
    write_volume(target, {"notice": (b"old", 0o644), "gone": (b"x", 0o644)})
    inode = target.stat().st_ino
    with open(target / "notice", "rb") as before:  # what a reader has open keeps its contents
        assert write_volume(target, {"notice": (b"new", 0o644)})
        assert before.read() == b"old"
    assert target.stat().st_ino == inode  # a bind mount of the directory sees the change
    assert (target / "notice").read_bytes() == b"new"
    assert not os.path.lexists(target / "gone")
    assert not write_volume(target, {"notice": (b"new", 0o644)})  # unchanged: nothing written
    write_volume(target, {"notice": (b"newer", 0o644)})
    write_volume(target, {"notice": (b"newest", 0o644)})
    assert len(_payloads(target)) == 2  # the current payload and the one before it, no more
    assert (target / "notice").read_bytes() == b"newest"


def test_write_volume_never_shows_a_half_written_file(tmp_path: Path) -> None:
    target = tmp_path / "podinfo"
    size = 1 << 18
    write_volume(target, {"notice": (b"a" * size, 0o644)})
    seen: set[bytes] = set()
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                data = (target / "notice").read_bytes()
            except FileNotFoundError:
                # A reader that resolved `..data` and was then descheduled for two writes finds its
                # payload gone; the kubelet's own writer removes it at once, so a reader of a real
                # downward-API volume must read again too (the SDK does: read_notice).
                continue
            except OSError as err:
                errors.append(repr(err))
                continue
            if len(data) != size or len(set(data)) != 1:
                errors.append(f"{len(data)} bytes of {sorted(set(data))}")
            seen.add(data[:1])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            write_volume(target, {"notice": ((b"b" if i % 2 else b"c") * size, 0o644)})
    finally:
        done.set()
        reader.join()
    assert not errors
    assert len(seen) > 1


def test_a_gangs_pod_resolves_its_peers_by_their_dns_names() -> None:
    def pod(host: str, subdomain: str = "train") -> dict[str, object]:
        return {"metadata": {"namespace": "ml"}, "spec": {"hostname": host, "subdomain": subdomain}}

    hosts = podspec.hosts_file(pod("train-a1-r1"), [pod("train-a1-r0"), pod("train-a1-r1"), pod("x", "other")])
    assert hosts is not None
    lines = hosts.splitlines()
    assert (
        "127.0.0.1\ttrain-a1-r0.train.ml.svc.cluster.local train-a1-r0.train.ml.svc train-a1-r0.train train-a1-r0"
        in lines
    )
    assert any(line.startswith("127.0.0.1\ttrain-a1-r1.train.ml.svc.cluster.local ") for line in lines)
    assert not any("x.other" in line for line in lines)
    assert podspec.hosts_file({"metadata": {"namespace": "ml"}, "spec": {}}, []) is None
