"""kind with spot and on-demand pools (`kind/cluster.yaml`), an S3 server in it, and Spotrun's images.

    python -m localcluster kind up|down|env|exec -- CMD...

`up` is plain kind where the machine has a Docker engine that reaches registries: `kind create
cluster`, `docker build` of the project's Dockerfiles, `kind load docker-image`, versitygw pulled
from ghcr.io. Where no engine answers (this project's CI machine: no Docker, no registry), each
piece that would be downloaded has a STAND-IN driven through kind's real interfaces:

- the engine: Debian's dockerd in a private namespace (`localcluster.dockerd`);
- the node image: built here from the project's binaries (`localcluster.kindnode`), passed to
  `kind create cluster --image`;
- kindnetd, kind's CNI daemon (its image is not on any package registry): the cluster is created
  with `disableDefaultCNI`, and each node gets the CNI bridge plugin's configuration for its
  podCIDR and a route to every other node's, which is what kindnetd writes;
- the images: the project's Dockerfiles built by buildah (`localcluster.images`) and versitygw's
  binary over a Debian root, loaded with `kind load image-archive`.

Everything lives in STATE_DIR (default `.kind/` in the checkout); the engine's images in the cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from localcluster import dockerd, images, toolchain

REPO = Path(__file__).resolve().parents[1]
# `python -m localcluster kind --state-dir`, else $LOCALCLUSTER_KIND_STATE_DIR, else .kind/ in the checkout.
DEFAULT_STATE_DIR = Path(os.environ.get("LOCALCLUSTER_KIND_STATE_DIR") or REPO / ".kind")
NAME = "spotrun"
CONFIG = REPO / "kind" / "cluster.yaml"
S3_MANIFEST = REPO / "kind" / "s3.yaml"
S3_IMAGE = f"ghcr.io/versity/versitygw:{toolchain.VERSITYGW_VERSION}"
S3_NAMESPACE = "spotrun-s3"
S3_BUCKET = "spotrun"
# Where pods reach the S3 server (its Service), and where this machine does (the control-plane
# node's port that kind/cluster.yaml publishes on 127.0.0.1).
S3_IN_CLUSTER = f"http://s3.{S3_NAMESPACE}.svc.cluster.local:7070"
S3_FROM_HOST = "http://127.0.0.1:30070"
CNI_CONFIG = "/etc/cni/net.d/10-spotrun-bridge.conflist"


def say(message: str) -> None:
    print(f"kind: {message}", file=sys.stderr, flush=True)


class Kind:
    """The kind cluster of one state directory, and the engine it runs on."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, name: str = NAME) -> None:
        self.dir = state_dir.resolve()
        self.name = name
        self.kubeconfig = self.dir / "kubeconfig"
        self.engine = dockerd.Engine(self.dir)

    # --- where commands run --------------------------------------------------------------------

    @property
    def stand_in(self) -> bool:
        """Whether this runs on the stand-in engine (recorded at the first `up`; else: no engine answers)."""
        recorded = self.dir / "stand-in"
        if recorded.exists():
            return recorded.read_text().strip() == "true"
        return not dockerd.user_engine_works()

    def env(self) -> dict[str, str]:
        """kubectl, helm, kind and docker for this cluster: KUBECONFIG, DOCKER_HOST, PATH."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        if self.stand_in:
            env.update(self.engine.env())
        env["PATH"] = f"{self.dir / 'bin'}:{env.get('PATH', '')}"
        env["HELM_CACHE_HOME"] = str(self.dir / "helm")
        return env

    def command(self, argv: list[str]) -> list[str]:
        """ARGV where it reaches the cluster's published ports (the engine's network on the stand-in)."""
        return self.engine.command(argv) if self.stand_in else argv

    def enter(self) -> None:
        """Moves this process where it reaches the cluster (a no-op on a machine's own Docker)."""
        if self.stand_in:
            self.engine.enter()

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """Where the cluster is reached for the length of a `with` (then back in this process's network)."""
        return self.engine.entered() if self.stand_in else contextlib.nullcontext()

    def run(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            self.command(list(argv)), env=self.env(), input=stdin, capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            raise SystemExit(f"kind: {' '.join(argv)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    # --- lifecycle -----------------------------------------------------------------------------

    def up(self) -> None:
        """Creates the cluster with its images and S3 server; reuses a running one."""
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        stand_in = self.stand_in
        (self.dir / "stand-in").write_text("true\n" if stand_in else "false\n")
        toolchain.build(kind=True)  # kind itself where the machine has none; the node image's pieces
        self._link_binaries(stand_in)
        if stand_in:
            self.engine.start()
            say(f"stand-in Docker engine up ({self.engine.socket})")
        if self.name in self.run("kind", "get", "clusters").split():
            if self.kubeconfig.is_file() and self._nodes_ready():
                say(f"cluster {self.name!r} is running; reusing it ({self.kubeconfig})")
                self._load_images(stand_in)
                self._install_s3()
                return
            self.run("kind", "delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig))
        (self.dir / "loaded-images.json").unlink(missing_ok=True)
        create = ["kind", "create", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig)]
        if stand_in:
            from localcluster import kindnode  # noqa: PLC0415 - only the stand-in builds a node image

            image = kindnode.build([str(dockerd.DEBIAN_DOCKER)], self.env())
            create += ["--image", image, "--config", str(self._stand_in_config())]
        else:
            create += ["--config", str(CONFIG)]
        say(f"creating cluster {self.name!r} from {CONFIG.relative_to(REPO)}")
        self.run(*create)
        if stand_in:
            self._configure_cni()
        self._load_images(stand_in)
        self._wait_nodes_ready(timeout=240)
        self._install_s3()
        say(f"cluster {self.name!r} up in {time.monotonic() - started:.0f}s; KUBECONFIG={self.kubeconfig}")

    def down(self) -> None:
        """Deletes the cluster and stops the stand-in engine; safe to run twice."""
        if not self.dir.exists():
            return
        if not self.stand_in or self.engine.pid() is not None:
            self.run(
                "kind", "delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig), check=False
            )
        restored = self.engine.stop() if self.stand_in else []
        self.kubeconfig.unlink(missing_ok=True)
        say(f"cluster {self.name!r} deleted" + ("; put back on the host: " + "; ".join(restored) if restored else ""))

    # --- the pieces ----------------------------------------------------------------------------

    def _link_binaries(self, stand_in: bool) -> None:
        """DIR/bin: kubectl and helm of the project's version; kind and, on the stand-in, Debian's docker CLI."""
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(exist_ok=True)
        targets = {name: toolchain.path_of(name) for name in ("kubectl", "helm")}
        if stand_in or not _on_path("kind"):
            targets["kind"] = toolchain.path_of("kind")
        if stand_in:
            targets["docker"] = dockerd.DEBIAN_DOCKER
        for name, target in targets.items():
            link = bin_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def _stand_in_config(self) -> Path:
        cgroup_v1 = not Path("/sys/fs/cgroup/cgroup.controllers").exists()
        path = self.dir / "cluster.yaml"
        path.write_text(stand_in_config(CONFIG.read_text(), cgroup_v1))
        return path

    def _nodes(self) -> list[dict[str, str]]:
        body = json.loads(self.run("kubectl", "get", "nodes", "-o", "json"))
        nodes = []
        for item in body["items"]:
            addresses = {a["type"]: a["address"] for a in item["status"].get("addresses", [])}
            nodes.append(
                {
                    "name": item["metadata"]["name"],
                    "cidr": item["spec"].get("podCIDR", ""),
                    "ip": addresses.get("InternalIP", ""),
                }
            )
        return nodes

    def _configure_cni(self) -> None:
        """What kindnetd would write: a bridge for the node's podCIDR, and routes to the other nodes' pods."""
        expected = len(self.run("kind", "get", "nodes", "--name", self.name).split())
        deadline = time.monotonic() + 120
        while True:
            nodes = self._nodes()
            if len(nodes) == expected and all(n["cidr"] and n["ip"] for n in nodes):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"kind: nodes without a podCIDR or address after 120 s: {nodes}")
            time.sleep(1)
        for node in nodes:
            conflist = json.dumps(cni_conflist(node["cidr"]))
            self.run("docker", "exec", "-i", node["name"], "sh", "-c", f"cat > {CNI_CONFIG}", stdin=conflist)
            for cidr, via in pod_routes(nodes, node["name"]):
                self.run("docker", "exec", node["name"], "ip", "route", "replace", cidr, "via", via)
        say(f"CNI: bridge and routes on {len(nodes)} nodes (the stand-in for kindnetd)")

    def _workers(self) -> list[str]:
        return [n for n in self.run("kind", "get", "nodes", "--name", self.name).split() if "control-plane" not in n]

    def _load_images(self, stand_in: bool) -> None:
        """The project's images (and, on the stand-in, versitygw's) into every worker; again when they change."""
        workers = ",".join(self._workers())
        if not stand_in:
            for reference, dockerfile, context in (
                (images.PROJECT_IMAGE, REPO / "Dockerfile", REPO),
                (images.EXAMPLES_IMAGE, REPO / "examples" / "Dockerfile", REPO / "examples"),
            ):
                self.run("docker", "build", "-t", reference, "-f", str(dockerfile), str(context))
                self.run("kind", "load", "docker-image", reference, "--name", self.name, "--nodes", workers)
            return
        record = self.dir / "loaded-images.json"
        loaded: dict[str, str] = json.loads(record.read_text()) if record.is_file() else {}
        on_demand = self.run("kubectl", "get", "nodes", "-l", "spotrun.dev/capacity=on-demand", "-o", "name")
        s3_nodes = ",".join(name.removeprefix("node/") for name in on_demand.split())  # kind/s3.yaml's nodeSelector
        targets = [(archive, workers) for archive in images.build_project_images(REPO).values()]
        for archive, nodes in [*targets, (self._s3_archive(), s3_nodes)]:
            stamp = archive.with_name(f"{archive.name}.key").read_text().strip()
            if loaded.get(archive.name) == stamp:
                continue
            started = time.monotonic()
            self.run("kind", "load", "image-archive", str(archive), "--name", self.name, "--nodes", nodes)
            loaded[archive.name] = stamp
            record.write_text(json.dumps(loaded))
            say(f"loaded {archive.name} into {nodes} in {time.monotonic() - started:.0f}s")

    def _s3_archive(self) -> Path:
        """The STAND-IN for versitygw's image: the project's versitygw and the image's entrypoint over a Debian root."""
        archive = images.images_dir() / f"versitygw-{toolchain.VERSITYGW_VERSION}.tar"
        binary = toolchain.path_of("versitygw")
        rootfs = images.rootfs_tarball()
        key = f"{rootfs.name}:{binary.stat().st_size}:{binary.stat().st_mtime_ns}:v1"
        stamp = archive.with_name(f"{archive.name}.key")
        if archive.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
            return archive
        source = toolchain.module_source("versitygw", "github.com/versity/versitygw")
        entrypoint = (source / "docker-entrypoint.sh").read_bytes()
        layer = images.tar_bytes(
            [
                ("usr/local/bin/versitygw", binary.read_bytes(), 0o755),
                ("usr/local/bin/docker-entrypoint.sh", entrypoint, 0o755),
            ]
        )
        config: dict[str, object] = {"config": {"Entrypoint": ["/usr/local/bin/docker-entrypoint.sh"]}}
        images.write_archive(archive, S3_IMAGE, config, [rootfs.read_bytes(), layer])
        stamp.write_text(key + "\n")
        return archive

    def _install_s3(self) -> None:
        """versitygw in the cluster (kind/s3.yaml) with the state directory's root keys, and its bucket."""
        keys = s3_keys(self.dir)
        secret = self.run(
            "kubectl",
            "create",
            "secret",
            "generic",
            "s3-root",
            f"--namespace={S3_NAMESPACE}",
            f"--from-literal=ROOT_ACCESS_KEY={keys['AWS_ACCESS_KEY_ID']}",
            f"--from-literal=ROOT_SECRET_KEY={keys['AWS_SECRET_ACCESS_KEY']}",
            "--dry-run=client",
            "--output=yaml",
        )
        namespace = self.run("kubectl", "create", "namespace", S3_NAMESPACE, "--dry-run=client", "--output=yaml")
        self.run("kubectl", "apply", "-f", "-", stdin=f"{namespace}\n---\n{secret}")
        self.run("kubectl", "apply", "-f", str(S3_MANIFEST))
        self.run("kubectl", "-n", S3_NAMESPACE, "rollout", "status", "deployment/s3", "--timeout=180s")
        with self.entered():
            _create_bucket(keys)
        say(f"S3 server up: {S3_IN_CLUSTER} in the cluster, {S3_FROM_HOST} from here; bucket {S3_BUCKET}")

    def _nodes_ready(self) -> bool:
        done = self.run("kubectl", "get", "nodes", "-o", "json", check=False)
        if not done:
            return False
        items = json.loads(done)["items"]
        return bool(items) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in item["status"].get("conditions", []))
            for item in items
        )

    def _wait_nodes_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._nodes_ready():
            if time.monotonic() > deadline:
                raise SystemExit(f"kind: nodes not Ready after {timeout:.0f}s:\n{self.run('kubectl', 'get', 'nodes')}")
            time.sleep(2)


def _create_bucket(keys: dict[str, str], timeout: float = 60) -> None:
    """The bucket, through the published NodePort: retried until kube-proxy routes it to the Ready pod."""
    import boto3  # noqa: PLC0415 - only `up` talks to S3
    import botocore.exceptions  # noqa: PLC0415

    s3 = boto3.client(
        "s3",
        endpoint_url=S3_FROM_HOST,
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        region_name=keys["AWS_REGION"],
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3.create_bucket(Bucket=S3_BUCKET)
            return
        except s3.exceptions.BucketAlreadyOwnedByYou:
            return
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def stand_in_config(text: str, cgroup_v1: bool) -> str:
    """kind/cluster.yaml plus what the stand-ins need: no kindnetd, and a kubelet that runs on cgroup v1."""
    if any(line.startswith(("networking:", "kubeadmConfigPatches:")) for line in text.splitlines()):
        raise SystemExit(f"kind: {CONFIG} sets networking or kubeadmConfigPatches; merge the stand-in's into it")
    text += "# Added for the stand-ins (localcluster/kind.py): no kindnetd image here.\n"
    text += "networking:\n  disableDefaultCNI: true\n"
    if cgroup_v1:  # the kubelet refuses cgroup v1 unless told otherwise
        text += "kubeadmConfigPatches:\n  - |\n    kind: KubeletConfiguration\n    failCgroupV1: false\n"
    return text


def cni_conflist(cidr: str) -> dict[str, object]:
    """The CNI configuration kindnetd would write for a node's podCIDR, with the bridge plugin for ptp."""
    bridge = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": cidr}]], "routes": [{"dst": "0.0.0.0/0"}]},
    }
    return {
        "cniVersion": "1.0.0",
        "name": "spotrun-kind",
        "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }


def pod_routes(nodes: list[dict[str, str]], node: str) -> list[tuple[str, str]]:
    """The routes kindnetd keeps on NODE: every other node's podCIDR through that node's address."""
    return [(other["cidr"], other["ip"]) for other in nodes if other["name"] != node]


def s3_keys(state_dir: Path) -> dict[str, str]:
    """The S3 server's root keys, made at the first `up` and kept in the state directory."""
    path = state_dir / "s3-keys.json"
    if not path.is_file():
        keys = {"AWS_ACCESS_KEY_ID": "spotrun" + os.urandom(4).hex(), "AWS_SECRET_ACCESS_KEY": os.urandom(20).hex()}
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
    keys = json.loads(path.read_text())
    return {**keys, "AWS_REGION": "us-east-1"}


def _on_path(name: str) -> bool:
    return any((Path(d) / name).is_file() for d in os.environ.get("PATH", "").split(os.pathsep) if d)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster kind", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="create the cluster with its images and S3 server (reuses a running one)")
    sub.add_parser("down", help="delete the cluster and stop the stand-in engine")
    sub.add_parser("env", help="print the shell exports for kubectl, helm, kind and docker")
    run = sub.add_parser("exec", help="run a command where it reaches the cluster, e.g. exec -- kubectl get nodes")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cluster = Kind(args.state_dir)
    if args.command == "up":
        cluster.up()
    elif args.command == "down":
        cluster.down()
    elif args.command == "env":
        env = cluster.env()
        for key in ("KUBECONFIG", "DOCKER_HOST", "PATH"):
            if key in env:
                print(f"export {key}={env[key]}")
    else:
        argv_ = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv_:
            parser.error("exec needs a command")
        return subprocess.run(cluster.command(argv_), env=cluster.env(), check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
