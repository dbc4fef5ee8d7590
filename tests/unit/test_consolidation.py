"""spec.disruption.consolidation: what the pods and the budget say to an autoscaler. No cluster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from spotrun_operator.podbuild import build_pods

from tests.unit.test_reconcile import CONFIG, taskrun

KARPENTER = dataclasses.replace(CONFIG, profile_name="karpenter")


@pytest.mark.parametrize(
    ("disruption", "do_not_disrupt"),
    [
        ({}, "true"),  # Never (the default): Karpenter leaves the node alone for the run's whole life
        ({"consolidation": "Never"}, "true"),
        ({"consolidation": "AfterCheckpoint"}, None),  # the budget alone decides, opened after checkpoints
        ({"voluntary": "Allow"}, None),  # nothing holds the node
    ],
)
def test_karpenter_may_consolidate_only_the_pods_whose_budget_opens_after_a_checkpoint(
    disruption: dict[str, Any], do_not_disrupt: str | None
) -> None:
    (pod,) = build_pods(taskrun(disruption=disruption), 1, "spot", KARPENTER)
    assert (pod["metadata"].get("annotations") or {}).get("karpenter.sh/do-not-disrupt") == do_not_disrupt
