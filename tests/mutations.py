"""`make test-mutations`: reverts each of issue 24's fixes in turn and runs the tests that guard it.

    python -m tests.mutations [NAME ...]

Each entry replaces the fixed code with what it was (or with the simplest wrong version) in the
working tree, runs its tests on a directory store, and puts the file back. A test suite that
passes with a fix reverted guards nothing: every line must say CAUGHT. Exits 1 when one is MISSED.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

R = pathlib.Path(__file__).resolve().parent.parent
# (name, file, the fixed code, the code without the fix, pytest -k expression)
M = [
    (
        "restore proof skipped",
        "sdk/spotrun/_restore.py",
        "    return all(recorded and stamp(target, rel) == recorded for rel, recorded in record.placed().items())",
        "    return True",
        "rewritten_in_place",
    ),
    (
        "restore removes every unknown entry",
        "sdk/spotrun/_restore.py",
        "    for rel in sorted(removable, reverse=True):",
        "    for rel in sorted({p.name for p in target.iterdir() if p.is_file()} - set(paths), reverse=True):",
        "tasks_own_files",
    ),
    (
        "restore removes a rewritten file",
        "sdk/spotrun/_restore.py",
        "if rel not in paths and stamp(target, rel) == recorded}",
        "if rel not in paths}",
        "task_rewrote",
    ),
    (
        "retention deletes another writer's data",
        "sdk/spotrun/_checkpoint.py",
        "        return owner[0] < self.attempt or self.gang is not None or owner[1] == self._writer",
        "        return True",
        "sidecars_incremental",
    ),
    (
        "rejected data swept",
        "sdk/spotrun/_checkpoint.py",
        "        referenced = self._referenced(set(known) - set(doomed))",
        "        referenced = self._referenced(set(known) - set(doomed) - rejected)",
        "rejected_checkpoints_data",
    ),
    (
        "gang snapshot retried alone",
        "sdk/spotrun/_checkpoint.py",
        "        for _ in range(1 if self.gang else SNAPSHOT_TRIES):",
        "        for _ in range(SNAPSHOT_TRIES):",
        "directory_changed_stays",
    ),
    (
        "disk too small falls back",
        "sdk/spotrun/_checkpoint.py",
        '        raise CheckpointError(\n            f"{where} needs {needed - freed}',
        '        raise CorruptCheckpointError(\n            f"{where} needs {needed - freed}',
        "too_large_for_the_disk",
    ),
    (
        "grace bound after a notice",
        "sdk/spotrun/_preemption.py",
        "    return _deadline if _terminated else None",
        "    return _deadline",
        "notice_alone",
    ),
    (
        "restructure refused",
        "sdk/spotrun/_restore.py",
        "        if leaf and any(path.iterdir()) and not _holds_only(target, rel, removable, ours_dirs):",
        "        if leaf and any(path.iterdir()):",
        "task_rewrote",
    ),
    (
        "gang gives its id back",
        "sdk/spotrun/_checkpoint.py",
        "            self._abandon(prefix)\n            # Said where",
        "            self._abandon(prefix)\n            self._calls -= 1\n            # Said where",
        "stays_in_step",
    ),
    (
        "no schema",
        "sdk/spotrun/_manifest.py",
        "        return _schema_checked(cls, body)",
        "        m = _schema_checked.__wrapped__(cls, body) if hasattr(_schema_checked, '__wrapped__') else None\n        files = tuple(FileEntry(**e) for e in body['files'])\n        return cls(id=body['id'], attempt=body['attempt'], sequence=body['sequence'], kind=body['kind'], files=files, time=body['time'], step=body.get('step'), metadata=body.get('metadata') or {}, writer={}, ranks=body.get('ranks',1))",
        "hostile or not_json or setuid",
    ),
    (
        "no mode mask",
        "sdk/spotrun/_transfer.py",
        "os.chmod(target, entry.mode & MODE_MASK)",
        "os.chmod(target, entry.mode & 0o7777)",
        "setuid",
    ),
    (
        "ids from a counter",
        "sdk/spotrun/_checkpoint.py",
        "                    self._highest = max(self._highest, parsed[1])",
        "                    pass",
        "two_writers",
    ),
    (
        "sweep deletes any older group",
        "sdk/spotrun/_checkpoint.py",
        "        if owner == (self.attempt, self._writer):\n            return self._in_flight <= 1\n        if owner[0] >= self.attempt:\n            return False",
        "        if owner[0] <= self.attempt:\n            return True",
        "two_writers",
    ),
    (
        "a zombie's fresh upload swept",
        "sdk/spotrun/_checkpoint.py",
        "        return written is None or time.time() - written > ABANDONED_AFTER",
        "        return True",
        "incomplete_uploads",
    ),
    (
        "no multipart abort",
        "sdk/spotrun/_checkpoint.py",
        "                self.storage.abort_upload(key, upload)\n",
        "                pass\n",
        "incomplete_uploads",
    ),
    (
        "links followed",
        "sdk/spotrun/_snapshot.py",
        "            if stat.S_ISLNK(mode):",
        "            if False:",
        "links_are_kept",
    ),
    (
        "no snapshot retry",
        "sdk/spotrun/_snapshot.py",
        "            if stamp_of(path) != stamp:\n                moved.append(rel)",
        "            pass",
        "renamed_over",
    ),
    (
        "stamps without ctime",
        "sdk/spotrun/_snapshot.py",
        "    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_mode)",
        "    return (info.st_size, info.st_mtime_ns, 0, info.st_ino, info.st_mode)",
        "same_size_rewrite",
    ),
    (
        "no grace bound",
        "sdk/spotrun/_checkpoint.py",
        "    if deadline is not None and time.monotonic() >= deadline:",
        "    if False:",
        "grace_period_is_over",
    ),
    (
        "data deleted after ambiguous put",
        "sdk/spotrun/_checkpoint.py",
        "            if self._holds(key, body) is True:\n                return True\n            raise",
        "            if self._holds(key, body) is True:\n                return True\n            self._abandon(f'data/')\n            raise",
        "ambiguous",
    ),
    (
        "attempt 1 by default",
        "sdk/spotrun/_checkpoint.py",
        "        if attempt is None:\n            attempt = _attempt_from_env()",
        "        if attempt is None:\n            attempt = 1",
        "built_by_hand",
    ),
    (
        "prev_exists counts keys",
        "sdk/spotrun/_checkpoint.py",
        "        return next(self._candidates(), None) is not None",
        "        return bool(self._ids(self.storage))",
        "prev_exists_counts",
    ),
    (
        "conflict as generic error",
        "sdk/spotrun/_checkpoint.py",
        "            raise CommitConflictError(",
        "            raise CheckpointError(",
        "commit_conflict",
    ),
    (
        "manifest cap ignored",
        "sdk/spotrun/_checkpoint.py",
        "            if size > MANIFEST_MAX:",
        "            if False:",
        "larger_than_the_cap",
    ),
    (
        "links may leave the tree",
        "sdk/spotrun/_manifest.py",
        '    parts = target.split("/")\n    ups =',
        '    return\n    parts = target.split("/")\n    ups =',
        "hostile and link",
    ),
    (
        "restore through links",
        "sdk/spotrun/_restore.py",
        "        if not stat.S_ISDIR(info.st_mode):\n            return ours is not None and parent in ours",
        "        if False:\n            return False",
        "through_a_link",
    ),
]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
CASES = "tests/unit/test_checkpoint_local.py"
# Defects 1 to 5 of issue 24 with their fix reverted, through the protocol model's property tests
# (not its explicit examples): hypothesis must find each within the ci budget.
MODEL = "tests/unit/test_protocol_model.py::test_the_protocol_holds_under_faults"
GANG_MODEL = "tests/unit/test_protocol_model.py::test_a_gang_commits_together_under_faults"
HARNESS = {
    "restore removes every unknown entry": MODEL,
    "restore proof skipped": MODEL,
    "gang gives its id back": GANG_MODEL,
    "no schema": MODEL,
    "ids from a counter": MODEL,
    "sweep deletes any older group": MODEL,
}


Replacement = tuple[str, str, str]  # (file, the fixed code, the code without the fix)


def revert_and_run(name: str, replacements: list[Replacement], command: list[str]) -> bool:
    """Puts the code without the fix in the working tree, runs pytest with `command`, puts the files
    back, and prints CAUGHT, MISSED or STALE; returns whether the revert went unnoticed (or is stale)."""
    originals = {rel: (R / rel).read_text() for rel, _, _ in replacements}
    changed = dict(originals)
    for rel, fixed, without in replacements:
        if changed[rel].count(fixed) != 1:
            print(f"STALE   {name}: the fixed code is no longer in {rel} as written here", flush=True)
            return True
        changed[rel] = changed[rel].replace(fixed, without)
    try:
        for rel, text in changed.items():
            (R / rel).write_text(text)
        run = subprocess.run([*PYTEST, *command], cwd=R, capture_output=True, text=True, check=False)
    finally:
        for rel, text in originals.items():
            (R / rel).write_text(text)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-200:]
    print(f"{'CAUGHT' if run.returncode else 'MISSED'}  {name}: {last}", flush=True)
    return run.returncode == 0


def verdict(missed: int) -> int:
    print(f"{missed} of the reverted fixes went unnoticed" if missed else "every reverted fix was caught")
    return 1 if missed else 0


def main(only: list[str]) -> int:
    """`--model` runs defects 1 to 5 through the protocol model instead of the example cases (each
    up to several minutes: hypothesis finds the defect, then shrinks it)."""
    model = "--model" in only
    only = [name for name in only if name != "--model"]
    missed = 0
    for name, rel, old, new, tests in M:
        if (only and name not in only) or (model and name not in HARNESS):
            continue
        command = [HARNESS[name]] if model else [CASES, "-k", tests]
        missed += revert_and_run(name, [(rel, old, new)], command)
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
