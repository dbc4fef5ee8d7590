"""Status conditions: set one, keeping its lastTransitionTime while its status does not flip."""

from __future__ import annotations

import datetime
from typing import Any

Obj = dict[str, Any]


def set_condition(status: Obj, kind: str, value: bool, reason: str, message: str, now: datetime.datetime) -> bool:
    """Sets condition `kind`; returns True when its status flipped (the moment for an Event)."""
    conditions: list[Obj] = status.setdefault("conditions", [])
    wanted = "True" if value else "False"
    for condition in conditions:
        if condition["type"] != kind:
            continue
        flipped = bool(condition["status"] != wanted)
        if flipped:
            condition["lastTransitionTime"] = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition.update(status=wanted, reason=reason, message=message)
        return flipped
    conditions.append(
        {
            "type": kind,
            "status": wanted,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    return True


def changed(old: Obj, new: Obj) -> bool:
    """Whether a status write is needed (kopf's own bookkeeping in status is ignored)."""
    strip = ("kopf",)
    return {k: v for k, v in old.items() if k not in strip} != {k: v for k, v in new.items() if k not in strip}
