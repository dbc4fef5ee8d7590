"""Pod spec to host process: $(VAR) expansion, env sources, image entrypoints."""

from __future__ import annotations

import base64

import pytest

from localcluster import podspec

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
