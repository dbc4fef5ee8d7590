"""Fixtures for tests against the local cluster: one cluster per session, one namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.cluster import Cluster, marked_processes
from localcluster.kube import ApiError, Client
from localcluster.s3server import private_s3
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
    started.up(audit=True)  # the perturbation tests read who wrote what, and when, from the audit log
    try:
        yield started
    finally:
        started.down()
    leftovers = list(marked_processes(started.dir))
    assert not leftovers, f"`down` left processes of the cluster running: {leftovers}"


@pytest.fixture(scope="session")
def s3_env_vars(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The AWS_* variables and LOCALCLUSTER_BUCKET of a real S3 server: the cluster's when this session
    runs one (or names one), else a private versitygw of its own, so that the S3-only modules run
    without a cluster (make test runs them beside the unit tests)."""
    wants_cluster = os.environ.get("LOCALCLUSTER_STATE_DIR") or any(
        "cluster" in getattr(item, "fixturenames", ()) for item in request.session.items
    )
    if wants_cluster:
        yield request.getfixturevalue("cluster").env_vars()
        return
    with private_s3("spotrun") as env:
        yield env


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
