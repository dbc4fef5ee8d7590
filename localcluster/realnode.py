"""Real nodes: the real kubelet with its own containerd, runc and CNI bridge, each node a "VM" on the host.

A real node is five processes in one cgroup (`CGROUP/system`, beside the kubelet's `kubepods`):
a private D-Bus system bus and the logind stand-in on it (graceful node shutdown), containerd
(started in a mount namespace of the node's own, where /var/lib/kubelet, /var/log/pods,
/run/containerd, /run/netns and /var/lib/cni are the node's directories), and the kubelet (entered
into that namespace). Switching the VM off is freezing and killing that cgroup: shims and
containers end with it, and the mount namespace, the pods' network namespaces and their veths go
with their last process.

`python -m localcluster.realnode boot NODE_DIR` is the node's first process, run under
`unshare --mount`: it binds the node's directories over the host's and becomes containerd.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from localcluster import host, images, pki, toolchain

Obj = dict[str, Any]

HOST_IP = "10.77.0.1"  # on lo: what pods on real nodes reach the apiserver and the S3 server at
POD_NETWORK = "10.88.0.0/16"  # node i has 10.88.i.0/24 on its bridge lcbr<i>
SERVICE_NETWORK = "10.0.0.0/24"
RUNC = "/usr/sbin/runc"  # Debian's runc
# The kubelet's graceful node shutdown: the whole shutdown may take this long, and logind's
# InhibitDelayMaxUSec is the same, so the kubelet never needs to rewrite logind.conf.d.
SHUTDOWN_GRACE_SECONDS = 30
SHUTDOWN_GRACE_CRITICAL_SECONDS = 5
MAX_NODES = 200


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one real node's files, addresses and cgroups are."""

    name: str
    index: int
    dir: Path
    cluster_id: str

    @property
    def ip(self) -> str:
        return f"10.77.0.{10 + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.88.{self.index}.0/24"

    @property
    def bridge(self) -> str:
        return f"{host.BRIDGE_PREFIX}{self.index}"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot; its pods go under kubepods/ and the node's own processes under system/."""
        return f"/localcluster/{self.cluster_id}/{self.name}"

    @property
    def system_cgroup(self) -> str:
        return f"{self.cgroup_root}/system"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def bus_address(self) -> str:
        """The node's private D-Bus system bus, where its logind stand-in is."""
        from localcluster import logind  # noqa: PLC0415 - only real nodes need it

        return logind.bus_address(self.dir)


def cluster_id(state_dir: Path) -> str:
    """A short id of the cluster, so two state directories never share cgroups."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def layout(state_dir: Path, name: str, index: int) -> Layout:
    return Layout(name, index, state_dir / "nodes" / name, cluster_id(state_dir))


def free_index(state_dir: Path, exclude: str) -> int:
    """The lowest node index no other real node of this cluster holds."""
    used = set()
    for config in (state_dir / "nodes").glob("*/config.json"):
        body = json.loads(config.read_text())
        if body.get("real") and body["name"] != exclude:
            used.add(int(body["index"]))
    return next(i for i in range(1, MAX_NODES) if i not in used)


# ----- configuration files -----------------------------------------------------------------------


def containerd_config(node: Layout) -> str:
    d = node.dir / "containerd"
    cni = node.dir / "cni"
    # TOML by hand: the few keys below are all this node changes from containerd's defaults.
    return f"""version = 3
root = "{d / "root"}"
state = "{d / "state"}"
oom_score = 0

[grpc]
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.containerd_socket}.ttrpc"

[debug]
  level = "info"

[plugins]
  # Two containerd on one host would share NRI's one socket.
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{images.PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused and every sandbox
    # would fail; this makes containerd never ask for less than its own.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{toolchain.cni_bin_dir()}"]
      conf_dir = "{cni / "net.d"}"
      max_conf_num = 1
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{RUNC}"
          SystemdCgroup = false
"""


def cni_config(node: Layout) -> Obj:
    return {
        "cniVersion": "1.0.0",
        "name": f"localcluster-{node.name}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: Layout, config: Obj, pki_dir: Path, serving: tuple[Path, Path]) -> Obj:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The host has cgroup v1 hierarchies only; kubelet 1.35+ needs this to run on them.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "address": node.ip,
        "port": config["port"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": config["healthz_port"],
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki_dir / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "registerNode": True,
        "registerWithTaints": config["taints"],
        # The node lifecycle controller here calls a node NotReady after 10 s without a renewal.
        "nodeLeaseDurationSeconds": 8,
        # Images cannot be pulled again here (no registry): never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        # Every node here measures the host's one disk, which CI runs and caches fill: with the default
        # thresholds (imagefs.available<15%) a host at 86% use puts every node under DiskPressure, taints
        # it and nothing schedules. As kind does, disk pressure is off; memory keeps the kubelet's default.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
            "imagefs.inodesFree": "0%",
        },
        # Graceful node shutdown through logind (the stand-in on the node's private system bus).
        "shutdownGracePeriod": f"{SHUTDOWN_GRACE_SECONDS}s",
        "shutdownGracePeriodCriticalPods": f"{SHUTDOWN_GRACE_CRITICAL_SECONDS}s",
        # Root without CAP_SYS_RESOURCE cannot lower its own oom_score_adj.
        "oomScoreAdj": 0,
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "clusterDNS": [HOST_IP],  # CoreDNS, one host process for every real node (Cluster._start_coredns)
        "resolvConf": "/etc/resolv.conf",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "maxPods": 110,
    }


def kubelet_kubeconfig(server: str, pki_dir: Path, cert: Path, key: Path) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "localcluster", "cluster": {"server": server, "certificate-authority": str(pki_dir / "ca.crt")}}
        ],
        "users": [{"name": "node", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "localcluster", "context": {"cluster": "localcluster", "user": "node"}}],
        "current-context": "localcluster",
    }


def write_files(node: Layout, config: Obj, server: str, pki_dir: Path) -> None:
    """Every file the node's containerd and kubelet read, under the node's directory."""
    for sub in ("containerd", "cni/net.d", "cni/ipam", "host", "kubelet"):
        (node.dir / sub).mkdir(parents=True, exist_ok=True)
    (node.dir / "containerd" / "config.toml").write_text(containerd_config(node))
    (node.dir / "cni" / "net.d" / "10-localcluster.conflist").write_text(json.dumps(cni_config(node), indent=2))
    cert, key = pki.create_node(pki_dir, node.name)
    serving = pki.create_node_serving(pki_dir, node.name, node.ip)
    (node.dir / "kubelet" / "config.json").write_text(
        json.dumps(kubelet_config(node, config, pki_dir, serving), indent=2)
    )
    (node.dir / "kubelet" / "kubeconfig").write_text(json.dumps(kubelet_kubeconfig(server, pki_dir, cert, key)))


# ----- processes ---------------------------------------------------------------------------------


def node_env(node: Layout) -> dict[str, str]:
    """PATH with the shim first (containerd finds `containerd-shim-runc-v2` on PATH), and the node's bus."""
    shim_dir = toolchain.path_of("containerd-shim-runc-v2").parent
    return {
        "PATH": f"{shim_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "DBUS_SYSTEM_BUS_ADDRESS": node.bus_address,
        "LOCALCLUSTER_NODE": node.name,
    }


def containerd_argv(node: Layout) -> list[str]:
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        "-m",
        "localcluster.realnode",
        "boot",
        str(node.dir),
    ]


def kubelet_argv(node: Layout, config: Obj, containerd_pid: int) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(config["labels"].items()))
    return [
        "nsenter",
        f"--mount=/proc/{containerd_pid}/ns/mnt",
        "--",
        str(toolchain.path_of("kubelet")),
        f"--config={node.dir / 'kubelet' / 'config.json'}",
        f"--kubeconfig={node.dir / 'kubelet' / 'kubeconfig'}",
        "--root-dir=/var/lib/kubelet",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def _bind_source(node_dir: Path, host_path: str) -> Path:
    return node_dir / "host" / host_path.strip("/").replace("/", "-")


def boot(node_dir: Path) -> None:
    """In the node's fresh mount namespace: the node's own directories over the host's, then containerd."""
    import subprocess  # noqa: PLC0415 - only the boot path needs it

    for host_path in host.HOST_DIRS:
        source = _bind_source(node_dir, host_path)
        source.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), host_path], check=True)
    containerd = str(toolchain.path_of("containerd"))
    os.execv(containerd, [containerd, f"--config={node_dir / 'containerd' / 'config.toml'}"])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "boot":
        boot(Path(sys.argv[2]))
    raise SystemExit("usage: python -m localcluster.realnode boot NODE_DIR")


if __name__ == "__main__":
    main()
