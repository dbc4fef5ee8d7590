"""A model-based test of the checkpoint protocol: the real `Checkpoint` under injected faults, checked after every step.

Hypothesis drives processes of a task through `tests.faults.FaultyStorage` over one storage
location (a directory or an S3 prefix, from the storage factory the test module passes, as in
`tests.protocol_cases`). The processes are what a TaskRun's pods run:

- a task writer per attempt (`start_attempt`); the older attempt's writer keeps running as a
  zombie, and may be killed, crash or be held mid-call;
- a second writer of the same attempt (`start_sidecar`): a `spotrun sync` sidecar, or a restarted
  process of that attempt;
- readers: a new Checkpoint that restores into a directory already holding the user's own files
  (`train.py`, `data/x`), or reads, or asks `prev_exists()`, `latest()`, `list()`;
- the task rewriting a file that a restore put in its directory, then dying (`task_rewrites`);
- a hostile or broken writer of the prefix (`tests.hostile`).

`GangMachine` drives a 2-rank gang the same way, its ranks on threads of their own.

The model (`Model`) learns from the storage journal which manifests landed and who deleted what;
it knows each checkpoint's files from the call that committed it. After every step it checks:

1. A restore or read returns the newest checkpoint that is intact (as committed, and not
   tampered with), or an older intact one only when the newer ones are corrupt: never torn,
   partial or foreign (hostile) bytes. The restored tree is compared with the model's, path by
   path; a restore or read with no fault injected does not fail.
2. Nothing is written outside the target directory (the sandbox around it stays as it was); a
   file of the user's that Spotrun did not put there is never removed or changed (unless the
   checkpoint has a file at that very path); no restored file has a mode beyond 0o777.
3. A committed checkpoint among the newest `keep` ids keeps its manifest and every object it
   names. Retention may delete the rest, of its own attempt or earlier; ids of outside deletes
   (a DELETE_RANDOM fault) keep their place in the ranking, as the SDK could not know of them.
4. Every failure is a `spotrun.SpotrunError`, never a raw Python error (the harness's own `Crash`
   aside, and only where a crash was injected).
5. Within one attempt, id order is commit order: a commit returns an id above every id of its
   attempt that was committed before it started and is still there (the SDK takes ids at commit
   time, above the attempt's highest committed one). A gang's collective save with no fault
   injected commits, on every rank, whatever failed before it.

A violation raises `Violation` with the invariant's number, and hypothesis shrinks the run and
prints it as a program of rule calls. `run()` runs a machine with a seed it prints, and reports
examples, steps and faults; `HYPOTHESIS_PROFILE` chooses the profile (`ci` or `soak`) and
`SPOTRUN_HARNESS_SEED` a seed to reproduce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from spotrun import (
    Checkpoint,
    CheckpointInfo,
    CheckpointUsageError,
    NoIntactCheckpointError,
    SpotrunError,
    _checkpoint,
    _gang,
)
from spotrun._manifest import id_of_manifest_key, manifest_key, parse_id
from spotrun._storage import Storage

from tests.faults import NO_FAULTS, Crash, Fault, FaultyStorage, Injection, Journal, Plan, Tally
from tests.hostile import HOSTILE, Hostile, HostileAct, Target, hostile_acts, newest_of

StorageFactory = Callable[[Path], Storage]  # a handle on a new, empty location (given a scratch directory)

KEEPS = (2, 3)
POOL = ("model.bin", "state/step", "data/y", "train.py", "opt/a", "opt/b")  # paths a checkpoint's files take
EMPTY_DIR = "logs/"  # in `changes`: an empty directory of the saved tree
USER_FILES = {"train.py": b"print('training')\n", "data/x": b"the user's own data\n"}
INLINE_MAX = 24  # small, so that small checkpoints go inside their manifest and the rest to data/
OP_TIMEOUT = 120.0  # seconds a call may run before the test calls it hung
COMMIT_KINDS = ("write", "stream", "file", "dir", "sync")
PROBES = ("read", "prev_exists", "latest", "list")
REWRITES = ("same-size", "longer", "shorter", "delete", "add-own-file")
WORKDIRS = 2


# ----- configuration ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """What the machine may do. Every part is on by default; `SPOTRUN_HARNESS_WITHOUT` (a comma
    list of field names) turns parts off, so that a defect found by one part does not hide what
    another finds, and `SPOTRUN_HARNESS_WITH=coarse_mtimes` turns on the one that is off."""

    user_files: bool = True  # restore directories hold the user's own files
    rewrites: bool = True  # the task rewrites restored files in place
    hostile: bool = True  # a hostile writer of the prefix
    sidecars: bool = True  # a second writer of the same attempt
    faults: bool = True  # injected storage faults
    holds: bool = True  # SLOW faults hold a process mid-call while others act
    coarse_mtimes: bool = False  # a same-size rewrite keeps its mtime (a filesystem of coarse timestamps)
    max_writers: int = 4
    max_attempt: int = 5
    gang_timeout: float = 1.0

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        flags: dict[str, Any] = dict(overrides)
        for name in filter(None, os.environ.get("SPOTRUN_HARNESS_WITHOUT", "").split(",")):
            flags[name.strip().replace("-", "_")] = False
        for name in filter(None, os.environ.get("SPOTRUN_HARNESS_WITH", "").split(",")):
            flags[name.strip().replace("-", "_")] = True
        unknown = set(flags) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown harness settings {sorted(unknown)}")
        return cls(**flags)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # Examples and steps per machine, tuned on a 2-core machine: see the test modules for the times.
    "ci": {
        "protocol": {"max_examples": 400, "stateful_step_count": 50},
        "gang": {"max_examples": 30, "stateful_step_count": 8},
    },
    "soak": {
        "protocol": {"max_examples": 3000, "stateful_step_count": 60},
        "gang": {"max_examples": 300, "stateful_step_count": 12},
    },
}


def profile_settings(machine: str, *, scale: float = 1.0) -> settings:
    """The settings of `machine` ("protocol" or "gang") under HYPOTHESIS_PROFILE (ci by default);
    `scale` shrinks the example count for a slower storage."""
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if profile not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={profile!r}: this harness knows {', '.join(PROFILES)}")
    chosen = PROFILES[profile][machine]
    return settings(
        max_examples=max(1, int(chosen["max_examples"] * scale)),
        stateful_step_count=chosen["stateful_step_count"],
        deadline=None,  # a step is many storage calls, and gangs wait out timeouts
        database=None,  # a run reproduces from its printed seed; nothing is written into the repository
        print_blob=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink, Phase.explain),
        suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
    )


# ----- trees of files -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tree:
    """A checkpoint's content as the model knows it: files (path -> bytes) and empty directories."""

    files: Mapping[str, bytes]
    dirs: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        shown = ", ".join(f"{p}={b[:12]!r}{'...' if len(b) > 12 else ''}" for p, b in sorted(self.files.items()))
        dirs = f" dirs={sorted(self.dirs)}" if self.dirs else ""
        return f"Tree({shown}{dirs})"


def read_tree(root: Path) -> Tree:
    """The files and empty directories under `root`, as `save(root)` commits them."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in filenames:
            files[(here / name).relative_to(root).as_posix()] = (here / name).read_bytes()
        if not dirnames and not filenames and here != root:
            dirs.add(here.relative_to(root).as_posix())
    return Tree(files, frozenset(dirs))


def files_with_modes(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` (Spotrun's staging directories left out): bytes and permission bits."""
    found: dict[str, tuple[bytes, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".spotrun-")]
        for name in filenames:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = (path.read_bytes(), stat.S_IMODE(path.lstat().st_mode))
    return found


def changes() -> st.SearchStrategy[dict[str, bytes | None]]:
    """Edits of a writer's saved directory: a path's new bytes, or None to delete it."""
    return st.dictionaries(st.sampled_from((*POOL, EMPTY_DIR)), st.none() | st.binary(max_size=40), max_size=3)


def plans(kinds: tuple[Fault, ...], *, most: int = 2, one_in: int = 3) -> st.SearchStrategy[Plan]:
    """No faults for most operations; for one in `one_in`, up to `most` faults at its first calls.
    It shrinks toward no faults."""
    injection = st.builds(Injection, at=st.integers(0, 10), fault=st.sampled_from(kinds), pick=st.integers(0, 40))
    faulty = st.lists(injection, min_size=1, max_size=most, unique_by=lambda i: i.at).map(lambda xs: Plan(tuple(xs)))
    return st.integers(0, one_in - 1).flatmap(lambda n: faulty if n == one_in - 1 else st.just(NO_FAULTS))


# ----- the model ------------------------------------------------------------------------------------------


class Violation(AssertionError):
    """An invariant of the protocol does not hold; the message says which and what happened."""

    NAMES: ClassVar[dict[int, str]] = {
        1: "a restore or read returns the newest intact checkpoint, whole",
        2: "nothing outside the target, no user file and no mode beyond 0o777 is touched",
        3: "retention never deletes a checkpoint among the newest `keep`",
        4: "every failure is a SpotrunError",
        5: "a commit's id is above its attempt's earlier commits; a fault-free collective save commits",
    }

    def __init__(self, number: int, message: str, trace: list[str] | None = None) -> None:
        recent = "\n  ".join((trace or [])[-25:])
        super().__init__(
            f"invariant {number} ({self.NAMES[number]}) violated: {message}"
            + (f"\nwhat happened (latest last):\n  {recent}" if recent else "")
        )
        self.number = number


def order(cid: str) -> tuple[int, int]:
    parsed = parse_id(cid)
    assert parsed is not None, cid
    return parsed


@dataclasses.dataclass
class Committed:
    """A checkpoint whose manifest a process of the task created: its files per rank as that
    process's call gave them, and the manifest's bytes (a hostile `setuid` rewrite replaces them)."""

    id: str
    parts: tuple[Tree, ...]
    manifest: bytes
    by: str
    step: int  # the machine step in which its manifest landed

    @property
    def attempt(self) -> int:
        return order(self.id)[0]

    def objects(self) -> dict[str, str]:
        """key -> sha256 of every object its manifest names (none for files kept in the manifest)."""
        return {f["key"]: f["sha256"] for f in json.loads(self.manifest)["files"] if f.get("key")}


@dataclasses.dataclass(frozen=True)
class View:
    """The storage at one moment: its keys, the ids of its manifests, and which committed
    checkpoints are intact there (manifest and every object as committed)."""

    keys: frozenset[str]
    manifests: frozenset[str]
    intact: frozenset[str]
    sound: frozenset[str]  # committed ids whose manifest is there as committed (their objects aside)


def _sha(data: bytes) -> str:
    import hashlib  # noqa: PLC0415 - only here

    return hashlib.sha256(data).hexdigest()


class Model:
    """What was committed, read from the journal of every storage call that took effect."""

    def __init__(self, inner: Storage, journal: Journal) -> None:
        self.inner = inner
        self.journal = journal
        self.committed: dict[str, Committed] = {}
        self.objects: dict[str, str] = {}  # key -> sha256 of the bytes last put there
        self.deleted: dict[str, tuple[str, bool, int]] = {}  # key -> (process, external, step) of its last delete
        self.ghosts: set[str] = set()  # ids whose manifest an outside delete removed: the SDK may still count them
        self.contents: dict[str, tuple[Tree, ...]] = {}  # process -> what its call in flight commits
        self.landed: dict[str, list[str]] = {}  # process -> ids whose manifests it created in its call in flight
        self.step = 0

    def absorb(self) -> None:
        for effect in self.journal.new():
            outside = effect.external or effect.process == HOSTILE
            if effect.method == "put":
                key = effect.keys[0]
                self.objects[key] = effect.sha256
                self.deleted.pop(key, None)
                cid = id_of_manifest_key(key)
                if cid and not outside and effect.process in self.contents and effect.body is not None:
                    self.committed[cid] = Committed(
                        cid, self.contents[effect.process], effect.body, effect.process, self.step
                    )
                    self.landed.setdefault(effect.process, []).append(cid)
                continue
            for key in effect.keys:
                self.objects.pop(key, None)
                self.deleted[key] = (effect.process, outside, self.step)
                cid = id_of_manifest_key(key)
                if cid and outside:
                    self.ghosts.add(cid)

    def look(self) -> View:
        keys = frozenset(key for key, _ in self.inner.list(""))
        manifests = frozenset(cid for key in keys if (cid := id_of_manifest_key(key)))
        sound = frozenset(c.id for c in self.committed.values() if self._sound(c, keys))
        intact = frozenset(
            cid
            for cid in sound
            if all(k in keys and self.objects.get(k) == sha for k, sha in self.committed[cid].objects().items())
        )
        return View(keys, manifests, intact, sound)

    def _sound(self, c: Committed, keys: frozenset[str]) -> bool:
        key = manifest_key(c.id)
        return key in keys and self.objects.get(key) == _sha(c.manifest)

    def allowed(self, before: View, after: View) -> tuple[list[Committed], Committed | None]:
        """The checkpoints a restore between `before` and `after` may return, newest first, and
        the newest intact throughout (none may be skipped for an older one)."""
        stable = [self.committed[c] for c in before.intact & after.intact if c in self.committed]
        floor = max(stable, key=lambda c: order(c.id), default=None)
        allowed = [
            self.committed[c]
            for c in before.intact | after.intact
            if c in self.committed and (floor is None or order(c) >= order(floor.id))
        ]
        return sorted(allowed, key=lambda c: order(c.id), reverse=True), floor

    def retention_violations(self, view: View, keep: int) -> list[str]:
        """Invariant 3: what is gone of a committed checkpoint among the newest `keep`."""
        ranked = sorted(view.manifests | self.ghosts, key=order, reverse=True)[:keep]
        problems = []
        for cid in ranked:
            c = self.committed.get(cid)
            if c is None or cid in self.ghosts:  # not committed, or gone by an outside hand: its data is garbage
                continue
            if manifest_key(cid) in view.keys and cid not in view.sound:  # its manifest tampered with: corrupt
                continue
            for key in [manifest_key(cid), *c.objects()]:
                if key in view.keys:
                    continue
                by, outside, step = self.deleted.get(key, ("nobody", False, -1))
                if outside:
                    continue
                problems.append(
                    f"checkpoint {cid} (committed by {c.by} at step {c.step}) ranks among the newest {keep} "
                    f"({', '.join(ranked)}), and its {key} is gone: deleted by {by} at step {step}"
                )
        return problems


# ----- processes ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: Any = None
    error: BaseException | None = None

    def __repr__(self) -> str:
        return f"raised {self.error!r}" if self.error is not None else f"returned {self.result!r}"


@dataclasses.dataclass
class Op:
    """A call in flight: what to check when it finishes, and the storage as it was when it began."""

    kind: str
    check: Callable[[Op, Outcome], None]
    started: int
    before: View


class Process:
    """A process of the task, or a reader: a Checkpoint over its own FaultyStorage.

    Its calls run on a thread of their own, one at a time, so that a call held at a SLOW fault
    leaves the process mid-call while the others act. The machine waits until the call finishes
    or is held: only one thread runs at a time, and a run is the same every time."""

    def __init__(self, name: str, attempt: int, storage: FaultyStorage, checkpoint: Checkpoint, role: str) -> None:
        self.name = name
        self.attempt = attempt
        self.storage = storage
        self.checkpoint = checkpoint
        self.role = role
        self.op: Op | None = None
        self.outcome: Outcome | None = None
        self.src: Path | None = None  # a writer's saved directory
        self._cond = threading.Condition()
        self._held = False
        self._kill = False
        self._finished = True
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return self.name

    @property
    def dead(self) -> bool:
        return self.storage.dead

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> bool:
        """In the process's thread, at a SLOW fault: waits until released; True to die there."""
        with self._cond:
            self._held = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._held)
            return self._kill

    def run(self, call: Callable[[], Any]) -> None:
        assert self._finished, f"{self.name} is busy"
        assert not self._held, f"{self.name} is held"
        self._finished = False
        self.outcome = None
        self._thread = threading.Thread(target=self._work, args=(call,), name=f"harness-{self.name}", daemon=True)
        self._thread.start()
        self._settle()

    def release(self, *, kill: bool) -> None:
        with self._cond:
            assert self._held, f"{self.name} is not held"
            self._held = False
            self._kill = kill
            self._cond.notify_all()
        self._settle()

    @property
    def finished(self) -> bool:
        return self._finished

    def _work(self, call: Callable[[], Any]) -> None:
        try:
            outcome = Outcome(result=call())
        except BaseException as err:
            outcome = Outcome(error=err)
        with self._cond:
            self.outcome = outcome
            self._finished = True
            self._cond.notify_all()

    def _settle(self) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished or self._held, timeout=OP_TIMEOUT):
                raise AssertionError(f"{self.name}'s call neither finished nor was held within {OP_TIMEOUT:.0f}s")
        if self._finished and self._thread is not None:
            self._thread.join()


# ----- the run's statistics -------------------------------------------------------------------------------


@dataclasses.dataclass
class RunStats:
    name: str
    tally: Tally = dataclasses.field(default_factory=Tally)
    examples: int = 0
    steps: int = 0
    ops: Counter[str] = dataclasses.field(default_factory=Counter)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        minutes = max(elapsed / 60, 1e-9)
        faults = ", ".join(f"{f.value} {n}" for f, n in sorted(self.tally.faults.items(), key=lambda x: x[0].value))
        return (
            f"{self.name}: {self.examples} examples, {self.steps} steps, {self.tally.calls} storage calls and "
            f"{self.tally.total} faults injected ({faults or 'none'}) in {elapsed:.1f}s: "
            f"{self.examples / minutes:.0f} examples/min, {self.steps / minutes:.0f} steps/min, "
            f"{self.tally.total / minutes:.0f} faults/min; operations: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        )


# ----- SDK settings for a run -----------------------------------------------------------------------------


@contextlib.contextmanager
def sdk_settings() -> Iterator[None]:
    """Small inline checkpoints (so that both kinds occur), nonces from a counter (so that a run
    is the same every time: storage keys, and so the order of listings, depend on them), and a
    gang's polling fast."""
    patches = [
        (vars(_checkpoint), "INLINE_MAX", INLINE_MAX),
        (vars(_checkpoint), "new_nonce", NONCES.next),
        (vars(_gang), "POLL_SECONDS", (0.01, 0.05)),
    ]
    saved = [(namespace, name, namespace[name]) for namespace, name, _ in patches]
    for namespace, name, value in patches:
        namespace[name] = value
    try:
        yield
    finally:
        for namespace, name, value in saved:
            namespace[name] = value


class _Nonces:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def reset(self) -> None:
        with self._lock:
            self._n = 0

    def next(self) -> str:
        with self._lock:
            self._n += 1
            return f"{self._n:08x}feed"  # unique in any prefix of 8 or more, as uuid4().hex[:12] is


NONCES = _Nonces()


# ----- the single-writer protocol machine ----------------------------------------------------------------


@dataclasses.dataclass
class Workdir:
    """A directory restores go into, on a volume that outlives attempts: the user's own files
    (`protected`: Spotrun did not put them there), and the checkpoint its last restore put there."""

    name: str
    path: Path
    protected: dict[str, bytes]
    restored: Committed | None = None
    busy: bool = False  # a held restore targets it


ALL_FAULTS = tuple(Fault)


class ProtocolMachine(RuleBasedStateMachine):
    """Writers of old and new attempts, sidecars, readers, rewrites and hostile writes, over one
    storage location; see the module's docstring for the invariants."""

    config: ClassVar[Config] = Config()
    stats: ClassVar[RunStats] = RunStats("protocol")

    def make_storage(self, scratch: Path) -> Storage:
        """A handle on a new, empty location; `machine_for` gives it."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        NONCES.reset()
        self.stats.examples += 1
        self.scratch = Path(tempfile.mkdtemp(prefix="spotrun-model-"))
        self.inner = self.make_storage(self.scratch)
        self.journal = Journal()
        self.model = Model(self.inner, self.journal)
        self.sandbox = self.scratch / "sandbox"
        self.dirs = self.sandbox / "outer" / "dirs"  # restores go three levels below the sandbox
        self.dirs.mkdir(parents=True)
        self.canaries: dict[str, tuple[bytes, int]] = {}
        for rel in ("canary", "outer/canary", "outer/dirs/canary"):
            (self.sandbox / rel).write_bytes(b"canary " + rel.encode())
            self.canaries[rel] = ((self.sandbox / rel).read_bytes(), 0o644)
            (self.sandbox / rel).chmod(0o644)
        self.workdirs = [self._workdir(f"w{i}") for i in range(WORKDIRS)]
        self.hostile = Hostile(self.inner, self.journal, self.sandbox)
        self.keep = 2
        self.attempt = 0
        self.writers: list[Process] = []
        self.readers: list[Process] = []  # readers held mid-call
        self.serial = 0
        self.clock = 1_700_000_000 * 10**9  # mtimes of the files the writers save, one second apart
        self.trace: list[str] = []

    def _workdir(self, name: str) -> Workdir:
        path = self.dirs / name
        path.mkdir()
        protected = dict(USER_FILES) if self.config.user_files else {}
        for rel, data in protected.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
            (path / rel).chmod(0o644)
        return Workdir(name, path, protected)

    def teardown(self) -> None:
        for process in self.writers + self.readers:
            if process.held:
                process.release(kill=True)
        with contextlib.suppress(Exception):
            keys = [key for key, _ in self.inner.list("")]
            if keys:
                self.inner.delete(keys)
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ----- helpers -------------------------------------------------------------------------------------

    def _note(self, line: str) -> None:
        self.trace.append(f"[{self.model.step}] {line}")

    def _violation(self, number: int, message: str) -> Violation:
        return Violation(number, message, self.trace)

    def _process(self, role: str, attempt: int, name: str) -> Process:
        storage = FaultyStorage(self.inner, name=name, tally=self.stats.tally, journal=self.journal)
        checkpoint = Checkpoint(storage, attempt=attempt, keep=self.keep, concurrency=1)
        process = Process(name, attempt, storage, checkpoint, role)
        storage.hold = lambda: self._may_hold() and process.hold()
        return process

    def _may_hold(self) -> bool:
        held = sum(p.held for p in self.writers + self.readers)
        return self.config.holds and held < 2

    def _plan(self, plan: Plan) -> Plan:
        if not self.config.faults:
            return NO_FAULTS
        if not self.config.holds:
            return Plan(tuple(i for i in plan.injections if i.fault is not Fault.SLOW))
        return plan

    def _begin(self, rule_name: str) -> None:
        self.model.step += 1
        self.stats.steps += 1
        self.stats.ops[rule_name] += 1

    def _start(
        self, process: Process, kind: str, call: Callable[[], Any], check: Callable[[Op, Outcome], None]
    ) -> None:
        """Runs `call` on `process`; checks it now, or when a held call is released and finishes."""
        self.model.landed[process.name] = []
        process.op = Op(kind, check, self.model.step, self.model.look())
        process.run(call)
        self._settle(process)

    def _settle(self, process: Process) -> None:
        self.model.absorb()
        if process.held:
            self._note(f"{process.name} is held in {process.op.kind if process.op else '?'}")
            if process.role == "reader" and process not in self.readers:
                self.readers.append(process)
            return
        op, outcome = process.op, process.outcome
        assert op is not None
        assert outcome is not None
        process.op = None
        if process in self.readers:
            self.readers.remove(process)
        fired = ", ".join(repr(i) for i in process.storage.fired)
        self._note(f"{process.name} {op.kind} {outcome}" + (f" (faults: {fired})" if fired else ""))
        if process.dead and process in self.writers:
            self.writers.remove(process)
        try:
            op.check(op, outcome)
        finally:
            self.model.contents.pop(process.name, None)

    def _check_error(self, process: Process, outcome: Outcome, what: str) -> None:
        """Invariant 4, and that a call with no fault injected does not fail."""
        error = outcome.error
        assert error is not None
        fired = {i.fault for i in process.storage.fired}
        if isinstance(error, Crash):
            if not fired & {Fault.CRASH_BEFORE, Fault.CRASH_AFTER, Fault.SLOW}:
                raise self._violation(4, f"{process.name}'s {what} crashed with no crash injected: {error!r}")
            return
        if not isinstance(error, SpotrunError):
            raise self._violation(
                4, f"{process.name}'s {what} raised {type(error).__module__}.{type(error).__qualname__}: {error}"
            ) from error
        if not fired - {Fault.SLOW}:
            raise self._violation(
                5 if what.startswith("commit") else 1,
                f"{process.name}'s {what} failed with no fault injected: {error!r}",
            ) from error

    # ----- writers --------------------------------------------------------------------------------------

    def _new_writer(self, role: str) -> Process:
        self.serial += 1
        name = f"{'task' if role == 'task' else 'sidecar'}{self.attempt}.{self.serial}"
        process = self._process(role, self.attempt, name)
        process.src = self.scratch / "src" / name
        process.src.mkdir(parents=True)
        self.writers.append(process)
        return process

    @initialize(keep=st.sampled_from(KEEPS))
    def setup(self, keep: int) -> None:
        """Attempt 1's task starts, with nothing to restore."""
        self.keep = keep
        self.attempt = 1
        writer = self._new_writer("task")
        self._note(f"keep={keep}; attempt 1: {writer.name} starts")

    @precondition(lambda self: self.attempt < self.config.max_attempt)
    @rule(restore_into=st.sampled_from((None, 0, 1)), plan=plans(ALL_FAULTS), zombies=st.booleans())
    def start_attempt(self, restore_into: int | None, plan: Plan, zombies: bool) -> None:
        """The operator starts the next attempt's pod, which restores first (into a workdir) or
        not. The older attempt's processes exit, or keep running as zombies (held ones do)."""
        self._begin("start_attempt")
        for old in self._idle_writers():
            if not zombies or len(self.writers) >= self.config.max_writers:
                self.writers.remove(old)
        self.attempt += 1
        writer = self._new_writer("task")
        zombie_names = [w.name for w in self.writers if w is not writer]
        self._note(
            f"attempt {self.attempt}: {writer.name} starts" + (f"; zombies {zombie_names}" if zombie_names else "")
        )
        if restore_into is not None:
            self._restore(writer, self.workdirs[restore_into], plan)

    @precondition(lambda self: self.config.sidecars and len(self.writers) < self.config.max_writers)
    @rule(restore_into=st.sampled_from((None, 0, 1)), plan=plans(ALL_FAULTS))
    def start_sidecar(self, restore_into: int | None, plan: Plan) -> None:
        """Another writer of the current attempt: a sync sidecar, or a restarted process of it."""
        self._begin("start_sidecar")
        writer = self._new_writer("sidecar")
        self._note(f"{writer.name} starts beside attempt {self.attempt}'s writers")
        if restore_into is not None:
            self._restore(writer, self.workdirs[restore_into], plan)

    def _idle_writers(self) -> list[Process]:
        return [w for w in self.writers if not w.held]

    def _current_task(self) -> Process | None:
        return next((w for w in self._idle_writers() if w.role == "task" and w.attempt == self.attempt), None)

    @precondition(lambda self: self._current_task() is not None)
    @rule(kind=st.sampled_from(COMMIT_KINDS), blob=st.binary(max_size=40), edits=changes(), plan=plans(ALL_FAULTS))
    def task_commits(self, kind: str, blob: bytes, edits: dict[str, bytes | None], plan: Plan) -> None:
        """The current attempt's task commits (see `commit`)."""
        self._begin("task_commits")
        writer = self._current_task()
        assert writer is not None
        self._commit(writer, kind, blob, edits, plan)

    @precondition(lambda self: bool(self._idle_writers()))
    @rule(
        pick=st.integers(0, 7),
        kind=st.sampled_from(COMMIT_KINDS),
        blob=st.binary(max_size=40),
        edits=changes(),
        plan=plans(ALL_FAULTS),
    )
    def commit(self, pick: int, kind: str, blob: bytes, edits: dict[str, bytes | None], plan: Plan) -> None:
        """A writer (the task, a sidecar, a zombie) commits: bytes (`write`), a stream, a file, its
        directory, or an incremental `sync_directory` of it (after `edits`)."""
        self._begin("commit")
        self._commit(self._idle_writers()[pick % len(self._idle_writers())], kind, blob, edits, plan)

    def _commit(self, writer: Process, kind: str, blob: bytes, edits: dict[str, bytes | None], plan: Plan) -> None:
        cp = writer.checkpoint
        call: Callable[[], Any]
        if kind == "write":
            tree = Tree({_checkpoint.BYTES_NAME: blob})
            call = lambda: cp.write(blob)  # noqa: E731
        elif kind == "stream":
            tree = Tree({_checkpoint.BYTES_NAME: blob})
            call = lambda: cp.save(io.BytesIO(blob))  # noqa: E731
        elif kind == "file":
            assert writer.src is not None
            source = writer.src.parent / f"{writer.name}.file" / "model.bin"
            source.parent.mkdir(exist_ok=True)
            self._write(source, blob)
            tree = Tree({"model.bin": blob})
            call = lambda: cp.save(source)  # noqa: E731
        else:
            assert writer.src is not None
            src = writer.src
            self._edit(src, edits)
            tree = read_tree(src)
            call = (lambda: cp.sync_directory(src)) if kind == "sync" else (lambda: cp.save(src))
        self.model.contents[writer.name] = (tree,)
        writer.storage.arm(self._plan(plan))
        self._start(
            writer, f"commit ({kind} {tree!r})", call, lambda op, outcome: self._check_commit(writer, op, outcome)
        )

    def _write(self, path: Path, data: bytes) -> None:
        """Writes a file the way a training loop does, with an mtime one second after the last;
        with `coarse_mtimes`, a same-size rewrite keeps the old mtime (one clock tick)."""
        old = path.stat() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if self.config.coarse_mtimes and old is not None and old.st_size == len(data):
            os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
            return
        self.clock += 10**9
        os.utime(path, ns=(self.clock, self.clock))

    def _edit(self, src: Path, edits: dict[str, bytes | None]) -> None:
        for rel, data in sorted(edits.items()):
            if rel == EMPTY_DIR:
                (src / rel).mkdir(exist_ok=True) if data is not None else shutil.rmtree(src / rel, ignore_errors=True)
                continue
            path = src / rel
            if data is not None:
                self._write(path, data)
                continue
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a directory emptied by it goes too (not empty: stays)
                if path.parent != src:
                    path.parent.rmdir()

    def _check_commit(self, writer: Process, op: Op, outcome: Outcome) -> None:
        op_landed = self.model.landed.get(writer.name, [])
        if outcome.error is not None:
            self._check_error(writer, outcome, "commit")
            return
        info = outcome.result
        assert isinstance(info, CheckpointInfo)
        committed = self.model.committed.get(info.id)
        if info.id not in op_landed or committed is None or committed.by != writer.name:
            raise self._violation(
                1,
                f"{writer.name}'s commit returned {info.id}, whose manifest it did not create (it created {op_landed})",
            )
        # Invariant 5: ids of this attempt committed before this call began, and still there, are lower.
        after = self.model.look()
        higher = sorted(
            c.id
            for c in self.model.committed.values()
            if c.attempt == writer.attempt
            and c.step < op.started
            and c.id in op.before.manifests
            and c.id in after.manifests
            and order(c.id) > order(info.id)
        )
        if higher:
            raise self._violation(
                5,
                f"{writer.name} committed {info.id} after {', '.join(higher)} of its attempt had been committed "
                f"(and is still there): its newer checkpoint ranks below older ones",
            )

    # ----- releasing held calls --------------------------------------------------------------------------

    def _held(self) -> list[Process]:
        return [p for p in self.writers + self.readers if p.held]

    @precondition(lambda self: bool(self._held()))
    @rule(pick=st.integers(0, 7), kill=st.booleans())
    def release(self, pick: int, kill: bool) -> None:
        """A held call goes on (or its process is killed there)."""
        self._begin("release")
        process = self._held()[pick % len(self._held())]
        self._note(f"{process.name} {'is killed' if kill else 'goes on'}")
        process.release(kill=kill)
        self._settle(process)

    # ----- readers ---------------------------------------------------------------------------------------

    @rule(
        into=st.sampled_from((0, 1, "fresh")),
        plan=plans(ALL_FAULTS),
        if_corrupt=st.sampled_from(_checkpoint.IF_CORRUPT),
    )
    def restore(self, into: int | str, plan: Plan, if_corrupt: str) -> None:
        """A new process (the next attempt's pod, `spotrun restore`) restores into a workdir or a
        new empty directory."""
        self._begin("restore")
        if isinstance(into, int):
            workdir = self.workdirs[into]
        else:
            self.serial += 1
            path = self.dirs / f"fresh-{self.serial}"
            path.mkdir()
            workdir = Workdir(path.name, path, {})
        self.serial += 1
        reader = self._process("reader", max(1, self.attempt), f"reader{self.serial}")
        reader.checkpoint.if_corrupt = if_corrupt
        self._restore(reader, workdir, plan)

    def _restore(self, process: Process, workdir: Workdir, plan: Plan) -> None:
        if workdir.busy:  # a held restore is in it: two restores into one directory at once is no use
            self._note(f"{process.name} does not restore into {workdir.name}: a held restore is in it")
            return
        before = files_with_modes(workdir.path)
        workdir.busy = True
        process.storage.arm(self._plan(plan))

        def check(op: Op, outcome: Outcome) -> None:
            workdir.busy = False
            self._check_restore(process, workdir, before, op, outcome)

        self._start(process, f"restore into {workdir.name}", lambda: process.checkpoint.restore(workdir.path), check)

    def _check_restore(
        self, process: Process, workdir: Workdir, before: dict[str, tuple[bytes, int]], op: Op, outcome: Outcome
    ) -> None:
        after = self.model.look()
        allowed, floor = self.model.allowed(op.before, after)
        now = files_with_modes(workdir.path)
        leftovers = sorted(p.name for p in workdir.path.iterdir() if p.name.startswith(".spotrun-"))
        if leftovers:
            raise self._violation(2, f"{process.name}'s restore left {leftovers} in {workdir.name}")
        if outcome.error is not None or outcome.result is None:
            if outcome.error is not None:
                if not (isinstance(outcome.error, NoIntactCheckpointError) and floor is None):
                    self._check_error(process, outcome, "restore")
            elif floor is not None:
                raise self._violation(1, f"{process.name}'s restore found nothing, though {floor.id} is intact")
            if now != before:
                raise self._violation(
                    2, f"{process.name}'s restore {outcome} and changed {workdir.name}: {_diff(before, now)}"
                )
            return
        if Path(outcome.result) != workdir.path:
            raise self._violation(1, f"{process.name} restored into {outcome.result}, not {workdir.path}")

        def extra(c: Committed) -> list[str]:
            """Files new or changed in the workdir that are neither `c`'s nor the user's."""
            files = c.parts[0].files
            return sorted(
                rel
                for rel, (data, _) in now.items()
                if rel not in files and rel not in workdir.protected and before.get(rel, (None, 0))[0] != data
            )

        # A checkpoint whose objects were damaged since, and whose files the workdir held already
        # (untouched): a restore that checks them against its manifest need download nothing.
        allowed += [
            c
            for c in self.model.committed.values()
            if c.id in op.before.sound | after.sound
            and c not in allowed
            and (floor is None or order(c.id) >= order(floor.id))
            and all(before.get(rel, (None, 0))[0] == data for rel, data in c.parts[0].files.items())
        ]
        whole = [c for c in allowed if _holds_tree(now, c.parts[0], workdir.path)]
        matches = [c for c in whole if not extra(c)]
        if not matches:
            newest = f"the newest intact checkpoint is {floor.id}" if floor else "no checkpoint is intact throughout"
            foreign = self._foreign(now, before)
            if foreign:
                raise self._violation(1, f"{process.name}'s restore into {workdir.name} wrote {foreign}; {newest}")
            if whole:
                raise self._violation(
                    2,
                    f"{process.name}'s restore of {whole[0].id} into {workdir.name} also wrote {extra(whole[0])}, "
                    f"which are no files of it",
                )
            expected = allowed[0] if allowed else None
            raise self._violation(
                1,
                f"{process.name}'s restore into {workdir.name} holds no intact checkpoint at or above "
                f"{floor.id if floor else 'none'} (allowed: {[c.id for c in allowed]}); "
                + (
                    f"against {expected.id} ({expected.parts[0]!r}): {_tree_diff(expected.parts[0], now)}"
                    if expected
                    else f"it holds {sorted(now)}"
                ),
            )
        restored = matches[0]
        files = restored.parts[0].files
        for rel, data in workdir.protected.items():
            if rel not in files and (rel not in now or now[rel][0] != data):
                raise self._violation(
                    2,
                    f"{process.name}'s restore of {restored.id} into {workdir.name} "
                    f"{'removed' if rel not in now else 'changed'} the user's own {rel}",
                )
        for rel, (_, mode) in now.items():
            if mode & ~0o777:
                raise self._violation(2, f"{process.name}'s restore left {workdir.name}/{rel} with mode {mode:#o}")
        workdir.protected = {rel: data for rel, data in workdir.protected.items() if rel not in files}
        workdir.restored = restored
        self._note(f"{workdir.name} holds {restored.id}")

    def _foreign(self, now: dict[str, tuple[bytes, int]], before: dict[str, tuple[bytes, int]]) -> str:
        """Which hostile manifest's files a restore wrote (new or changed), if any."""
        for cid, (what, files) in self.hostile.made.items():
            wrote = [
                rel for rel, data in files.items() if rel in now and now[rel][0] == data and before.get(rel) != now[rel]
            ]
            if wrote:
                return f"the files {wrote} of hostile manifest {cid} ({what})"
        return ""

    @rule(call=st.sampled_from(PROBES), plan=plans(ALL_FAULTS))
    def probe(self, call: str, plan: Plan) -> None:
        """A new process asks read(), prev_exists(), latest() or list()."""
        self._begin(f"probe:{call}")
        self.serial += 1
        reader = self._process("reader", max(1, self.attempt), f"reader{self.serial}")
        reader.storage.arm(self._plan(plan))
        method = getattr(reader.checkpoint, call)
        self._start(reader, call, method, lambda op, outcome: self._check_probe(reader, call, op, outcome))

    def _check_probe(self, reader: Process, call: str, op: Op, outcome: Outcome) -> None:
        after = self.model.look()
        allowed, floor = self.model.allowed(op.before, after)
        manifests = op.before.manifests | after.manifests
        result = outcome.result
        if outcome.error is not None:
            error = outcome.error
            if isinstance(error, CheckpointUsageError) and call == "read" and _some_multi_file(self, manifests, floor):
                return
            if isinstance(error, NoIntactCheckpointError) and floor is None:
                return
            self._check_error(reader, outcome, call)
            return
        if call == "read":
            fits = [c for c in allowed if _read_result(c.parts[0]) == result]
            if result is None and floor is None:
                return
            if not fits:
                foreign = [cid for cid, (_, files) in self.hostile.made.items() if result in files.values()]
                raise self._violation(
                    1,
                    f"{reader.name}'s read() returned {result!r}"
                    + (
                        f", a file of hostile manifest {foreign[0]} ({self.hostile.made[foreign[0]][0]})"
                        if foreign
                        else ""
                    )
                    + "; the intact checkpoints at or above "
                    f"{floor.id if floor else 'none'} hold {[(c.id, _read_result(c.parts[0])) for c in allowed]}",
                )
        elif call == "prev_exists":
            if result is False and floor is not None:
                raise self._violation(1, f"{reader.name}'s prev_exists() is False, though {floor.id} is intact")
            if result is True and not manifests:
                raise self._violation(1, f"{reader.name}'s prev_exists() is True, though no manifest exists")
        elif call == "latest":
            if result is None:
                if floor is not None:
                    raise self._violation(1, f"{reader.name}'s latest() is None, though {floor.id} is intact")
            elif result.id not in manifests or (floor is not None and order(result.id) < order(floor.id)):
                raise self._violation(
                    1, f"{reader.name}'s latest() is {result.id}; manifests {sorted(manifests)}, newest intact {floor}"
                )
        else:
            ids = [info.id for info in result]
            if ids != sorted(ids, key=order, reverse=True) or not set(ids) <= manifests:
                raise self._violation(1, f"{reader.name}'s list() gave {ids}; manifests are {sorted(manifests)}")
            missing = (op.before.intact & after.intact) - set(ids)
            if missing:
                raise self._violation(1, f"{reader.name}'s list() left out intact {sorted(missing)}")

    # ----- the task in its directory ----------------------------------------------------------------------

    def _rewritable(self) -> list[Workdir]:
        return [w for w in self.workdirs if w.restored is not None and not w.busy]

    @precondition(lambda self: self.config.rewrites and bool(self._rewritable()))
    @rule(which=st.integers(0, 1), pick=st.integers(0, 7), how=st.sampled_from(REWRITES))
    def task_rewrites(self, which: int, pick: int, how: str) -> None:
        """The task that restored into a workdir changes a restored file in place (or deletes
        it, or writes a file of its own), then dies: the next restore there must not trust it."""
        self._begin("task_rewrites")
        workdir = self._rewritable()[which % len(self._rewritable())]
        assert workdir.restored is not None
        paths = sorted(workdir.restored.parts[0].files)
        if how == "add-own-file" or not paths:
            rel = f"notes-{self.model.step}.txt"
            (workdir.path / rel).write_bytes(b"the task's own notes")
            workdir.protected[rel] = b"the task's own notes"
            self._note(f"the task wrote its own {workdir.name}/{rel}")
            return
        rel = paths[pick % len(paths)]
        path = workdir.path / rel
        if not path.is_file():
            return
        old = path.read_bytes()
        if how == "delete":
            path.unlink()
        else:
            new = {
                "same-size": bytes(b ^ 0x5A for b in old) or b"!",
                "longer": old + b"+more",
                "shorter": old[: len(old) // 2] if old else b"?",
            }[how]
            with path.open("r+b") as f:  # in place: the same inode, as a framework's save does
                f.write(new)
                f.truncate(len(new))
        self._note(f"the task rewrote {workdir.name}/{rel} ({how}) and died")

    # ----- hostile writers ---------------------------------------------------------------------------------

    @precondition(lambda self: self.config.hostile)
    @rule(act=hostile_acts(max_attempt=6))
    def hostile_write(self, act: HostileAct) -> None:
        self._begin("hostile")
        view = self.model.look()
        targets = [
            Target(c.id, c.manifest)
            for c in sorted(self.model.committed.values(), key=lambda c: order(c.id))
            if c.id in view.intact
        ]
        done, rewritten = self.hostile.act(act, targets, newest_of(sorted(view.manifests), max(1, self.attempt)))
        self.model.absorb()
        if rewritten is not None:
            self.model.committed[rewritten.id].manifest = rewritten.manifest
        self._note(f"hostile: {done}")

    # ----- invariants after every step ---------------------------------------------------------------------

    @invariant()
    def protocol_holds(self) -> None:
        self.model.absorb()
        view = self.model.look()
        problems = self.model.retention_violations(view, self.keep)
        if problems:
            raise self._violation(3, problems[0])
        self._check_sandbox()

    def _check_sandbox(self) -> None:
        """Invariant 2 everywhere: the sandbox outside the restore directories is as it was, the
        user's files are there, and no file has a mode beyond 0o777."""
        outside = {
            rel: entry
            for rel, entry in files_with_modes(self.sandbox).items()
            if not rel.startswith("outer/dirs/") or rel.count("/") == 2
        }
        if outside != self.canaries:
            raise self._violation(2, f"outside the restore directories: {_diff(self.canaries, outside)}")
        for workdir in self.workdirs:
            if workdir.busy:
                continue
            now = files_with_modes(workdir.path)
            for rel, data in workdir.protected.items():
                if rel not in now or now[rel][0] != data:
                    raise self._violation(
                        2, f"the user's own {workdir.name}/{rel} was {'removed' if rel not in now else 'changed'}"
                    )
            for rel, (_, mode) in now.items():
                if mode & ~0o777:
                    raise self._violation(2, f"{workdir.name}/{rel} has mode {mode:#o}")


def _holds_tree(now: dict[str, tuple[bytes, int]], tree: Tree, root: Path) -> bool:
    return all(rel in now and now[rel][0] == data for rel, data in tree.files.items()) and all(
        (root / d).is_dir() for d in tree.dirs
    )


def _tree_diff(tree: Tree, now: dict[str, tuple[bytes, int]]) -> str:
    parts = []
    for rel, data in sorted(tree.files.items()):
        if rel not in now:
            parts.append(f"{rel} missing")
        elif now[rel][0] != data:
            parts.append(f"{rel} is {now[rel][0][:20]!r}, not {data[:20]!r}")
    return "; ".join(parts) or "empty directories missing"


def _diff(before: Mapping[str, tuple[bytes, int]], after: Mapping[str, tuple[bytes, int]]) -> str:
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"gone {gone}, new {new}, changed {changed}"


def _read_result(tree: Tree) -> bytes | str | None:
    """What read() gives for a checkpoint of `tree`: its one file's bytes, None, or "usage-error"."""
    if not tree.files:
        return None
    if len(tree.files) > 1:
        return "usage-error"
    return next(iter(tree.files.values()))


def _some_multi_file(machine: ProtocolMachine, manifests: frozenset[str], floor: Committed | None) -> bool:
    """Whether a manifest read() may meet before an intact one names several files (read() calls
    that misuse, before verifying): a committed one of several files, or one that is no committed one."""
    for cid in manifests:
        if floor is not None and order(cid) < order(floor.id):
            continue
        c = machine.model.committed.get(cid)
        if c is None or len(c.parts[0].files) > 1:
            return True
    return False


# ----- a gang's machine ----------------------------------------------------------------------------------

GANG_FAULTS = (Fault.TRANSIENT, Fault.LOST_RESPONSE, Fault.CRASH_BEFORE, Fault.CRASH_AFTER)
RANKS = 2


def not_polling(method: str, key: str) -> bool:
    """A rank's calls that a plan counts: not its polls, whose number depends on timing."""
    if method == "get" and key.startswith(("manifests/", "parts/", _gang.AGREEMENTS)):
        return False
    return not (method == "list" and key.startswith("parts/"))


class GangMachine(RuleBasedStateMachine):
    """A 2-rank gang: collective saves with faults on either rank, and restarts as a new attempt's
    gang that reads its parts back. Ranks run on threads of their own, as a gang's pods do, and
    wait for each other up to `Config.gang_timeout`."""

    config: ClassVar[Config] = Config()
    stats: ClassVar[RunStats] = RunStats("gang")

    def make_storage(self, scratch: Path) -> Storage:
        """A handle on a new, empty location; `machine_for` gives it."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        NONCES.reset()
        self.stats.examples += 1
        self.scratch = Path(tempfile.mkdtemp(prefix="spotrun-gang-model-"))
        self.inner = self.make_storage(self.scratch)
        self.journal = Journal()
        self.model = Model(self.inner, self.journal)
        self.keep = 2
        self.attempt = 0
        self.saves = 0
        self.saved = False
        self.ranks: list[Process] = []
        self.trace: list[str] = []

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            keys = [key for key, _ in self.inner.list("")]
            if keys:
                self.inner.delete(keys)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _violation(self, number: int, message: str) -> Violation:
        return Violation(number, message, self.trace)

    def _begin(self, rule_name: str) -> None:
        self.model.step += 1
        self.stats.steps += 1
        self.stats.ops[rule_name] += 1

    def _new_gang(self) -> None:
        self.attempt += 1
        self.saved = False  # a restart comes after a save of this gang, or after a rank died
        self.ranks = []
        for rank in range(RANKS):
            name = f"gang{self.attempt}.rank{rank}"
            storage = FaultyStorage(
                self.inner, name=name, tally=self.stats.tally, journal=self.journal, counted=not_polling
            )
            checkpoint = Checkpoint(
                storage,
                attempt=self.attempt,
                keep=self.keep,
                concurrency=1,
                rank=rank,
                ranks=RANKS,
                gang_timeout=self.config.gang_timeout,
            )
            self.ranks.append(Process(name, self.attempt, storage, checkpoint, "rank"))
        self.trace.append(f"[{self.model.step}] attempt {self.attempt}'s gang starts")

    def _together(self, calls: list[Callable[[], Any]]) -> list[Outcome]:
        """Runs one call per rank, all at once, as the ranks' processes do."""
        outcomes: list[Outcome] = [Outcome() for _ in calls]

        def work(index: int) -> None:
            try:
                outcomes[index] = Outcome(result=calls[index]())
            except BaseException as err:
                outcomes[index] = Outcome(error=err)

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + OP_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            raise AssertionError(f"a rank's call did not return within {OP_TIMEOUT:.0f}s")
        return outcomes

    def _arm(self, plans: tuple[Plan, Plan]) -> None:
        for rank, plan in zip(self.ranks, plans, strict=True):
            rank.storage.arm(plan if self.config.faults else NO_FAULTS)

    def _check_errors(self, outcomes: list[Outcome], what: str) -> bool:
        """Invariant 4 on every rank; True when a fault fired on some rank."""
        any_fired = False
        for rank, outcome in zip(self.ranks, outcomes, strict=True):
            fired = {i.fault for i in rank.storage.fired}
            any_fired = any_fired or bool(fired)
            error = outcome.error
            if error is None:
                continue
            if isinstance(error, Crash):
                if not fired & {Fault.CRASH_BEFORE, Fault.CRASH_AFTER}:
                    raise self._violation(4, f"{rank.name}'s {what} crashed with no crash injected: {error!r}")
            elif not isinstance(error, SpotrunError):
                raise self._violation(
                    4, f"{rank.name}'s {what} raised {type(error).__module__}.{type(error).__qualname__}: {error}"
                ) from error
        return any_fired

    def _trace(self, what: str, outcomes: list[Outcome]) -> None:
        for rank, outcome in zip(self.ranks, outcomes, strict=True):
            fired = ", ".join(repr(i) for i in rank.storage.fired)
            self.trace.append(
                f"[{self.model.step}] {rank.name} {what} {outcome}" + (f" (faults: {fired})" if fired else "")
            )

    @initialize(keep=st.sampled_from(KEEPS))
    def setup(self, keep: int) -> None:
        self.keep = keep
        self._new_gang()

    def _alive(self) -> bool:
        return not any(rank.dead for rank in self.ranks)

    @precondition(_alive)
    @rule(blobs=st.tuples(st.binary(max_size=30), st.binary(max_size=30)), with_step=st.booleans())
    def save(self, blobs: tuple[bytes, bytes], with_step: bool) -> None:
        """Every rank saves its part of one checkpoint, with no fault: it must commit on every
        rank, whatever failed before (invariant 5)."""
        self._collective_save(blobs, with_step, (NO_FAULTS, NO_FAULTS))

    @precondition(_alive)
    @rule(
        blobs=st.tuples(st.binary(max_size=30), st.binary(max_size=30)),
        with_step=st.booleans(),
        on=st.sampled_from(range(RANKS)),
        injection=st.builds(Injection, at=st.integers(0, 8), fault=st.sampled_from(GANG_FAULTS)),
    )
    def save_with_a_fault(self, blobs: tuple[bytes, bytes], with_step: bool, on: int, injection: Injection) -> None:
        """A collective save with one fault at one rank's call: it may fail, never tear."""
        plans = tuple(Plan((injection,)) if rank == on else NO_FAULTS for rank in range(RANKS))
        self._collective_save(blobs, with_step, (plans[0], plans[1]))

    def _collective_save(self, blobs: tuple[bytes, bytes], with_step: bool, plans: tuple[Plan, Plan]) -> None:
        """Every rank saves its part of one checkpoint (write, with the same step or none)."""
        self._begin("collective_save")
        self.saves += 1
        self.saved = True
        step = self.saves if with_step else None
        parts = tuple(Tree({_checkpoint.BYTES_NAME: blob}) for blob in blobs)
        leader = self.ranks[0].name
        self.model.contents[leader] = parts
        self.model.landed[leader] = []
        self._arm(plans)
        outcomes = self._together(
            [
                functools.partial(rank.checkpoint.write, blob, step=step)
                for rank, blob in zip(self.ranks, blobs, strict=True)
            ]
        )
        self.model.absorb()
        self.model.contents.pop(leader, None)
        self._trace(f"save {step=}", outcomes)
        fired = self._check_errors(outcomes, "collective save")
        landed = self.model.landed.get(leader, [])
        for cid in landed:
            wrong = _wrong_parts(self.model.committed[cid], parts)
            if wrong:
                raise self._violation(1, f"the gang committed {cid} with {wrong}: a torn gang checkpoint")
        infos = [o.result for o in outcomes if o.error is None]
        if len({info.id for info in infos}) > 1:
            raise self._violation(5, f"the ranks' save returned different checkpoints: {[i.id for i in infos]}")
        for rank, info in zip(self.ranks, [o.result for o in outcomes], strict=True):
            if info is not None and info.id not in landed:
                raise self._violation(1, f"{rank.name}'s save returned {info.id}, which this save did not commit")
        if not fired and any(o.error is not None for o in outcomes):
            raise self._violation(
                5,
                "a collective save with no fault injected failed: "
                + "; ".join(f"{r.name} {o}" for r, o in zip(self.ranks, outcomes, strict=True)),
            )

    @precondition(lambda self: self.attempt < 3 * self.config.max_attempt and (self.saved or not self._alive()))
    @rule(plans=st.tuples(plans(GANG_FAULTS, most=1, one_in=3), plans(GANG_FAULTS, most=1, one_in=3)))
    def restart(self, plans: tuple[Plan, Plan]) -> None:
        """The operator restarts the whole gang as the next attempt; its ranks read their parts."""
        self._begin("restart")
        self._new_gang()
        self._arm(plans)
        before = self.model.look()
        outcomes = self._together([rank.checkpoint.read for rank in self.ranks])
        self.model.absorb()
        after = self.model.look()
        self._trace("read", outcomes)
        fired = self._check_errors(outcomes, "read")
        allowed, floor = self.model.allowed(before, after)
        if not fired and any(o.error is not None for o in outcomes):
            raise self._violation(
                1,
                "a gang's read with no fault injected failed: "
                + "; ".join(f"{r.name} {o}" for r, o in zip(self.ranks, outcomes, strict=True)),
            )
        results = [o.result for o in outcomes]
        for index, outcome in enumerate(outcomes):
            if outcome.error is not None or (outcome.result is None and floor is None):
                continue
            if not any(_read_result(c.parts[index]) == outcome.result for c in allowed):
                raise self._violation(
                    1,
                    f"{self.ranks[index].name}'s read() returned {outcome.result!r}; the intact checkpoints at "
                    f"or above {floor.id if floor else 'none'} hold "
                    f"{[(c.id, _read_result(c.parts[index])) for c in allowed]}",
                )
        if (
            all(o.error is None for o in outcomes)
            and not any(all(_read_result(c.parts[i]) == results[i] for i in range(RANKS)) for c in allowed)
            and not (floor is None and results == [None] * RANKS)
        ):
            raise self._violation(1, f"the ranks read parts of different checkpoints: {results}")

    @invariant()
    def retention_keeps_the_newest(self) -> None:
        problems = self.model.retention_violations(self.model.look(), self.keep)
        if problems:
            raise self._violation(3, problems[0])


def _wrong_parts(committed: Committed, parts: tuple[Tree, ...]) -> str:
    """What of a gang's manifest is not the parts the ranks saved in this call."""
    files = json.loads(committed.manifest)["files"]
    for rank, tree in enumerate(parts):
        mine = {(f["path"], f["sha256"]) for f in files if f.get("rank", 0) == rank}
        wanted = {(path, _sha(data)) for path, data in tree.files.items()}
        if mine != wanted:
            return f"rank {rank}'s part not the one it saved now"
    return ""


# ----- running a machine ----------------------------------------------------------------------------------


def machine_for(
    base: type[ProtocolMachine] | type[GangMachine], make_storage: StorageFactory, config: Config | None = None
) -> type[RuleBasedStateMachine]:
    """`base` over the locations `make_storage` gives, with `config` (from the environment by default)."""
    return type(
        f"{base.__name__}Run",
        (base,),
        {"make_storage": staticmethod(make_storage), "config": config or Config.from_env()},
    )


def run(machine: type[RuleBasedStateMachine], *, name: str, settings: settings, say: Callable[[str], None]) -> RunStats:
    """Runs `machine` with a seed it prints first (SPOTRUN_HARNESS_SEED, or a new one) and its
    statistics last; a failure carries the seed in a note."""
    seed = int(os.environ.get("SPOTRUN_HARNESS_SEED") or random.SystemRandom().randrange(2**32))
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    stats = RunStats(name)
    machine.stats = stats
    hypothesis.seed(seed)(machine)
    blob = os.environ.get("SPOTRUN_HARNESS_BLOB")
    if blob:
        hypothesis.reproduce_failure(hypothesis.__version__, blob.encode())(machine)
    config = getattr(machine, "config", None)
    say(
        f"{name}: seed {seed}, profile {profile} ({settings.max_examples} examples of up to "
        f"{settings.stateful_step_count} steps); rerun with SPOTRUN_HARNESS_SEED={seed} HYPOTHESIS_PROFILE={profile}"
        + (f"; {config}" if config != Config() else "")
    )
    try:
        with sdk_settings():
            run_state_machine_as_test(machine, settings=settings)
    except BaseException as err:
        err.add_note(f"{name}: seed {seed}; rerun with SPOTRUN_HARNESS_SEED={seed} HYPOTHESIS_PROFILE={profile}")
        raise
    finally:
        say(stats.summary())
    return stats
