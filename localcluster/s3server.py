"""A private versitygw for what needs only S3, not a cluster: the protocol tests and bench/checkpoint_io.py."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config

from localcluster import toolchain

ACCESS, SECRET, REGION = "spotrun-test", "spotrun-test-secret", "us-east-1"


@contextlib.contextmanager
def private_s3(bucket: str) -> Iterator[dict[str, str]]:
    """Runs versitygw (the cluster's build, from the cache) on a free loopback port over a temporary
    directory holding `bucket`; yields the AWS_* variables and LOCALCLUSTER_BUCKET a client needs."""
    binary = toolchain.path_of("versitygw")
    if not binary.exists():
        raise RuntimeError(f"no S3 server: build {binary} first (`make build`)")
    root = Path(tempfile.mkdtemp(prefix="spotrun-s3-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "LOCALCLUSTER_BUCKET": bucket,
    }
    (root / "data").mkdir()
    command = [str(binary), f"--access={ACCESS}", f"--secret={SECRET}", f"--region={REGION}"]
    command += [f"--port=127.0.0.1:{port}", "--health=/health", "--quiet", "posix", str(root / "data")]
    server = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL']}/health", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"versitygw did not start on port {port}") from None
                time.sleep(0.1)
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )
        client.create_bucket(Bucket=bucket)
        yield env
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(root, ignore_errors=True)
