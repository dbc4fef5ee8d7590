"""Pod building: the operator's own labels and annotations cannot come from the template."""

from __future__ import annotations

from typing import Any

from spotrun_operator import names
from spotrun_operator.config import Config
from spotrun_operator.podbuild import build_pod

Obj = dict[str, Any]
CONFIG = Config(checkpoint_prefix="s3://bucket/runs/", checkpoint_secret="s3-creds")


def taskrun(name: str = "train", labels: Obj | None = None, annotations: Obj | None = None) -> Obj:
    template: Obj = {"spec": {"containers": [{"name": "task", "image": "img"}]}}
    if labels is not None or annotations is not None:
        template["metadata"] = {"labels": labels or {}, "annotations": annotations or {}}
    return {"metadata": {"name": name, "namespace": "ml", "uid": "uid-1"}, "spec": {"template": template}}


def test_a_template_annotation_under_spotrun_dev_never_reaches_the_pod() -> None:
    # A template carrying stopped-by would make every attempt read as Stopped: no budget would ever count.
    tr = taskrun(annotations={names.ANNOTATION_STOPPED_BY: "Suspended", "spotrun.dev/other": "x", "team": "ml"})
    annotations = build_pod(tr, 1, "spot", CONFIG)["metadata"]["annotations"]
    assert annotations == {"team": "ml"}


def test_a_template_label_under_spotrun_dev_never_reaches_the_pod() -> None:
    tr = taskrun(labels={"spotrun.dev/extra": "x", "app": "train"})
    labels = build_pod(tr, 1, "spot", CONFIG)["metadata"]["labels"]
    assert "spotrun.dev/extra" not in labels
    assert labels["app"] == "train"


def test_a_template_cannot_override_the_operators_labels() -> None:
    tr = taskrun(
        labels={
            names.LABEL_TASKRUN: "other",
            names.LABEL_ATTEMPT: "99",
            names.LABEL_CAPACITY: "on-demand",
            names.LABEL_MANAGED_BY: "me",
        }
    )
    labels = build_pod(tr, 2, "spot", CONFIG)["metadata"]["labels"]
    assert labels == {
        names.LABEL_TASKRUN: "train",
        names.LABEL_ATTEMPT: "2",
        names.LABEL_CAPACITY: "spot",
        names.LABEL_MANAGED_BY: names.MANAGED_BY,
    }


def test_the_pod_of_a_253_character_taskrun_has_valid_labels_and_name() -> None:
    name = "a" * 120 + "." + "b" * 132
    assert len(name) == 253
    pod = build_pod(taskrun(name), 1, "spot", CONFIG)
    value = pod["metadata"]["labels"][names.LABEL_TASKRUN]
    assert value == names.taskrun_label(name)
    assert len(value) <= 63
    assert len(pod["metadata"]["name"]) <= 63
    assert pod["metadata"]["ownerReferences"][0]["name"] == name  # the full name stays where it is needed
    assert {"name": "SPOTRUN_TASKRUN", "value": name} in pod["spec"]["containers"][0]["env"]
