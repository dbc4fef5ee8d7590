"""Installs Spotrun on a lab cluster with its Helm chart, as a user would: S3 Secrets, then `helm install`.

One function for every place that installs it here: the demo, the e2e suite's local mode, the
real-node suite and the kind suite. `env` must put the cluster's kubectl and helm on PATH and its
kubeconfig in KUBECONFIG.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

CHART = Path(__file__).resolve().parents[1] / "charts" / "spotrun"
SECRET = "spotrun-s3"


def install(
    env: dict[str, str],
    *,
    s3: dict[str, str],
    prefix: str,
    task_namespaces: Sequence[str],
    release_namespace: str = "spotrun-system",
    watch_only_tasks: bool = True,
    settings: Sequence[str] = (),
    timeout: str = "5m",
) -> str:
    """Creates the namespaces, the S3 Secret (AWS_* keys of `s3`) in each, and installs or upgrades the
    chart with checkpoints under `prefix` (s3://BUCKET/PATH/); returns helm's output."""
    for namespace in dict.fromkeys([*task_namespaces, release_namespace]):
        _run(env, "kubectl", "create", "namespace", namespace, ok_if="AlreadyExists")
        _run(env, "kubectl", "-n", namespace, "delete", "secret", SECRET, "--ignore-not-found")
        literals = [f"--from-literal={key}={value}" for key, value in s3.items()]
        _run(env, "kubectl", "-n", namespace, "create", "secret", "generic", SECRET, *literals)
    values = [f"checkpoint.prefix={prefix}", f"checkpoint.secret={SECRET}", f"operatorS3Secret={SECRET}"]
    if watch_only_tasks:
        values.append("watchNamespaces={" + ",".join(task_namespaces) + "}")
    helm = ["helm", "upgrade", "--install", "spotrun", str(CHART), "--namespace", release_namespace]
    helm += ["--wait", "--timeout", timeout, *(flag for value in values for flag in ("--set", value)), *settings]
    return _run(env, *helm, diagnose=release_namespace)


def _run(env: dict[str, str], *argv: str, ok_if: str = "", diagnose: str = "") -> str:
    done = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 and not (ok_if and ok_if in done.stderr):
        why = _why_not_ready(env, diagnose) if diagnose else ""
        raise SystemExit(f"install: {' '.join(argv[:4])} failed (exit {done.returncode}):\n{done.stderr.strip()}{why}")
    return done.stdout


def _why_not_ready(env: dict[str, str], namespace: str) -> str:
    """What `helm --wait` waited for: the nodes (taints, pressure), the release's pods and their Events."""
    views = [
        ["kubectl", "get", "nodes", "-o", "custom-columns=NAME:.metadata.name,TAINTS:.spec.taints[*].key"],
        ["kubectl", "-n", namespace, "get", "pods", "-o", "wide"],
        ["kubectl", "-n", namespace, "get", "events", "--sort-by=.lastTimestamp"],
    ]
    out = []
    for argv in views:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        out.append(f"$ {' '.join(argv)}\n{(done.stdout + done.stderr).strip()}")
    return "\n" + "\n".join(out)
