"""Builds the local cluster's binaries from pinned Go modules into a per-version cache."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
VERSITYGW_VERSION = "v1.8.0"
HELM_VERSION = "v3.22.0"


def _k8s_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    stamps = []
    # Both packages carry the version: component-base feeds `kubectl version`'s server
    # line and the emulation-version checks; client-go's copy is what clients print.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(["-s", "-w", *stamps])


@dataclasses.dataclass(frozen=True)
class Binary:
    """One binary: which wrapper module builds it, from which package, at which version."""

    name: str
    module_dir: str
    package: str
    version: str
    ldflags: str

    @property
    def source(self) -> Path:
        return GO_DIR / self.module_dir


BINARIES: tuple[Binary, ...] = (
    Binary("etcd", "etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "-s -w"),
    Binary(
        "versitygw",
        "versitygw",
        "github.com/versity/versitygw/cmd/versitygw",
        VERSITYGW_VERSION,
        f"-s -w -X main.Version={VERSITYGW_VERSION} -X main.Build=spotrun-localcluster",
    ),
    Binary(
        "helm",
        "helm",
        "helm.sh/helm/v3/cmd/helm",
        HELM_VERSION,
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
    ),
    *(
        Binary(name, "kubernetes", f"k8s.io/kubernetes/cmd/{name}", KUBERNETES_VERSION, _k8s_ldflags())
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    ),
)


def cache_root() -> Path:
    """The binary cache: $SPOTRUN_CACHE_DIR, else $XDG_CACHE_HOME/spotrun, else ~/.cache/spotrun."""
    if explicit := os.environ.get("SPOTRUN_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "spotrun"


def binary_path(binary: Binary) -> Path:
    return cache_root() / "localcluster" / f"{binary.name}-{binary.version}" / binary.name


def path_of(name: str) -> Path:
    """The cached path of the named binary (it may not be built yet)."""
    for binary in BINARIES:
        if binary.name == name:
            return binary_path(binary)
    raise KeyError(f"unknown localcluster binary {name!r}")


def missing() -> list[Binary]:
    return [b for b in BINARIES if not binary_path(b).is_file()]


def _log(message: str) -> None:
    print(f"localcluster: {message}", file=sys.stderr, flush=True)


def _build_one(binary: Binary, index: int, total: int) -> None:
    target = binary_path(binary)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    go = shutil.which("go")
    if go is None:
        raise SystemExit("localcluster: `go` is not on PATH; install Go 1.26 or newer to build the cluster")
    cmd = [
        go,
        "build",
        "-v",
        "-trimpath",
        "-buildvcs=false",
        "-ldflags",
        binary.ldflags,
        "-o",
        str(partial),
        binary.package,
    ]
    _log(f"[{index}/{total}] building {binary.name} {binary.version} (first build of a version takes minutes)")
    started = time.monotonic()
    compiled = 0
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(20):
            _log(f"[{index}/{total}] {binary.name}: {compiled} packages compiled, {time.monotonic() - started:.0f}s")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    tail: list[str] = []
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    with subprocess.Popen(cmd, cwd=binary.source, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            compiled += 1
            tail = [*tail[-30:], line.rstrip()]
        code = proc.wait()
    done.set()
    if code != 0:
        detail = "\n".join(tail)
        raise SystemExit(f"localcluster: building {binary.name} failed (go build exit {code}):\n{detail}")
    partial.replace(target)
    _log(f"[{index}/{total}] built {binary.name} in {time.monotonic() - started:.0f}s -> {target}")


def build(force: bool = False) -> None:
    """Builds every binary that is not cached yet (all of them with force)."""
    todo = list(BINARIES) if force else missing()
    if not todo:
        _log(f"all binaries cached under {cache_root() / 'localcluster'}")
        return
    started = time.monotonic()
    for index, binary in enumerate(todo, 1):
        _build_one(binary, index, len(todo))
    _log(f"built {len(todo)} binaries in {time.monotonic() - started:.0f}s")
