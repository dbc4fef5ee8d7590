"""Checkpoint save/restore throughput of the SDK against raw boto3, side by side in one run.

Runs against the local cluster's S3 server when the cluster is up, else against a versitygw of its
own (the cached binary from `make build`), started for the run. Each measurement runs in a fresh
subprocess so that its peak RSS is its own. Prints, per case, the throughput of both and
the ratio SDK/boto3 (above 1: the SDK is faster), the peak RSS of both and the HTTP requests each
sent, then the cost of committing a tiny checkpoint and of reading it back.

    python bench/checkpoint_io.py [--sizes 8M,256M,1G] [--small-files 1000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402
from spotrun import Checkpoint, S3Storage  # noqa: E402

from localcluster.cluster import Cluster  # noqa: E402
from localcluster.s3server import private_s3  # noqa: E402

# The SDK's transfer settings; the boto3 baseline gets the very same.
TRANSFER = {"multipart_threshold": 8 << 20, "multipart_chunksize": 8 << 20, "max_concurrency": 10}


def transfer_config() -> TransferConfig:
    return TransferConfig(**TRANSFER)  # type: ignore[arg-type]


def raw_client() -> Any:
    return boto3.client(
        "s3",
        config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 8, "mode": "standard"}, max_pool_connections=16
        ),
    )


def sdk_checkpoint(bucket: str, prefix: str) -> Checkpoint:
    return Checkpoint(S3Storage(bucket, prefix, transfer_config=transfer_config()), attempt=1, keep=3)


# ----- one measurement, in a child process ----------------------------------------------------------


def counted(client: Any) -> list[str]:
    """The HTTP requests `client` sends from now on (method names), appended as they go."""
    requests: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: requests.append(request.method))
    return requests


def measure(impl: str, op: str, source: Path, bucket: str, prefix: str, target: Path) -> dict[str, Any]:
    started = time.perf_counter()
    if impl == "sdk":
        cp = sdk_checkpoint(bucket, prefix)
        assert isinstance(cp.storage, S3Storage)
        requests = counted(cp.storage.client)
        if op == "save":
            cp.save(source)
        else:
            target.mkdir(parents=True, exist_ok=True)
            assert cp.restore(target) is not None
    else:
        client, config = raw_client(), transfer_config()
        requests = counted(client)
        files = sorted(p for p in source.rglob("*") if p.is_file())
        if op == "save":
            if impl == "boto3":
                for path in files:
                    client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(source)}", Config=config)
            else:  # boto3-threads: what a careful user would write for many files
                with ThreadPoolExecutor(10) as pool:
                    list(
                        pool.map(
                            lambda p: client.upload_file(
                                str(p), bucket, f"{prefix}/{p.relative_to(source)}", Config=config
                            ),
                            files,
                        )
                    )
        else:
            keys = [f"{prefix}/{p.relative_to(source)}" for p in files]

            def fetch(key: str) -> None:
                out = target / key[len(prefix) + 1 :]
                out.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(out), Config=config)

            if impl == "boto3":
                for key in keys:
                    fetch(key)
            else:
                with ThreadPoolExecutor(10) as pool:
                    list(pool.map(fetch, keys))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss": peak, "requests": len(requests)}


def child_main(argv: list[str]) -> None:
    impl, op, source, bucket, prefix, target = argv
    print(json.dumps(measure(impl, op, Path(source), bucket, prefix, Path(target))))


def run_child(*args: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ----- the cases -----------------------------------------------------------------------------------


def make_case(root: Path, name: str) -> tuple[Path, int]:
    source = root / name
    source.mkdir(parents=True)
    if name.startswith("files-"):
        count = int(name.split("-")[1])
        for i in range(count):
            (source / f"shard-{i // 100:02d}" / f"part-{i:05d}.bin").parent.mkdir(exist_ok=True)
            (source / f"shard-{i // 100:02d}" / f"part-{i:05d}.bin").write_bytes(os.urandom(256 << 10))
        return source, count * (256 << 10)
    size = parse_size(name)
    with (source / "model.bin").open("wb") as f:
        block = os.urandom(8 << 20)
        for _ in range(size // len(block)):
            f.write(block)
    return source, size


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def tiny_commit_cost(bucket: str, prefix: str, commits: int) -> dict[str, float]:
    cp = sdk_checkpoint(bucket, prefix)
    storage = cp.storage
    assert isinstance(storage, S3Storage)
    requests = counted(storage.client)
    timings, counts = [], []
    for step in range(commits):
        before = len(requests)
        started = time.perf_counter()
        cp.write(str(step).encode(), step=step)
        timings.append(time.perf_counter() - started)
        counts.append(len(requests) - before)
    steady = slice(cp.keep + 1, None)  # after the first commit's sweep, once retention deletes
    reader = Checkpoint(S3Storage(bucket, prefix, transfer_config=transfer_config()), attempt=2)
    assert isinstance(reader.storage, S3Storage)
    read_requests = counted(reader.storage.client)
    started = time.perf_counter()
    assert reader.read() == str(commits - 1).encode()
    read_ms = (time.perf_counter() - started) * 1000
    return {
        "read_ms": read_ms,
        "read_requests": len(read_requests),
        "first_ms": timings[0] * 1000,
        "first_requests": counts[0],
        "steady_ms": 1000 * sum(timings[steady]) / len(timings[steady]),
        "steady_requests": sum(counts[steady]) / len(counts[steady]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8M,256M,1G")
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    parser.add_argument("--state-dir", type=Path, default=None, help="the local cluster (default .localcluster)")
    args = parser.parse_args()

    with s3_server(args.state_dir) as server_env:
        run(args, server_env)


@contextlib.contextmanager
def s3_server(state_dir: Path | None) -> Iterator[dict[str, str]]:
    """The local cluster's S3 endpoint and bucket, or a private versitygw's for this run."""
    cluster = Cluster(state_dir)
    if cluster.running():
        yield cluster.env_vars()
        return
    with contextlib.ExitStack() as stack:
        try:  # only the server's start: an error of the benchmark itself passes as it is
            env = stack.enter_context(private_s3("bench"))
        except RuntimeError as err:
            raise SystemExit(f"no S3 server: start the local cluster (`make up`), or: {err}") from None
        os.environ.update(env)
        yield env


def run(args: argparse.Namespace, server_env: dict[str, str]) -> None:
    env = {**os.environ, **server_env}
    os.environ.update(server_env)
    bucket = env["LOCALCLUSTER_BUCKET"]
    run_id = uuid.uuid4().hex[:8]
    cases = [s.strip() for s in args.sizes.split(",") if s.strip()] + [f"files-{args.small_files}"]

    print(f"checkpoint I/O against versitygw at {env['AWS_ENDPOINT_URL']}, TransferConfig {TRANSFER}")
    print(f"best of {args.repeat}; throughput in MiB/s; ratio = SDK / boto3 (above 1: SDK faster)\n")
    header = (
        f"{'case':>12} {'op':>8} {'SDK':>8} {'boto3':>8} {'ratio':>6}   {'SDK peak RSS':>12} {'boto3 peak RSS':>14}"
        f" {'RSS ratio':>9}   {'requests SDK':>12} {'boto3':>6}"
    )
    print(header)
    print("-" * len(header))
    work = Path(tempfile.mkdtemp(prefix="spotrun-bench-"))
    try:
        for case in cases:
            source, size = make_case(work / "src", case)
            impls = ["sdk", "boto3"] + (["boto3-threads"] if case.startswith("files-") else [])
            for op in ("save", "restore"):
                results: dict[str, dict[str, Any]] = {}
                for impl in impls:
                    best: dict[str, Any] | None = None
                    for n in range(args.repeat):
                        prefix = f"bench/{run_id}/{case}/{impl}"
                        if op == "save":
                            prefix += f"-{n}"
                        else:
                            prefix += "-0"
                        target = work / "dst" / f"{case}-{impl}-{op}-{n}"
                        result = run_child(impl, op, str(source), bucket, prefix, str(target), env=env)
                        shutil.rmtree(target, ignore_errors=True)
                        if best is None or result["seconds"] < best["seconds"]:
                            best = result
                    assert best is not None
                    results[impl] = best
                mib = size / (1 << 20)
                sdk, raw = mib / results["sdk"]["seconds"], mib / results["boto3"]["seconds"]
                rss = results["sdk"]["peak_rss"] / results["boto3"]["peak_rss"]
                print(
                    f"{case:>12} {op:>8} {sdk:8.1f} {raw:8.1f} {sdk / raw:6.2f}   "
                    f"{results['sdk']['peak_rss'] / 2**20:9.0f} MiB {results['boto3']['peak_rss'] / 2**20:11.0f} MiB"
                    f" {rss:9.2f}   {results['sdk']['requests']:12d} {results['boto3']['requests']:6d}"
                )
                if "boto3-threads" in results:
                    threaded = mib / results["boto3-threads"]["seconds"]
                    print(f"{'':>12} {'':>8} {'':>8} {threaded:8.1f} {sdk / threaded:6.2f}   (boto3 with 10 threads)")
            shutil.rmtree(source)
        cost = tiny_commit_cost(bucket, f"bench/{run_id}/tiny", commits=20)
        print(
            f"\ntiny checkpoint (the seed's integer): first commit {cost['first_ms']:.1f} ms in "
            f"{cost['first_requests']:.0f} requests; steady state {cost['steady_ms']:.1f} ms in "
            f"{cost['steady_requests']:.1f} requests (the manifest holding it, and retention's delete); "
            f"read by a new attempt in {cost['read_ms']:.1f} ms and {cost['read_requests']} requests "
            "(the listing, the manifest)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
