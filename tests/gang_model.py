"""A gang's collective commit under faults: a 2-rank gang checked against the model after every step.

Each rank is a Checkpoint of its own (rank 0 and 1 of 2) over a FaultyStorage of its own, and the
ranks run each collective call at once, on threads, as a gang's pods do; they wait for each other
up to `Config.gang_timeout`. A plan counts only a rank's calls that are not polls, so that a fault
lands on the same call every run. Invariants (numbered as in tests.protocol_model):

1. a gang's save never commits a checkpoint with a part other than the one each rank saved in
   that call (a torn gang checkpoint), and a new gang's ranks read their parts of one checkpoint,
   the newest committed;
3. retention keeps the newest `keep` whole;
4. every failure is a SpotrunError;
5. a collective save with no fault injected commits on every rank, whatever failed before it.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule
from spotrun import Checkpoint, SpotrunError, _checkpoint, _gang

from tests.checkpoint_model import Committed, Tree, Violation, read_result, sha256
from tests.faults import NO_FAULTS, Crash, Fault, FaultyStorage, Injection, Plan
from tests.harness import KEEPS, OnStorage, RunStats, plans
from tests.processes import OP_TIMEOUT, Outcome, Process

# A crash costs the other rank a wait of the whole gang timeout: half as likely as the others.
GANG_FAULTS = (
    Fault.TRANSIENT,
    Fault.LOST_RESPONSE,
    Fault.TRANSIENT,
    Fault.LOST_RESPONSE,
    Fault.CRASH_BEFORE,
    Fault.CRASH_AFTER,
)
RANKS = 2


def not_polling(method: str, key: str) -> bool:
    """A rank's calls that a plan counts: not its polls, whose number depends on timing."""
    if method == "get" and key.startswith(("manifests/", "parts/", _gang.AGREEMENTS)):
        return False
    return not (method == "list" and key.startswith("parts/"))


class GangMachine(OnStorage):
    """A 2-rank gang: collective saves with faults on either rank, and restarts as a new attempt's
    gang that reads its parts back. Ranks run on threads of their own, as a gang's pods do, and
    wait for each other up to `Config.gang_timeout`."""

    stats: ClassVar[RunStats] = RunStats("gang")
    scratch_prefix: ClassVar[str] = "spotrun-gang-model-"

    def __init__(self) -> None:
        super().__init__()
        self.keep = 2
        self.attempt = 0
        self.saves = 0
        self.saved = False
        self.ranks: list[Process] = []
        self.trace: list[str] = []

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
            self.model.attempts[name] = self.attempt
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
    @rule(
        blobs=st.tuples(st.binary(max_size=30), st.binary(max_size=30)),
        with_step=st.booleans(),
        # Half the saves have one fault, at one rank's call: early calls (the ids' listing, the
        # upload, the part) more often than retention's. One rule for both, so that an example
        # (of which hypothesis turns some rules off) has both, and a clean save follows a faulty one.
        fault=st.none()
        | st.tuples(
            st.sampled_from(range(RANKS)),
            st.builds(Injection, at=st.integers(0, 3) | st.integers(0, 8), fault=st.sampled_from(GANG_FAULTS)),
        ),
    )
    def save(self, blobs: tuple[bytes, bytes], with_step: bool, fault: tuple[int, Injection] | None) -> None:
        """Every rank saves its part of one checkpoint (write, with the same step or none). With
        a fault it may fail, never tear; without one it must commit on every rank, whatever
        failed before (invariant 5)."""
        plans = [NO_FAULTS] * RANKS
        if fault is not None:
            plans[fault[0]] = Plan((fault[1],))
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
            if not any(read_result(c.parts[index]) == outcome.result for c in allowed):
                raise self._violation(
                    1,
                    f"{self.ranks[index].name}'s read() returned {outcome.result!r}; the intact checkpoints at "
                    f"or above {floor.id if floor else 'none'} hold "
                    f"{[(c.id, read_result(c.parts[index])) for c in allowed]}",
                )
        if (
            all(o.error is None for o in outcomes)
            and not any(all(read_result(c.parts[i]) == results[i] for i in range(RANKS)) for c in allowed)
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
        wanted = {(path, sha256(data)) for path, data in tree.files.items()}
        if mine != wanted:
            return f"rank {rank}'s part not the one it saved now"
    return ""
