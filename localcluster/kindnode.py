"""A kind node image built here, from the binaries the project builds, for machines that reach no registry.

`kind create cluster` needs a node image (`kindest/node`) and, inside it, every image kubeadm runs:
none can be pulled here. This builds the node image as kind's own `images/base/Dockerfile` and
`kind build node-image` do, from kind's own files (`images/base/files` of the kind module), with
these STAND-INS for what they would download:

- the root: `debootstrap --variant=minbase` of Debian bookworm with the packages kind's base
  installs (kind v0.33.0 starts from debian:trixie-slim), not slimmed;
- containerd, its runc shim, ctr, the CNI plugins, kubelet, kubeadm, kubectl and crictl: the
  project's own builds (`localcluster/go`), Debian's runc as on the real nodes;
- the images `kubeadm config images list` names (kube-apiserver, kube-controller-manager,
  kube-scheduler, kube-proxy, etcd, coredns) and the sandbox image: the project's binaries over the
  node's own root as a base layer (Kubernetes' own images are distroless; kube-proxy needs the
  root's iptables), CoreDNS alone, and the project's pause; imported into the node's containerd
  as kind's build does (`ctr images import --no-unpack`, pinned), with a containerd run here on the
  node root's /var/lib/containerd.

On a machine whose root lacks CAP_SYS_RESOURCE the node's containerd restricts oom_score_adj,
as the real nodes' does (see localcluster/README.md). The result is a Docker image keyed by its
inputs: a second build with nothing changed is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localcluster import dockerd, images, toolchain

NODE_IMAGE = f"kindest/node:{toolchain.KUBERNETES_VERSION}"
# What kind's base image installs (images/base/Dockerfile), less what a node here never uses
# (nfs-common, open-iscsi, e2fsprogs, fuse-overlayfs); dbus for systemd.
NODE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "dbus",
    "conntrack",
    "iptables",
    "nftables",
    "iproute2",
    "ethtool",
    "util-linux",
    "mount",
    "kmod",
    "libseccomp2",
    "pigz",
    "bash",
    "ca-certificates",
    "curl",
    "jq",
    "procps",
)
# Bump when what the recipe makes changes in a way its inputs do not show.
RECIPE = "kind v0.33.0 images/base + build node-image; control-plane images over the node root; v1"
_KEY_LABEL = f"{images.LABEL_PREFIX}.key"


def kind_files() -> Path:
    """kind's images/base/files, from the kind module the project builds kind from."""
    return toolchain.module_source("kind", "sigs.k8s.io/kind") / "images" / "base" / "files"


def build(docker: list[str], env: dict[str, str]) -> str:
    """Builds NODE_IMAGE into the engine `docker` talks to, unless it is there from the same inputs."""
    restrict = dockerd.lacks_cap_sys_resource()
    rootfs = images.rootfs_tarball(NODE_PACKAGES, slim=False)
    binaries = [toolchain.path_of(name) for name in (*_NODE_BINARIES, *_IMAGE_BINARIES)]
    pause = images.pause_archive()
    inputs = [
        RECIPE,
        rootfs.name,
        f"restrict_oom_score_adj={restrict}",
        pause.with_name(f"{pause.name}.key").read_text(),
    ]
    inputs += [f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in binaries]
    key = hashlib.sha256("\0".join(inputs).encode("latin-1")).hexdigest()
    inspect = subprocess.run(
        [*docker, "image", "inspect", "--format", "{{json .Config.Labels}}", NODE_IMAGE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if inspect.returncode == 0 and (json.loads(inspect.stdout) or {}).get(_KEY_LABEL) == key:
        _log(f"{NODE_IMAGE} is built (key {key[:12]})")
        return NODE_IMAGE
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kind-node-", dir=_scratch_dir()) as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        subprocess.run(["tar", "-xpf", str(rootfs), "-C", str(root), "--numeric-owner"], check=True)
        _assemble(root, restrict)
        _preload(root, rootfs, Path(scratch))
        raw = f"{NODE_IMAGE}-rootfs"
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [*docker, "import", "-", raw], stdin=tar.stdout, env=env, capture_output=True, check=False
        )
        assert tar.stdout is not None
        tar.stdout.close()  # so that tar gets SIGPIPE, not a pipe no one reads, when the import fails
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise SystemExit(f"localcluster: docker import of the node root failed:\n{imported.stderr.decode()}")
    # `docker import --change` takes no STOPSIGNAL: the image's settings go on in a build of no files,
    # as the last stage of kind's base Dockerfile sets them.
    dockerfile = "\n".join(
        [
            f"FROM {raw}",
            "ENV container=docker",
            "STOPSIGNAL SIGRTMIN+3",
            'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]',
            f'LABEL {_KEY_LABEL}="{key}" {images.LABEL_PREFIX}.stand-in-for="kindest/node"',
            "",
        ]
    )
    built = subprocess.run(
        [*docker, "build", "--quiet", "--tag", NODE_IMAGE, "-"],
        input=dockerfile,
        env={**env, "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise SystemExit(f"localcluster: docker build of {NODE_IMAGE} failed:\n{built.stderr}")
    subprocess.run([*docker, "rmi", raw], env=env, capture_output=True, check=False)
    subprocess.run([*docker, "image", "prune", "--force"], env=env, capture_output=True, check=False)
    _log(f"Built {NODE_IMAGE} in {time.monotonic() - started:.0f}s")
    return NODE_IMAGE


# The binaries of the images kubeadm runs (`kubeadm config images list`, less pause), by image name.
_IMAGE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd", "coredns")
# The binaries the node image carries, and where kind's images put them.
_NODE_BINARIES = {
    "containerd": "usr/local/bin",
    "containerd-shim-runc-v2": "usr/local/bin",
    "ctr": "usr/local/bin",
    "crictl": "usr/local/bin",
    "kubelet": "usr/bin",
    "kubeadm": "usr/bin",
    "kubectl": "usr/bin",
    "bridge": "opt/cni/bin",
    "host-local": "opt/cni/bin",
    "loopback": "opt/cni/bin",
    "portmap": "opt/cni/bin",
}


def _assemble(root: Path, restrict_oom_score_adj: bool) -> None:
    """kind's images/base/Dockerfile, step by step, on a debootstrapped root."""
    files = kind_files()
    for source in files.rglob("*"):
        if source.is_file():
            relative = source.relative_to(files)
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            executable = relative.parts[0] == "usr" or relative.parts[:2] == ("kind", "bin")
            target.chmod(0o755 if executable else 0o644)
    for directory in ("kind", "kind/bin"):
        (root / directory).chmod(0o755)
    systemd = root / "lib" / "systemd" / "system"
    for pattern in (
        "sysinit.target.wants/systemd-tmpfiles-setup.service",
        "multi-user.target.wants/*",
        "local-fs.target.wants/*",
        "sockets.target.wants/*udev*",
        "sockets.target.wants/*initctl*",
        "basic.target.wants/*",
    ):
        for path in systemd.glob(pattern):
            path.unlink()
    for path in (root / "etc" / "systemd" / "system").glob("*.wants/*"):
        path.unlink()
    with (root / "etc" / "systemd" / "journald.conf").open("a") as journald:
        journald.write("ReadKMsg=no\n")
    init = root / "sbin" / "init"
    init.unlink(missing_ok=True)
    init.symlink_to("/usr/lib/systemd/systemd")
    _chroot(root, "systemctl", "enable", "kubelet.service", "containerd.service", "undo-mount-hacks.service")
    _chroot(root, "systemctl", "mask", "systemd-binfmt.service")
    (root / "etc" / "kubernetes" / "manifests").mkdir(parents=True, exist_ok=True)
    for name, directory in _NODE_BINARIES.items():
        target = root / directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(toolchain.path_of(name), target)
        target.chmod(0o755)
    runc = root / "usr" / "local" / "sbin" / "runc"
    runc.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dockerd.RUNC, runc)
    runc.chmod(0o755)
    # kind's cri-base.json: containerd's default spec, its mount hook added, its rlimits dropped.
    spec = json.loads(
        subprocess.run([str(toolchain.path_of("ctr")), "oci", "spec"], capture_output=True, check=True).stdout
    )
    spec.setdefault("hooks", {}).setdefault("createContainer", []).append({"path": "/kind/bin/mount-product-files.sh"})
    spec["process"].pop("rlimits", None)
    (root / "etc" / "containerd" / "cri-base.json").write_text(json.dumps(spec, indent=2))
    (root / "kind" / "version").write_text(toolchain.KUBERNETES_VERSION)
    if restrict_oom_score_adj:
        config = root / "etc" / "containerd" / "config.toml"
        text = config.read_text()
        if "restrict_oom_score_adj = false" not in text:
            raise SystemExit(
                "localcluster: kind's containerd config no longer sets restrict_oom_score_adj; update kindnode.py"
            )
        config.write_text(text.replace("restrict_oom_score_adj = false", "restrict_oom_score_adj = true"))


def _preload(root: Path, rootfs: Path, scratch: Path) -> None:
    """The images kubeadm runs, imported into the node root's containerd as kind's node-image build does."""
    listed = subprocess.run(
        [
            str(toolchain.path_of("kubeadm")),
            "config",
            "images",
            "list",
            f"--kubernetes-version={toolchain.KUBERNETES_VERSION}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    base_layer = rootfs.read_bytes()
    archives = [images.pause_archive()]
    for reference in listed:
        name = reference.rsplit("/", 1)[-1].split(":")[0]
        if name == "pause":
            continue  # kind swaps kubeadm's pause for containerd's sandbox image, as here
        if name not in _IMAGE_BINARIES:
            raise SystemExit(f"localcluster: kubeadm runs {reference}, which kindnode.py has no binary for; add it")
        binary = toolchain.path_of(name).read_bytes()
        archive = scratch / f"{name}.tar"
        if name == "coredns":  # static, and alone in its image as upstream's is; its entrypoint is /coredns
            layers = [images.tar_bytes([("coredns", binary, 0o755)])]
            config: dict[str, object] = {"config": {"Entrypoint": ["/coredns"]}}
        else:  # kubeadm's static pods and kube-proxy's DaemonSet run the binary by name
            layers = [base_layer, images.tar_bytes([(f"usr/local/bin/{name}", binary, 0o755)])]
            config = {"config": {"Env": [f"PATH={_PATH}"]}}
        images.write_archive(archive, reference, config, layers)
        archives.append(archive)
    ctr = str(toolchain.path_of("ctr"))
    state = scratch / "containerd-state"
    address = str(scratch / "containerd.sock")
    containerd_config = scratch / "containerd.toml"
    containerd_config.write_text(
        'version = 3\ndisabled_plugins = ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"]\n'
    )
    with (scratch / "containerd.log").open("w") as log:
        server = subprocess.Popen(
            [
                str(toolchain.path_of("containerd")),
                "--config",
                str(containerd_config),
                "--root",
                str(root / "var" / "lib" / "containerd"),
                "--state",
                str(state),
                "--address",
                address,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([ctr, "--address", address, "version"], capture_output=True, check=False).returncode:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(
                    f"localcluster: containerd for the node image did not start; see {scratch / 'containerd.log'}"
                )
            time.sleep(0.2)
        for archive in archives:
            imported = subprocess.run(
                [
                    ctr,
                    "--address",
                    address,
                    "--namespace",
                    "k8s.io",
                    "images",
                    "import",
                    "--label=io.cri-containerd.pinned=pinned",
                    "--no-unpack",
                    "--digests",
                    str(archive),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if imported.returncode != 0:
                raise SystemExit(
                    f"localcluster: importing {archive.name} into the node image failed:\n{imported.stderr}"
                )
    finally:
        server.terminate()
        server.wait(timeout=30)
    _log(f"preloaded into the node image: {', '.join(a.stem for a in archives)} ({images.PAUSE_IMAGE})")


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _chroot(root: Path, *argv: str) -> None:
    done = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"localcluster: chroot {' '.join(argv)} failed in the node root:\n{done.stderr}")


def _scratch_dir() -> Path:
    path = toolchain.cache_root() / "kind" / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(message: str) -> None:
    print(f"localcluster: {message}", flush=True, file=sys.stderr)
