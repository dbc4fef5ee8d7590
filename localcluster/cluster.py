"""Starts, inspects and stops the local cluster: etcd, the control plane, versitygw and process kubelets."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from localcluster import audit as audit_log
from localcluster import host, images, kwok, pki, podspec, realnode, toolchain
from localcluster.kube import ApiError, Client

Obj = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = Path(os.environ.get("LOCALCLUSTER_STATE_DIR_DEFAULT", REPO_ROOT / ".localcluster"))
MARKER = "LOCALCLUSTER_PROCESS_OF"  # set on every process the cluster starts, so `down` finds strays
BUCKET = "spotrun"
REGION = "us-east-1"
READY_TIMEOUT = 120

SPOT_LABELS = {
    "spotrun.dev/capacity": "spot",
    "karpenter.sh/capacity-type": "spot",
    "cloud.google.com/gke-spot": "true",
    "eks.amazonaws.com/capacityType": "SPOT",
    "kubernetes.azure.com/scalesetpriority": "spot",
}
ON_DEMAND_LABELS = {
    "spotrun.dev/capacity": "on-demand",
    "karpenter.sh/capacity-type": "on-demand",
    "eks.amazonaws.com/capacityType": "ON_DEMAND",
}
# The state directory of the one cluster whose real nodes use this host's network and cgroups.
REAL_NODES_CLAIM = "/run/localcluster-real-nodes"
# What `node reclaim` taints a node with before draining it: Karpenter's disruption taint.
RECLAIM_TAINT = "karpenter.sh/disrupted"
# What `node notice` taints a node with: the AWS Node Termination Handler's spot interruption taint.
NOTICE_TAINT = "aws-node-termination-handler/spot-itn"
SPOT_TAINT = {"key": "spotrun.dev/capacity", "value": "spot", "effect": "NoSchedule"}
DEFAULT_NODES = (("spot-1", "spot"), ("spot-2", "spot"), ("ondemand-1", "on-demand"))
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
KWOK_USER = "localcluster:kwok"  # kwok's username (in system:masters): its requests apart from the admin's

# Images the process kubelet can run without a `command`: their ENTRYPOINT, as the Dockerfile sets it.
DEFAULT_IMAGES: dict[str, Obj] = {
    podspec.image_repository(images.PROJECT_IMAGE): {"entrypoint": ["python", "-m", "spotrun_operator"]},
}


def say(message: str) -> None:
    print(f"localcluster: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One cluster's state directory and the processes it names."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.dir = (state_dir or DEFAULT_STATE_DIR).resolve()
        self.pki = self.dir / "pki"
        self.pids = self.dir / "pids"
        self.logs = self.dir / "logs"

    # ----- state -----------------------------------------------------------------------------

    @property
    def config(self) -> Obj:
        return _state_file(self.dir / "cluster.json")

    def admin(self) -> Client:
        return Client(
            self.config["apiserver"], str(self.pki / "ca.crt"), str(self.pki / "admin.crt"), str(self.pki / "admin.key")
        )

    def node_running(self, name: str) -> bool:
        """Whether node NAME's kubelet runs (its VM is on)."""
        return self._pid(f"kubelet-{name}") is not None

    def _pid(self, name: str) -> int | None:
        """The pid in pids/NAME.pid while that process runs and is this cluster's; else None.

        A pid file outlives its process (a reboot, a kill -9 of the machine), and the kernel hands
        the pid to another process later: only a process that carries this cluster's marker is
        ours to signal. An unreadable or garbled pid file is no process either."""
        return self._pid_in(self.pids / f"{name}.pid")

    def _pid_in(self, path: Path) -> int | None:
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and _alive(pid) and _marked(pid, self.dir, settle=1.0) else None

    def running(self) -> bool:
        if not (self.dir / "cluster.json").exists() or self._pid("kube-apiserver") is None:
            return False
        try:
            self.admin().get("/readyz")
        except Exception:
            return False
        return True

    # ----- processes -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, MARKER: str(self.dir)}

    def _spawn(
        self,
        name: str,
        argv: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        cgroup: str | None = None,
    ) -> int:
        """Starts a process of the cluster with its log and pid file; in CGROUP (every hierarchy) when given."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.dir,
                env={**self._env(), **(env or {})},
                start_new_session=True,
                # Joined before exec, so that nothing the process starts escapes the node's cgroup.
                preexec_fn=(lambda: host.join_cgroup(cgroup)) if cgroup else None,  # noqa: PLW1509
            )
        (self.pids / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait(self, what: str, check: Any, name: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pid(name) is None:
                raise SystemExit(f"localcluster: {name} exited during start-up; see {self.logs / (name + '.log')}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.25)
        raise SystemExit(f"localcluster: {what} was not ready after {timeout:.0f}s; see {self.logs / (name + '.log')}")

    # ----- up --------------------------------------------------------------------------------

    @property
    def real_nodes(self) -> bool:
        """Whether the cluster was started with `--real-nodes` (its default for `node add`)."""
        return bool(self.config.get("real_nodes"))

    def up(
        self, real_nodes: bool = False, kwok_nodes: int = 0, default_nodes: bool = True, audit: bool = False
    ) -> None:
        """Starts a fresh cluster, or reuses the running one.

        REAL_NODES: spot-1, spot-2 and ondemand-1 are real nodes (else process nodes); DEFAULT_NODES
        False: none of them. KWOK_NODES: that many kwok nodes besides (two thirds spot), the kwok
        controller started for them. AUDIT: the apiserver writes logs/audit.log (`audit.py`); it can
        only be turned on here, on a fresh cluster."""
        if self.running():
            if real_nodes and not self.real_nodes:
                raise SystemExit(
                    f"localcluster: the cluster in {self.dir} runs process nodes; `down` it first to start real nodes"
                )
            if audit and not self.config.get("audit"):
                raise SystemExit(f"localcluster: the cluster in {self.dir} runs without audit; `down` it first")
            say(f"cluster already running (state in {self.dir}); reusing it")
            self._wait_nodes_ready()
            if (missing := kwok_nodes - len(self.kwok_nodes())) > 0:
                self.add_kwok_nodes(missing, "mixed")
            return
        toolchain.build(real_nodes=real_nodes)
        started = time.monotonic()
        self.down(quiet=True)
        for stale in ("etcd", "nodes", "logs", "pids", "s3", "s3-meta", "kwok"):
            shutil.rmtree(self.dir / stale, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / ".gitignore").write_text("*\n")
        say("creating certificates")
        pki.create_control_plane(self.pki)
        ports = {
            k: free_port()
            for k in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "s3", "proxy", "proxy_metrics")
        }
        access_key, secret_key = "spotrun-local", base64.b32encode(os.urandom(20)).decode().lower()
        # Pods of real nodes live on bridges: they cannot reach 127.0.0.1, so the apiserver and the S3
        # server listen on an address of the host's that routes from every bridge.
        address = realnode.HOST_IP if real_nodes else "127.0.0.1"
        if real_nodes:
            self._claim_host()
            host.record(self.dir)
            host.ensure_dirs()
            host.add_address(address)
        config = {
            "apiserver": f"https://{address}:{ports['apiserver']}",
            "s3_endpoint": f"http://{address}:{ports['s3']}",
            "address": address,
            "real_nodes": real_nodes,
            "s3_access_key": access_key,
            "s3_secret_key": secret_key,
            "bucket": BUCKET,
            "region": REGION,
            "ports": ports,
            "kubernetes_version": toolchain.KUBERNETES_VERSION,
            "audit": audit,
        }
        (self.dir / "cluster.json").write_text(json.dumps(config, indent=2))
        (self.dir / "images.json").write_text(json.dumps(DEFAULT_IMAGES, indent=2))
        self._write_kubeconfigs()
        self._link_binaries()
        self._write_env()

        say("starting etcd and versitygw")
        self._start_etcd(ports)
        self._start_versitygw(config)
        self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), "etcd")
        say("starting kube-apiserver")
        self._start_apiserver(ports)
        self._wait("kube-apiserver", lambda: self.admin().get("/readyz") is not None, "kube-apiserver")
        say("starting kube-controller-manager, kube-scheduler, the cloud controller and nodes")
        self._start_controller_manager(ports)
        self._start_scheduler(ports)
        if real_nodes:
            self._start_kube_proxy(ports)
            self._start_coredns()
        self._spawn(
            "cloud-controller",
            [sys.executable, "-m", "localcluster.cloud", "--state-dir", str(self.dir)],
            cwd=REPO_ROOT,
        )
        if real_nodes:
            self.add_real_images([images.pause_archive()])
        for name, capacity in DEFAULT_NODES if default_nodes else ():
            self.add_node(name, capacity, wait=False, real=real_nodes)
        kwok_names = self.add_kwok_nodes(kwok_nodes, "mixed", wait=False) if kwok_nodes else []
        self._wait("versitygw", lambda: _http_ok(f"{config['s3_endpoint']}/health"), "versitygw")
        self._create_bucket()
        self._wait_nodes_ready()
        if kwok_names:
            self._wait_nodes_ready(kwok_names, process="kwok", schedulable=True)
        self._wait(
            "the default ServiceAccount",
            lambda: self.admin().get("/api/v1/namespaces/default/serviceaccounts/default"),
            "kube-controller-manager",
        )
        say(f"cluster ready in {time.monotonic() - started:.1f}s; run: . {self.dir / 'env'} && kubectl get nodes")

    def _bin(self, name: str) -> str:
        return str(toolchain.path_of(name))

    def _start_etcd(self, ports: Obj) -> None:
        client = f"http://127.0.0.1:{ports['etcd']}"
        peer = f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                self._bin("etcd"),
                "--name=localcluster",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=localcluster={peer}",
                # A throwaway test cluster: fsync buys durability we do not need and costs seconds.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _start_versitygw(self, config: Obj) -> None:
        root = self.dir / "s3"
        root.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "versitygw",
            [
                self._bin("versitygw"),
                f"--access={config['s3_access_key']}",
                f"--secret={config['s3_secret_key']}",
                f"--region={config['region']}",
                f"--port={config['address']}:{config['ports']['s3']}",
                "--health=/health",
                "--quiet",
                "posix",
                str(root),
            ],
        )

    def _start_apiserver(self, ports: Obj) -> None:
        p = self.pki
        address = self.config["address"]
        # With real nodes the `kubernetes` Service leads to the apiserver through kube-proxy, as on any
        # cluster. Without, its Endpoints would point at 127.0.0.1, which Endpoints validation refuses;
        # pods of process nodes reach the apiserver through KUBERNETES_SERVICE_HOST instead.
        endpoints = ["--endpoint-reconciler-type=" + ("lease" if self.real_nodes else "none")]
        audit: list[str] = []
        if self.config.get("audit"):
            policy = self.dir / "audit-policy.yaml"
            policy.write_text(audit_log.policy_text())
            self.logs.mkdir(parents=True, exist_ok=True)
            audit = audit_log.apiserver_flags(policy, self.logs / "audit.log")
        self._spawn(
            "kube-apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={realnode.SERVICE_NETWORK}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # Pods leave an unreachable node after 5s instead of 300s, so tests of node loss are fast.
                "--default-not-ready-toleration-seconds=5",
                "--default-unreachable-toleration-seconds=5",
                *endpoints,
                *audit,
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self, ports: Obj) -> None:
        p = self.pki
        self._spawn(
            "kube-controller-manager",
            [
                self._bin("kube-controller-manager"),
                f"--kubeconfig={self.dir / 'kubeconfigs' / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.dir / 'kubeconfigs' / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.dir / 'kubeconfigs' / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kcm']}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--leader-elect=false",
                # A node that stops renewing its lease is NotReady after 10s (default 50s).
                "--node-monitor-period=1s",
                "--node-monitor-grace-period=10s",
                "--v=1",
            ],
        )

    def _start_scheduler(self, ports: Obj) -> None:
        kubeconfig = self.dir / "kubeconfigs" / "scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                self._bin("kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self, ports: Obj) -> None:
        """The real kube-proxy in iptables mode, one for the host: real nodes share its network namespace."""
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.dir / "kubeconfigs" / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": realnode.POD_NETWORK,
            "hostnameOverride": "localcluster-host",
            "healthzBindAddress": f"127.0.0.1:{ports['proxy']}",
            "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
            # Leave the host's conntrack table and timeouts as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            # NodePorts on 127.0.0.1 would need net.ipv4.conf.all.route_localnet=1 on the host.
            "iptables": {"localhostNodePorts": False},
            "nodePortAddresses": [f"{realnode.HOST_IP}/32"],
        }
        path = self.dir / "kube-proxy.json"
        path.write_text(json.dumps(config, indent=2))
        self._spawn("kube-proxy", [self._bin("kube-proxy"), f"--config={path}", "--v=1"])

    def _start_coredns(self) -> None:
        """The real CoreDNS with its kubernetes plugin, one for the host, on HOST_IP:53: the real nodes'
        kubelets name it as clusterDNS, so pods resolve Services and a gang's pods by their names."""
        corefile = self.dir / "Corefile"
        kubeconfig = self.dir / "kubeconfig"
        corefile.write_text(
            f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {realnode.HOST_IP}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    errors
}}
.:53 {{
    bind {realnode.HOST_IP}
    forward . /etc/resolv.conf
    errors
}}
"""
        )
        self._spawn("coredns", [self._bin("coredns"), "-conf", str(corefile)])

    def _claim_host(self) -> None:
        """One cluster with real nodes per host: they share its addresses, iptables and cgroups."""
        claim = Path(REAL_NODES_CLAIM)
        if claim.exists():
            owner = Path(claim.read_text().strip())
            if owner != self.dir and Cluster(owner).running():
                raise SystemExit(
                    f"localcluster: the cluster in {owner} runs real nodes on this host; "
                    f"stop it first (python -m localcluster --state-dir {owner} down)"
                )
            if owner != self.dir:
                Cluster(owner).down(quiet=True)
        claim.write_text(str(self.dir))

    def _owns_host(self) -> bool:
        claim = Path(REAL_NODES_CLAIM)
        return claim.exists() and Path(claim.read_text().strip()) == self.dir

    def _kubeconfig(self, user: str, cert: Path, key: Path) -> str:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "localcluster",
                        "cluster": {
                            "server": self.config["apiserver"],
                            "certificate-authority-data": b64(self.pki / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
                "contexts": [{"name": "localcluster", "context": {"cluster": "localcluster", "user": user}}],
                "current-context": "localcluster",
            },
            indent=2,
        )

    def _write_kubeconfigs(self) -> None:
        (self.dir / "kubeconfig").write_text(self._kubeconfig("admin", self.pki / "admin.crt", self.pki / "admin.key"))
        (self.dir / "kubeconfig").chmod(0o600)
        sub = self.dir / "kubeconfigs"
        sub.mkdir(exist_ok=True)
        for name in ("controller-manager", "scheduler", "kube-proxy"):
            (sub / f"{name}.kubeconfig").write_text(
                self._kubeconfig(name, self.pki / f"{name}.crt", self.pki / f"{name}.key")
            )

    def env_vars(self) -> dict[str, str]:
        c = self.config
        return {
            "KUBECONFIG": str(self.dir / "kubeconfig"),
            "AWS_ENDPOINT_URL": c["s3_endpoint"],
            "AWS_ACCESS_KEY_ID": c["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": c["s3_secret_key"],
            "AWS_REGION": c["region"],
            "AWS_DEFAULT_REGION": c["region"],
            "LOCALCLUSTER_BUCKET": c["bucket"],
            "LOCALCLUSTER_STATE_DIR": str(self.dir),
        }

    def _link_binaries(self) -> None:
        """DIR/bin holds the cluster's own kubectl and helm (and the rest), matching its version."""
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(exist_ok=True)
        for binary in toolchain.BINARIES:
            link = bin_dir / binary.name
            link.unlink(missing_ok=True)
            link.symlink_to(toolchain.binary_path(binary))

    def _write_env(self) -> None:
        lines = [f"export {k}={_shell_quote(v)}" for k, v in self.env_vars().items()]
        lines.append(f'export PATH={_shell_quote(str(self.dir / "bin"))}:"$PATH"')
        (self.dir / "env").write_text("\n".join(lines) + "\n")

    def s3_client(self) -> Any:
        """A boto3 S3 client for the cluster's versitygw, with its credentials."""
        c = self.config
        return boto3.client(
            "s3",
            endpoint_url=c["s3_endpoint"],
            aws_access_key_id=c["s3_access_key"],
            aws_secret_access_key=c["s3_secret_key"],
            region_name=c["region"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10, "mode": "standard"}),
        )

    def _create_bucket(self) -> None:
        s3 = self.s3_client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=self.config["bucket"])

    # ----- nodes -----------------------------------------------------------------------------

    def node_config(self, name: str) -> Obj:
        config = self._read_node_config(name)
        if config is None:
            raise SystemExit(f"localcluster: there is no node {name} in {self.dir}")
        return config

    def _node_configs(self) -> list[Obj]:
        """The configuration of every node the cluster has had, by name."""
        configs = (self._read_node_config(node_dir.name) for node_dir in sorted((self.dir / "nodes").glob("*")))
        return [config for config in configs if config is not None]

    def _read_node_config(self, name: str) -> Obj | None:
        """`nodes/NAME/config.json` as `add_node` wrote it; None when there is none."""
        path = self.dir / "nodes" / name / "config.json"
        return _state_file(path) if path.exists() else None

    def add_node(self, name: str, capacity: str, wait: bool = True, real: bool | None = None) -> None:
        """Adds a node, as an autoscaler would: real (kubelet, containerd) by the cluster's default, or as asked."""
        if capacity not in ("spot", "on-demand"):
            raise SystemExit(f"localcluster: --capacity must be spot or on-demand, not {capacity!r}")
        real = self.real_nodes if real is None else real
        if real and not self.real_nodes:
            raise SystemExit("localcluster: real nodes need a cluster started with `up --real-nodes`")
        node_dir = self.dir / "nodes" / name
        if self._pid(f"kubelet-{name}") is not None:
            raise SystemExit(f"localcluster: node {name} is already running")
        if real and node_dir.exists():
            self._switch_off(name)  # what an earlier VM of that name left
        shutil.rmtree(node_dir, ignore_errors=True)
        node_dir.mkdir(parents=True)
        pki.create_node(self.pki, name)
        config = {
            "name": name,
            "capacity_type": capacity,
            "real": real,
            "port": free_port(),
            "labels": dict(SPOT_LABELS if capacity == "spot" else ON_DEMAND_LABELS),
            "taints": [SPOT_TAINT] if capacity == "spot" else [],
            "kubeletVersion": toolchain.KUBERNETES_VERSION,
            "machineID": os.urandom(16).hex(),
        }
        if real:
            config |= {"index": realnode.free_index(self.dir, name), "healthz_port": free_port()}
        (node_dir / "config.json").write_text(json.dumps(config, indent=2))
        if real:
            self._start_real_node(name, config)
        else:
            self._spawn(
                f"kubelet-{name}",
                [sys.executable, "-m", "localcluster.kubelet", "--state-dir", str(self.dir), "--node", name],
                cwd=REPO_ROOT,
            )
        if wait:
            self._wait_nodes_ready([name])
            say(f"node {name} ({capacity}{', real' if real else ''}) is Ready")

    def _start_real_node(self, name: str, config: Obj) -> None:
        from localcluster import logind  # noqa: PLC0415 - only real nodes need it

        node = realnode.layout(self.dir, name, config["index"])
        realnode.write_files(node, config, self.config["apiserver"], self.pki)
        host.create_cgroup(node.system_cgroup)
        host.add_address(node.ip)
        env = realnode.node_env(node)
        bus_config, _ = logind.write_bus_config(node.dir)
        self._spawn(f"dbus-{name}", logind.bus_argv(bus_config), env=env, cgroup=node.system_cgroup)

        def bus_answers() -> bool:
            logind.wait_bus(node.bus_address, timeout=1)
            return True

        # The stand-in waits for its bus too, but the bus being up first keeps a slow start
        # from being reported as the stand-in's fault.
        self._wait(f"the D-Bus system bus of {name}", bus_answers, f"dbus-{name}", timeout=60)
        self._spawn(
            f"logind-{name}",
            logind.logind_argv(node.bus_address, realnode.SHUTDOWN_GRACE_SECONDS, node.dir / "logind-state.json"),
            cwd=REPO_ROOT,
            env=env,
            cgroup=node.system_cgroup,
        )
        containerd = self._spawn(
            f"containerd-{name}", realnode.containerd_argv(node), cwd=REPO_ROOT, env=env, cgroup=node.system_cgroup
        )
        ctr = toolchain.path_of("ctr")

        def containerd_ready() -> bool:
            done = subprocess.run(
                [str(ctr), "--address", str(node.containerd_socket), "version"], capture_output=True, check=False
            )
            return done.returncode == 0

        self._wait(f"containerd of {name}", containerd_ready, f"containerd-{name}", timeout=60)
        self._wait(
            f"the logind stand-in of {name}",
            lambda: logind.wait_ready(node.bus_address, timeout=1) >= 0,
            f"logind-{name}",
            timeout=60,
        )
        _import_all(node, self.real_images())
        self._spawn(
            f"kubelet-{name}", realnode.kubelet_argv(node, config, containerd), env=env, cgroup=node.system_cgroup
        )

    def real_images(self) -> list[Path]:
        """The image archives every real node gets at start (pause first), as a node image's pre-pulled set."""
        path = self.dir / "real-images.json"
        listed = [Path(p) for p in json.loads(path.read_text())] if path.exists() else []
        return [p for p in listed if p.exists()]

    def add_real_images(self, archives: list[Path]) -> None:
        """Imports ARCHIVES into every running real node and records them for nodes added later."""
        known = [str(p) for p in self.real_images()]
        for archive in archives:
            if str(archive) not in known:
                known.append(str(archive))
        (self.dir / "real-images.json").write_text(json.dumps(known, indent=2))
        nodes = [
            realnode.layout(self.dir, config["name"], config["index"])
            for config in self._node_configs()
            if config.get("real") and self._pid(f"containerd-{config['name']}") is not None
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda node: _import_all(node, archives), nodes))

    def _wait_nodes_ready(
        self, names: list[str] | None = None, process: str = "kube-apiserver", schedulable: bool = False
    ) -> None:
        """Waits until the named nodes (default: every node whose kubelet runs) are Ready, while PROCESS lives;
        SCHEDULABLE: and without the not-ready taint, which the node lifecycle controller takes off a second later."""
        nodes_dir = self.dir / "nodes"
        running = [p.name for p in nodes_dir.iterdir() if self._pid(f"kubelet-{p.name}")] if nodes_dir.exists() else []
        wanted = set(running if names is None else names)

        def ready() -> bool:
            nodes = self.admin().get("/api/v1/nodes")["items"]
            ok = {
                n["metadata"]["name"]
                for n in nodes
                if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                and not (schedulable and any(t["key"] == NOT_READY_TAINT for t in n["spec"].get("taints", [])))
            }
            return wanted <= ok

        what = f"nodes {sorted(wanted)}" if len(wanted) <= 10 else f"{len(wanted)} nodes"
        self._wait(what, ready, process)

    def _running_node(self, name: str) -> Obj:
        config = self.node_config(name)
        if self._pid(f"kubelet-{name}") is None:
            raise SystemExit(f"localcluster: node {name} is not running")
        return config

    def preempt_node(self, name: str, grace: float) -> None:
        """A reclaimed spot VM: graceful node shutdown of its pods, then the VM and its Node are gone.

        On a real node the OS shuts down: logind (the stand-in) announces it, the real kubelet's
        shutdown manager terminates the pods and writes their status, and after GRACE seconds (or
        once the kubelet released its inhibitor lock) the VM is switched off."""
        config = self._running_node(name)
        if config.get("real"):
            from localcluster import logind  # noqa: PLC0415

            node = realnode.layout(self.dir, name, config["index"])
            say(f"preempting node {name}: the OS shuts down; the VM is switched off after at most {grace:g}s")
            try:
                result = logind.power_off(node.bus_address, timeout=grace)
                say(f"node {name}: {result}")
            except (TimeoutError, logind.LogindError) as err:
                # The cloud's deadline: the VM goes whether or not the OS finished shutting down.
                say(f"node {name}: the shutdown did not finish within {grace:g}s ({err}); switching the VM off")
            self._switch_off(name)
        else:
            pid = self._pid(f"kubelet-{name}")
            assert pid is not None
            (self.dir / "nodes" / name / "shutdown-grace").write_text(str(grace))
            say(f"preempting node {name}: pods get SIGTERM and {grace:g}s of grace")
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._switch_off(name)
        with contextlib.suppress(ApiError):
            self.admin().delete(f"/api/v1/nodes/{name}")
        say(f"node {name} was reclaimed and its Node object deleted")

    def reclaim_node(self, name: str, taint: str = RECLAIM_TAINT, timeout: float = 120) -> None:
        """Karpenter's and the AWS Node Termination Handler's path: taint and cordon the node, evict its
        pods through the Eviction API, wait for them to end, then the VM and its Node are gone."""
        self._running_node(name)
        client = self.admin()
        node = client.get(f"/api/v1/nodes/{name}")
        taints = [t for t in node["spec"].get("taints", []) if t["key"] != taint]
        taints.append({"key": taint, "effect": "NoSchedule"})
        client.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True, "taints": taints}})
        say(f"node {name} tainted {taint}:NoSchedule and cordoned; evicting its pods")
        deadline = time.monotonic() + timeout
        pending = self._pods_on(name)
        while pending and time.monotonic() < deadline:
            for pod in pending:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                try:
                    client.evict(meta["namespace"], meta["name"])
                except ApiError as err:
                    if err.status not in (404, 429):  # 429: a PodDisruptionBudget says not yet
                        raise
            time.sleep(0.5)
            pending = self._pods_on(name)
        if pending:
            say(f"node {name}: {len(pending)} pods still running after {timeout:.0f}s; switching the VM off anyway")
        self._switch_off(name)
        with contextlib.suppress(ApiError):
            client.delete(f"/api/v1/nodes/{name}")
        say(f"node {name} was reclaimed and its Node object deleted")

    def notice_node(self, name: str, taint: str = NOTICE_TAINT, value: str | None = None) -> str:
        """The cloud's warning that a spot node will be reclaimed, as a NoSchedule taint on its Node,
        as the AWS Node Termination Handler puts it (value: the event id), Karpenter
        (`karpenter.sh/disrupted`) or GKE (`cloud.google.com/impending-node-termination`) do.

        Nothing else happens: the node keeps running (`preempt_node` reclaims it). Other taints are
        kept and one with the same key is replaced. Returns the taint's value; an empty VALUE puts
        the taint on without one, as Karpenter's is."""
        self._running_node(name)
        value = f"notice-{int(time.time())}" if value is None else value
        wanted: Obj = {"key": taint, "effect": "NoSchedule", **({"value": value} if value else {})}
        client = self.admin()
        for attempt in range(5):
            node = client.get(f"/api/v1/nodes/{name}")
            taints = [t for t in node["spec"].get("taints") or [] if t["key"] != taint] + [wanted]
            # With the resourceVersion the patch fails (409) rather than drop a taint written meanwhile.
            patch = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": taints}}
            try:
                client.merge_patch(f"/api/v1/nodes/{name}", patch)
                break
            except ApiError as err:
                if err.status != 409 or attempt == 4:
                    raise
        shown = f"{taint}={value}:NoSchedule" if value else f"{taint}:NoSchedule"
        say(f"node {name} tainted {shown}: the reclaim notice is given; the node keeps running")
        return value

    def _pods_on(self, name: str) -> list[Obj]:
        """Pods bound to node NAME that a drain waits for: all but mirror pods and a DaemonSet's, until deleted."""
        pods = self.admin().get("/api/v1/pods", fieldSelector=f"spec.nodeName={name}")["items"]
        return [
            p
            for p in pods
            if "kubernetes.io/config.mirror" not in p["metadata"].get("annotations", {})
            and not any(o.get("kind") == "DaemonSet" for o in p["metadata"].get("ownerReferences", []))
        ]

    def kill_node(self, name: str) -> None:
        """Abrupt loss of a node: kubelet and pods die at once and write nothing."""
        self._running_node(name)
        self._switch_off(name)
        say(f"node {name} killed; the node lifecycle controller, taint eviction and PodGC take it from here")

    def _switch_off(self, name: str) -> None:
        """The VM is gone: every process of the node ends at once, and what it held on the host is freed."""
        config = self.node_config(name)
        if config.get("real"):
            node = realnode.layout(self.dir, name, config["index"])
            host.kill_cgroup(node.cgroup_root)
            host.remove_cgroup(node.cgroup_root)
            host.remove_bridge(node.bridge)
            host.remove_address(node.ip)
            # Its disk goes with it, as a cloud deletes a spot VM's boot disk: the images and containers'
            # layers (~0.5 GiB a node). Logs stay in the cluster's logs directory.
            shutil.rmtree(node.dir / "containerd", ignore_errors=True)
            for process in ("kubelet", "containerd", "logind", "dbus"):
                (self.pids / f"{process}-{name}.pid").unlink(missing_ok=True)
            return
        pid = self._pid(f"kubelet-{name}")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self._kill_node_containers(name)
        (self.pids / f"kubelet-{name}.pid").unlink(missing_ok=True)

    def _kill_node_containers(self, name: str) -> None:
        for pid_file in (self.dir / "nodes" / name / "pods").glob("*/pids/*"):
            if (pid := self._pid_in(pid_file)) is not None:  # the process kubelet marks its containers too
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    # ----- kwok nodes (kwok.py) ---------------------------------------------------------------

    def start_kwok(self) -> None:
        """Starts the kwok controller on the running cluster, unless it runs: it manages only kwok nodes."""
        if self._pid("kwok") is not None:
            return
        if not self.running():
            raise SystemExit(f"localcluster: no cluster is running in {self.dir}; `up` first")
        if not toolchain.path_of("kwok").is_file():
            toolchain.build()
        state = self.dir / "kwok"
        state.mkdir(exist_ok=True)
        cert, key = pki.issue(self.pki, "kwok", KWOK_USER, "system:masters")
        kubeconfig = state / "kubeconfig"
        kubeconfig.write_text(self._kubeconfig("kwok", cert, key))
        kubeconfig.chmod(0o600)
        port = free_port()
        config = state / "kwok.yaml"
        config.write_text(kwok.config_text(f"127.0.0.1:{port}"))
        # HOME: kwok also reads ~/.kwok/kwok.yaml when there is one; this cluster's kwok reads only its own.
        self._spawn("kwok", kwok.argv(self._bin("kwok"), str(config), str(kubeconfig)), env={"HOME": str(state)})
        self._wait("kwok", lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), "kwok", timeout=60)
        say(f"kwok {toolchain.KWOK_VERSION} started; it manages the nodes labelled {kwok.NODE_LABEL}=true")

    def stop_kwok(self) -> None:
        """Stops the kwok controller: its nodes go NotReady, and the cloud stand-in deletes them, as lost VMs."""
        pid = self._pid("kwok")
        if pid is None:
            say("kwok was not running")  # stopped already: done, as `down` on nothing
        else:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        (self.pids / "kwok.pid").unlink(missing_ok=True)

    def add_kwok_nodes(
        self, count: int, capacity: str = "spot", resources: dict[str, str] | None = None, wait: bool = True
    ) -> list[str]:
        """Adds COUNT kwok nodes of CAPACITY: spot or on-demand, labelled and tainted as the cluster's own
        nodes of that capacity, or mixed: two thirds spot (COUNT - COUNT // 3), the rest on-demand.
        RESOURCES: their capacity (default kwok.NODE_CAPACITY). Starts kwok first if needed. Returns
        their names; with WAIT, once they are Ready and untainted."""
        if capacity not in ("spot", "on-demand", "mixed"):
            raise SystemExit(f"localcluster: capacity must be spot, on-demand or mixed, not {capacity!r}")
        kinds = (
            [capacity] * count
            if capacity != "mixed"
            else ["spot"] * (count - count // 3) + ["on-demand"] * (count // 3)
        )
        self.start_kwok()
        counters_path = self.dir / "kwok" / "counters.json"
        counters = json.loads(counters_path.read_text()) if counters_path.exists() else {}
        client = self.admin()
        names = []
        for kind in kinds:
            counters["serial"] = counters.get("serial", 0) + 1
            counters[kind] = counters.get(kind, 0) + 1
            counters_path.write_text(json.dumps(counters))  # before the create: a name is never used twice
            name = kwok.node_name(kind, counters[kind])
            labels, taints = (SPOT_LABELS, [SPOT_TAINT]) if kind == "spot" else (ON_DEMAND_LABELS, [])
            client.create("/api/v1/nodes", kwok.node_object(name, labels, taints, counters["serial"], resources))
            names.append(name)
        if wait and names:
            self._wait_nodes_ready(names, process="kwok", schedulable=True)
            say(f"{len(names)} kwok nodes ({capacity}) are Ready: {_name_range(names)}")
        return names

    def kwok_nodes(self, capacity: str | None = None) -> list[str]:
        """The names of the cluster's kwok nodes (of CAPACITY, when given)."""
        selector = f"{kwok.NODE_LABEL}=true" + (f",spotrun.dev/capacity={capacity}" if capacity else "")
        return [n["metadata"]["name"] for n in self.admin().get("/api/v1/nodes", labelSelector=selector)["items"]]

    def delete_kwok_nodes(self, names: list[str] | None = None) -> list[str]:
        """Deletes kwok Node objects, as a cloud reclaims VMs: NAMES, or every kwok node at once (one request).

        Their pods are left as they are: PodGC and the operators deal with them. Returns the names deleted."""
        client = self.admin()
        if names is None:
            done = client.request("DELETE", "/api/v1/nodes", params={"labelSelector": f"{kwok.NODE_LABEL}=true"})
            deleted = [n["metadata"]["name"] for n in done.get("items", [])]
        else:
            deleted = []
            for name in names:
                try:
                    node = client.get(f"/api/v1/nodes/{name}")
                    if node["metadata"].get("labels", {}).get(kwok.NODE_LABEL) != "true":
                        raise SystemExit(f"localcluster: node {name} is not a kwok node")
                    client.delete(f"/api/v1/nodes/{name}")
                    deleted.append(name)
                except ApiError as err:
                    if err.status != 404:  # already gone: nothing to reclaim
                        raise
        say(f"deleted {len(deleted)} kwok nodes" + (f": {_name_range(deleted)}" if deleted else ""))
        return deleted

    # ----- down / status ---------------------------------------------------------------------

    def down(self, quiet: bool = False) -> None:
        stopped = 0
        if self.dir.exists():
            for node_dir in sorted((self.dir / "nodes").glob("*")):
                try:
                    config = self._read_node_config(node_dir.name)
                except SystemExit as garbled:  # its processes are marked: the sweep below gets them
                    print(garbled, file=sys.stderr)
                    continue
                if config is None:
                    continue
                if self._pid(f"kubelet-{config['name']}") is not None:
                    stopped += 1
                self._switch_off(config["name"])
            pid_files = sorted(self.pids.glob("*.pid")) if self.pids.exists() else []
            ours = {path: pid for path in pid_files if (pid := self._pid_in(path)) is not None}
            for pid in ours.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    stopped += 1
            deadline = time.monotonic() + 10
            for pid in ours.values():
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for pid_file in pid_files:
                pid_file.unlink(missing_ok=True)
        strays = list(marked_processes(self.dir))
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # A process SIGKILLed is gone only once the kernel has torn it down: wait (at most 5 s),
        # so that whoever checks right after `down` finds none.
        deadline = time.monotonic() + 5
        while strays and time.monotonic() < deadline and set(strays) & set(marked_processes(self.dir)):
            time.sleep(0.05)
        restored = self._restore_host() if self._owns_host() else []
        if not quiet:
            say(f"stopped {stopped + len(strays)} processes" if stopped or strays else "nothing was running")
            if restored:
                say("put back on the host: " + "; ".join(restored))

    def _restore_host(self) -> list[str]:
        """What real nodes left on the host after their VMs are off: chains, addresses, bridges, cgroups, sysctls."""
        done = []
        if chains := host.remove_iptables_chains():
            done.append(f"removed {chains} iptables chains")
        for bridge in host.bridges():
            host.remove_bridge(bridge)
            done.append(f"removed bridge {bridge}")
        for address in sorted(host.addresses()):
            if address.startswith("10.77.0."):  # realnode.HOST_IP and every node IP
                host.remove_address(address)
                done.append(f"removed {address} from lo")
        host.remove_cgroup(f"/localcluster/{realnode.cluster_id(self.dir)}")
        with contextlib.suppress(OSError):
            for hierarchy in host.hierarchies():
                (hierarchy / "localcluster").rmdir()
        done += host.restore(self.dir)
        Path(REAL_NODES_CLAIM).unlink(missing_ok=True)
        return done

    def status(self) -> int:
        if not (self.dir / "cluster.json").exists():
            say(f"no cluster in {self.dir}")
            return 1
        names = sorted(p.stem for p in self.pids.glob("*.pid")) if self.pids.exists() else []
        for name in names:
            pid = self._pid(name)
            print(f"{name:28} {'running pid ' + str(pid) if pid else 'stopped'}")
        if not self.running():
            print("apiserver: not reachable")
            return 1
        print(f"apiserver: {self.config['apiserver']} ({self.config['kubernetes_version']})")
        print(f"s3:        {self.config['s3_endpoint']} bucket {self.config['bucket']}")
        simulated: collections.Counter[str] = collections.Counter()
        for node in self.admin().get("/api/v1/nodes")["items"]:
            name = node["metadata"]["name"]
            ready = next((c["status"] for c in node["status"].get("conditions", []) if c["type"] == "Ready"), "?")
            labels = node["metadata"].get("labels", {})
            capacity = labels.get("spotrun.dev/capacity", "?")
            if labels.get(kwok.NODE_LABEL) == "true":  # counted, not listed: there may be thousands
                simulated[f"{capacity} Ready={ready}"] += 1
                continue
            print(f"node {name:20} Ready={ready:8} capacity={capacity:10} {self._node_memory(name)}")
        if simulated:
            kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(simulated.items()))
            print(f"kwok nodes: {simulated.total()} ({kinds}); kwok {'running' if self._pid('kwok') else 'stopped'}")
        if self.config.get("audit"):
            print(f"audit:     {self.logs / 'audit.log'}")
        pids = list(marked_processes(self.dir))
        rss = sum(_rss_bytes(pid) for pid in pids)
        print(f"memory:    {rss / 2**20:.0f} MiB resident in {len(pids)} processes")
        print(f"env:       . {self.dir / 'env'}")
        return 0

    def _node_memory(self, name: str) -> str:
        """`real kubelet 90 MiB containerd 50 MiB pods 120 MiB`, or `process kubelet 26 MiB`."""
        config = self._read_node_config(name)
        if config is None:
            return ""

        def mib(process: str) -> str:
            pid = self._pid(f"{process}-{name}")
            return f"{_rss_bytes(pid) / 2**20:.0f} MiB" if pid else "-"

        if not config.get("real"):
            return f"process kubelet {mib('kubelet')}"
        node = realnode.layout(self.dir, name, config["index"])
        pods = host.cgroup_memory(f"{node.cgroup_root}/kubepods") / 2**20
        return f"real    kubelet {mib('kubelet')} containerd {mib('containerd')} pods {pods:.0f} MiB"


def _name_range(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ... {names[-1]}"


def _import_all(node: realnode.Layout, archives: list[Path]) -> None:
    """Imports the archives into a node's containerd, two at a time (unpacking is CPU-bound; two cores)."""
    ctr = toolchain.path_of("ctr")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda archive: images.import_image(ctr, str(node.containerd_socket), archive), archives))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def _state_file(path: Path) -> Obj:
    """A JSON object the cluster wrote (cluster.json, a node's config.json); a clear exit when it is garbled."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(
            f"localcluster: cannot read {path} ({err}); the cluster writes it, so it was cut short or edited:"
            " run `down`, then `up` for a fresh cluster"
        ) from None
    if not isinstance(value, dict):
        raise SystemExit(
            f"localcluster: {path} holds no JSON object; the cluster writes it, so it was edited:"
            " run `down`, then `up` for a fresh cluster"
        )
    return value


def marked_processes(state_dir: Path) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _marked(int(entry.name), state_dir):
            yield int(entry.name)


def _marked(pid: int, state_dir: Path, settle: float = 0.0) -> bool:
    """Whether process PID was started by the cluster in STATE_DIR: its environment carries the marker.

    A process in the middle of execve reads as an empty environment: Popen returns once the
    close-on-exec descriptors are closed, and the kernel sets the new image's environment a
    moment later (a quarter of kube-apiserver's starts, checked at once, read empty here). SETTLE:
    seconds to read again while it is empty; 0 for a scan of every process, where kernel threads
    are empty for good."""
    deadline = time.monotonic() + settle
    while True:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        if environ or time.monotonic() >= deadline:
            return f"{MARKER}={state_dir}".encode() in environ.split(b"\0")
        time.sleep(0.01)


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"
