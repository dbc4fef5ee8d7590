"""The checkpoint commit protocol against the local cluster's real S3 server (versitygw)."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.config import Config
from spotrun import Checkpoint, PermanentStorageError
from spotrun._storage import AlreadyExistsError, S3Storage

from tests.gang_cases import *  # noqa: F403 - and a gang's
from tests.hardening_cases import *  # noqa: F403 - and a hostile writer's, a crashing task's, a second writer's
from tests.protocol_cases import *  # noqa: F403 - the shared cases are this module's tests
from tests.protocol_cases import MakeStorage

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_env(s3_env_vars: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3_env_vars
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, env[name])
    return env


@pytest.fixture
def prefix() -> str:
    return f"tests/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_storage(s3_env: dict[str, str], prefix: str) -> MakeStorage:
    return lambda: S3Storage(s3_env["LOCALCLUSTER_BUCKET"], prefix)


@pytest.fixture
def storage_spec(s3_env: dict[str, str], prefix: str) -> dict[str, str]:
    return {"kind": "s3", "bucket": s3_env["LOCALCLUSTER_BUCKET"], "prefix": prefix}


@pytest.fixture
def storage_env(s3_env: dict[str, str], prefix: str) -> dict[str, str]:
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    return {
        "SPOTRUN_CHECKPOINT_URI": f"s3://{s3_env['LOCALCLUSTER_BUCKET']}/{prefix}",
        **{name: s3_env[name] for name in names},
    }


def test_bad_credentials_say_which_settings_to_fix(
    s3_env: dict[str, str], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    cp = Checkpoint(S3Storage(s3_env["LOCALCLUSTER_BUCKET"], prefix, max_attempts=1))
    with pytest.raises(PermanentStorageError, match="AWS_SECRET_ACCESS_KEY") as raised:
        cp.write(b"x")
    assert raised.value.bucket == s3_env["LOCALCLUSTER_BUCKET"]


def test_a_missing_bucket_is_named_with_the_fix(s3_env: dict[str, str]) -> None:
    cp = Checkpoint(S3Storage("no-such-bucket-spotrun", "p", max_attempts=1))
    with pytest.raises(PermanentStorageError, match="bucket 'no-such-bucket-spotrun' does not exist"):
        cp.write(b"x")
    with pytest.raises(PermanentStorageError, match="Create it"):
        cp.read()


def test_versitygw_refuses_a_create_only_overwrite(s3_env: dict[str, str], prefix: str) -> None:
    storage = S3Storage(s3_env["LOCALCLUSTER_BUCKET"], prefix)
    storage.put("k", b"first", create_only=True)
    with pytest.raises(AlreadyExistsError):
        storage.put("k", b"second", create_only=True)
    raw = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    body = raw.get_object(Bucket=s3_env["LOCALCLUSTER_BUCKET"], Key=f"{prefix}/k")["Body"].read()
    assert body == b"first"
