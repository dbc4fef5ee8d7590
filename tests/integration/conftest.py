"""Fixtures for tests against the local cluster: one cluster per session, one namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.cluster import Cluster, marked_processes
from localcluster.kube import ApiError, Client
from tests.integration import helpers
from tests.integration.operator_fixtures import (  # noqa: F401 - fixtures for every module
    no_other_operator,
    operator,
    spot_pool,
    task_namespace,
)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """LOCALCLUSTER_STATE_DIR names a running cluster to reuse; otherwise one is started and stopped."""
    existing = os.environ.get("LOCALCLUSTER_STATE_DIR")
    if existing:
        reused = Cluster(Path(existing))
        if not reused.running():
            pytest.fail(f"LOCALCLUSTER_STATE_DIR={existing} names no running cluster; run `python -m localcluster up`")
        yield reused
        return
    started = Cluster(tmp_path_factory.mktemp("localcluster"))
    started.up()
    try:
        yield started
    finally:
        started.down()
    leftovers = list(marked_processes(started.dir))
    assert not leftovers, f"`down` left processes of the cluster running: {leftovers}"


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Client:
    return cluster.admin()


@pytest.fixture
def namespace(kube: Client) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": name}})
    helpers.wait_for(
        lambda: kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30, "the default ServiceAccount"
    )
    yield name
    try:
        kube.delete(f"/api/v1/namespaces/{name}")
    except ApiError as err:
        if err.status != 404:  # a test that deletes its namespace itself
            raise
