"""Schedules: timed perturbations drawn from a seed, printed, and replayable.

A schedule is a list of actions, each at a time after the run's anchor (the first pod of the run
seen Running by the ground-truth watch). Each scenario draws its own kind of schedule: the four that
target one defect class each, and `random`, which draws from every kind. SPOTRUN_PERTURB_SEED=N
replays seed N in every test that draws one (the seed and scenario are printed with each violation).
"""

from __future__ import annotations

import dataclasses
import os
import random

# What an action does (the proxy does the first group, the runner the second):
DELAY = "delay"  # watch events of TARGET (objects whose name ends with DETAIL) held SECONDS more, for SECONDS
JITTER = "jitter"  # watch events of TARGET each held up to DETAIL seconds (never reordered within one object)
CUT = "cut"  # open watches of TARGET cut mid-stream (the client watches again from its last version)
RELIST = "relist"  # open watches of TARGET end with ERROR 410: the client lists again (a fresh list)
STALE_RELIST = "stale-relist"  # as RELIST, the list answered as it was before the newest object came,
#                                and the watch after it held SECONDS (an HA apiserver's lagging watch cache)
FAIL_WRITES = "fail-writes"  # writes of TARGET answered DETAIL (409, 429, 500) for SECONDS, not applied
TIMEOUT_WRITES = "timeout-writes"  # writes of TARGET applied, their answer held 5 s and replaced by a 504
BLACKHOLE = "blackhole"  # requests of TARGET held SECONDS, then forwarded if the client still waits
S3_STALL = "s3-stall"  # the operator's S3 connections pass no byte for SECONDS
RESTART = "restart"  # the replica SIGKILLed, started again after SECONDS
HANDOVER = "handover"  # the leader SIGTERMed (it gives the Lease up), started again after SECONDS
SUSPEND_AFTER_FAILURE = "suspend-after-failure"  # spec.suspend set as soon as a pod has failed on its own
RESUME = "resume"  # spec.suspend unset
DELETE_POD = "delete-pod"  # a running pod deleted by someone else (counted as an interruption)

PROXY_KINDS = {DELAY, JITTER, CUT, RELIST, STALE_RELIST, FAIL_WRITES, TIMEOUT_WRITES, BLACKHOLE, S3_STALL}


@dataclasses.dataclass(frozen=True)
class Action:
    at: float  # seconds after the anchor
    kind: str
    target: str = "*"  # a resource (pods, taskruns, leases, poddisruptionbudgets, ...) or *
    seconds: float = 0.0
    detail: str = ""
    replica: str = "a"  # whose proxy (or process)

    def __str__(self) -> str:
        parts = [f"t+{self.at:.1f}s", self.kind, self.target]
        if self.seconds:
            parts.append(f"{self.seconds:.1f}s")
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts) + f" [{self.replica}]"


RUNNING = "running"  # times count from the first pod seen Running
START = "start"  # times count from the replicas' start, before any TaskRun is made


@dataclasses.dataclass
class Schedule:
    scenario: str
    seed: int
    actions: list[Action]
    anchor: str = RUNNING

    def __str__(self) -> str:
        since = "the first pod Running" if self.anchor == RUNNING else "the start"
        lines = [
            f"schedule {self.scenario} seed {self.seed}, times after {since} (replay: SPOTRUN_PERTURB_SEED={self.seed})"
        ]
        lines += [f"  {a}" for a in sorted(self.actions, key=lambda a: a.at)]
        return "\n".join(lines)

    @property
    def replicas(self) -> int:
        """Operator replicas it needs: two for a handover or anything done to replica b."""
        return 2 if any(a.kind == HANDOVER or a.replica == "b" for a in self.actions) else 1

    @property
    def length(self) -> float:
        """When the last action is over."""
        return max((a.at + a.seconds for a in self.actions), default=0.0)


def seeds(default: list[int]) -> list[int]:
    """The seeds a test runs: SPOTRUN_PERTURB_SEED (one, or several with commas) replays those."""
    chosen = os.environ.get("SPOTRUN_PERTURB_SEED", "")
    return [int(s) for s in chosen.split(",") if s.strip()] if chosen else default


def draw(scenario: str, seed: int) -> Schedule:
    rng = random.Random(f"{scenario}:{seed}")
    actions = DRAWS[scenario](rng)
    # A handover's perturbations start before the TaskRuns: the standby's cache is made as they come.
    return Schedule(scenario, seed, actions, START if any(a.kind == HANDOVER for a in actions) else RUNNING)


def _stale_gang(rng: random.Random) -> list[Action]:
    """Defect class 2: a gang rank missing from a stale cache. Half the seeds: the pod list answered from
    before the newest rank's pod came (a lagging watch cache), the watch after it held. The others:
    rank 1's pod events held on the standby's watch while the TaskRun's pass, and the leader hands
    over mid-run."""
    if rng.random() < 0.5:
        hold = rng.uniform(12.0, 16.0)
        return [
            Action(0.0, DELAY, "pods", seconds=hold, detail="-r1", replica="b"),
            Action(rng.uniform(5.0, 7.0), HANDOVER, "operator", seconds=rng.uniform(2.0, 4.0)),
        ]
    actions = [Action(rng.uniform(1.5, 4.0), STALE_RELIST, "pods", seconds=rng.uniform(3.0, 5.0))]
    if rng.random() < 0.5:
        actions.append(Action(rng.uniform(0.0, 2.0), JITTER, "taskruns", seconds=6.0, detail="0.5"))
    return actions


def _lease_blackhole(rng: random.Random) -> list[Action]:
    """Defect class 3: the leader's Lease requests black-holed past the Lease's duration, while its
    other requests pass (its workers go on writing)."""
    return [Action(rng.uniform(1.0, 3.0), BLACKHOLE, "leases", seconds=rng.uniform(20.0, 24.0), replica="a")]


def _namesake_budget(rng: random.Random) -> list[Action]:
    """Defect class 5: the TaskRun's children's names are taken beforehand by another (the run adds
    the namesakes); on top, mild noise: jittered watches and a failed write or two."""
    actions = [Action(rng.uniform(0.0, 2.0), JITTER, "pods", seconds=rng.uniform(3.0, 6.0), detail="0.5")]
    if rng.random() < 0.5:
        actions.append(Action(rng.uniform(0.0, 4.0), FAIL_WRITES, "taskruns", seconds=1.0, detail="409"))
    return actions


def _stop_after_own_failure(rng: random.Random) -> list[Action]:
    """Defect class 9: the pod watch held while the task fails on its own and a stop is asked
    (suspend); resumed later so that the run can finish."""
    hold = rng.uniform(8.0, 10.0)  # the task exits at its step 3 (1.5 s) after python and the SDK start
    return [
        Action(0.0, DELAY, "pods", seconds=hold),
        Action(0.0, SUSPEND_AFTER_FAILURE, "taskruns"),
        Action(hold + rng.uniform(3.0, 5.0), RESUME, "taskruns"),
    ]


def _random(rng: random.Random) -> list[Action]:
    """Anything, a few at a time, within 20 s."""
    kinds = [
        DELAY,
        JITTER,
        CUT,
        RELIST,
        STALE_RELIST,
        FAIL_WRITES,
        TIMEOUT_WRITES,
        BLACKHOLE,
        S3_STALL,
        RESTART,
        DELETE_POD,
    ]
    actions = []
    for _ in range(rng.randint(3, 6)):
        kind = rng.choice(kinds)
        at = round(rng.uniform(0.0, 20.0), 1)
        target = rng.choice(["pods", "taskruns"])
        if kind == DELAY:
            actions.append(Action(at, kind, target, seconds=rng.uniform(1.0, 6.0), detail=rng.choice(["", "-r1"])))
        elif kind == JITTER:
            actions.append(
                Action(at, kind, target, seconds=rng.uniform(2.0, 8.0), detail=f"{rng.uniform(0.2, 1.5):.1f}")
            )
        elif kind in (CUT, RELIST):
            actions.append(Action(at, kind, target))
        elif kind == STALE_RELIST:
            actions.append(Action(at, kind, "pods", seconds=rng.uniform(1.0, 4.0)))
        elif kind == FAIL_WRITES:
            status = rng.choice(["409", "429", "500"])
            write_target = rng.choice(["pods", "taskruns", "poddisruptionbudgets", "*"])
            actions.append(Action(at, kind, write_target, seconds=rng.uniform(0.5, 3.0), detail=status))
        elif kind == TIMEOUT_WRITES:
            actions.append(Action(at, kind, rng.choice(["pods", "taskruns"]), seconds=rng.uniform(0.5, 2.0)))
        elif kind == BLACKHOLE:
            actions.append(Action(at, kind, rng.choice(["pods", "taskruns", "*"]), seconds=rng.uniform(1.0, 8.0)))
        elif kind == S3_STALL:
            actions.append(Action(at, kind, "s3", seconds=rng.uniform(2.0, 10.0)))
        elif kind == RESTART:
            actions.append(Action(at, kind, "operator", seconds=rng.uniform(0.5, 3.0)))
        else:
            actions.append(Action(at, kind, "pods"))
    if rng.random() < 0.3:
        actions += [Action(rng.uniform(0.0, 10.0), SUSPEND_AFTER_FAILURE, "taskruns"), Action(22.0, RESUME, "taskruns")]
    return actions


DRAWS = {
    "stale_gang": _stale_gang,
    "lease_blackhole": _lease_blackhole,
    "namesake_budget": _namesake_budget,
    "stop_after_own_failure": _stop_after_own_failure,
    "random": _random,
}
