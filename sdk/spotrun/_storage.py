"""The one seam to checkpoint storage: put, get, list and delete, with a create-only precondition.

Two implementations: `LocalStorage` (a directory) and `S3Storage` (boto3 and s3transfer). The
commit protocol in `_checkpoint` is written against `Storage` alone and is tested against both.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import errno
import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from spotrun._argtypes import file_in_the_way
from spotrun._errors import ConfigError, PermanentStorageError, StorageError, TransientStorageError


class NotFoundError(StorageError):
    """The object does not exist."""


class AlreadyExistsError(StorageError):
    """A create-only put found the key taken."""


class ConflictError(TransientStorageError):
    """S3's 409 ConditionalRequestConflict: a conditional write raced another on the key; retry it."""


class Storage(Protocol):
    """Keys are relative to the storage's root (a directory or an S3 prefix) and use `/`."""

    uri: str

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        """Writes `data`; with `create_only` it raises AlreadyExistsError instead of overwriting."""

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        """Writes everything `stream` yields, reading it once, front to back."""

    def put_file(self, key: str, source: Path) -> None:
        """Writes the file at `source`, reading it from disk as it goes (its parts in parallel on
        S3, as boto3's upload_file does: no part is held in memory whole)."""

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFoundError when it does not exist."""

    def get_stream(self, key: str, sink: IO[bytes]) -> None:
        """Writes the object into `sink` front to back; NotFoundError when it does not exist."""

    def get_file(self, key: str, target: Path, size: int | None = None) -> tuple[int, str]:
        """Writes the object to `target`; returns its size and sha256. NotFoundError when missing.
        `size`, when known (the manifest's), spares a request; an object of another size returns
        its own size, with a digest that need not be of the whole object."""

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`, in key order."""

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The distinct `prefix + NAME + "/"` groups directly under `prefix`."""

    def delete(self, keys: Sequence[str]) -> None:
        """Deletes the keys; missing ones are not an error."""

    def newest(self, prefix: str) -> float | None:
        """When the newest object or incomplete upload under `prefix` was written (seconds since the
        epoch), or None when there is none."""

    def list_uploads(self, prefix: str) -> builtins.list[tuple[str, str]]:
        """(key, upload id) of every upload under `prefix` that was begun and never completed: on S3
        its incomplete multipart uploads, whose parts no listing shows and which cost storage until
        aborted; in a directory, the temporary files of writes that were cut short."""

    def abort_upload(self, key: str, upload: str) -> None:
        """Discards an incomplete upload that `list_uploads` gave; one already gone is not an error."""


CHUNK = 1 << 20


def join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}" if root else key


class LocalStorage:
    """A directory. Create-only puts are atomic through link(2), which refuses an existing name."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = root
        self.uri = root.as_uri()
        self.read_only = read_only

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermanentStorageError(f"{self.uri} is read-only here (a resumeFrom source is never written)")

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """An OS error writing here (a path through a file, no permission, a read-only or full
        filesystem) as a PermanentStorageError saying what to fix."""
        try:
            yield
        except OSError as err:
            blocking = file_in_the_way(self.root)
            why = f"{blocking} is a file" if blocking is not None else err.strerror or err
            raise PermanentStorageError(
                f"cannot write checkpoints to {self.root}: {why} ({key}); point SPOTRUN_CHECKPOINT_URI "
                "at a directory this process can write",
                key=key,
            ) from err

    def _publish(self, tmp: Path, final: Path, create_only: bool) -> None:
        if create_only:
            try:
                os.link(tmp, final)
            except FileExistsError as err:
                raise AlreadyExistsError(f"{final} already exists", key=str(final)) from err
            finally:
                tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)

    def _tmp(self, final: Path) -> tuple[Path, IO[bytes]]:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        return Path(name), os.fdopen(fd, "wb")

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._check_writable()
        final = self._path(key)
        with self._writing(key):
            tmp, out = self._tmp(final)
            try:
                with out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._publish(tmp, final, create_only)

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        self._check_writable()
        final = self._path(key)
        with self._writing(key):
            tmp, out = self._tmp(final)
        try:
            with out:
                while chunk := stream.read(1 << 20):  # the source's own errors pass as they are
                    with self._writing(key):
                        out.write(chunk)
                with self._writing(key):
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._writing(key):
            self._publish(tmp, final, create_only=False)

    def put_file(self, key: str, source: Path) -> None:
        with source.open("rb") as stream:
            self.put_stream(key, stream)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as err:
            raise NotFoundError(f"{self.uri}/{key} does not exist", key=key) from err

    def get_stream(self, key: str, sink: IO[bytes]) -> None:
        try:
            with self._path(key).open("rb") as source:
                shutil.copyfileobj(source, sink, 1 << 20)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise NotFoundError(f"{self.uri}/{key} does not exist", key=key) from err

    def get_file(self, key: str, target: Path, size: int | None = None) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        try:
            with self._path(key).open("rb") as source, target.open("wb") as sink:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise NotFoundError(f"{self.uri}/{key} does not exist", key=key) from err
        return size, digest.hexdigest()

    def _under(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """(key, path) of every file whose key starts with `prefix`, the temporary ones of writes
        under way (`.tmp-*`) included."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        for path in _walk(self.root / base if base else self.root):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                yield key, path

    def list(self, prefix: str) -> list[tuple[str, int]]:
        found = []
        for key, path in self._under(prefix):
            if not path.name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    found.append((key, path.stat().st_size))
        return sorted(found)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        start = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            return sorted(f"{prefix}{entry.name}/" for entry in start.iterdir() if entry.is_dir())
        except FileNotFoundError:
            return []

    def delete(self, keys: Sequence[str]) -> None:
        self._check_writable()
        for key in keys:
            path = self._path(key)
            with contextlib.suppress(NotADirectoryError):  # under a file: nothing there to delete
                path.unlink(missing_ok=True)
            # Empty directories left behind are pruned up to the root, as S3 has none.
            parent = path.parent
            while parent != self.root and parent.is_relative_to(self.root):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def newest(self, prefix: str) -> float | None:
        times = []
        for _, path in self._under(prefix):
            with contextlib.suppress(FileNotFoundError):
                times.append(path.stat().st_mtime)
        return max(times, default=None)

    def list_uploads(self, prefix: str) -> builtins.list[tuple[str, str]]:
        return sorted((key, "") for key, path in self._under(prefix) if path.name.startswith(".tmp-"))

    def abort_upload(self, key: str, upload: str) -> None:
        self._check_writable()
        path = self._path(key)
        if path.name.startswith(".tmp-"):
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only when empty, as delete prunes
                path.parent.rmdir()


def _walk(start: Path) -> Iterator[Path]:
    if not start.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(start):
        for name in filenames:
            yield Path(dirpath) / name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on directories
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


# ----- S3 ------------------------------------------------------------------------------------

_MISSING_BUCKET = {"NoSuchBucket"}
_ACCESS = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412"}
# AWS answers a conditional write that races another on the same key with 409 ConditionalRequestConflict
# and asks that it be retried (its outcome then is 200 or 412); botocore does not retry it.
_CONFLICT = {"ConditionalRequestConflict", "409"}
CONFLICT_TRIES = 6


class S3Storage:
    """An S3 prefix, through boto3. Transient failures are retried by botocore's standard retry
    mode (exponential back-off with jitter, `max_attempts` tries); what is left is mapped onto
    PermanentStorageError (with what to fix) or TransientStorageError.

    Create-only puts send `If-None-Match: *`; a store that ignores the header overwrites instead,
    which the checkpoint ids (attempt, sequence, random nonce) make harmless for data, and only
    two writers of the same attempt could race on a manifest (see docs/checkpoints.md).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        client: Any = None,
        transfer_config: Any = None,
        read_only: bool = False,
        max_attempts: int = 8,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.read_only = read_only
        self.transfer_config = transfer_config or TransferConfig(
            multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=10
        )
        if client is None:
            # Custom endpoints (versitygw, MinIO, Ceph) rarely resolve bucket subdomains.
            style = os.environ.get("SPOTRUN_S3_ADDRESSING_STYLE") or (
                "path" if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") else "auto"
            )
            s3_options: Any = {"addressing_style": style}
            config = Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3=s3_options,
                max_pool_connections=max(16, self.transfer_config.max_request_concurrency),
                connect_timeout=10,
                read_timeout=60,
            )
            try:
                client = boto3.session.Session().client("s3", config=config)
            except ValueError as err:  # botocore: "Invalid endpoint: ..."
                raise ConfigError(
                    f"cannot reach S3 for {self.uri}: {err}; set AWS_ENDPOINT_URL to a URL such as "
                    "http://HOST:PORT, or unset it for AWS itself"
                ) from None
            except BotoCoreError as err:  # e.g. an unknown AWS_REGION or a broken AWS config file
                raise ConfigError(
                    f"cannot set up S3 for {self.uri}: {err}; check AWS_REGION and AWS_CONFIG_FILE"
                ) from None
        self.client = client

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermanentStorageError(f"{self.uri} is read-only here (a resumeFrom source is never written)")

    @contextlib.contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        where = f"s3://{self.bucket}/{self._key(key)}" if key else self.uri
        try:
            yield
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND or (status == "404" and code not in _MISSING_BUCKET):
                raise NotFoundError(f"{where} does not exist", bucket=self.bucket, key=key) from err
            if code in _PRECONDITION or status == "412":
                raise AlreadyExistsError(f"{where} already exists", bucket=self.bucket, key=key) from err
            if code in _CONFLICT or status == "409":
                raise ConflictError(
                    f"{action} {where} raced another conditional write (409)", bucket=self.bucket, key=key
                ) from err
            if code in _MISSING_BUCKET:
                raise PermanentStorageError(
                    f"{action} {where} failed: bucket {self.bucket!r} does not exist. Create it, or point "
                    "SPOTRUN_CHECKPOINT_URI (the TaskRun's spec.checkpoint.uri) at a bucket that does.",
                    bucket=self.bucket,
                    key=key,
                ) from err
            if code in _CREDENTIALS:
                raise PermanentStorageError(
                    f"{action} {where} failed: the S3 credentials were rejected ({code}). Check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the checkpoint secret) and AWS_ENDPOINT_URL.",
                    bucket=self.bucket,
                    key=key,
                ) from err
            if code in _ACCESS or status == "403":
                raise PermanentStorageError(
                    f"{action} {where} failed: access denied. Grant these credentials s3:GetObject, "
                    f"s3:PutObject, s3:DeleteObject and s3:ListBucket on {self.uri}/*.",
                    bucket=self.bucket,
                    key=key,
                ) from err
            raise TransientStorageError(
                f"{action} {where} failed after retries: {code or status}: {err}", bucket=self.bucket, key=key
            ) from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise PermanentStorageError(
                f"{action} {where} failed: no S3 credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(the TaskRun's checkpoint.secretRef) or give the pod an IAM role.",
                bucket=self.bucket,
                key=key,
            ) from err
        except (BotoConnectionError, BotoCoreError) as err:
            endpoint = getattr(self.client.meta, "endpoint_url", "")
            hint = ""
            if isinstance(err, EndpointConnectionError):
                hint = (
                    f"; check that the S3 endpoint {endpoint} is up and reachable from here "
                    "(AWS_ENDPOINT_URL, or AWS_REGION for AWS itself)"
                )
            raise TransientStorageError(
                f"{action} {where} failed after retries: {err} (endpoint {endpoint}){hint}",
                bucket=self.bucket,
                key=key,
            ) from err

    def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._check_writable()
        extra = {"IfNoneMatch": "*"} if create_only else {}
        for attempt in range(CONFLICT_TRIES):
            try:
                with self._errors("writing", key):
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
                return
            except ConflictError:
                if attempt == CONFLICT_TRIES - 1:
                    raise
            time.sleep(min(2**attempt * 0.05, 1) * (0.5 + random.random()))

    def put_stream(self, key: str, stream: IO[bytes]) -> None:
        self._check_writable()
        with self._errors("uploading", key):
            self.client.upload_fileobj(stream, self.bucket, self._key(key), Config=self.transfer_config)

    def put_file(self, key: str, source: Path) -> None:
        self._check_writable()
        with self._errors("uploading", key):
            self.client.upload_file(str(source), self.bucket, self._key(key), Config=self.transfer_config)

    def get(self, key: str) -> bytes:
        with self._errors("reading", key):
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body

    def get_stream(self, key: str, sink: IO[bytes]) -> None:
        with self._errors("downloading", key):
            self.client.download_fileobj(self.bucket, self._key(key), sink, Config=self.transfer_config)

    def get_file(self, key: str, target: Path, size: int | None = None) -> tuple[int, str]:
        """Parallel ranged GETs, each streamed into place with pwrite through a small buffer, while
        this thread hashes the parts in order as they complete, reading them back from the page
        cache: verifying costs one pass over memory alongside the transfer, not a second download,
        and memory stays at a buffer per worker whatever the object's size. With `size` (the
        manifest's) no HEAD is needed; an object of another size is reported with its own size
        (from Content-Range) before the rest is fetched."""
        if size is None:
            with self._errors("downloading", key):
                size = int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        if size == 0:
            data = self.get(key)
            return len(data), hashlib.sha256(data).hexdigest()
        expected = size
        chunk = int(self.transfer_config.multipart_chunksize)
        parts = -(-size // chunk)
        workers = max(1, int(self.transfer_config.max_request_concurrency))
        window = threading.Semaphore(workers + 2)  # parts in flight or written but not yet hashed
        done: dict[int, int] = {}  # part -> the object's size as its answer gave it
        arrived = threading.Condition()
        digest = hashlib.sha256()
        failed: builtins.list[BaseException] = []
        pin = _Pin()

        def fetch(index: int, fd: int) -> None:
            try:
                start = index * chunk
                total = self._ranged_get_into(key, start, min(expected, start + chunk) - 1, expected, fd, pin)
                with arrived:
                    done[index] = total
                    arrived.notify_all()
            except BaseException as err:
                pin.set(None)  # no part may wait for ever on a first part that failed
                with arrived:
                    failed.append(err)
                    arrived.notify_all()

        # The pool ends before the file closes: no part may pwrite into a descriptor reused since.
        with target.open("w+b") as out:  # read back to be hashed: opened for reading too
            fd = out.fileno()
            pool = concurrent.futures.ThreadPoolExecutor(workers)
            try:
                submitted = 0
                for index in range(parts):
                    while submitted < parts and window.acquire(blocking=False):
                        pool.submit(fetch, submitted, fd)
                        submitted += 1
                    with arrived:
                        arrived.wait_for(lambda i=index: i in done or bool(failed))  # type: ignore[misc]
                        if failed:
                            raise failed[0]
                        total = done.pop(index)
                    if total != expected:  # another object than the manifest's: no use fetching the rest
                        return total, ""
                    start, end = index * chunk, min(expected, (index + 1) * chunk)
                    while start < end:
                        piece = os.pread(fd, min(CHUNK, end - start), start)
                        digest.update(piece)
                        start += len(piece)
                    window.release()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return expected, digest.hexdigest()

    def _ranged_get_into(self, key: str, start: int, end: int, expected: int, fd: int, pin: _Pin) -> int:
        """Writes bytes start..end of the object at their offsets in `fd`; returns the object's size
        (Content-Range's total; -1 when the object is shorter than `start`, -2 when it was replaced
        since the first part's answer). Every part after the first asks for the first's ETag
        (If-Match), so that one download never mixes two versions of an object. botocore retries
        the request; a stream cut mid-body is retried here."""
        etag = None if start == 0 else pin.wait()
        for attempt in range(5):
            offset = start
            try:
                with self._errors("downloading", key):
                    answer: dict[str, Any] = {}
                    try:
                        answer = self.client.get_object(
                            Bucket=self.bucket,
                            Key=self._key(key),
                            Range=f"bytes={start}-{end}",
                            **({"IfMatch": etag} if etag else {}),
                        )
                    except ClientError as err:
                        code = str(err.response.get("Error", {}).get("Code", ""))
                        if code == "InvalidRange":
                            return -1
                        if code == "PreconditionFailed" and etag:
                            return -2
                        raise
                    finally:
                        if start == 0:
                            pin.set(answer.get("ETag"))  # also when it failed: the others go on unpinned
                    total = _range_total(answer.get("ContentRange"))
                    if total is not None and total != expected:
                        return total
                    body = answer["Body"]
                    while offset <= end and (piece := body.read(min(CHUNK, end + 1 - offset))):
                        os.pwrite(fd, piece, offset)
                        offset += len(piece)
                if offset == end + 1:
                    return expected
            except TransientStorageError:
                if attempt == 4:
                    raise
            time.sleep(min(2**attempt * 0.1, 2) * (0.5 + random.random()))
        raise TransientStorageError(
            f"downloading bytes {start}-{end} of {self._key(key)} kept coming back short", bucket=self.bucket, key=key
        )

    def list(self, prefix: str) -> list[tuple[str, int]]:
        found: builtins.list[Any] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors("listing", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                found.extend((item["Key"][strip:], int(item["Size"])) for item in page.get("Contents", []))
        return sorted(found)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        found: builtins.list[Any] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors("listing", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix), Delimiter="/"
            )
            for page in pages:
                found.extend(item["Prefix"][strip:] for item in page.get("CommonPrefixes", []))
        return sorted(found)

    def newest(self, prefix: str) -> float | None:
        times: builtins.list[float] = []
        with self._errors("listing", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                times.extend(item["LastModified"].timestamp() for item in page.get("Contents", []))
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                times.extend(item["Initiated"].timestamp() for item in page.get("Uploads", []))
        return max(times, default=None)

    def list_uploads(self, prefix: str) -> builtins.list[tuple[str, str]]:
        found: builtins.list[tuple[str, str]] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors("listing the incomplete uploads under", prefix):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                found.extend((item["Key"][strip:], str(item["UploadId"])) for item in page.get("Uploads", []))
        return sorted(found)

    def abort_upload(self, key: str, upload: str) -> None:
        self._check_writable()
        try:
            with self._errors("aborting the upload of", key):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload)
        except NotFoundError:  # NoSuchUpload: completed or aborted meanwhile
            pass

    def delete(self, keys: Sequence[str]) -> None:
        self._check_writable()
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            with self._errors("deleting", keys[start]):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            failed = answer.get("Errors") or []
            if failed:
                first = failed[0]
                raise TransientStorageError(
                    f"deleting {len(failed)} objects under {self.uri} failed: "
                    f"{first.get('Code')} {first.get('Message')}",
                    bucket=self.bucket,
                    key=str(first.get("Key", "")),
                )


def open_storage(uri: str, *, read_only: bool = False, **s3_options: Any) -> LocalStorage | S3Storage:
    """`s3://bucket/prefix`, `file:///path` or a plain path."""
    if not uri:
        raise ConfigError("no checkpoint location: set SPOTRUN_CHECKPOINT_URI to s3://BUCKET/PREFIX or a directory")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"checkpoint URI {uri!r} names no bucket; write it as s3://BUCKET/PREFIX")
        return S3Storage(parsed.netloc, parsed.path, read_only=read_only, **s3_options)
    if parsed.scheme == "file":
        return _local(uri, Path(unquote(parsed.path)), read_only)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ConfigError(f"checkpoint URI {uri!r}: unsupported scheme {parsed.scheme!r}; use s3://, file:// or a path")
    return _local(uri, Path(uri).expanduser().resolve(), read_only)


def _local(uri: str, root: Path, read_only: bool) -> LocalStorage:
    """A directory that exists or can be made: a path through a file can hold no checkpoints."""
    if (blocking := file_in_the_way(root)) is not None:
        raise ConfigError(
            f"checkpoint URI {uri!r} cannot hold checkpoints: {blocking} is a file; give a directory "
            "(SPOTRUN_CHECKPOINT_URI, or the path you typed)"
        )
    return LocalStorage(root, read_only=read_only)


class _Pin:
    """The ETag of an object as the first part of its download found it, for the other parts to ask for."""

    def __init__(self) -> None:
        self._set = threading.Event()
        self._etag: str | None = None

    def set(self, etag: str | None) -> None:
        if not self._set.is_set():
            self._etag = etag
            self._set.set()

    def wait(self) -> str | None:
        self._set.wait()
        return self._etag


def _range_total(content_range: str | None) -> int | None:
    """`bytes 0-99/1000` -> 1000; None when absent or unknown (`*`)."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def new_nonce() -> str:
    return uuid.uuid4().hex[:12]
