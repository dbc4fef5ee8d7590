"""A test seam, loaded by the operator process only when a test puts this directory on its
PYTHONPATH: the pod informer's first list is served without the pod named in
SPOTRUN_TEST_HIDE_POD, as a relist from a lagging cache (or pod events reordered after a leader
handover) would serve it. SPOTRUN_TEST_HIDDEN names a file written once the pod was hidden."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spotrun_operator.api import Api

_list = Api.list_objects
_hidden: list[str] = []


def _stale_list(self: Api, kind: str, *args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
    items, version = _list(self, kind, *args, **kwargs)
    hide = os.environ.get("SPOTRUN_TEST_HIDE_POD", "")
    if kind == "pods" and hide and not _hidden:
        kept = [p for p in items if p["metadata"]["name"] != hide]
        if len(kept) < len(items):
            _hidden.append(hide)
            Path(os.environ["SPOTRUN_TEST_HIDDEN"]).write_text(hide)
            items = kept
    return items, version


Api.list_objects = _stale_list  # type: ignore[method-assign]
