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
CONTAINERD_VERSION = "v2.4.2"
CNI_PLUGINS_VERSION = "v1.9.1"
KIND_VERSION = "v0.33.0"
CRICTL_VERSION = "v1.37.0"
COREDNS_VERSION = "v1.14.2"
KWOK_VERSION = "v0.8.0"

# Which runs need a binary: every cluster (the control plane), real nodes, or kind (`make kind-demo`,
# whose node image also carries the real nodes' kubelet, containerd, runc shim and CNI plugins).
CONTROL_PLANE, REAL_NODES, KIND = "control plane", "real nodes", "kind"

# What real nodes and image builds take from Debian rather than from Go modules: runc (Debian's
# 1.1 works once containerd restricts oom_score_adj), iptables and conntrack for kube-proxy and
# the CNI bridge's masquerading, dbus-daemon for the logind stand-in's private system bus,
# buildah and debootstrap to build images without a daemon or a registry.
DEBIAN_PACKAGES: tuple[str, ...] = ("runc", "iptables", "conntrack", "dbus-daemon", "buildah", "debootstrap")
# kind's Docker engine where the machine runs none: Debian's docker.io (dockerd and the CLI).
KIND_DEBIAN_PACKAGES: tuple[str, ...] = ("docker.io",)


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
    tags: str = ""
    cgo: bool | None = None  # None: Go's default (on where a C compiler is), shared with the cached builds
    # Who needs it: `build` makes the control plane's always, the others when asked for.
    group: str = CONTROL_PLANE

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
    *(
        Binary(
            name, "kubernetes", f"k8s.io/kubernetes/cmd/{name}", KUBERNETES_VERSION, _k8s_ldflags(), group=REAL_NODES
        )
        for name in ("kubelet", "kube-proxy")
    ),
    Binary("kubeadm", "kubernetes", "k8s.io/kubernetes/cmd/kubeadm", KUBERNETES_VERSION, _k8s_ldflags(), group=KIND),
    *(
        Binary(
            name,
            "containerd",
            f"github.com/containerd/containerd/v2/cmd/{name}",
            CONTAINERD_VERSION,
            f"-s -w -X github.com/containerd/containerd/v2/version.Version={CONTAINERD_VERSION}",
            tags="no_btrfs no_devmapper no_zfs",
            cgo=False,  # static, as containerd's releases are; no btrfs/devmapper/zfs headers needed
            group=REAL_NODES,
        )
        for name in ("containerd", "containerd-shim-runc-v2", "ctr")
    ),
    *(
        Binary(
            name,
            "cni",
            f"github.com/containernetworking/plugins/plugins/{kind}/{name}",
            CNI_PLUGINS_VERSION,
            "-s -w",
            group=REAL_NODES,
        )
        for kind, name in (("main", "bridge"), ("ipam", "host-local"), ("main", "loopback"), ("meta", "portmap"))
    ),
    Binary("kind", "kind", "sigs.k8s.io/kind", KIND_VERSION, "-s -w", cgo=False, group=KIND),
    Binary(
        "crictl",
        "crictl",
        "sigs.k8s.io/cri-tools/cmd/crictl",
        CRICTL_VERSION,
        f"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version={CRICTL_VERSION}",
        cgo=False,
        group=KIND,
    ),
    # Simulated nodes for scale (`up --kwok-nodes N`): cheap enough to build with the control plane.
    Binary(
        "kwok",
        "kwok",
        "sigs.k8s.io/kwok/cmd/kwok",
        KWOK_VERSION,
        f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION.lstrip('v')}",
        cgo=False,
    ),
    # The cluster DNS kubeadm deploys (kind's image), and real nodes' (a host process); static, to run
    # in an image with nothing else in it.
    Binary("coredns", "coredns", "github.com/coredns/coredns", COREDNS_VERSION, "-s -w", cgo=False, group=REAL_NODES),
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


def groups(real_nodes: bool = False, kind: bool = False) -> set[str]:
    """The binaries' groups a run needs: kind's nodes carry the real nodes' pieces too."""
    return {CONTROL_PLANE} | ({REAL_NODES} if real_nodes or kind else set()) | ({KIND} if kind else set())


def missing(real_nodes: bool = False, kind: bool = False) -> list[Binary]:
    """The binaries not cached yet: the control plane's, and real nodes' or kind's pieces when asked."""
    wanted = groups(real_nodes, kind)
    return [b for b in BINARIES if b.group in wanted and not binary_path(b).is_file()]


def module_source(module_dir: str, module: str) -> Path:
    """Where the Go module cache holds MODULE's source at the version wrapper module MODULE_DIR pins."""
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    subprocess.run(["go", "mod", "download", module], cwd=GO_DIR / module_dir, env=env, check=True, capture_output=True)
    done = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", module],
        cwd=GO_DIR / module_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"localcluster: cannot find {module}'s source for {module_dir}: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def cni_bin_dir() -> Path:
    """One directory holding every CNI plugin, as the container runtime's `bin_dir` wants."""
    return cache_root() / "localcluster" / f"cni-plugins-{CNI_PLUGINS_VERSION}"


def missing_debian_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[str]:
    missing_ones = []
    for package in packages:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in done.stdout:
            missing_ones.append(package)
    return missing_ones


def install_debian_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> None:
    """Installs the Debian packages real nodes and image builds need (apt-get, as root), when missing."""
    todo = missing_debian_packages(packages)
    if not todo:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"localcluster: real nodes need the Debian packages {' '.join(todo)}; install them as root")
    _log(f"installing Debian packages: {' '.join(todo)}")
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"localcluster: {' '.join(argv)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    _log(f"installed {' '.join(todo)} in {time.monotonic() - started:.0f}s")


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
        *(["-tags", binary.tags] if binary.tags else []),
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
    if binary.cgo is not None:
        env["CGO_ENABLED"] = "1" if binary.cgo else "0"
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
    if binary.module_dir == "cni":
        cni_bin_dir().mkdir(parents=True, exist_ok=True)
        link = cni_bin_dir() / binary.name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    _log(f"[{index}/{total}] built {binary.name} in {time.monotonic() - started:.0f}s -> {target}")


def build(force: bool = False, real_nodes: bool = False, kind: bool = False) -> None:
    """Builds every binary that is not cached yet (all of them with force); real nodes' or kind's pieces when asked."""
    if real_nodes or kind:
        from localcluster import dockerd  # noqa: PLC0415 - dockerd builds on this module

        # Docker's engine from Debian only where none answers: a machine's own Docker is kind's engine.
        engine = KIND_DEBIAN_PACKAGES if kind and not dockerd.user_engine_works() else ()
        install_debian_packages(DEBIAN_PACKAGES + engine)
    wanted = groups(real_nodes, kind)
    todo = [b for b in BINARIES if b.group in wanted] if force else missing(real_nodes, kind)
    if not todo:
        _log(f"all binaries cached under {cache_root() / 'localcluster'}")
        return
    started = time.monotonic()
    for index, binary in enumerate(todo, 1):
        _build_one(binary, index, len(todo))
    _log(f"built {len(todo)} binaries in {time.monotonic() - started:.0f}s")
