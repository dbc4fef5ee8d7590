"""The binary cache: where it lives and how versions key it."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import toolchain


def test_cache_root_honours_spotrun_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOTRUN_CACHE_DIR", str(tmp_path))
    assert toolchain.cache_root() == tmp_path
    path = toolchain.path_of("kube-apiserver")
    assert path == tmp_path / "localcluster" / f"kube-apiserver-{toolchain.KUBERNETES_VERSION}" / "kube-apiserver"


def test_missing_lists_only_what_is_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOTRUN_CACHE_DIR", str(tmp_path))
    etcd = toolchain.path_of("etcd")
    etcd.parent.mkdir(parents=True)
    etcd.write_text("")
    names = {b.name for b in toolchain.missing()}
    assert "etcd" not in names
    assert "kube-apiserver" in names


def test_kubernetes_binaries_are_stamped_with_the_release() -> None:
    apiserver = next(b for b in toolchain.BINARIES if b.name == "kube-apiserver")
    assert f"k8s.io/component-base/version.gitVersion={toolchain.KUBERNETES_VERSION}" in apiserver.ldflags


def test_every_staging_module_is_replaced_with_the_matching_release() -> None:
    go_mod = (toolchain.GO_DIR / "kubernetes" / "go.mod").read_text()
    staging_version = "v0." + toolchain.KUBERNETES_VERSION.split(".", 1)[1]
    replaces = [line.split() for line in go_mod.splitlines() if "=>" in line]
    assert len(replaces) >= 30
    for module, _, target, version in replaces:
        assert module == target
        assert version == staging_version
