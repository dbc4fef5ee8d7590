"""A gang (spec.replicas > 1): N pods per attempt, one per rank, that begin and end together. Pure.

An attempt is the whole gang. Its outcome comes from its ranks' outcomes (each read as a single
pod's is, the operator's own stops included):

- any rank Interrupted: the attempt is Interrupted, at once. Ranks that fail because a peer went
  (a broken collective) are the interruption's doing, not the task's.
- else, once every rank has ended: Failed if any rank failed (the first to end gives the reason),
  else Rescheduled if a rank was moved off spot before it ran, else Stopped if the operator
  stopped one (suspend, a deadline), else Succeeded (every rank exited 0).
- while some rank still runs and none was interrupted: not over yet. The operator stops the others
  when one has ended other than in success (`stop_the_rest`), so that this does not last.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spotrun_operator import names
from spotrun_operator.classify import Outcome

Obj = dict[str, Any]
Ended = tuple[str, Outcome]  # (kind, outcome) of one rank, as attempts.stopped_outcome gives it
PRIORITY = (names.OUTCOME_FAILED, names.OUTCOME_RESCHEDULED, "Stopped")
# A rank whose pod was never created (the API server refused it), once the others have ended.
NOT_CREATED: Ended = ("Stopped", Outcome("Stopped", "NotCreated"))


def rank_of(pod: Obj) -> int:
    try:
        return int(pod["metadata"]["labels"][names.LABEL_RANK])
    except (KeyError, ValueError):
        return 0


def combine(
    ranks: Sequence[Ended | None], ended_at: Callable[[int], datetime.datetime | None]
) -> tuple[int, str, Outcome] | None:
    """(the deciding rank, kind, outcome) of a gang's attempt from its ranks' (None: still running),
    or None while it is not over. `ended_at(rank)` orders failures: the first to end decides."""
    for rank, ended in enumerate(ranks):
        if ended is not None and ended[0] == names.OUTCOME_INTERRUPTED:
            return rank, ended[0], ended[1]
    if any(ended is None for ended in ranks):
        return None
    done = [(rank, ended) for rank, ended in enumerate(ranks) if ended is not None]
    for kind in PRIORITY:
        matching = [(rank, ended) for rank, ended in done if ended[0] == kind]
        if matching:
            never = datetime.datetime.max.replace(tzinfo=datetime.UTC)
            rank, ended = min(matching, key=lambda item: (ended_at(item[0]) or never, item[0]))
            return rank, ended[0], ended[1]
    return 0, done[0][1][0], done[0][1][1]


def stop_the_rest(ranks: Sequence[Ended | None]) -> bool:
    """Whether the ranks still running are to be stopped: one has ended other than in success."""
    return any(ended is not None and ended[0] != names.OUTCOME_SUCCEEDED for ended in ranks)


def missing(pods: Mapping[int, object], size: int) -> list[int]:
    return [rank for rank in range(size) if rank not in pods]
