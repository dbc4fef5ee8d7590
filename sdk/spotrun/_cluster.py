"""TaskRuns on a cluster, through kubectl: the kubeconfig, its contexts and auth plugins as kubectl has them.

The SDK talks to Kubernetes only here, and only by running `kubectl` (the SDK never imports a
Kubernetes client: a task image needs nothing but boto3). Whoever runs `spotrun get` or
`kubectl spotrun` has kubectl; its kubeconfig handling (contexts, exec credential plugins, proxies)
is then the one the user already trusts. kubectl's errors are turned into what to do.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from spotrun._errors import ConfigError

Obj = dict[str, Any]
RESOURCE = "taskruns.spotrun.dev"
TIMEOUT_SECONDS = 60.0
INSTALL_HINT = (
    "install Spotrun first: `helm install spotrun charts/spotrun` or `kubectl apply -k manifests/base` (README)"
)


class ClusterError(ConfigError):
    """The cluster cannot be reached, lacks Spotrun, or refused a request: the message says what to do."""


class NotFoundError(ClusterError):
    """The object asked for does not exist."""


@dataclasses.dataclass(frozen=True)
class Kubectl:
    """kubectl against one context and namespace (None: the kubeconfig's current ones)."""

    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None

    def argv(self, *args: str) -> list[str]:
        binary = shutil.which("kubectl")
        if binary is None:
            raise ClusterError("kubectl is not on PATH: install it (https://kubernetes.io/docs/tasks/tools/)")
        flags = []
        if self.kubeconfig:
            flags += ["--kubeconfig", self.kubeconfig]
        if self.context:
            flags += ["--context", self.context]
        if self.namespace:
            flags += ["--namespace", self.namespace]
        return [binary, *flags, *args]

    def run(self, *args: str, stdin: str | None = None, what: str = "", timeout: float = TIMEOUT_SECONDS) -> str:
        """kubectl ARGS; its stdout. ClusterError (NotFoundError) with what to do when it fails."""
        try:
            done = subprocess.run(
                self.argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            took = f"kubectl {' '.join(args[:2])} took over {timeout:.0f}s"
            raise ClusterError(f"{took}: is the cluster of {self.where()} answering?") from None
        if done.returncode != 0:
            raise self.explain(done.stderr, what or " ".join(args[:3]))
        return done.stdout

    def json(self, *args: str, what: str = "") -> Obj:
        body: Obj = json.loads(self.run(*args, "-o", "json", what=what))
        return body

    def where(self) -> str:
        context = f"context {self.context}" if self.context else "the current context"
        return f"{context}, namespace {self.namespace or '(the context default)'}"

    def explain(self, stderr: str, what: str) -> ClusterError:
        """kubectl's stderr as what to do. The kubeconfig's own problems come first: their messages
        say "not found" too (a context, a credential plugin), and are not about the object."""
        text = stderr.strip()
        last = text.splitlines()[-1] if text else "no message"
        configuration = (
            "Error in configuration",
            "context was not found",
            "does not exist",
            "no configuration has been provided",
            "exec: executable",
            "getting credentials",
            "invalid configuration",
        )
        if any(marker in text for marker in configuration):
            return ClusterError(
                f"the kubeconfig cannot be used with {self.where()}: {last}; check `kubectl config get-contexts` "
                "and --context/--kubeconfig"
            )
        unreachable = (
            "Unable to connect to the server",
            "connection refused",
            "no such host",
            "couldn't get current server API group list",
            "The connection to the server",
            "i/o timeout",
            "TLS handshake timeout",
        )
        if any(marker in text for marker in unreachable):
            return ClusterError(
                f"no cluster reachable with {self.where()}: check `kubectl config current-context` and "
                f"--context/--kubeconfig ({last})"
            )
        if "the server doesn't have a resource type" in text:
            return ClusterError(f"the TaskRun CRD is not installed on {self.where()}: {INSTALL_HINT}")
        if "Error from server (NotFound)" in text:
            if 'namespaces "' in text:
                return ClusterError(f"{what}: no namespace {self.namespace or ''} there ({last})")
            return NotFoundError(f"{what}: not found in {self.where()}; `spotrun get` lists the TaskRuns there")
        if "Forbidden" in text or "forbidden" in text:
            return ClusterError(f"{what}: the cluster refused it to you ({last})")
        return ClusterError(f"{what}: kubectl failed: {last}")

    # ----- TaskRuns --------------------------------------------------------------------------

    def taskrun(self, name: str) -> Obj:
        return self.json("get", RESOURCE, name, what=f"TaskRun {name}")

    def taskruns(self) -> list[Obj]:
        items: list[Obj] = self.json("get", RESOURCE, what="TaskRuns")["items"]
        return items

    def events(self, name: str) -> list[Obj]:
        selector = f"involvedObject.name={name},involvedObject.kind=TaskRun"
        items: list[Obj] = self.json("get", "events", "--field-selector", selector, what="Events")["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def patch_spec(self, name: str, patch: Obj) -> None:
        self.run("patch", RESOURCE, name, "--type", "merge", "-p", json.dumps({"spec": patch}), what=f"TaskRun {name}")

    def annotate(self, name: str, key: str, value: str) -> None:
        self.run("annotate", RESOURCE, name, "--overwrite", f"{key}={value}", what=f"TaskRun {name}")

    def delete(self, name: str, *, wait: bool) -> None:
        # The operator may wait minutes for the pods to end before it deletes the checkpoints.
        timeout = 900.0 if wait else TIMEOUT_SECONDS
        self.run("delete", RESOURCE, name, f"--wait={str(wait).lower()}", what=f"TaskRun {name}", timeout=timeout)

    def apply(self, body: Obj) -> Obj:
        what = f"{body['kind']} {body['metadata']['name']}"
        applied: Obj = json.loads(self.run("apply", "-o", "json", "-f", "-", stdin=json.dumps(body), what=what))
        return applied

    def create(self, body: Obj) -> Obj:
        """kubectl create: refused when it exists (apply would change someone else's)."""
        what = f"{body['kind']} {body['metadata']['name']}"
        created: Obj = json.loads(self.run("create", "-o", "json", "-f", "-", stdin=json.dumps(body), what=what))
        return created

    def pod_phase(self, name: str) -> str | None:
        """A pod's phase, None when it is gone."""
        try:
            return str(self.json("get", "pod", name, what=f"pod {name}").get("status", {}).get("phase", "Pending"))
        except NotFoundError:
            return None

    def logs(self, pod: str, *, follow: bool, container: str | None = None) -> subprocess.Popen[str]:
        """`kubectl logs` of a pod (every container unless `container`), as a process to read lines from."""
        args = ["logs", pod, f"--follow={str(follow).lower()}"]
        args += ["--container", container] if container else ["--all-containers", "--prefix=false"]
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def names_of(items: Sequence[Obj]) -> list[str]:
    return [str(i["metadata"]["name"]) for i in items]
