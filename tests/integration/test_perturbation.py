"""The operator under perturbation (tests/perturb): the real operator, its own ServiceAccount, the
real API server behind a perturbing proxy, schedules drawn from seeds; the invariants after each run.

One test per defect class of issue 25, each with the perturbations that reach it
(`pytest tests/integration/test_perturbation.py -k defect2` runs one), and one of random schedules.
`make test` runs one seed each (about 3 minutes); SPOTRUN_PERTURB_SOAK=N runs N seeds each
(`make test-perturb-soak`); SPOTRUN_PERTURB_SEED=S[,S...] replays the printed seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.operator_fixtures import Operator, steps_taskrun
from tests.perturb import schedule
from tests.perturb.runner import Run, Workload


def _seeds(first: int, count: int = 1) -> list[int]:
    soak = int(os.environ.get("SPOTRUN_PERTURB_SOAK", "0") or 0)
    return schedule.seeds(list(range(first, first + max(count, soak))))


Play = Callable[[str, int, Workload], None]


@pytest.fixture
def play(
    cluster: Cluster,
    kube: Client,
    operator: Operator,
    task_namespace: str,
    no_other_operator: None,
    tmp_path: Path,
) -> Play:
    """Plays scenario `scenario`'s schedule for `seed` against `workload`, with the session's
    operator paused, and fails with the report when an invariant broke."""

    def run(scenario: str, seed: int, workload: Workload) -> None:
        plan = schedule.draw(scenario, seed)
        print(plan)
        report = Run(cluster, kube, operator, task_namespace, tmp_path).play(plan, workload)
        print(report)
        assert not report.violations, str(report)

    return run


@pytest.mark.parametrize("seed", _seeds(1, count=2), ids=lambda s: f"seed{s}")  # 1: a stale relist, 2: a handover
def test_defect2_a_gang_rank_missing_from_a_stale_cache_is_never_counted_as_interrupted(seed: int, play: Play) -> None:
    """A relist answered from before rank 1's pod came (a lagging watch cache), the watch after it
    held; or rank 1's pod events held on the standby's watch, and the leader hands over: nothing was
    interrupted, so nothing may be counted, and the healthy ranks run on."""
    workload = Workload([steps_taskrun("gang", steps=24, step_seconds=0.5, replicas=2)])
    play("stale_gang", seed, workload)


@pytest.mark.parametrize("seed", _seeds(1), ids=lambda s: f"seed{s}")
def test_defect3_a_leader_whose_lease_requests_hang_writes_nothing_after_the_standby_takes_over(
    seed: int, play: Play, cluster: Cluster
) -> None:
    """Two replicas; the leader's Lease requests black-holed past the Lease's duration while its other
    requests pass, TaskRuns coming all along: the audit log shows no write of the old leader
    received after the standby took the Lease."""
    if not cluster.config.get("audit"):
        pytest.skip("the cluster runs without the audit log (LOCALCLUSTER_STATE_DIR names one started without --audit)")
    bodies = [steps_taskrun(f"lease-{n}", steps=6, step_seconds=0.5) for n in range(7)]
    workload = Workload(bodies, replicas=2, spacing=4.0)
    play("lease_blackhole", seed, workload)


@pytest.mark.parametrize("seed", _seeds(1), ids=lambda s: f"seed{s}")
def test_defect5_a_users_budget_of_the_same_name_is_never_deleted(seed: int, play: Play) -> None:
    """A PodDisruptionBudget of the TaskRun's name, made beforehand by someone else: the TaskRun runs
    and ends, and that budget is still there, the same object (by UID)."""
    workload = Workload([steps_taskrun("namesake", steps=6, step_seconds=0.3)], namesakes=True)
    play("namesake_budget", seed, workload)


@pytest.mark.parametrize("seed", _seeds(1), ids=lambda s: f"seed{s}")
def test_defect9_a_pod_that_failed_on_its_own_before_a_stop_counts_as_a_failure(seed: int, play: Play) -> None:
    """The pod watch held while attempt 1 exits 1 on its own and the TaskRun is suspended (the
    operator, behind, stops a pod that has already failed): one failure is counted, not a stop."""
    body = steps_taskrun("own-failure", steps=8, step_seconds=0.5, env={"EXIT_AT_STEP": "3:1"})
    play("stop_after_own_failure", seed, Workload([body]))


@pytest.mark.parametrize("seed", _seeds(1), ids=lambda s: f"seed{s}")
def test_random_schedules_break_no_invariant(seed: int, play: Play) -> None:
    """Anything from every kind of perturbation, against a task that fails once and a gang."""
    bodies = [
        steps_taskrun("single", steps=16, step_seconds=0.4, env={"EXIT_AT_STEP": "4:1"}),
        steps_taskrun("pair", steps=16, step_seconds=0.4, replicas=2),
    ]
    play("random", seed, Workload(bodies))
