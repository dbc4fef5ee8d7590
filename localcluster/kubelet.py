"""The process kubelet: registers one Node and runs the containers of its pods as host processes.

It talks to the real apiserver with the node's own certificate (system:node:NAME), so the Node
authorizer and NodeRestriction apply to it as to a real kubelet. What it cannot be, being a host
process, is written down in localcluster/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from localcluster import podspec
from localcluster.kube import ApiError, Client
from localcluster.logserver import LogHandler, ThreadingHTTPSServer
from localcluster.volumes import Sources, differs, metadata_key, write_volume

Obj = dict[str, Any]
log = logging.getLogger("kubelet")

MOUNTER = Path(__file__).resolve().parent / "mounter.py"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LEASE_RENEW_SECONDS = 2
STATUS_REPORT_SECONDS = 20
CRASH_BACKOFF_START, CRASH_BACKOFF_MAX = 10.0, 300.0
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Container:
    """Runtime state of one container of a pod: its process, restarts and the status the kubelet reports."""

    def __init__(self, spec: Obj, kind: str) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.kind = kind  # "init", "sidecar" or "main"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_count = 0
        self.state: Obj = {"waiting": {"reason": "PodInitializing" if kind == "main" else "ContainerCreating"}}
        self.last_state: Obj = {}
        self.last_exit: Obj | None = None  # the last termination, also while waiting to restart
        self.stopping = False  # the kubelet is stopping it: its exit is final
        self.next_start = 0.0  # monotonic time before which a crashed container is not restarted
        self.backoff = CRASH_BACKOFF_START
        self.container_id = ""

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        return None if self.running else self.last_exit

    @property
    def started_ever(self) -> bool:
        return self.proc is not None or self.last_exit is not None

    def status(self) -> Obj:
        status: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.running,
            "restartCount": self.restart_count,
            "started": self.running,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


class PodWorker:
    """Owns one pod (by UID): prepares its volumes, runs its containers, reports status, stops it.

    It runs on a thread of its own but is not a Thread subclass, so none of its method names can
    shadow threading's internals."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self._thread = threading.Thread(target=self.run, name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.namespace: str = pod["metadata"]["namespace"]
        self.pod_name: str = pod["metadata"]["name"]
        self.dir: Path = kubelet.pods_dir / self.uid
        self.wake = threading.Event()
        self.gone = False  # the pod object no longer exists (force-deleted)
        self.shutdown_grace: float | None = None  # set by a graceful node shutdown
        spec = pod["spec"]
        self.init = [
            Container(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []
        ]
        self.main = [Container(c, "main") for c in spec.get("containers") or []]
        self.prepared = False
        self.prepare_error = ""
        self.sources = Sources(kubelet.client)
        self.volumes_metadata = ""  # the labels and annotations the downward-API volumes were written from
        self.refresh_error = ""
        self.start_time = ""
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.disruption: Obj | None = None
        self.last_written: Obj | None = None

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.wake.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("Pod worker for %s/%s crashed", self.namespace, self.pod_name)
        finally:
            self.kubelet.forget(self)

    def _run(self) -> None:
        if self.pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            # Terminal before this kubelet saw it: nothing to run, only the final delete is left.
            self.phase = self.pod["status"]["phase"]
            self._await_deletion()
            return
        self.start_time = self.pod.get("status", {}).get("startTime") or now()
        self._write_status()
        while True:
            if self.gone:
                self._kill_all(grace=2)
                return
            if self.shutdown_grace is not None:
                self._node_shutdown()
                return
            if self.pod["metadata"].get("deletionTimestamp"):
                self._delete_gracefully()
                return
            self._step()
            if self.phase in ("Succeeded", "Failed"):
                # As the kubelet does: the pod is terminal only once its sidecars have stopped too.
                self._stop_sidecars(grace=self._grace())
                self._write_status()
                self._await_deletion()
                return
            self._write_status()
            self.wake.wait(0.2)
            self.wake.clear()

    def _await_deletion(self) -> None:
        while not self.gone and self.shutdown_grace is None:
            if self.pod["metadata"].get("deletionTimestamp"):
                self._final_delete()
                return
            self.wake.wait(1)
            self.wake.clear()

    def _grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _step(self) -> None:
        if not self.prepared:
            try:
                self._prepare()
                self.prepared = True
                self.prepare_error = ""
            except (podspec.MissingReference, ApiError, ValueError, OSError) as err:
                if str(err) != self.prepare_error:
                    log.warning("Pod %s/%s is not ready to start: %s", self.namespace, self.pod_name, err)
                self.prepare_error = str(err)
                for c in self.init + self.main:
                    c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
                time.sleep(1)
                return
        self._refresh_downward_volumes()
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for c in self.init + self.main:
            self._reap(c)
        # Init containers in order; native sidecars keep running and do not block the next one.
        for c in self.init:
            if c.kind == "sidecar":
                if not c.running and time.monotonic() >= c.next_start:
                    self._start(c)
                continue
            term = c.terminated
            if term and term["exitCode"] == 0:
                continue
            if c.running:
                return
            if term and policy == "Never":
                self.phase, self.reason = "Failed", ""
                self.message = ""
                return
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        # All init containers are done: the main containers.
        for c in self.main:
            term = c.terminated
            if c.running:
                continue
            due = (term is None and not c.started_ever) or self._should_restart(c, policy)
            if due and time.monotonic() >= c.next_start:
                self._start(c)
        self.phase = self._phase(policy)

    def _will_restart(self, c: Container) -> bool:
        if c.stopping or self.shutdown_grace is not None or self.gone:
            return False
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if c.kind == "sidecar":
            return True
        if c.kind == "init":
            return policy != "Never" and bool(c.last_exit and c.last_exit["exitCode"] != 0)
        return self._should_restart(c, policy)

    def _should_restart(self, c: Container, policy: str) -> bool:
        """Whether an exited main container is started again, by the pod's restartPolicy."""
        last = c.last_exit
        if c.running or last is None:
            return False
        return policy == "Always" or (policy == "OnFailure" and last["exitCode"] != 0)

    def _phase(self, policy: str) -> str:
        terms = [c.terminated for c in self.main]
        if all(t is not None for t in terms) and not any(self._should_restart(c, policy) for c in self.main):
            return "Succeeded" if all(t["exitCode"] == 0 for t in terms if t) else "Failed"
        if any(c.started_ever for c in self.main):
            return "Running"
        return "Pending"

    # ----- containers ------------------------------------------------------------------------

    def _start(self, c: Container) -> None:
        restart = c.restart_count + 1 if c.started_ever else 0
        log_path = self._log_path(c.name, restart)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        term_path = self.dir / "termination" / f"{c.name}-{restart}"
        term_path.parent.mkdir(parents=True, exist_ok=True)
        term_path.write_text("")
        start_error = self.dir / "start-errors" / f"{c.name}-{restart}"
        start_error.parent.mkdir(parents=True, exist_ok=True)
        start_error.unlink(missing_ok=True)
        try:
            env = podspec.container_env(self.pod, c.spec, self.kubelet.base_env(self.pod), self._lookup)
            argv = podspec.resolve_argv(c.spec, env, self.kubelet.images)
            mounts = self._mounts(c, term_path)
        except (podspec.MissingReference, ValueError, ApiError) as err:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
            c.next_start = time.monotonic() + 2
            return
        if c.started_ever:
            c.last_state = {"terminated": c.last_exit}
        c.restart_count = restart
        c.container_id = f"localcluster://{self.uid[:8]}-{c.name}-{restart}"
        spec_path = self.dir / "specs" / f"{c.name}-{c.restart_count}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(
            json.dumps(
                {
                    "mounts": mounts,
                    "workingDir": c.spec.get("workingDir", ""),
                    "argv": argv,
                    "startErrorPath": str(start_error),
                }
            )
        )
        env[self.kubelet.marker_name] = self.kubelet.marker_value
        with open(log_path, "ab") as out:
            c.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-I",
                    "-S",
                    str(MOUNTER),
                    str(spec_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        (self.dir / "pids").mkdir(exist_ok=True)
        (self.dir / "pids" / f"{c.name}-{c.restart_count}").write_text(str(c.proc.pid))
        c.state = {"running": {"startedAt": now()}}
        log.info("Started container %s of pod %s/%s (pid %d)", c.name, self.namespace, self.pod_name, c.proc.pid)

    def _reap(self, c: Container) -> None:
        if c.proc is None or c.proc.poll() is None:
            return
        code = c.proc.returncode
        exit_code = 128 - code if code < 0 else code
        started = c.state.get("running", {}).get("startedAt", now())
        start_error = self.dir / "start-errors" / f"{c.name}-{c.restart_count}"
        terminated: Obj = {
            "exitCode": exit_code,
            "startedAt": started,
            "finishedAt": now(),
            "containerID": c.container_id,
        }
        if start_error.exists():
            terminated.update(reason="StartError", message=start_error.read_text())
        else:
            terminated["reason"] = "Completed" if exit_code == 0 else "Error"
            message = self._termination_message(c, exit_code)
            if message:
                terminated["message"] = message
        c.last_exit = terminated
        c.proc = None
        c.state = {"terminated": terminated}
        if self._will_restart(c) and not self.pod["metadata"].get("deletionTimestamp"):
            delay = c.backoff if exit_code != 0 else 0
            c.next_start = time.monotonic() + delay
            if exit_code != 0:
                c.backoff = min(c.backoff * 2, CRASH_BACKOFF_MAX)
            c.last_state = {"terminated": terminated}
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.pod_name}",
                }
            }
        log.info("Container %s of pod %s/%s exited with code %d", c.name, self.namespace, self.pod_name, exit_code)

    def _termination_message(self, c: Container, exit_code: int) -> str:
        path = self.dir / "termination" / f"{c.name}-{c.restart_count}"
        message = path.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace") if path.exists() else ""
        policy = c.spec.get("terminationMessagePolicy", "File")
        if not message and policy == "FallbackToLogsOnError" and exit_code != 0:
            lines = self._log_path(c.name, c.restart_count).read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            message = b"\n".join(lines)[-MAX_TERMINATION_MESSAGE:].decode(errors="replace")
            if message:
                message += "\n"
        return message

    def _signal(self, c: Container, sig: int) -> None:
        if c.proc is None:
            return
        # The whole process group: a shell wrapper must not shield its child from SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, sig)

    def _stop(self, containers: list[Container], grace: float) -> None:
        """SIGTERM, wait out the grace period, SIGKILL: the kubelet's order for stopping containers."""
        for c in containers:
            c.stopping = True
            if "waiting" in c.state and c.last_exit is not None:
                c.state = {"terminated": c.last_exit}  # a crash-looping container stays down
        live = [c for c in containers if c.proc is not None]
        for c in live:
            self._signal(c, signal.SIGTERM)
        deadline = time.monotonic() + max(grace, 0)
        while time.monotonic() < deadline and any(c.proc and c.proc.poll() is None for c in live):
            self._refresh_downward_volumes()  # a stopping container may still read a notice
            time.sleep(0.05)
        for c in live:
            if c.proc and c.proc.poll() is None:
                self._signal(c, signal.SIGKILL)
                c.proc.wait()
            self._reap(c)

    def _stop_sidecars(self, grace: float) -> None:
        sidecars = [c for c in self.init if c.kind == "sidecar"]
        # Sidecars stop after the main containers, in reverse order of their start.
        for c in reversed(sidecars):
            self._stop([c], grace)

    def _kill_all(self, grace: float) -> None:
        self._stop([c for c in self.main + self.init if c.kind != "sidecar"], grace)
        self._stop_sidecars(grace)

    def _delete_gracefully(self) -> None:
        grace = self._grace()
        log.info("Stopping pod %s/%s with grace %.0fs", self.namespace, self.pod_name, grace)
        started = time.monotonic()
        self._stop([c for c in self.main + self.init if c.kind != "sidecar"], grace)
        remaining = max(grace - (time.monotonic() - started), 1)
        for c in reversed([c for c in self.init if c.kind == "sidecar"]):
            self._stop([c], remaining)
        self._finish_terminal_phase()
        self._write_status()
        self._final_delete()

    def _node_shutdown(self) -> None:
        grace = min(self._grace(), self.shutdown_grace or 0)
        message = "Pod was terminated in response to imminent node shutdown."
        self.disruption = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "TerminationByKubelet",
            "message": message,
            "lastTransitionTime": now(),
        }
        self._write_status()
        self._stop([c for c in self.main + self.init if c.kind != "sidecar"], grace)
        self._stop_sidecars(grace)
        if self.phase != "Succeeded":
            self.phase = "Failed"
        self.reason, self.message = "Terminated", message
        self._write_status()

    def _finish_terminal_phase(self) -> None:
        if self.phase in ("Succeeded", "Failed"):
            return
        terms = [c.terminated for c in self.main]
        self.phase = "Succeeded" if terms and all(t and t["exitCode"] == 0 for t in terms) else "Failed"

    def _final_delete(self) -> None:
        try:
            self.kubelet.client.delete(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
            log.info("Deleted pod %s/%s", self.namespace, self.pod_name)
        except ApiError as err:
            if err.status not in (404, 409):
                raise

    # ----- volumes ---------------------------------------------------------------------------

    def _lookup(self, kind: str, name: str) -> Obj | None:
        return self.sources.lookup(self.namespace, kind, name)

    def _prepare(self) -> None:
        """Materialises every volume of the pod under its directory (volumes/NAME)."""
        pod = self.pod
        volumes_dir = self.dir / "volumes"
        volumes_dir.mkdir(parents=True, exist_ok=True)
        for volume in pod["spec"].get("volumes") or []:
            target = volumes_dir / volume["name"]
            if "emptyDir" in volume:
                target.mkdir(exist_ok=True)
                target.chmod(0o777)
            elif "hostPath" not in volume:
                write_volume(target, self.sources.files(pod, volume))
        self.volumes_metadata = metadata_key(pod)

    def _refresh_downward_volumes(self) -> None:
        """Rewrites the downward-API volumes once the pod's labels or annotations changed, as the
        kubelet does: a container that has one mounted sees the new files without a restart.

        It runs on the pod's own thread, never the watch's: a projected volume whose downward-API
        files change is rewritten whole, and its other sources (secrets, config maps, a token) are
        API requests."""
        pod = self.pod
        key = metadata_key(pod)
        if not self.prepared or key == self.volumes_metadata:
            return
        try:
            for volume in pod["spec"].get("volumes") or []:
                target = self.dir / "volumes" / volume["name"]
                # Only a volume whose downward-API files change: the service-account volume
                # (namespace, token) is not rewritten, nor its token requested, for an annotation.
                downward = self.sources.downward_part(pod, volume)
                if not downward or not differs(target, downward):
                    continue
                if write_volume(target, self.sources.files(pod, volume)):
                    name = volume["name"]
                    log.info("Updated volume %s of pod %s/%s to its new metadata", name, self.namespace, self.pod_name)
        except (podspec.MissingReference, ApiError, ValueError, OSError) as err:
            if str(err) != self.refresh_error:
                log.warning(
                    "Updating the volumes of pod %s/%s failed, retrying: %s", self.namespace, self.pod_name, err
                )
            self.refresh_error = str(err)
            return
        self.volumes_metadata, self.refresh_error = key, ""

    def _mounts(self, c: Container, term_path: Path) -> list[Obj]:
        by_name = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        mounts = []
        for mount in c.spec.get("volumeMounts") or []:
            volume = by_name.get(mount["name"])
            if volume is None:
                raise ValueError(f"volumeMount {mount['name']!r} names no volume of the pod")
            source = Path(volume["hostPath"]["path"]) if "hostPath" in volume else self.dir / "volumes" / mount["name"]
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            target = Path(mount["mountPath"])
            mounts.append({"source": str(source), "target": str(target), "readOnly": bool(mount.get("readOnly"))})
        path = Path(c.spec.get("terminationMessagePath") or "/dev/termination-log")
        mounts.append({"source": str(term_path), "target": str(path), "readOnly": False})
        hosts = None
        if self.pod["spec"].get("subdomain"):  # a gang's pod: its peers' names (no cluster DNS here)
            peers = self.kubelet.dns_client.get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]
            hosts = podspec.hosts_file(self.pod, peers)
        if hosts is not None:
            hosts_path = self.dir / "etc-hosts" / f"{c.name}-{c.restart_count}"
            hosts_path.parent.mkdir(parents=True, exist_ok=True)
            hosts_path.write_text(hosts)
            mounts.append({"source": str(hosts_path), "target": "/etc/hosts", "readOnly": True})
        return mounts

    def _log_path(self, container: str, restart: int) -> Path:
        return self.dir / "logs" / container / f"{restart}.log"

    def log_file(self, container: str, previous: bool) -> Path | None:
        for c in self.init + self.main:
            if c.name == container:
                restart = c.restart_count - 1 if previous else c.restart_count
                if restart < 0:
                    return None
                path = self._log_path(container, restart)
                return path if path.exists() else None
        return None

    def is_running(self, container: str) -> bool:
        return any(c.name == container and c.running for c in self.init + self.main)

    # ----- status ----------------------------------------------------------------------------

    def _conditions(self) -> list[Obj]:
        init_done = all(
            (c.kind == "sidecar" and c.started_ever) or (c.terminated is not None and c.terminated["exitCode"] == 0)
            for c in self.init
        )
        terminal = self.phase in ("Succeeded", "Failed")
        unready = [c.name for c in self.main + [s for s in self.init if s.kind == "sidecar"] if not c.running]
        ready = not unready and not terminal

        def cond(kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
            entry: Obj = {"type": kind, "status": "True" if ok else "False"}
            if not ok and reason:
                entry["reason"] = reason
            if not ok and message:
                entry["message"] = message
            return entry

        not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        not_ready_message = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
        conditions = [
            cond("PodReadyToStartContainers", self.prepared and not terminal),
            cond("Initialized", init_done, "PodCompleted" if terminal else "ContainersNotInitialized"),
            cond("Ready", ready, not_ready_reason, not_ready_message),
            cond("ContainersReady", ready, not_ready_reason, not_ready_message),
        ]
        if self.disruption:
            conditions.append(self.disruption)
        return conditions

    def _status(self) -> Obj:
        status: Obj = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": self._conditions(),
            "containerStatuses": [c.status() for c in self.main],
            "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        return status

    def _write_status(self) -> None:
        desired = self._status()
        comparable = json.dumps(desired, sort_keys=True)
        if self.last_written is not None and json.dumps(self.last_written, sort_keys=True) == comparable:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
        for _ in range(10):
            try:
                pod = self.kubelet.client.get(f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}")
            except ApiError as err:
                if err.status == 404:
                    self.gone = True
                    return
                # The Node authorizer learns of a new pod's binding a moment after the watch
                # delivers it (403 until then): the next pass writes the status.
                log.info("Reading pod %s/%s failed, retrying: %s", self.namespace, self.pod_name, err)
                return
            if pod["metadata"]["uid"] != self.uid:
                self.gone = True
                return
            current = pod.get("status", {})
            if current.get("phase") in ("Succeeded", "Failed") and desired["phase"] not in ("Succeeded", "Failed"):
                return  # a terminal phase never goes back
            owned = {c["type"] for c in desired["conditions"]}
            previous = {c["type"]: c for c in current.get("conditions") or []}
            merged = [c for c in current.get("conditions") or [] if c["type"] not in owned]
            for wanted in desired["conditions"]:
                old = previous.get(wanted["type"])
                unchanged = old and old.get("status") == wanted["status"] and old.get("lastTransitionTime")
                since = old["lastTransitionTime"] if unchanged and old else wanted.get("lastTransitionTime") or now()
                merged.append({"lastProbeTime": None, **wanted, "lastTransitionTime": since})
            pod["status"] = {
                **{k: v for k, v in current.items() if k not in ("reason", "message")},
                **desired,
                "conditions": merged,
            }
            try:
                self.kubelet.client.request("PUT", path, pod)
                self.last_written = desired
                return
            except ApiError as err:
                if err.status == 409:
                    continue
                if err.status == 404:
                    self.gone = True
                    return
                log.warning("Writing status of pod %s/%s failed: %s", self.namespace, self.pod_name, err)
                return


class Kubelet:
    def __init__(self, state_dir: Path, node: str) -> None:
        self.state_dir = state_dir
        self.node = node
        self.node_dir = state_dir / "nodes" / node
        self.config: Obj = json.loads((self.node_dir / "config.json").read_text())
        cluster: Obj = json.loads((state_dir / "cluster.json").read_text())
        pki = state_dir / "pki"
        self.client = Client(
            cluster["apiserver"], str(pki / "ca.crt"), str(pki / f"node-{node}.crt"), str(pki / f"node-{node}.key")
        )
        # The stand-in for cluster DNS (podspec.hosts_file) reads other nodes' pods, which a node may
        # not: with an identity of its own, as CoreDNS has (the cluster's admin here).
        self.dns_client = Client(
            cluster["apiserver"], str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key")
        )
        self.apiserver_host, port = cluster["apiserver"].removeprefix("https://").rsplit(":", 1)
        self.apiserver_port = int(port)
        images_file = state_dir / "images.json"
        self.images: dict[str, Obj] = json.loads(images_file.read_text()) if images_file.exists() else {}
        self.pods_dir = self.node_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.marker_name = "LOCALCLUSTER_PROCESS_OF"
        self.marker_value = str(state_dir.resolve())

    def base_env(self, pod: Obj) -> dict[str, str]:
        # The kubelet's own interpreter comes first, so `python` in a pod is the one that has the
        # project installed, as an image would have it.
        path = os.pathsep.join(
            [os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]
        )
        env = {
            "PATH": path,
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": self.apiserver_host,
            "KUBERNETES_SERVICE_PORT": str(self.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.apiserver_port),
        }
        for name in ("LANG", "LC_ALL", "TZ", "VIRTUAL_ENV"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    # ----- node ------------------------------------------------------------------------------

    def _node_status(self, ready: bool, message: str = "kubelet is posting ready status") -> Obj:
        ts = now()

        def cond(kind: str, status: str, reason: str, msg: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": msg,
                "lastHeartbeatTime": ts,
                "lastTransitionTime": ts,
            }

        capacity = self.config.get(
            "capacity", {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        )
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config["port"]}},
            "nodeInfo": {
                "machineID": self.config.get("machineID", uuid.uuid4().hex),
                "systemUUID": self.config.get("machineID", uuid.uuid4().hex),
                "bootID": uuid.uuid4().hex,
                "kernelVersion": os.uname().release,
                "osImage": "spotrun localcluster process node",
                "containerRuntimeVersion": "localcluster://1.0",
                "kubeletVersion": self.config.get("kubeletVersion", "v1.36.3"),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "conditions": [
                cond(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady", message),
            ],
        }

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "localcluster-process",
                    **self.config.get("labels", {}),
                },
            },
            "spec": {"taints": self.config.get("taints", [])},
        }
        try:
            self.client.create("/api/v1/nodes", body)
            log.info("Registered node %s", self.node)
        except ApiError as err:
            if err.status != 409:
                raise
        self.client.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status(True)})

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        try:
            self.client.merge_patch(path, {"spec": {"renewTime": micro_now(), "holderIdentity": self.node}})
        except ApiError as err:
            if err.status != 404:
                raise
            node = self.client.get(f"/api/v1/nodes/{self.node}")
            self.client.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "metadata": {
                        "name": self.node,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node["metadata"]["uid"]}
                        ],
                    },
                    "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": micro_now()},
                },
            )

    def heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.is_set():
            try:
                self._renew_lease()
                if time.monotonic() - last_status > STATUS_REPORT_SECONDS:
                    self.client.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status(True)})
                    last_status = time.monotonic()
            except Exception as err:  # the apiserver may be restarting; the next beat retries
                log.warning("Heartbeat of node %s failed: %s", self.node, err)
            self.stopping.wait(LEASE_RENEW_SECONDS)

    # ----- pods ------------------------------------------------------------------------------

    def forget(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def worker_by_name(self, namespace: str, name: str) -> PodWorker | None:
        with self.lock:
            for worker in self.workers.values():
                if worker.namespace == namespace and worker.pod_name == name:
                    return worker
        return None

    def _observe(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker:
                    worker.gone = True
                    worker.wake.set()
                return
            if worker is None:
                if self.stopping.is_set():
                    return
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
            else:
                worker.update(pod)

    def watch_pods(self) -> None:
        path = "/api/v1/pods"
        selector = f"spec.nodeName={self.node}"
        while not self.stopping.is_set():
            try:
                listing = self.client.get(path, fieldSelector=selector)
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self._observe("MODIFIED", pod)
                with self.lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in seen]
                for worker in vanished:
                    self._observe("DELETED", worker.pod)
                version = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.client.watch(path, version, fieldSelector=selector):
                        if event["type"] == "ERROR":
                            raise ApiError(event["object"].get("code", 500), json.dumps(event["object"]), "WATCH", path)
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._observe(event["type"], event["object"])
            except Exception as err:
                if self.stopping.is_set():
                    return
                log.warning("Watching pods of node %s failed, relisting: %s", self.node, err)
                time.sleep(1)

    def serve_logs(self) -> None:
        pki = self.state_dir / "pki"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pki / "kubelet-serving.crt"), str(pki / "kubelet-serving.key"))
        context.load_verify_locations(str(pki / "ca.crt"))
        context.verify_mode = ssl.CERT_REQUIRED  # only the apiserver's kubelet-client certificate gets in
        handler = type("Handler", (LogHandler,), {"kubelet": self})
        server = ThreadingHTTPSServer(("127.0.0.1", self.config["port"]), handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.serve_forever()

    def shutdown(self, grace: float) -> None:
        """Graceful node shutdown, as the kubelet does when the VM is being reclaimed."""
        log.info("Node %s is shutting down: stopping pods with grace %.0fs", self.node, grace)
        self.stopping.set()
        try:
            self.client.merge_patch(
                f"/api/v1/nodes/{self.node}/status", {"status": self._node_status(False, "node is shutting down")}
            )
        except ApiError as err:
            log.warning("Marking node %s not ready failed: %s", self.node, err)
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown_grace = grace
            worker.wake.set()
        for worker in workers:
            worker.join(grace + 10)
        log.info("Node %s shut down", self.node)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m localcluster.kubelet")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--node", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kubelet = Kubelet(args.state_dir, args.node)
    shutdown_requested = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        shutdown_requested.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    while True:
        try:
            kubelet.register()
            break
        except Exception as err:
            log.warning("Registering node %s failed, retrying: %s", args.node, err)
            time.sleep(1)
    for target in (kubelet.heartbeat, kubelet.watch_pods, kubelet.serve_logs):
        threading.Thread(target=target, name=target.__name__, daemon=True).start()
    while not shutdown_requested.wait(1):
        pass
    grace_file = kubelet.node_dir / "shutdown-grace"
    grace = float(grace_file.read_text()) if grace_file.exists() else 30.0
    kubelet.shutdown(grace)


if __name__ == "__main__":
    main()
