"""The images real nodes import, built without a registry or a Docker engine: their archives and what runs in them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import signal
import struct
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import images, toolchain

REPO = Path(__file__).resolve().parents[2]

# A cold cache debootstraps and builds both images (about three minutes on two cores); a warm one takes seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

PT_INTERP = 3
PT_DYNAMIC = 2


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    toolchain.install_debian_packages()
    return images.build_all(REPO)


def read_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{archive} has no file {name}"
        return member.read()


def read_blob(archive: Path, digest: str) -> bytes:
    algorithm, hexdigest = digest.split(":")
    data = read_member(archive, f"blobs/{algorithm}/{hexdigest}")
    assert hashlib.sha256(data).hexdigest() == hexdigest
    return data


def only_manifest(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The index's one manifest descriptor, the manifest, and the image config."""
    index = json.loads(read_member(archive, "index.json"))
    (descriptor,) = index["manifests"]
    manifest = json.loads(read_blob(archive, descriptor["digest"]))
    config = json.loads(read_blob(archive, manifest["config"]["digest"]))
    return descriptor, manifest, config


def dockerfile_entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT (\[.*\])$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has no exec-form ENTRYPOINT"
    command: list[str] = json.loads(match.group(1))
    return command


def program_header_types(elf: bytes) -> set[int]:
    assert elf[:5] == b"\x7fELF\x02", "not a 64-bit ELF file"
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return {struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)}


@pytest.fixture(scope="module")
def working_container(archives: dict[str, Path]) -> Iterator[Callable[[str], str]]:
    """Makes buildah working containers of the built images, removed at the end of the module."""
    made: list[str] = []

    def make(reference: str) -> str:
        done = subprocess.run(
            [*images.buildah_args(), "from", "--pull=never", reference], capture_output=True, text=True, check=True
        )
        made.append(done.stdout.strip())
        return made[-1]

    yield make
    for container in made:
        subprocess.run([*images.buildah_args(), "rm", container], capture_output=True, check=False)


def run_in(container: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Runs a command in a working container as its image's user, chroot-isolated: no container runtime."""
    return subprocess.run(
        [*images.buildah_args(), "run", "--isolation", "chroot", container, "--", *command],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_pause_archive_is_an_oci_layout_named_for_containerd(archives: dict[str, Path]) -> None:
    archive = archives[images.PAUSE_IMAGE]
    assert archive == toolchain.cache_root() / "images" / "pause-3.10.tar"
    assert json.loads(read_member(archive, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    descriptor, manifest, config = only_manifest(archive)
    assert descriptor["annotations"] == {
        "org.opencontainers.image.ref.name": "registry.k8s.io/pause:3.10",
        "io.containerd.image.name": "registry.k8s.io/pause:3.10",
    }
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Entrypoint"] == ["/pause"]
    (layer,) = manifest["layers"]
    layer_tar = gzip.decompress(read_blob(archive, layer["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]}
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        assert tar.getnames() == ["pause"]
        assert tar.getmember("pause").mode == 0o755
        pause = tar.extractfile("pause")
        assert pause is not None
        elf = pause.read()
    types = program_header_types(elf)
    assert not types & {PT_INTERP, PT_DYNAMIC}, "/pause is not statically linked"


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_pause_exits_0_on_sigterm_and_sigint(archives: dict[str, Path], tmp_path: Path, signo: int) -> None:
    _, manifest, _ = only_manifest(archives[images.PAUSE_IMAGE])
    layer = gzip.decompress(read_blob(archives[images.PAUSE_IMAGE], manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tar.extract("pause", tmp_path, filter="data")
    with subprocess.Popen([str(tmp_path / "pause")], stderr=subprocess.PIPE, text=True) as pause:
        assert pause.stderr is not None
        # It warns that it is not PID 1 after its handlers are in place, so the signal finds them.
        assert "pause should be the first process" in pause.stderr.readline()
        assert pause.poll() is None, "pause did not keep running"
        pause.send_signal(signo)
        assert pause.wait(timeout=10) == 0


def test_a_second_build_with_unchanged_sources_returns_the_cached_archives(archives: dict[str, Path]) -> None:
    started = time.monotonic()
    assert images.build_all(REPO) == archives
    assert time.monotonic() - started < 30


def test_each_project_archive_is_named_for_containerd(archives: dict[str, Path]) -> None:
    for reference in (images.PROJECT_IMAGE, images.EXAMPLES_IMAGE):
        assert archives[reference].parent == toolchain.cache_root() / "images"
        descriptor, _, config = only_manifest(archives[reference])
        assert descriptor["annotations"]["io.containerd.image.name"] == reference
        assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == reference
        assert (config["architecture"], config["os"]) == ("amd64", "linux")


def test_the_project_image_is_the_dockerfiles(
    archives: dict[str, Path], working_container: Callable[[str], str]
) -> None:
    _, _, config = only_manifest(archives[images.PROJECT_IMAGE])
    assert config["config"]["User"] == "10001"
    assert config["config"]["Entrypoint"] == dockerfile_entrypoint()
    assert config["config"]["WorkingDir"] == "/tmp"
    assert "PYTHONDONTWRITEBYTECODE=1" in config["config"]["Env"]
    # The base is the stand-in, and says so.
    assert config["config"]["Labels"]["io.spotrun.localcluster.stand-in-for"] == images.BASE_IMAGE
    container = working_container(images.PROJECT_IMAGE)
    uid = run_in(container, "id", "-u")
    assert uid.stdout.strip() == "10001", uid.stderr
    imports = run_in(container, "python", "-c", "import spotrun, spotrun_operator, kopf, kubernetes")
    assert imports.returncode == 0, imports.stderr
    cli = run_in(container, "spotrun", "--help")
    assert cli.returncode == 0, cli.stderr
    assert "checkpoints" in cli.stdout
    operator = run_in(container, *dockerfile_entrypoint(), "--help")
    assert operator.returncode == 0, operator.stderr
    assert "Spotrun TaskRun operator" in operator.stdout
    examples = run_in(container, "ls", "/opt/spotrun/examples")
    assert {"train.py", "checkpoint_seed.py", "counter.sh"} <= set(examples.stdout.split()), examples.stderr


def test_the_examples_image_adds_numpy_and_keeps_the_user_and_entrypoint(
    archives: dict[str, Path], working_container: Callable[[str], str]
) -> None:
    _, _, config = only_manifest(archives[images.EXAMPLES_IMAGE])
    assert config["config"]["User"] == "10001"
    assert config["config"]["Entrypoint"] == dockerfile_entrypoint()
    container = working_container(images.EXAMPLES_IMAGE)
    numpy = run_in(container, "python", "-c", "import numpy, spotrun; print(numpy.__version__)")
    assert numpy.returncode == 0, numpy.stderr
    assert numpy.stdout.strip().startswith("2.")
