"""S3's 409 ConditionalRequestConflict on a create-only PUT is retried, as AWS asks, never taken for "exists"."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from spotrun._storage import AlreadyExistsError, S3Storage


def stubbed(answers: list[tuple[int, str]]) -> tuple[S3Storage, Stubber]:
    """An S3Storage whose client answers each PutObject in turn: (HTTP status, error code), 200 for success."""
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s", endpoint_url="http://s3.test"
    )
    stub = Stubber(client)
    expected: dict[str, Any] = {"Bucket": "b", "Key": "p/manifests/x.json", "Body": b"m", "IfNoneMatch": "*"}
    for status, code in answers:
        if status == 200:
            stub.add_response("put_object", {"ETag": '"e"'}, expected)
        else:
            stub.add_client_error(
                "put_object", service_error_code=code, http_status_code=status, expected_params=expected
            )
    stub.activate()
    return S3Storage("b", "p", client=client), stub


def test_a_409_conflict_is_retried_until_the_put_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spotrun._storage.time.sleep", lambda seconds: None)
    storage, stub = stubbed([(409, "ConditionalRequestConflict"), (409, "ConditionalRequestConflict"), (200, "")])
    storage.put("manifests/x.json", b"m", create_only=True)
    stub.assert_no_pending_responses()


def test_a_409_conflict_then_412_is_already_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spotrun._storage.time.sleep", lambda seconds: None)
    storage, stub = stubbed([(409, "ConditionalRequestConflict"), (412, "PreconditionFailed")])
    with pytest.raises(AlreadyExistsError):
        storage.put("manifests/x.json", b"m", create_only=True)
    stub.assert_no_pending_responses()
