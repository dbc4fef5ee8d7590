"""`make test-kind` (and the kind part of `make test`): the demo, and optionally tests/e2e, on kind.

    python -m tests.kind [--e2e] [--keep] [--state-dir DIR]

Creates the kind cluster of kind/cluster.yaml (`python -m localcluster kind up`: on this machine
on the stand-in engine and node image) in a new state directory, runs `make kind-demo`'s script
(`examples/demo.py --kind`: a drain in the middle of the training TaskRun, which must resume from
its checkpoint and succeed), with --e2e then `tests/e2e` through its any-cluster interface with
`kubectl drain` (then `kubectl uncordon`) as the disruption, then deletes the cluster and checks
that the host is as it was. Exits non-zero when anything fails.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localcluster import host, images, kind
from localcluster.install import install

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "e2e-kind"
DRAIN = "kubectl drain {node} --ignore-daemonsets --delete-emptydir-data && kubectl uncordon {node}"


def say(message: str) -> None:
    print(f"test-kind: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kind", description=__doc__.split("\n\n")[0])
    parser.add_argument("--e2e", action="store_true", help="also run tests/e2e with kubectl drain as the disruption")
    parser.add_argument("--state-dir", type=Path, help="the kind state directory (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    args = parser.parse_args(argv)
    state_dir = (args.state_dir or Path(tempfile.mkdtemp(prefix="spotrun-kind-"))).resolve()
    cluster = kind.Kind(state_dir)
    before = host.fingerprint(state_dir)
    status = 1
    try:
        status = run(cluster, args.e2e)
    finally:
        if not args.keep:
            cluster.down()
            left = host.differences(before, host.fingerprint(state_dir))
            if left:
                say("`kind down` did not leave the host as it found it:\n  " + "\n  ".join(left))
                status = 1
            else:
                say("`kind down` left the host as it found it (mounts, cgroups, links, addresses, iptables, sysctls)")
            if status == 0 and args.state_dir is None:
                shutil.rmtree(state_dir)
    return status


def run(cluster: kind.Kind, e2e: bool) -> int:
    started = time.monotonic()
    cluster.up()
    say(f"kind up in {time.monotonic() - started:.0f}s")
    env = {**cluster.env(), "LOCALCLUSTER_KIND_STATE_DIR": str(cluster.dir)}
    demo = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py"), "--kind"], env=env, check=False)
    say(f"kind demo {'passed' if demo.returncode == 0 else 'FAILED'} after {time.monotonic() - started:.0f}s")
    if demo.returncode != 0 or not e2e:
        return demo.returncode
    with cluster.entered():  # kubectl, helm and pytest reach the cluster's published ports from here
        return e2e_suite(cluster, env)


def e2e_suite(cluster: kind.Kind, env: dict[str, str]) -> int:
    keys = kind.s3_keys(cluster.dir)
    s3 = {**keys, "AWS_ENDPOINT_URL": kind.S3_IN_CLUSTER}
    # The demo's release and values (it watches every namespace), with the S3 Secret in the suite's namespace too.
    install(
        cluster.env(),
        s3=s3,
        prefix=f"s3://{kind.S3_BUCKET}/demo/",
        task_namespaces=["default", NAMESPACE],
        watch_only_tasks=False,
        settings=["--set", "logFormat=text", "--set", "image.pullPolicy=Never"],
    )
    suite_env = {
        **env,
        "SPOTRUN_E2E_KUBECONFIG": str(cluster.kubeconfig),
        "SPOTRUN_E2E_NAMESPACE": NAMESPACE,
        "SPOTRUN_E2E_PREEMPT": DRAIN,
        "SPOTRUN_E2E_IMAGE": images.EXAMPLES_IMAGE,
        "SPOTRUN_E2E_EXAMPLES": "/opt/spotrun/examples",
    }
    say(f"tests/e2e with SPOTRUN_E2E_PREEMPT={shlex.quote(DRAIN)}")
    suite_started = time.monotonic()
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=suite_env,
        check=False,
    )
    say(f"e2e on kind {'passed' if suite.returncode == 0 else 'FAILED'} in {time.monotonic() - suite_started:.0f}s")
    return suite.returncode


if __name__ == "__main__":
    sys.exit(main())
