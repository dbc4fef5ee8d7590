"""The `spotrun` command: run tasks locally, inspect checkpoints, the directory mode, and TaskRuns on a
cluster (`_cluster_cli`; also installed as `kubectl-spotrun`, so `kubectl spotrun ...` works)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from spotrun import _argtypes, _cluster_cli, _preemption
from spotrun import _restore as restoring
from spotrun._checkpoint import Checkpoint
from spotrun._context import Settings
from spotrun._errors import (
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    SpotrunError,
    StorageError,
    TransientStorageError,
)
from spotrun._manifest import CheckpointInfo, manifest_key, parse_id
from spotrun._preemption import Notice
from spotrun._snapshot import ChangedError, Stamp, scan
from spotrun._storage import LocalStorage, open_storage
from spotrun._submit import convert

log = logging.getLogger("spotrun.cli")


def kubectl_main() -> int:
    """`kubectl spotrun ...`: kubectl runs the plugin `kubectl-spotrun` with the rest of the line."""
    return main(prog="kubectl spotrun")


def main(argv: Sequence[str] | None = None, prog: str = "spotrun") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("botocore", "boto3", "s3transfer", "urllib3"):  # "Found credentials in ...": not news
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = _parser(prog)
    args, extra = parser.parse_known_args(argv)
    if args.command not in ("run", "submit") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.handler(args, extra))
    except SpotrunError as err:
        print(f"spotrun: {err}", file=sys.stderr)
        # 2: what was typed or configured must change; 1: the same command may work later.
        return 1 if isinstance(err, TransientStorageError | CorruptCheckpointError) else 2
    except OSError as err:
        # The last resort, for what no check foresaw (a symlink loop, a path that turned unreadable):
        # one line naming the file and the reason. `run` is left out: its errors are the task's own,
        # whose traceback is the user's to read.
        if args.command == "run" or os.environ.get("SPOTRUN_DEBUG") == "1":
            raise
        print(f"spotrun: {_os_error(err)} (SPOTRUN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def _os_error(err: OSError) -> str:
    """`reason: file` (`reason: file -> other` for a rename), or the error as Python words it."""
    if not err.strerror or err.filename is None:
        return str(err)
    where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
    return f"{err.strerror}: {where}"


def _parser(prog: str = "spotrun") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Checkpointed tasks on preemptible capacity.")
    sub = parser.add_subparsers(dest="command", required=True)
    flags = _cluster_cli.cluster_flags()
    _cluster_cli.add_commands(sub, flags)

    raw = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser(
        "run",
        help="run a @spotrun.task (or workflow) locally, with its retries",
        formatter_class=raw,
        allow_abbrev=False,
    )
    run.add_argument("file", type=Path, help="the Python file that defines it")
    run.add_argument("task", help="the function's name")
    run.epilog = (
        "Arguments follow as --name value (or --name=value), converted by the function's annotations.\n\n"
        "examples:\n  spotrun run examples/checkpoint_seed.py checkpointing_example --n_iterations 10"
    )
    run.set_defaults(handler=_run)

    checkpoints = sub.add_parser(
        "checkpoints",
        help="list, show or download a run's checkpoints",
        formatter_class=raw,
        epilog=(
            "examples:\n  spotrun checkpoints list train -n ml\n  spotrun checkpoints show s3://bucket/runs/ml/train/\n"
            "  spotrun checkpoints download train ./restored"
        ),
    )
    cp_sub = checkpoints.add_subparsers(dest="checkpoints_command", required=True)
    where = "a TaskRun's name (its status.checkpoint.uri, read with kubectl), s3://BUCKET/PREFIX or a directory"
    listing = cp_sub.add_parser("list", help="committed checkpoints, newest first", parents=[flags])
    listing.add_argument("uri", metavar="NAME|URI", help=where)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_checkpoints_list)
    show = cp_sub.add_parser("show", help="one checkpoint's manifest (the newest by default)", parents=[flags])
    show.add_argument("uri", metavar="NAME|URI", help=where)
    show.add_argument("id", nargs="?", type=_checkpoint_id, help="checkpoint id, as `list` prints it")
    show.set_defaults(handler=_checkpoints_show)
    download = cp_sub.add_parser("download", help="download and verify a checkpoint into a directory", parents=[flags])
    download.add_argument("uri", metavar="NAME|URI", help=where)
    download.add_argument("dir", type=Path)
    download.add_argument(
        "--rank",
        type=_argtypes.whole(0),
        help="a gang's checkpoint: only this rank's part (default: every rank's, into DIR/rank-R)",
    )
    download.set_defaults(handler=_checkpoints_download)

    restore = sub.add_parser(
        "restore",
        help="directory mode: restore the newest checkpoint into DIR",
        formatter_class=raw,
        epilog="examples (in a TaskRun's pod, as its init container does):\n  spotrun restore /data",
    )
    restore.add_argument("dir", type=Path)
    restore.set_defaults(handler=_restore)
    sync = sub.add_parser(
        "sync",
        help="directory mode: commit DIR every S seconds, at once on an interruption notice, and on SIGTERM",
        formatter_class=raw,
        epilog="examples (in a TaskRun's pod, as its sidecar does):\n  spotrun sync /data --interval 60",
    )
    sync.add_argument("dir", type=Path)
    sync.add_argument("--interval", type=_argtypes.seconds, default=60.0, help="seconds between commits (default 60)")
    sync.set_defaults(handler=_sync)
    return parser


# ----- run ---------------------------------------------------------------------------------------


def _load(file: Path) -> ModuleType:
    if not file.is_file():
        raise ConfigError(f"{file} is not a file")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {file}: give a Python file (FILE.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        if err.filename != str(file):  # a module it imports: the user's traceback tells more
            raise
        raise ConfigError(f"{file} is not valid Python: line {err.lineno}: {err.msg}") from None
    return module


def _task_arguments(func: Callable[..., Any], extra: list[str]) -> dict[str, Any]:
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func)
    values: dict[str, Any] = {}
    items = list(extra)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            raise ConfigError(f"expected --name value, got {flag!r}")
        name, has_inline, inline = flag[2:].partition("=")
        name = name.replace("-", "_")
        if name not in signature.parameters:
            raise ConfigError(
                f"{func.__name__}() has no parameter {name!r}; it takes {', '.join(signature.parameters)}"
            )
        if has_inline:  # --name= is an empty value; --name=-1 a value that starts with '-'
            raw = inline
        elif items:
            raw = items.pop(0)
        else:
            raise ConfigError(f"--{name} needs a value")
        values[name] = convert(raw, hints.get(name, str), name)
    missing = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty and n not in values]
    if missing:
        raise ConfigError(f"{func.__name__}() needs {', '.join('--' + n for n in missing)}")
    return values


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    module = _load(args.file)
    func = getattr(module, args.task, None)
    if not callable(func):
        raise ConfigError(f"{args.file} defines no function {args.task!r}")
    result = func(**_task_arguments(func, extra))
    print(json.dumps(result, default=str))
    return 0


# ----- checkpoints -----------------------------------------------------------------------------


def _where(args: argparse.Namespace) -> str:
    """The checkpoint URI `args.uri` names: itself when it is a URI or a path (s3://, file://, or
    holding a '/' or starting with '.'), else the TaskRun of that name's status.checkpoint.uri: a
    directory named like a TaskRun is ./NAME. Sets args.uri to it, for messages."""
    given = str(args.uri)
    if "/" in given or given.startswith("."):
        return given
    taskrun = _cluster_cli.kubectl(args).taskrun(given)
    uri = ((taskrun.get("status") or {}).get("checkpoint") or {}).get("uri")
    if not uri:
        raise ConfigError(f"TaskRun {given} has no checkpoint URI yet (no operator has seen it, or none is configured)")
    args.uri = uri
    return str(uri)


def _checkpoint_id(text: str) -> str:
    """argparse `type=`: a checkpoint id as `list` prints it, checked with the SDK's own parser
    (anything else would be joined into a storage key: `../x` reached outside the store)."""
    if parse_id(text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a checkpoint id: give one as `spotrun checkpoints list` prints it (such as 000001-000003)"
        )
    return text


def _reader(args: argparse.Namespace) -> Checkpoint:
    return Checkpoint(open_storage(_where(args), read_only=True))


def _none_in(args: argparse.Namespace, checkpoint: Checkpoint) -> str:
    storage = checkpoint.storage
    missing = isinstance(storage, LocalStorage) and not storage.root.exists()
    return f"no committed checkpoints in {args.uri}" + (" (the directory does not exist)" if missing else "")


def _info_json(info: CheckpointInfo) -> dict[str, Any]:
    body = dataclasses.asdict(info)
    body["time"] = info.time.isoformat()
    return body


def _checkpoints_list(args: argparse.Namespace, extra: list[str]) -> int:
    reader = _reader(args)
    infos = reader.list()
    if args.json:
        print(json.dumps([_info_json(i) for i in infos], indent=2))
        return 0
    if not infos:
        print(_none_in(args, reader))
        return 0
    print(f"{'ID':15} {'ATTEMPT':>7} {'STEP':>8} {'FILES':>6} {'SIZE':>12}  TIME")
    for info in infos:
        step = "-" if info.step is None else str(info.step)
        print(f"{info.id:15} {info.attempt:>7} {step:>8} {info.files:>6} {info.size:>12}  {info.time.isoformat()}")
    return 0


def _checkpoints_show(args: argparse.Namespace, extra: list[str]) -> int:
    checkpoint = _reader(args)
    cid = args.id
    if cid is None:
        latest = checkpoint.latest()
        if latest is None:
            raise ConfigError(_none_in(args, checkpoint))
        cid = latest.id
    try:
        data = checkpoint.storage.get(manifest_key(cid))
    except SpotrunError as err:
        raise ConfigError(f"no checkpoint {cid!r} in {args.uri}: {err}") from None
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:  # a JSONDecodeError or UnicodeDecodeError too
        raise CorruptCheckpointError(f"checkpoint {cid} in {args.uri} has an unreadable manifest: {err}") from None
    print(json.dumps(_abbreviated(manifest), indent=2))
    return 0


def _abbreviated(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with each inline file's bytes (base64, up to 64 KiB) shown as their size:
    `checkpoints download` gives the bytes themselves."""
    for entry in manifest.get("files") or []:
        if isinstance(entry, dict) and isinstance(entry.get("inline"), str):
            entry["inline"] = f"({entry.get('size')} bytes, inline)"
    return manifest


def _checkpoints_download(args: argparse.Namespace, extra: list[str]) -> int:
    reader = _reader(args)
    latest = reader.latest()
    if latest is not None and latest.ranks > 1:
        # A gang's checkpoint: each rank's part into DIR/rank-R (or only --rank's, into DIR).
        ranks = range(latest.ranks) if args.rank is None else [args.rank]
        if args.rank is not None and not 0 <= args.rank < latest.ranks:
            raise ConfigError(f"--rank {args.rank}: checkpoint {latest.id} has ranks 0..{latest.ranks - 1}")
        with _new_directory(args.dir), _writing_into(args.dir):
            for rank in ranks:
                target = args.dir if args.rank is not None else args.dir / f"rank-{rank}"
                target.mkdir(exist_ok=True)
                part = Checkpoint(reader.storage, rank=rank, ranks=latest.ranks, resume_from=reader.resume_from)
                print(part.restore(target))
        return 0
    if args.rank not in (None, 0):
        raise ConfigError(f"--rank {args.rank}: the newest checkpoint in {args.uri} was written by one rank")
    if latest is None:
        print(_none_in(args, reader), file=sys.stderr)
        return 1
    with _new_directory(args.dir), _writing_into(args.dir):
        restored = reader.restore(args.dir)
    if restored is None:  # every checkpoint is corrupt: restore logged which, and why
        print(f"no intact checkpoint in {args.uri}", file=sys.stderr)
        return 1
    print(restored)
    return 0


def _make_directory(path: Path) -> None:
    if (blocking := _argtypes.file_in_the_way(path)) is not None:
        raise ConfigError(f"cannot use {path}: {blocking} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create {path}: {err.strerror}; give a directory you can write") from None


@contextlib.contextmanager
def _writing_into(path: Path) -> Iterator[None]:
    """An OS error on a file under `path`, the directory a download writes into, as a ConfigError
    naming it (errors reading a local store pass on: they name a file elsewhere)."""
    try:
        yield
    except (OSError, CheckpointError) as err:  # the SDK's restore gives an OSError as a CheckpointError's cause
        cause = err if isinstance(err, OSError) else err.__cause__
        name = cause.filename if isinstance(cause, OSError) else None
        if not isinstance(name, str | os.PathLike) or not Path(name).absolute().is_relative_to(path.absolute()):
            raise
        assert isinstance(cause, OSError)
        raise ConfigError(
            f"cannot write into {path}: {cause.strerror or cause}; give a directory you can write"
        ) from None


@contextlib.contextmanager
def _new_directory(path: Path) -> Iterator[None]:
    """Creates `path` (and its missing parents) when it does not exist, and removes what it created
    when the body fails or leaves it empty: a failed download leaves nothing behind."""
    created = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        created.append(directory)
    _make_directory(path)
    ok = False
    try:
        yield
        ok = any(path.iterdir())
    finally:
        if not ok and created:
            shutil.rmtree(path, ignore_errors=True)
            for directory in created[1:]:
                with contextlib.suppress(OSError):
                    directory.rmdir()


# ----- directory mode ----------------------------------------------------------------------------


def _restore(args: argparse.Namespace, extra: list[str]) -> int:
    checkpoint = Settings.from_env().checkpoint()
    _make_directory(args.dir)  # DIR is usually a volume's mount; else it is made
    restored = checkpoint.restore(args.dir)
    if restored is None:
        log.info("No checkpoint yet; %s starts empty", args.dir)
    else:
        log.info("Restored %s into %s", checkpoint.latest(), args.dir)
    return 0


def _sync(args: argparse.Namespace, extra: list[str]) -> int:
    """Commits DIR every --interval seconds when it changed, at once on an interruption notice
    (SPOTRUN_NOTICE_FILE), and once more on SIGTERM."""
    checkpoint = Settings.from_env().checkpoint()
    stop = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    _make_directory(args.dir)
    watching = _preemption.notice_file()
    # The notice last committed for: the same one is not committed again, but a new one is (a cordon
    # after an uncordon withdrew the first: its drain waits for a checkpoint newer than its notice).
    handled: Notice | None = None
    # What `spotrun restore` left is committed already; anything else is committed on the first tick.
    last = _snapshot(args.dir) if _holds_latest(checkpoint, args.dir) else None
    pending: Notice | None = None  # a notice whose commit failed: retried at the next poll, not interval
    while True:
        notice = pending or _wait_for_tick(stop, args.interval, watching, handled)
        if pending is not None:
            stop.wait(_preemption.poll_seconds())
        stopping = stop.is_set()
        if notice is not None:
            handled = notice
        current = _snapshot(args.dir)
        # On a notice, commit even an unchanged directory: a drain waits for a checkpoint newer than
        # the one at its notice (unchanged files are not uploaded again: the commit is its manifest).
        if current != last or notice is not None:
            try:
                info = checkpoint.sync_directory(args.dir)
            except (StorageError, CheckpointError) as err:  # a failed upload, or DIR kept changing
                if stopping:
                    raise
                pending = notice
                retry = _preemption.poll_seconds() if notice is not None else args.interval
                log.warning("Committing %s failed, retrying in %.1fs: %s", args.dir, retry, err)
                continue
            pending = None
            if notice is not None:
                log.info(
                    "Committed %s on interruption notice (%s): checkpoint %s, %d files, %d bytes",
                    args.dir,
                    notice.reason,
                    info.id,
                    info.files,
                    info.size,
                )
            else:
                log.info("Committed %s: checkpoint %s, %d files, %d bytes", args.dir, info.id, info.files, info.size)
            last = current
        if stopping:
            log.info("Stopped on SIGTERM after the final commit")
            return 0


def _wait_for_tick(
    stop: threading.Event, interval: float, notice_path: str | None, handled: Notice | None = None
) -> Notice | None:
    """Waits `interval` seconds or until SIGTERM sets `stop`; with `notice_path`, reads it every
    poll interval (0.5 s) and returns early with a notice as soon as one other than `handled` is there."""
    deadline = time.monotonic() + interval
    while True:
        if notice_path is not None:
            notice = _preemption.read_notice(notice_path)
            if notice is not None and notice != handled:
                return notice
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if stop.wait(left if notice_path is None else min(left, _preemption.poll_seconds())):
            return None


def _holds_latest(checkpoint: Checkpoint, root: Path) -> bool:
    """Whether `root` is exactly what restore put there: the newest checkpoint's entries, each
    provably as restore left it, and nothing else."""
    latest = checkpoint.latest()
    if latest is None:
        return False
    manifest = checkpoint._manifest(checkpoint.storage, latest.id)
    picture = _snapshot(root)
    if manifest is None or picture is None:
        return False
    paths = [f.path for f in manifest.files]
    record = restoring.read_record(root)
    return set(picture) == set(paths) and restoring.holds(root, record, latest.uri, latest.id, paths)


def _snapshot(root: Path) -> dict[str, Stamp] | None:
    """Each file's and link's identity, to tell whether `root` changed since the last commit; None
    while it changes under the scan (then it counts as changed: the commit takes its own snapshot)."""
    try:
        taken = scan(root)
    except ChangedError:
        return None
    return {rel: stamp for rel, _, stamp in taken.files} | {rel: stamp for rel, _, stamp in taken.links}
