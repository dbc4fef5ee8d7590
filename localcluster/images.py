"""Builds the container images real nodes import, without a registry or a Docker engine, into the cache.

Three kinds of image, each an OCI image archive that `ctr -n k8s.io images import` accepts:

- `PAUSE_IMAGE`: a static C program (`pause.c` beside this module), packed here by hand.
- `PROJECT_IMAGE` and `EXAMPLES_IMAGE`: the repository's `Dockerfile` and `examples/Dockerfile`, built
  as they are by buildah (no daemon, `--isolation chroot`, `--pull=never`), then pushed to archives.
- `BASE_IMAGE` is never pulled: the Dockerfile's `FROM python:3.11.13-slim-bookworm` is served by a
  STAND-IN committed to buildah's storage, a debootstrapped Debian bookworm with Debian's python3
  (3.11.2, not the official image's 3.11.13 build), made to behave as the official image does where
  the Dockerfile relies on it.

Everything lives under `toolchain.cache_root() / "images"`; each product is keyed by a hash of its
inputs, so a second build with unchanged sources returns at once.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localcluster import toolchain

REPO = Path(__file__).resolve().parents[1]
PAUSE_SOURCE = Path(__file__).resolve().parent / "pause.c"

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
# What Docker makes of the Dockerfile's `FROM python:3.11.13-slim-bookworm`; the stand-in is committed under it.
BASE_IMAGE = "docker.io/library/python:3.11.13-slim-bookworm"
# The version in pyproject.toml; examples/*-taskrun.yaml and examples/Dockerfile name these tags.
PROJECT_IMAGE = "ghcr.io/spotrun/spotrun:0.1.0"
EXAMPLES_IMAGE = "ghcr.io/spotrun/spotrun-examples:0.1.0"

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3-minimal lacks http and urllib (pip needs them); python3-venv is what `python -m build` isolates in.
BASE_PACKAGES: tuple[str, ...] = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# The official image's environment: its PATH (Docker's default behind /usr/local/bin) and LANG.
BASE_ENV: tuple[tuple[str, str], ...] = (
    ("PATH", "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("LANG", "C.UTF-8"),
)
# The host's CA bundle goes into the base image, and pip is told to use it, so that pip inside builds
# reaches PyPI through whatever TLS proxy this machine's own pip trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"

# What debuerreotype's slimify drops (the official slim images are built with it), and dpkg's
# configuration that keeps later installs slim too.
SLIM_EXCLUDES: tuple[str, ...] = (
    "/usr/share/doc/*",
    "/usr/share/groff/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
)
SLIM_INCLUDES: tuple[str, ...] = ("/usr/share/doc/*/copyright",)

LABEL_PREFIX = "io.spotrun.localcluster"
# Bump a recipe when what it makes changes in a way its inputs do not show.
_PAUSE_RECIPE = "gcc -static -O2 -s; one gzip layer; User 65535:65535; v1"
_ROOTFS_RECIPE = "debootstrap; apt lists and archives dropped; slimmed; v1"
_BASE_RECIPE = "python and pip in /usr/local/bin; no EXTERNALLY-MANAGED; host CA bundle; pip.conf; v1"
_PROJECT_RECIPE = "buildah bud --pull=never --isolation chroot; oci-archive with containerd name; v1"

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_CONTAINERD_NAME = "io.containerd.image.name"
_OCI_REF_NAME = "org.opencontainers.image.ref.name"
_EPOCH = "1970-01-01T00:00:00Z"

# buildah's step lines: `STEP 2/9: RUN ...`, with `[1/2] ` before them in a multi-stage build.
_BUILDAH_STEP = re.compile(r"^(\[\d+/\d+\] )?STEP \d+/\d+: ")

_PROJECT_INPUTS: tuple[str, ...] = ("Dockerfile", "pyproject.toml", "README.md", "sdk", "operator", "examples")


def images_dir() -> Path:
    """Where the archives, the debootstrap rootfs tarball, buildah's storage and build logs are kept."""
    return toolchain.cache_root() / "images"


def archive_paths() -> dict[str, Path]:
    """Each archive's reference and cached path (they may not be built yet)."""
    return {
        PAUSE_IMAGE: images_dir() / "pause-3.10.tar",
        PROJECT_IMAGE: images_dir() / "spotrun-0.1.0.tar",
        EXAMPLES_IMAGE: images_dir() / "spotrun-examples-0.1.0.tar",
    }


def pause_archive() -> Path:
    """The pause image as a one-layer OCI archive; rebuilt only when pause.c or the recipe changes."""
    archive = archive_paths()[PAUSE_IMAGE]
    key = _digest(PAUSE_SOURCE.read_bytes(), _PAUSE_RECIPE.encode())
    if _stamp_matches(archive, key):
        return archive
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pause-", dir=_ensure_dir(images_dir())) as scratch:
        binary = Path(scratch) / "pause"
        _run(["gcc", "-static", "-O2", "-s", "-Wall", "-Wextra", "-o", str(binary), str(PAUSE_SOURCE)], "gcc pause.c")
        layer_tar = tar_bytes([("pause", binary.read_bytes(), 0o755)])
        layout = Path(scratch) / "layout"
        config: dict[str, object] = {
            "created": _EPOCH,
            "architecture": _oci_arch(),
            "os": "linux",
            # As the upstream pause image: nobody's uid, so the sandbox holds no root process.
            "config": {"User": "65535:65535", "Entrypoint": ["/pause"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]},
            "history": [{"created": _EPOCH, "created_by": f"localcluster/images.py: {_PAUSE_RECIPE}"}],
        }
        _write_layout(layout, PAUSE_IMAGE, config, [gzip.compress(layer_tar, mtime=0)])
        _pack_layout(layout, archive)
    _write_stamp(archive, key)
    _log(f"Built {PAUSE_IMAGE} in {time.monotonic() - started:.1f}s -> {archive} ({_size(archive)})")
    return archive


def base_image() -> str:
    """Commits the STAND-IN for python:3.11.13-slim-bookworm to buildah's storage; returns its image id.

    The official image is CPython 3.11.13 built from source into /usr/local; this is Debian bookworm's
    own python3 (3.11.2) on a `debootstrap --variant=minbase` root, with what the Dockerfile relies on
    made to match: `python` and `pip` in /usr/local/bin, `pip install` allowed system-wide (no
    EXTERNALLY-MANAGED marker), `useradd` (minbase's passwd package), the official PATH and
    LANG=C.UTF-8, and `CMD ["python3"]`. Unlike the official image it trusts this host's CA bundle
    and carries an /etc/pip.conf naming it. It is committed as `BASE_IMAGE`, labelled as a stand-in.
    """
    with _cache_lock():
        return _base_image()


def build_project_images(repo: Path = REPO) -> dict[str, Path]:
    """Builds the repository's Dockerfile and examples/Dockerfile as they are; returns reference -> archive.

    Each archive is keyed by a hash of the build inputs (the Dockerfiles, pyproject.toml, README.md,
    sdk/, operator/ and examples/, without __pycache__) and the base image's id: with nothing changed
    the cached archives are returned at once. The stand-in base (`base_image`) is committed first.
    """
    with _cache_lock():
        base_id = _base_image()
        project_key = _digest(_inputs_digest(repo).encode(), base_id.encode(), _PROJECT_RECIPE.encode())
        examples_key = _digest(project_key.encode(), EXAMPLES_IMAGE.encode())
        paths = archive_paths()
        for reference, key, dockerfile, context in (
            (PROJECT_IMAGE, project_key, repo / "Dockerfile", repo),
            (EXAMPLES_IMAGE, examples_key, repo / "examples" / "Dockerfile", repo / "examples"),
        ):
            archive = paths[reference]
            if _stamp_matches(archive, key):
                _log(f"{reference} is cached: {archive}")
                continue
            if _image_key(reference) != key:
                if reference == EXAMPLES_IMAGE and _image_key(PROJECT_IMAGE) != project_key:
                    # The examples build FROMs the project image: it must be in the storage, not only archived.
                    _bud(PROJECT_IMAGE, project_key, repo / "Dockerfile", repo)
                _bud(reference, key, dockerfile, context)
            _push(reference, archive)
            _write_stamp(archive, key)
        return {reference: paths[reference] for reference in (PROJECT_IMAGE, EXAMPLES_IMAGE)}


def build_all(repo: Path = REPO) -> dict[str, Path]:
    """The pause, project and examples archives, built when missing or stale: reference -> archive."""
    return {PAUSE_IMAGE: pause_archive(), **build_project_images(repo)}


def import_image(
    ctr: Path, address: str, archive: Path, *, snapshotter: str = "overlayfs", pinned: bool = True
) -> None:
    """Imports an archive into containerd's `k8s.io` namespace, unpacked, so the CRI can run it at once.

    `ctr images import` (through containerd's transfer service) names the image after the index's
    `io.containerd.image.name` annotation, stores the linux/amd64 content and unpacks it into
    `snapshotter`, the CRI plugin's (overlayfs by default): a container of a never-unpacked image
    cannot start. The labels are the CRI's own: `managed`, as if the CRI had pulled it, and, when
    `pinned`, `pinned`, which the kubelet's image garbage collector never removes: an image without a
    registry behind it can never be pulled again.
    """
    labels = {"io.cri-containerd.image": "managed"}
    if pinned:
        labels["io.cri-containerd.pinned"] = "pinned"
    argv = [
        str(ctr),
        "--address",
        address,
        "--namespace",
        "k8s.io",
        "images",
        "import",
        "--platform",
        f"linux/{_oci_arch()}",
        "--snapshotter",
        snapshotter,
        *(flag for name, value in labels.items() for flag in ("--label", f"{name}={value}")),
        str(archive),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"localcluster: importing {archive} failed (ctr exit {done.returncode}):\n{done.stderr}")


# --- The stand-in base image -------------------------------------------------------------------------


def _base_image() -> str:
    rootfs = rootfs_tarball()
    key = _digest(rootfs.name.encode(), HOST_CA_BUNDLE.read_bytes(), _BASE_RECIPE.encode(), repr(BASE_ENV).encode())
    if _image_key(BASE_IMAGE) == key:
        return _image_id(BASE_IMAGE)
    started = time.monotonic()
    _log(f"Committing the stand-in {BASE_IMAGE} from {rootfs.name}")
    container = "spotrun-localcluster-base"
    _buildah(["rm", container], check=False)
    _buildah(["from", "--name", container, "scratch"])
    try:
        root = Path(_buildah(["mount", container]).strip())
        _run(["tar", "-xpf", str(rootfs), "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*"], "tar")
        _make_official_like(root)
        python_version = _dpkg_version(root, "python3.11")
        _buildah(["umount", container])
        _buildah(
            [
                "config",
                *(flag for name, value in BASE_ENV for flag in ("--env", f"{name}={value}")),
                "--env",
                f"PYTHON_VERSION={python_version.split('-')[0]}",
                "--cmd",
                '["python3"]',
                "--label",
                f"{LABEL_PREFIX}.key={key}",
                "--label",
                f"{LABEL_PREFIX}.stand-in-for={BASE_IMAGE}",
                "--label",
                f"{LABEL_PREFIX}.python=Debian python3.11 {python_version}",
                "--created-by",
                f"localcluster/images.py: debootstrap --variant=minbase {DEBIAN_SUITE}, {_BASE_RECIPE}",
                container,
            ]
        )
        _buildah(["commit", "--rm", container, BASE_IMAGE])
    except BaseException:
        _buildah(["rm", container], check=False)
        raise
    image_id = _image_id(BASE_IMAGE)
    _log(f"Committed the stand-in {BASE_IMAGE} ({image_id[:12]}) in {time.monotonic() - started:.0f}s")
    return image_id


def _make_official_like(root: Path) -> None:
    """Makes a bookworm root behave as the official python image where the Dockerfile relies on it."""
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        link = _inside(root, f"usr/local/bin/{name}")
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    for marker in root.glob("usr/lib/python3.*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for relative, content in (
        ("etc/ssl/certs/ca-certificates.crt", HOST_CA_BUNDLE.read_bytes()),
        ("etc/pip.conf", PIP_CONF.encode()),
    ):
        path = _inside(root, relative)
        path.unlink(missing_ok=True)  # never write through a symlink the root might hold
        path.write_bytes(content)
        path.chmod(0o644)
    if not (_inside(root, "usr/sbin/useradd").exists()):
        raise SystemExit("localcluster: the debootstrapped root has no useradd, which the Dockerfile runs")


def rootfs_tarball(packages: tuple[str, ...] = BASE_PACKAGES, *, slim: bool = True) -> Path:
    """`debootstrap --variant=minbase` with `packages`, cleaned (and slimmed), as a tarball keyed by its recipe."""
    recipe = json.dumps(
        [DEBIAN_SUITE, "minbase", DEBIAN_MIRROR, sorted(packages), _ROOTFS_RECIPE, *(["unslimmed"] * (not slim))]
    )
    tarball = images_dir() / "rootfs" / f"{DEBIAN_SUITE}-minbase-{_digest(recipe.encode())[:16]}.tar"
    if tarball.is_file():
        return tarball
    toolchain.install_debian_packages(("debootstrap",))
    work = _ensure_dir(tarball.parent) / f".{tarball.stem}.work"
    _remove_tree(work)
    started = time.monotonic()
    _log(f"Debootstrapping {DEBIAN_SUITE} with {' '.join(packages)} (about two minutes)")
    _run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            DEBIAN_SUITE,
            str(work),
            DEBIAN_MIRROR,
        ],
        "debootstrap",
        echo=lambda line: line.startswith(("I: Retrieving Packages", "I: Installing", "I: Base system")),
    )
    debootstrapped = time.monotonic() - started
    if slim:
        _slim(work)
    partial = tarball.with_name(f".{tarball.name}.partial")
    # The runtime mounts /dev, /proc and /sys, and writes resolv.conf and hostname: the image keeps none of them.
    excludes = ["./dev/*", "./proc/*", "./sys/*", "./etc/resolv.conf", "./etc/hostname"]
    _run(
        [
            "tar",
            "-cf",
            str(partial),
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            *(f"--exclude={pattern}" for pattern in excludes),
            "-C",
            str(work),
            ".",
        ],
        "tar",
    )
    partial.replace(tarball)
    _remove_tree(work)
    packed = time.monotonic() - started - debootstrapped
    _log(
        f"Debootstrapped in {debootstrapped:.0f}s, slimmed and packed in {packed:.0f}s -> {tarball} ({_size(tarball)})"
    )
    return tarball


def _slim(root: Path) -> None:
    """Drops apt's package lists and downloaded archives, and the files debuerreotype's slimify drops."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin"):
        for path in root.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()
    keep = {path for pattern in SLIM_INCLUDES for path in root.glob(pattern.lstrip("/"))}
    for pattern in SLIM_EXCLUDES:
        for path in root.glob(pattern.lstrip("/")):
            _remove_except(path, keep)
    lines = [*(f"path-exclude {p}" for p in SLIM_EXCLUDES), *(f"path-include {p}" for p in SLIM_INCLUDES)]
    _inside(root, "etc/dpkg/dpkg.cfg.d/docker-slim").write_text("\n".join(lines) + "\n")


def _remove_except(path: Path, keep: set[Path]) -> None:
    if path in keep:
        return
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove_except(child, keep)
        if not any(path.iterdir()):
            path.rmdir()
    else:
        path.unlink()


def _dpkg_version(root: Path, package: str) -> str:
    for stanza in _inside(root, "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields["Version"]
    raise SystemExit(f"localcluster: the debootstrapped root has no {package}")


# --- Project images ----------------------------------------------------------------------------------


def _inputs_digest(repo: Path) -> str:
    """A hash of every file the two Dockerfiles read (examples/ holds the second): path, executable bit, content."""
    digest = hashlib.sha256()
    for name in _PROJECT_INPUTS:
        top = repo / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            relative = path.relative_to(repo)
            if "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            executable = "x" if os.access(path, os.X_OK) else "-"
            digest.update(f"{relative}\0{executable}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _bud(reference: str, key: str, dockerfile: Path, context: Path) -> None:
    started = time.monotonic()
    _log(f"Building {reference} from {dockerfile} with buildah")
    _run_logged(
        [
            "buildah",
            *_storage_args(),
            "bud",
            "--pull=never",
            "--isolation",
            "chroot",
            "--file",
            str(dockerfile),
            "--tag",
            reference,
            "--label",
            f"{LABEL_PREFIX}.key={key}",
            str(context),
        ],
        reference,
        echo=lambda line: _BUILDAH_STEP.match(line) is not None,
    )
    _log(f"Built {reference} ({_image_id(reference)[:12]}) in {time.monotonic() - started:.0f}s")
    # The image this tag named before is dangling now; the cache keeps only what the tags name.
    _buildah(["rmi", "--prune"], check=False)


def _push(reference: str, archive: Path) -> None:
    """Pushes to an OCI layout, names it for containerd too, and packs the layout as the archive."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="push-", dir=_ensure_dir(images_dir())) as scratch:
        layout = Path(scratch) / "layout"
        _buildah(["push", "--quiet", reference, f"oci:{layout}:{reference}"])
        index_path = layout / "index.json"
        index = json.loads(index_path.read_text())
        for manifest in index["manifests"]:
            if manifest.get("annotations", {}).get(_OCI_REF_NAME) == reference:
                manifest["annotations"][_CONTAINERD_NAME] = reference
                manifest.setdefault("platform", {"architecture": _oci_arch(), "os": "linux"})
        index_path.write_text(json.dumps(index))
        _pack_layout(layout, archive)
    _log(f"Pushed {reference} in {time.monotonic() - started:.0f}s -> {archive} ({_size(archive)})")


# --- buildah -----------------------------------------------------------------------------------------


def buildah_args() -> list[str]:
    """The buildah command on the cache's storage, for looking at the images: `[*buildah_args(), "images"]`."""
    return ["buildah", *_storage_args()]


def _storage_args() -> list[str]:
    """buildah's storage in the cache: overlay where this kernel and filesystem mount it, else vfs."""
    return _storage_args_for(_storage_driver())


def _storage_args_for(driver: str) -> list[str]:
    top = images_dir() / "buildah" / driver
    return ["--root", str(top / "storage"), "--runroot", str(top / "run"), "--storage-driver", driver]


_driver: str | None = None


def _storage_driver() -> str:
    # vfs copies the whole root per layer; overlay stores only each layer's changes.
    global _driver
    if _driver is None:
        toolchain.install_debian_packages(("buildah",))
        probe = subprocess.run(
            ["buildah", *_storage_args_for("overlay"), "images", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        _driver = "overlay" if probe.returncode == 0 else "vfs"
        if _driver == "vfs":
            _log(f"buildah's overlay storage failed ({probe.stderr.strip()[-200:]}); using vfs")
    return _driver


def _buildah(args: list[str], check: bool = True) -> str:
    done = subprocess.run(["buildah", *_storage_args(), *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"localcluster: buildah {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr}")
    return done.stdout


def _image_key(reference: str) -> str | None:
    """The inputs key an image in the storage was built from, or None when it is not there."""
    inspected = _inspect(reference)
    if inspected is None:
        return None
    labels: dict[str, str] = inspected["OCIv1"]["config"].get("Labels") or {}
    return labels.get(f"{LABEL_PREFIX}.key")


def _image_id(reference: str) -> str:
    inspected = _inspect(reference)
    if inspected is None:
        raise SystemExit(f"localcluster: {reference} is not in buildah's storage")
    image_id: str = inspected["FromImageID"]
    return image_id


def _inspect(reference: str) -> dict[str, Any] | None:
    # buildah 1.28's --format has no `json` function: read its whole JSON instead.
    done = subprocess.run(
        ["buildah", *_storage_args(), "inspect", "--type", "image", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    inspected: dict[str, Any] = json.loads(done.stdout)
    return inspected


# --- OCI layouts -------------------------------------------------------------------------------------


def write_archive(archive: Path, reference: str, config: dict[str, object], layers: list[bytes]) -> None:
    """An OCI image archive of one image: `config` (its diff_ids filled in here) over uncompressed `layers`.

    Uncompressed, because these archives are imported on this machine at once: gzip would cost more
    time than it saves in bytes copied.
    """
    config = {
        "created": _EPOCH,
        "architecture": _oci_arch(),
        "os": "linux",
        **config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]},
    }
    with tempfile.TemporaryDirectory(prefix="archive-", dir=_ensure_dir(archive.parent)) as scratch:
        layout = Path(scratch) / "layout"
        _write_layout(layout, reference, config, layers, _OCI_LAYER)
        _pack_layout(layout, archive)


def _write_layout(
    layout: Path,
    reference: str,
    config: dict[str, object],
    layers: list[bytes],
    layer_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
) -> None:
    """An OCI image layout of one manifest, named by `reference` for OCI tools and for containerd."""
    blobs = _ensure_dir(layout / "blobs" / "sha256")

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": _OCI_MANIFEST,
        "config": blob(_canonical(config), _OCI_CONFIG),
        "layers": [blob(layer, layer_type) for layer in layers],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": _OCI_INDEX,
        "manifests": [
            {
                **blob(_canonical(manifest), _OCI_MANIFEST),
                "platform": {"architecture": _oci_arch(), "os": "linux"},
                "annotations": {_OCI_REF_NAME: reference, _CONTAINERD_NAME: reference},
            }
        ],
    }
    (layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(_canonical(index))


def _pack_layout(layout: Path, archive: Path) -> None:
    """Tars an OCI layout (oci-layout and index.json first, root-owned, mtime 0) into `archive`, atomically."""
    partial = archive.with_name(f".{archive.name}.partial")
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("oci-layout", "index.json", "blobs", "blobs/sha256", *(f"blobs/sha256/{b.name}" for b in blobs)):
            info = tar.gettarinfo(str(layout / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isdir():
                tar.addfile(info)
            else:
                with (layout / name).open("rb") as data:
                    tar.addfile(info, data)
    partial.replace(archive)


def tar_bytes(files: list[tuple[str, bytes, int]]) -> bytes:
    """A layer of root-owned files (name, content, mode) with mtime 0: the same inputs give the same digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _canonical(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# --- Cache plumbing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One build at a time per cache: two buildah builds of one tag would race on its name."""
    with (_ensure_dir(images_dir()) / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stamp_matches(archive: Path, key: str) -> bool:
    stamp = archive.with_name(f"{archive.name}.key")
    return archive.is_file() and stamp.is_file() and stamp.read_text().strip() == key


def _write_stamp(archive: Path, key: str) -> None:
    archive.with_name(f"{archive.name}.key").write_text(f"{key}\n")


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _inside(root: Path, relative: str) -> Path:
    """A path under `root` whose parent directory resolves inside it (an absolute symlink would not)."""
    path = root / relative
    if not path.parent.resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"localcluster: {relative} leads out of the image root {root}")
    return path


def _remove_tree(path: Path) -> None:
    """Removes a debootstrap work tree, first unmounting what an interrupted debootstrap left mounted in it."""
    if not path.exists():
        return
    prefix = str(path.resolve())
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount_point in sorted((m for m in mounts if m == prefix or m.startswith(prefix + "/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], check=False)
    shutil.rmtree(path)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def _log(message: str) -> None:
    print(f"localcluster: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"localcluster: {what} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr}")


def _run_logged(argv: list[str], what: str, echo: Callable[[str], bool]) -> None:
    """Runs a long command with its output in images/logs/, echoing chosen lines and a heartbeat every 20 s."""
    log_path = _ensure_dir(images_dir() / "logs") / f"{what.replace('/', '_').replace(':', '_')}.log"
    started = time.monotonic()
    last = ""
    finished = threading.Event()

    def heartbeat() -> None:
        while not finished.wait(20):
            _log(f"{what}: {time.monotonic() - started:.0f}s, at: {last[:100]}")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    tail: list[str] = []
    with (
        log_path.open("w") as log,
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for raw in proc.stdout:
            log.write(raw)
            line = raw.rstrip()
            last = line or last
            tail = [*tail[-40:], line]
            if echo(line):
                _log(f"{what}: {line[:160]} (at {time.monotonic() - started:.0f}s)")
        code = proc.wait()
    finished.set()
    if code != 0:
        detail = "\n".join(tail)
        raise SystemExit(f"localcluster: {what} failed (exit {code}); the end of {log_path}:\n{detail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.images", description="Builds localcluster's container images."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the pause, base and project images; print reference -> archive")
    build.add_argument("--repo", type=Path, default=REPO, help="the repository whose Dockerfiles to build")
    commands.add_parser("paths", help="print the archives' cached paths (they may not be built yet)")
    args = parser.parse_args(argv)
    if args.command == "build":
        started = time.monotonic()
        archives = build_all(args.repo)
        _log(f"Images ready in {time.monotonic() - started:.0f}s")
    else:
        archives = archive_paths()
    print(json.dumps({reference: str(path) for reference, path in archives.items()}, indent=2))


if __name__ == "__main__":
    main()
