"""Bad S3 settings given to the `spotrun` command, against the local cluster's real S3 server
(versitygw): wrong credentials and a missing bucket get one line saying what to fix, exit code 2,
and nothing written. The cases that need no server are in tests/unit/test_bad_input_cli.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("bucket", "secret", "says"),
    [
        ("spotrun-no-such-bucket", None, "bucket 'spotrun-no-such-bucket' does not exist. Create it, or point"),
        (None, "wrong-secret", "the S3 credentials were rejected"),
    ],
    ids=["missing bucket", "wrong credentials"],
)
@pytest.mark.parametrize("command", ["list", "download"])
def test_bad_s3_settings_say_what_to_fix(
    s3_env_vars: dict[str, str], tmp_path: Path, bucket: str | None, secret: str | None, says: str, command: str
) -> None:
    env = {**os.environ, **s3_env_vars}
    if secret is not None:
        env["AWS_SECRET_ACCESS_KEY"] = secret
    uri = f"s3://{bucket or env['LOCALCLUSTER_BUCKET']}/tests/bad-input"
    argv = ["checkpoints", command, uri, *([str(tmp_path / "out")] if command == "download" else [])]
    run = subprocess.run(
        [sys.executable, "-m", "spotrun", *argv], capture_output=True, text=True, check=False, env=env, timeout=120
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert says in lines[0]
    assert list(tmp_path.iterdir()) == []
