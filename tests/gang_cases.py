"""A gang's collective commit and agreed restore, run against every Storage implementation.

A test module imports these (`from tests.gang_cases import *`) beside tests.protocol_cases, whose
`make_storage` fixture they use. Each rank is a Checkpoint of its own on a storage handle of its
own, in a thread of its own, as the pods of a gang are.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spotrun import Checkpoint, CheckpointError, ConfigError, _gang, open_storage
from spotrun._context import Settings
from spotrun._manifest import INLINE_MAX, manifest_key
from spotrun._storage import LocalStorage

from tests.protocol_cases import REPO, MakeStorage, empty_dir, tree, write_tree

RANKS = 2


def gang(make_storage: MakeStorage, attempt: int, ranks: int = RANKS, **options: Any) -> list[Checkpoint]:
    options.setdefault("gang_timeout", 20.0)
    return [Checkpoint(make_storage(), attempt=attempt, rank=r, ranks=ranks, **options) for r in range(ranks)]


def together(ranks: list[Checkpoint], call: Callable[[int, Checkpoint], Any]) -> list[Any]:
    """Runs call(rank, checkpoint) on every rank at once; returns results (or exceptions) by rank."""
    with concurrent.futures.ThreadPoolExecutor(len(ranks)) as pool:
        futures = [pool.submit(call, r, cp) for r, cp in enumerate(ranks)]
        concurrent.futures.wait(futures)
    return [f.exception() or f.result() for f in futures]


def keys(make_storage: MakeStorage, prefix: str) -> list[str]:
    return [key for key, _ in make_storage().list(prefix)]


def test_a_gang_commits_one_checkpoint_with_every_ranks_part(make_storage: MakeStorage) -> None:
    ranks = gang(make_storage, attempt=1)
    infos = together(ranks, lambda r, cp: cp.write(f"rank {r} at 5".encode(), step=5))
    assert [i.id for i in infos] == ["000001-000001"] * RANKS  # save() returns once committed for all
    assert keys(make_storage, "manifests/") == ["manifests/000001-000001.json"]
    body = json.loads(make_storage().get(manifest_key("000001-000001")))
    assert body["format"] == 2
    assert body["ranks"] == RANKS
    assert sorted(f["rank"] for f in body["files"]) == list(range(RANKS))
    assert keys(make_storage, "parts/") == []  # served their purpose once the manifest was in
    # The next attempt: every rank reads its own part.
    assert together(gang(make_storage, attempt=2), lambda r, cp: cp.read()) == [b"rank 0 at 5", b"rank 1 at 5"]


def test_directories_restore_per_rank(make_storage: MakeStorage, tmp_path: Path) -> None:
    def save(rank: int, cp: Checkpoint) -> Any:
        files = {f"shard-{rank}.bin": bytes([rank]) * 100, "common/config.json": b"{}"}
        root = write_tree(tmp_path / f"src-{rank}", files)
        (root / f"empty-{rank}").mkdir()
        return cp.save(root, step=1)

    together(gang(make_storage, attempt=1), save)
    restored = together(gang(make_storage, attempt=2), lambda r, cp: cp.restore(empty_dir(tmp_path / f"dst-{r}")))
    for rank, path in enumerate(restored):
        assert tree(path) == {f"shard-{rank}.bin": bytes([rank]) * 100, "common/config.json": b"{}"}
        assert (path / f"empty-{rank}").is_dir()
        assert not (path / f"empty-{1 - rank}").exists()


def test_a_rank_that_dies_before_its_part_leaves_the_checkpoint_invisible(make_storage: MakeStorage) -> None:
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(b"one", step=1))
    survivors = gang(make_storage, attempt=1, gang_timeout=1.0)
    survivors[1]._gang_sequence()  # rank 1 is "killed" before its second save: it writes nothing
    with pytest.raises(CheckpointError, match=r"ranks 1 wrote no part within 1s"):
        survivors[0].write(b"two", step=2)
    assert keys(make_storage, "manifests/") == ["manifests/000001-000001.json"]
    # The next attempt's gang restores the newest complete checkpoint: step 1, on both ranks.
    restored = together(gang(make_storage, attempt=2), lambda r, cp: (cp.read(), cp.prev_exists()))
    assert restored == [(b"one", True), (b"one", True)]


def test_a_killed_ranks_commit_is_never_seen_half_done(make_storage: MakeStorage, tmp_path: Path, request: Any) -> None:
    """Rank 1 is a real process killed (SIGKILL) right after its part is in, and rank 0 the same just
    before it would commit: no manifest, and the next gang restores the checkpoint before."""
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(b"before", step=1))
    spec = request.getfixturevalue("storage_spec")
    script = textwrap.dedent(
        """
        import json, os, signal, sys
        from spotrun import Checkpoint
        from spotrun import _gang
        from tests.protocol_cases import storage_from_spec
        spec, rank = json.loads(sys.argv[1]), int(sys.argv[2])
        if rank == 0:
            _gang._commit_as_leader = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        else:
            _gang._wait_for_commit = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        Checkpoint(storage_from_spec(spec), attempt=1, rank=rank, ranks=2, gang_timeout=20).write(b"half", step=2)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, json.dumps(spec), str(r)], cwd=REPO) for r in range(RANKS)]
    assert [p.wait(60) for p in procs] == [-9, -9]
    assert keys(make_storage, "manifests/") == ["manifests/000001-000001.json"]
    assert together(gang(make_storage, attempt=2), lambda r, cp: cp.read()) == [b"before", b"before"]


def test_parts_of_different_steps_are_refused_on_every_rank(make_storage: MakeStorage) -> None:
    results = together(gang(make_storage, attempt=1), lambda r, cp: cp.write(b"x", step=10 + r))
    assert all(isinstance(e, CheckpointError) for e in results), results
    assert "saved different steps (10, 11)" in str(results[0])
    assert "saved different steps" in str(results[1])
    assert keys(make_storage, "manifests/") == []


def test_every_rank_restores_what_rank_0_chose_though_a_zombie_commits_meanwhile(make_storage: MakeStorage) -> None:
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(b"step 1", step=1))
    new = gang(make_storage, attempt=3)
    assert new[0].read() == b"step 1"  # rank 0 chose 000001-000001 and restored it
    # A zombie gang of attempt 2 (its node unreachable, not dead) commits after rank 0 chose.
    assert together(gang(make_storage, attempt=2), lambda r, cp: cp.write(b"zombie", step=2))[0].id == "000002-000001"
    assert new[1].read() == b"step 1"  # rank 1 restores the same checkpoint, not the zombie's newer one
    # Fenced: attempt 3's commits sort above every zombie commit.
    infos = together(new, lambda r, cp: cp.write(b"step 3", step=3))
    assert infos[0].id == "000003-000001"
    assert together(gang(make_storage, attempt=4), lambda r, cp: cp.read()) == [b"step 3", b"step 3"]


def test_a_rank_whose_part_is_corrupt_sets_the_checkpoint_aside(make_storage: MakeStorage) -> None:
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(f"old {r}".encode(), step=1))
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(f"new {r}".encode(), step=2))
    body = json.loads(make_storage().get(manifest_key("000001-000002")))
    rank1 = next(f for f in body["files"] if f["rank"] == 1)
    make_storage().put(rank1["key"], b"rotten")
    results = together(gang(make_storage, attempt=2), lambda r, cp: cp.read())
    assert results[0] == b"new 0"  # rank 0's part is fine; the operator stops it when rank 1 fails
    assert isinstance(results[1], CheckpointError)
    assert "rank 1's part of checkpoint 000001-000002" in str(results[1])
    # Set aside, not deleted: every reader skips it, and its manifest and data stay to be looked at.
    assert keys(make_storage, "manifests/") == [
        "manifests/000001-000001.json",
        "manifests/000001-000002.json",
        "manifests/rejected-000001-000002.json",
    ]
    assert make_storage().get(rank1["key"]) == b"rotten"
    # The next attempt's gang agrees on the one before.
    assert together(gang(make_storage, attempt=3), lambda r, cp: cp.read()) == [b"old 0", b"old 1"]


def test_retention_in_a_gang_keeps_the_newest_and_leaves_no_parts(make_storage: MakeStorage) -> None:
    ranks = gang(make_storage, attempt=1, keep=2)
    for step in range(1, 5):
        together(ranks, lambda r, cp, s=step: cp.write(f"{r}@{s}".encode(), step=s))
    assert keys(make_storage, "manifests/") == ["manifests/000001-000003.json", "manifests/000001-000004.json"]
    assert keys(make_storage, "parts/") == []
    kept = [json.loads(make_storage().get(manifest_key(cid))) for cid in ("000001-000003", "000001-000004")]
    referenced = {f["key"] for body in kept for f in body["files"]}
    assert set(keys(make_storage, "data/")) == referenced


def test_a_gang_of_another_size_cannot_restore(make_storage: MakeStorage) -> None:
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(b"x", step=1))
    with pytest.raises(CheckpointError, match=r"written by 2 rank\(s\), and this gang has 3"):
        gang(make_storage, attempt=2, ranks=3)[0].read()
    single = Checkpoint(make_storage(), attempt=2)
    assert single.latest() is not None
    assert single.latest().id == "000001-000001"
    with pytest.raises(CheckpointError, match=r"rank=R, ranks=2"):
        single.restore()


def test_a_single_writers_manifest_keeps_format_1(make_storage: MakeStorage) -> None:
    Checkpoint(make_storage(), attempt=1).write(b"x" * (INLINE_MAX + 1), step=1)
    body = json.loads(make_storage().get(manifest_key("000001-000001")))
    assert body["format"] == 1
    assert "ranks" not in body
    assert all("rank" not in f and "inline" not in f for f in body["files"])
    Checkpoint(make_storage(), attempt=1).write(b"x", step=2)  # small enough to live in its manifest
    body = json.loads(make_storage().get(manifest_key("000001-000002")))
    assert (body["format"], body["files"][0]["key"], body["files"][0]["inline"]) == (3, "", "eA==")


def test_the_rank_comes_from_the_pods_environment() -> None:
    settings = Settings.from_env({"SPOTRUN_CHECKPOINT_URI": "/tmp/x", "SPOTRUN_RANK": "1", "SPOTRUN_WORLD_SIZE": "4"})
    assert (settings.rank, settings.world_size) == (1, 4)
    assert Settings.from_env({}).world_size == 1
    with pytest.raises(ConfigError, match="SPOTRUN_RANK='-1' must be 0 or more"):
        Settings.from_env({"SPOTRUN_RANK": "-1"})
    with pytest.raises(ConfigError, match=r"rank 4 is outside the gang's ranks 0..3"):
        Checkpoint(LocalStorage(Path("/nonexistent")), rank=4, ranks=4)


def test_a_reader_restores_one_ranks_part_and_writes_nothing(make_storage: MakeStorage, tmp_path: Path) -> None:
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(f"rank {r}".encode(), step=1))
    before = keys(make_storage, "")
    reader = Checkpoint(open_storage(make_storage().uri, read_only=True), rank=1, ranks=RANKS)
    assert reader.read() == b"rank 1"
    assert keys(make_storage, "") == before  # no agreement written: a reader is no member of a gang
    latest = reader.latest()
    assert latest is not None
    assert (latest.ranks, latest.files) == (RANKS, RANKS)


def test_incremental_syncs_of_a_gang_keep_each_ranks_own_files(make_storage: MakeStorage, tmp_path: Path) -> None:
    roots = [write_tree(tmp_path / f"rank-{r}", {"model.pt": f"rank{r}".encode(), "step": b"1"}) for r in (0, 1)]
    ranks = gang(make_storage, attempt=1)
    together(ranks, lambda r, cp: cp.sync_directory(roots[r], step=1))
    for root in roots:
        (root / "step").write_bytes(b"2")  # model.pt unchanged: its object is reused, each rank its own
    together(ranks, lambda r, cp: cp.sync_directory(roots[r], step=2))
    restored = together(gang(make_storage, attempt=2), lambda r, cp: cp.restore(empty_dir(tmp_path / f"out-{r}")))
    assert [tree(p) for p in restored] == [{"model.pt": b"rank0", "step": b"2"}, {"model.pt": b"rank1", "step": b"2"}]


def test_a_commit_inside_a_commit_is_refused_in_a_gang(make_storage: MakeStorage) -> None:
    cp = gang(make_storage, attempt=1)[0]
    inner: list[BaseException] = []

    def upload(prefix: str) -> list[Any]:
        try:
            cp.write(b"from a callback", step=2)  # as an on_preemption callback would, mid-upload
        except CheckpointError as err:
            inner.append(err)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        cp._commit("bytes", upload, 1, None)
    assert "cannot run inside another" in str(inner[0])


def test_a_single_reader_does_not_read_a_gangs_part_as_its_own(make_storage: MakeStorage) -> None:
    together(gang(make_storage, attempt=1), lambda r, cp: cp.write(f"shard {r}".encode(), step=1))
    with pytest.raises(CheckpointError, match=r"written by a gang of 2 ranks"):
        Checkpoint(make_storage(), attempt=2).read()


def test_a_create_whose_answer_was_lost_is_taken_as_done(make_storage: MakeStorage) -> None:
    """botocore retries a PUT whose answer it lost; the retry meets the object the first one wrote."""
    storage = make_storage()
    storage.put("parts/x/0.json", b"mine", create_only=True)
    assert _gang._create(storage, "parts/x/0.json", b"mine")
    assert not _gang._create(storage, "parts/x/0.json", b"another writer's")
