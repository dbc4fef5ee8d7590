"""`python -m spotrun_operator` run as a newcomer would: a Lease it can never take ends it at once
with one line saying what to do, and no line of its output is a raw HTTP dump."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localcluster.cluster import Cluster
from tests.integration.operator_fixtures import Operator


@pytest.mark.parametrize(
    ("identity", "fixes"),
    [
        # An admin's kubeconfig, as a newcomer has: the namespace is missing (HTTP 404).
        ("admin", ["create the namespace", "SPOTRUN_LEASE_NAMESPACE", "SPOTRUN_LEADER_ELECTION=false"]),
        # The operator's ServiceAccount, allowed Leases in spotrun-system only (HTTP 403).
        ("serviceaccount", ["leases.coordination.k8s.io", "SPOTRUN_LEASE_NAMESPACE", "SPOTRUN_LEADER_ELECTION=false"]),
    ],
)
def test_a_lease_that_cannot_be_taken_ends_the_operator_with_one_line_saying_what_to_do(
    operator: Operator, cluster: Cluster, tmp_path: Path, identity: str, fixes: list[str]
) -> None:
    kubeconfig = cluster.dir / "kubeconfig" if identity == "admin" else operator.kubeconfig
    env = {"SPOTRUN_LEADER_ELECTION": "true", "SPOTRUN_LEASE_NAMESPACE": "no-such-namespace"}
    newcomer = Operator(cluster, kubeconfig, tmp_path / "operator.log", **env)
    started = time.monotonic()
    newcomer.start()
    assert newcomer.proc is not None
    try:
        status = newcomer.proc.wait(timeout=30)
    finally:
        newcomer.kill()
    took = time.monotonic() - started
    output = newcomer.log.read_text()
    print(f"exited {status} after {took:.1f}s:\n{output}")
    assert status != 0
    assert took < 20  # mostly the imports, on a busy 2-core machine; it used to loop for ever
    lines = [line for line in output.splitlines() if "Could not take the Lease" in line]
    assert len(lines) == 1, output
    for fix in fixes:
        assert fix in lines[0], lines[0]
    assert "HTTP response headers" not in output
    assert "HTTP response body" not in output
