"""The checkpoint protocol's model-based test against the local cluster's S3 server (versitygw).

The same machines as tests/unit/test_protocol_model.py, each example on a prefix of its own, with
fewer examples (an S3 request costs more than a file): about a minute in the `ci` profile."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from spotrun._storage import S3Storage, Storage

from tests.gang_model import GangMachine
from tests.harness import Config, machine_for, profile, profile_settings, run
from tests.protocol_model import ProtocolMachine

pytestmark = pytest.mark.integration

# Examples relative to the directory's run: its S3 requests take a few milliseconds each.
S3_SCALE = 0.25


@pytest.fixture
def s3_locations(s3_env_vars: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Storage]:
    """A new, empty prefix of the S3 server's bucket per example, over one S3 client."""
    env = s3_env_vars
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])
    bucket = env["LOCALCLUSTER_BUCKET"]
    client = S3Storage(bucket, "model").client
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(1 << 62))
    return lambda _scratch: S3Storage(bucket, f"model/{run_id}/{next(counter)}", client=client)


@pytest.mark.timeout(0 if profile() == "soak" else 1200)
def test_the_protocol_holds_under_faults_on_s3(
    s3_locations: Callable[[Path], Storage], say: Callable[[str], None]
) -> None:
    machine = machine_for(ProtocolMachine, s3_locations)
    run(machine, name="protocol/s3", settings=profile_settings("protocol", scale=S3_SCALE), say=say)


@pytest.mark.timeout(0 if profile() == "soak" else 1200)
def test_a_gang_commits_together_under_faults_on_s3(
    s3_locations: Callable[[Path], Storage], say: Callable[[str], None]
) -> None:
    machine = machine_for(GangMachine, s3_locations, Config.from_env(gang_timeout=3.0))
    run(machine, name="gang/s3", settings=profile_settings("gang", scale=S3_SCALE * 2), say=say)
