"""The checkpoint protocol's model-based test: the real `Checkpoint` under injected faults, checked after every step.

Hypothesis drives processes of a task through `tests.faults.FaultyStorage` over one storage
location (a directory or an S3 prefix, from the storage factory the test module passes, as in
`tests.protocol_cases`). The processes are what a TaskRun's pods run:

- a task writer per attempt (`start_attempt`); the older attempt's writers exit, or keep
  running as zombies; any writer may crash, or be held mid-call while the others act;
- a second writer of the same attempt (`start_sidecar`): a `spotrun sync` sidecar, or a restarted
  process of that attempt;
- readers: a new Checkpoint that restores into a directory already holding the user's own files
  (`train.py`, `data/x`), or reads, or asks `prev_exists()`, `latest()`, `list()`;
- the task rewriting a file that a restore put in its directory, then dying (`task_rewrites`);
- a hostile or broken writer of the prefix (`tests.hostile`).

`tests.gang_model.GangMachine` drives a 2-rank gang the same way.

The model (`tests.checkpoint_model.Model`) learns from the storage journal which manifests landed and who deleted what;
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
   aside, and only where a crash was injected); a call with no fault injected does not fail.
5. Within one attempt, id order is commit order: a commit returns an id above every id of its
   attempt that was committed before it started and is still there (the SDK takes ids at commit
   time, above the attempt's highest committed one). (The gang's machine adds: a collective save
   with no fault injected commits on every rank, whatever failed before it.)

A violation raises `Violation` with the invariant's number and the latest events, and hypothesis
shrinks the run and prints it as a program of rule calls. `tests.harness.run()` runs a machine
with a seed it prints and reports examples, steps and faults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule
from spotrun import Checkpoint, CheckpointInfo, CheckpointUsageError, NoIntactCheckpointError, SpotrunError, _checkpoint

from tests.checkpoint_model import (
    Committed,
    Tree,
    Violation,
    diff,
    files_with_modes,
    holds_tree,
    order,
    read_result,
    read_tree,
    tree_diff,
)
from tests.faults import NO_FAULTS, Crash, Fault, FaultyStorage, Plan
from tests.harness import KEEPS, OnStorage, RunStats, plans
from tests.hostile import Hostile, HostileAct, Target, hostile_acts, newest_of
from tests.processes import Op, Outcome, Process

POOL = ("model.bin", "state/step", "data/y", "train.py", "opt/a", "opt/b")  # paths a checkpoint's files take
EMPTY_DIR = "logs/"  # in `changes`: an empty directory of the saved tree
USER_FILES = {"train.py": b"print('training')\n", "data/x": b"the user's own data\n"}
COMMIT_KINDS = ("write", "stream", "file", "dir", "sync")
PROBES = ("read", "prev_exists", "latest", "list")
REWRITES = ("same-size", "longer", "shorter", "delete", "add-own-file")
WORKDIRS = 2
ALL_FAULTS = tuple(Fault)


def changes() -> st.SearchStrategy[dict[str, bytes | None]]:
    """Edits of a writer's saved directory: a path's new bytes, or None to delete it."""
    return st.dictionaries(st.sampled_from((*POOL, EMPTY_DIR)), st.none() | st.binary(max_size=40), max_size=3)


@dataclasses.dataclass
class Workdir:
    """A directory restores go into, on a volume that outlives attempts: the user's own files
    (`protected`: Spotrun did not put them there), and the checkpoint its last restore put there."""

    name: str
    path: Path
    protected: dict[str, bytes]
    restored: Committed | None = None
    busy: bool = False  # a held restore targets it


class ProtocolMachine(OnStorage):
    """Writers of old and new attempts, sidecars, readers, rewrites and hostile writes, over one
    storage location; see the module's docstring for the invariants."""

    stats: ClassVar[RunStats] = RunStats("protocol")
    scratch_prefix: ClassVar[str] = "spotrun-model-"

    def __init__(self) -> None:
        super().__init__()
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
        self.touched = True  # the sandbox may have changed since its last check
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
        super().teardown()

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
        self.model.attempts[name] = attempt
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
        if info.id not in op_landed:  # (its id may be another's since: an outside delete frees an id)
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
            self.touched = True
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
                    2, f"{process.name}'s restore {outcome} and changed {workdir.name}: {diff(before, now)}"
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
        whole = [c for c in allowed if holds_tree(now, c.parts[0], workdir.path)]
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
                    f"against {expected.id} ({expected.parts[0]!r}): {tree_diff(expected.parts[0], now)}"
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
            fits = [c for c in allowed if read_result(c.parts[0]) == result]
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
                    f"{floor.id if floor else 'none'} hold {[(c.id, read_result(c.parts[0])) for c in allowed]}",
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
        self.touched = True
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
            self.model.invalidate()
        self._note(f"hostile: {done}")

    # ----- invariants after every step ---------------------------------------------------------------------

    @invariant()
    def protocol_holds(self) -> None:
        self.model.absorb()
        view = self.model.look()
        problems = self.model.retention_violations(view, self.keep)
        if problems:
            raise self._violation(3, problems[0])
        if self.touched:  # only a restore writes into the sandbox (or the task, into its workdirs)
            self._check_sandbox()
            self.touched = False

    def _check_sandbox(self) -> None:
        """Invariant 2 everywhere: the sandbox outside the restore directories is as it was, the
        user's files are there, and no file has a mode beyond 0o777."""
        outside = {
            rel: entry
            for rel, entry in files_with_modes(self.sandbox).items()
            if not rel.startswith("outer/dirs/") or rel.count("/") == 2
        }
        if outside != self.canaries:
            raise self._violation(2, f"outside the restore directories: {diff(self.canaries, outside)}")
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
