"""The reconcile decision: (TaskRun, its pods, the nodes, now) -> what to create, stop and record.

Level-based: every pass recomputes from what exists. All that must survive an operator restart
lives in the TaskRun's status (counters, the last attempt accounted for) and in the pods' labels
and annotations, so a pass after a crash at any point reaches the same decision.

A pass is the steps below, in this order (`EVERY_PASS`, then `FIRST_THAT_ENDS`; each is a `_Pass`
method whose docstring says what it assumes from the steps before it). The first group always runs:
it counts what ended, records it, and stops what must stop whatever comes next (a drained attempt, the
rest of a gang); in the second, the first step that returns True ends the pass.

  step                             adds to the decision              stops pods?
  -------------------------------  --------------------------------  ------------------------------------
  count_ended_attempts             counters, attempts, Events        no
  settle_accounts                  lost work of pods that ended late no
  release_counted_pods             release (finalizers)              no
  force_delete_pods_of_gone_nodes  force_delete; the live pods       no
  notify_live_pod                  notify, budget floor, window      yes: a drained attempt's (Drained)
  stop_rest_of_gangs               -                                 yes: a gang's live ranks (GangEnded)
  -- FIRST_THAT_ENDS: the first of these that returns True ends the pass --
  keep_finished                    TTL delete                        yes: what is left of a finished run
  finish_on_outcome                Succeeded / Failed                yes: every unfinished pod (_finish)
  suspend                          Suspended                         yes: every unfinished pod
  deadline                         Failed, or a requeue              yes: every unfinished pod (_finish)
  heal_live_pod (never ends it)    reschedule, progressDeadline      yes: spot fallback, progress deadline
  wait_for_force_deleted_pod       Pending                           no
  complete_gang                    a gang's missing ranks            no
  show_live_pod                    Running / Pending                 no
  back_off                         Backoff                           no
  wait_for_namesakes               Pending                           yes: an earlier namesake's pods
  refuse_invalid_spec              Failed                            yes: every unfinished pod (_finish)
  create_next_attempt (always)     pods, Service, budget             no

Why the order matters: stops are added by several steps into one list, and `_stop` adds a pod only
once, so the first step to stop a pod gives its reason (a drain's Drained before a gang's GangEnded);
heal_live_pod leaves alone a pod an earlier step is already stopping; the steps that end the run
stop every pod force_delete_pods_of_gone_nodes left unfinished; wait_for_force_deleted_pod reads the
force deletions of the step that made them; and nothing is created while any earlier step holds.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from spotrun_operator import accounting, disruption, gang, healing, memory, names, policy, validate
from spotrun_operator.attempts import (
    OUTCOME_STOPPED,
    Attempt,
    PodView,
    after_notice,
    iso,
    pending_cause,
    record,
    result,
    stopped_outcome,
    task_started,
)
from spotrun_operator.classify import classify, rejected_at_admission
from spotrun_operator.config import Config
from spotrun_operator.podbuild import (
    avoid_nodes,
    build_budget,
    build_pods,
    build_service,
    checkpoint_uri,
    grace_seconds,
    replicas,
)
from spotrun_operator.status import Status, set_condition

Obj = dict[str, Any]
HISTORY = 20  # attempts kept in status.attempts
REASON_RESUME_SOURCE_MISSING = "ResumeSourceMissing"
REASON_POD_REFUSED = "PodRefused"
REASON_INVALID_TEMPLATE = names.REASON_INVALID_TEMPLATE
REASON_INVALID_MEMORY_POLICY = names.REASON_INVALID_MEMORY_POLICY
REFUSAL_BACKOFF = (2.0, 300.0)  # first wait and cap, doubling per refusal in a row
PENDING_ACCOUNT = "accountPending"  # on an attempt counted before its pod ended
IN_A_ROW: Final = "interruptionsInARow"  # interruptions in a row of attempts whose task never started
PROGRESS_UNREADABLE: Final = "progressUnreadable"  # a due progress deadline could not be checked
QUIET_OUTCOMES = (names.OUTCOME_SUCCEEDED, OUTCOME_STOPPED, names.OUTCOME_RESCHEDULED)  # Events of type Normal


class Checkpoints(Protocol):
    """The TaskRun's committed checkpoints, as a pass may need them (read from storage on demand).
    Both raise when storage cannot be read."""

    def latest(self) -> Obj | None:
        """The newest: {id, attempt, step, time, size}, or None when there is none."""

    def newest_of(self, attempt: int) -> Obj | None:
        """The newest committed by an attempt up to `attempt`."""


class NoCheckpoints:
    def latest(self) -> Obj | None:
        return None

    def newest_of(self, attempt: int) -> Obj | None:
        return None


@dataclasses.dataclass
class Decision:
    """What one pass wants done. The handler applies it through the API module, then writes status."""

    status: Obj
    pods: list[Obj] = dataclasses.field(default_factory=list)  # to create, in rank order (a gang's, or one)
    service: Obj | None = None  # a gang's headless Service (kept if it exists)
    stop: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (pod, reason): graceful delete
    force_delete: list[str] = dataclasses.field(default_factory=list)  # pods on nodes that are gone
    release: list[str] = dataclasses.field(default_factory=list)  # pods whose outcome is counted
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
    delete_taskrun: bool = False
    notify: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (pod, notice annotation)
    budget: Obj | None = None  # the PodDisruptionBudget to create (kept if it exists)
    delete_budget: str | None = None
    # The budget's minAvailable now (None: leave it): 0 while an eviction window is open, else replicas.
    budget_min_available: int | None = None
    reschedule: list[str] = dataclasses.field(default_factory=list)  # unscheduled pods to remove (no spot room)

    @property
    def create(self) -> Obj | None:
        """The first pod to create (rank 0's in a gang), or None."""
        return self.pods[0] if self.pods else None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The parts of a TaskRun the pass reads itself, parsed once at its start (the CRD's schema
    has checked their types). The pure modules it calls (policy, healing, disruption, validate,
    podbuild) read `raw`, the spec as the API server sent it."""

    name: str
    namespace: str
    uid: str
    generation: int
    raw: Obj  # the spec
    failure_rules: list[Obj]  # spec.failurePolicy.rules
    on_oom_killed: Obj | None  # spec.resources.onOOMKilled: None when memory is not scaled
    fallback_after_pending: Any  # spec.capacity.fallback.afterPendingSeconds, for a message
    grace_seconds: int  # the pod template's terminationGracePeriodSeconds (or its default)
    voluntary: str  # spec.disruption.voluntary: names.VOLUNTARY_CHECKPOINT or Allow
    after_checkpoint: bool  # spec.disruption.consolidation is AfterCheckpoint
    suspend: bool
    ttl_seconds_after_finished: int | None
    active_deadline_seconds: int | None
    progress_deadline_seconds: int | None
    resume_from_taskrun: str | None  # spec.checkpoint.resumeFrom.taskRun

    @classmethod
    def of(cls, taskrun: Obj) -> RunSpec:
        meta, spec = taskrun["metadata"], taskrun["spec"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", ""),
            uid=meta["uid"],
            generation=meta.get("generation", 1),
            raw=spec,
            failure_rules=(spec.get("failurePolicy") or {}).get("rules") or [],
            on_oom_killed=(spec.get("resources") or {}).get("onOOMKilled"),
            fallback_after_pending=((spec.get("capacity") or {}).get("fallback") or {}).get("afterPendingSeconds"),
            grace_seconds=grace_seconds((spec.get("template") or {}).get("spec") or {}),
            voluntary=disruption.voluntary(spec),
            after_checkpoint=disruption.consolidation(spec) == disruption.CONSOLIDATION_AFTER_CHECKPOINT,
            suspend=bool(spec.get("suspend")),
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            progress_deadline_seconds=spec.get("progressDeadlineSeconds"),
            resume_from_taskrun=((spec.get("checkpoint") or {}).get("resumeFrom") or {}).get("taskRun"),
        )


def _parse(timestamp: str | None) -> datetime.datetime | None:
    if not timestamp:
        return None
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def unseen_attempts(taskrun: Obj, pods: list[Obj]) -> list[tuple[int, int]]:
    """The (attempt, rank) pairs of attempts not yet counted that have no pod among `pods` (rank 0
    for a single pod). Every rank of an attempt that status names was created before status named
    it, so from a watch cache such a pod is either not seen yet (a relist, events reordered after a
    leader handover) or truly gone (only the operator lets go of its finalizer, once counted, so gone
    means deleted by force); a pass looks it up live before it counts it as vanished. Per rank: a
    gang's missing rank 1 beside a live rank 0 would otherwise count as an interruption."""
    status: Obj = taskrun.get("status") or {}
    uid = taskrun["metadata"]["uid"]
    seen = {(pod.attempt, pod.rank) for pod in map(PodView.of, pods) if uid in pod.owners}
    first, last = int(status.get("accountedAttempt", 0)) + 1, int(status.get("attempt", 0))
    ranks = range(replicas(taskrun))
    return [(number, rank) for number in range(first, last + 1) for rank in ranks if (number, rank) not in seen]


def decide(
    taskrun: Obj,
    pods: list[Obj],
    nodes: Mapping[str, bool],
    now: datetime.datetime,
    config: Config,
    *,
    resume_from: str | None = "",
    node_info: Callable[[str], Obj | None] | None = None,
    checkpoints: Checkpoints | None = None,
    listed: bool = False,
) -> Decision:
    """One pass. `pods`: the TaskRun's pods, from the watch cache, or read live when `listed`: only
    then is a pod missing from them gone (a cache may lag: an uncounted attempt whose pod the cache
    lacks stays uncounted; see unseen_attempts). `nodes`: every Node's name, and whether it is
    Ready. `resume_from`: the resolved resumeFrom source ("" when there is none), or None when
    spec.checkpoint.resumeFrom.taskRun names a TaskRun that cannot be found (deleted by its TTL).
    `node_info(name)`: a Node as the cache keeps it (taints, unschedulable, instanceType, spot).
    `checkpoints`: storage, read only when needed (an attempt was counted, or a drain waits for a
    fresh checkpoint).

    The steps are EVERY_PASS, then FIRST_THAT_ENDS up to the first that ends the pass (the module
    docstring has their table): count what ended (with its lost work and cost), let go of counted
    pods, tell a live pod of a notice or drain; then the first of these that applies ends the pass:
    a finished run (TTL), success, a fatal rule, a spent budget, suspend, the deadline, (a live pod
    is moved off spot that has no room, or stopped when it made no progress in time, without ending
    the pass), a force-deleted pod not gone yet, a live pod, backoff, an earlier namesake's pods, a
    spec that can never run (validate.py: the run fails before anything is created), a missing
    resumeFrom source, a refused create not due again; else the next attempt is created.
    """
    this_pass = _Pass(
        taskrun,
        pods,
        nodes,
        now,
        config,
        node_info or (lambda _: None),
        checkpoints or NoCheckpoints(),
        resume_from=resume_from,
        listed=listed,
    )
    for observe in EVERY_PASS:
        observe(this_pass)
    for ends_the_pass in FIRST_THAT_ENDS:
        if ends_the_pass(this_pass):
            break
    return this_pass.decision


class _Pass:
    """One pass's view: the TaskRun, its pods, the status being built and the decision."""

    def __init__(
        self,
        taskrun: Obj,
        pods: list[Obj],
        nodes: Mapping[str, bool],
        now: datetime.datetime,
        config: Config,
        node_info: Callable[[str], Obj | None],
        checkpoints: Checkpoints,
        *,
        resume_from: str | None,
        listed: bool,
    ) -> None:
        self.taskrun, self.nodes, self.now, self.config = taskrun, nodes, now, config
        self.node_info, self.checkpoints = node_info, checkpoints
        self._latest: tuple[bool, Obj | None] | None = None  # (read, newest) once storage was asked
        self.run = RunSpec.of(taskrun)
        self.spec = self.run.raw  # for the pure modules
        self.written: Status = taskrun.get("status") or {}  # the status as last written; never changed
        self.status: Obj = copy.deepcopy(taskrun.get("status") or {})  # the status this pass builds
        self.decision = Decision(status=self.status)
        uid = self.run.uid
        # The pods, parsed once: the pass reads PodViews; only the API edge (the Decision) names raw pods.
        views = [PodView.of(pod) for pod in pods]
        ours = [pod for pod in views if uid in pod.owners]
        # Pods of an earlier TaskRun of this name (deleted, then created again): never adopted.
        self.namesakes = [pod for pod in views if uid not in pod.owners and pod.taskrun == self.run.name]
        self.size = replicas(taskrun)  # pods per attempt: 1, or a gang's ranks
        by_rank: dict[int, dict[int, PodView]] = {}  # attempt -> rank -> pod
        for pod in sorted((pod for pod in ours if pod.attempt > 0), key=lambda pod: (pod.attempt, pod.rank)):
            by_rank.setdefault(pod.attempt, {})[pod.rank] = pod
        self.attempts = {number: Attempt(number, ranks) for number, ranks in by_rank.items()}
        self.all_pods = [pod for number in sorted(self.attempts) for pod in self.attempts[number].pods.values()]
        self._outcomes: dict[str, tuple[str, Any] | None] = {}  # pod name -> its own (kind, outcome)
        self.phase_before = self.written.get("phase", names.PENDING)
        status = self.status
        status.setdefault("failures", 0)
        status.setdefault("interruptions", 0)
        status["observedGeneration"] = self.run.generation
        status["checkpoint"] = {**(self.written.get("checkpoint") or {}), "uri": checkpoint_uri(taskrun, config)}
        self.attempt = max(int(self.written.get("attempt", 0)), max(self.attempts, default=0))
        status["attempt"] = self.attempt
        self.unfinished: list[PodView] = []
        self.live: list[PodView] = []
        self.listed = listed  # whether the pods were read live: only then is a missing one gone
        # The resolved resumeFrom source ("" when there is none; None: its TaskRun cannot be found).
        self.resume_from = resume_from

    @property
    def last(self) -> Obj:
        outcome: Obj = self.status.get("lastOutcome") or {}
        return outcome

    def _node(self, pod: PodView | None) -> tuple[bool, bool]:
        node = pod.node if pod else ""
        return (not node or node in self.nodes), (not node or self.nodes.get(node, False))

    def _node_facts(self, pod: PodView | None) -> Obj:
        return self.node_info(pod.node if pod else "") or {}

    def latest(self) -> tuple[bool, Obj | None]:
        """(whether storage could be read, the newest checkpoint), read once per pass; a read also
        refreshes status.checkpoint (informative: a storage error keeps what it said)."""
        if self._latest is None:
            try:
                newest = self.checkpoints.latest()
            except Exception:
                self._latest = (False, None)
            else:
                self._latest = (True, newest)
                kept = {key: value for key, value in self.status["checkpoint"].items() if key in ("uri", "resumeFrom")}
                self.status["checkpoint"] = {**kept, **(newest or {})}
                self._show_unrestorable((newest or {}).get("unrestorable"))
        return self._latest

    def _show_unrestorable(self, record: Obj | None) -> None:
        """The CheckpointsCorrupt condition: an attempt found checkpoints and not one intact, so it
        started over (the SDK logs it too). It clears once a later attempt has committed."""
        had = any(
            condition["type"] == names.COND_CHECKPOINTS_CORRUPT and condition["status"] == "True"
            for condition in self.status.get("conditions", [])
        )
        if not record and not had:
            return
        if record:
            message = f"attempt {record.get('attempt')}: {record.get('message')}"
            if set_condition(
                self.status, names.COND_CHECKPOINTS_CORRUPT, True, names.REASON_NO_INTACT_CHECKPOINT, message, self.now
            ):
                self.decision.events.append(("Warning", names.REASON_NO_INTACT_CHECKPOINT, message))
        else:
            set_condition(self.status, names.COND_CHECKPOINTS_CORRUPT, False, "CheckpointRestored", "", self.now)

    def _last_commit(self, attempt: int) -> tuple[str | None, bool]:
        """(the time of the newest checkpoint committed by attempts up to `attempt`, whether that is
        known for sure). Without storage, what status last said stands in (the work lost can then only
        be overestimated)."""
        read, newest = self.latest()
        if read and (newest is None or int(newest.get("attempt", 0)) <= attempt):
            return (newest or {}).get("time"), True
        if read:
            try:
                older = self.checkpoints.newest_of(attempt)
            except Exception:
                older = None
            else:
                return (older or {}).get("time"), True
        cached = self.written.get("checkpoint") or {}
        usable = cached.get("time") and int(cached.get("attempt", 0)) <= attempt
        return (cached["time"] if usable else None), False

    def _wait(self, message: str, reason: str, requeue: float) -> bool:
        self.status["phase"] = names.PENDING
        self.status["message"] = message
        set_condition(self.status, names.COND_READY, False, reason, message, self.now)
        self.decision.requeue_after = min(requeue, self.decision.requeue_after or requeue)
        return True

    def _requeue(self, seconds: float) -> None:
        self.decision.requeue_after = min(seconds, self.decision.requeue_after or seconds)

    def _ranks(self, attempt: int) -> Mapping[int, PodView]:
        """An attempt's pods by rank (none for an attempt with no pod left)."""
        found = self.attempts.get(attempt)
        return found.pods if found else {}

    def _pods(self, attempt: int) -> list[PodView]:
        return list(self._ranks(attempt).values())

    def _ended(self, attempt: int) -> bool:
        """Whether every pod of an attempt has ended (or is gone)."""
        return all(pod.finished for pod in self._pods(attempt))

    def _ended_at(self, attempt: int) -> datetime.datetime | None:
        times = [t for t in (accounting.ended_at(pod.raw) for pod in self._pods(attempt)) if t is not None]
        return max(times) if times else None

    def _current(self) -> list[PodView]:
        """The live pods of the current attempt, in rank order."""
        return [pod for pod in self.live if pod.attempt == self.attempt]

    def _stop(self, pod: PodView, reason: str) -> None:
        """Stops `pod` gracefully, unless it is being deleted or an earlier step stops it already
        (whose reason stands)."""
        if not pod.deleting and all(stopped != pod.name for stopped, _ in self.decision.stop):
            self.decision.stop.append((pod.name, reason))

    def _stop_attempt(self, pod: PodView, reason: str) -> None:
        """Stops `pod` for `reason`, and the rest of its gang for it."""
        self._stop(pod, reason)
        for other in self._pods(pod.attempt):
            if other is not pod and not other.finished:
                self._stop(other, names.REASON_GANG_ENDED)

    def _drop_budget(self) -> None:
        if self.status.get("disruptionBudget"):
            self.decision.delete_budget = self.status.pop("disruptionBudget")

    def _finish(self, new_phase: str, reason: str, message: str) -> bool:
        status = self.status
        status.pop("progressDeadline", None)
        status.pop(PROGRESS_UNREADABLE, None)
        status["phase"] = new_phase
        status["message"] = message
        status.setdefault("completionTime", iso(self.now))
        self.decision.stop += [(pod.name, reason) for pod in self.unfinished]
        self._drop_budget()
        kind = names.COND_COMPLETE if new_phase == names.SUCCEEDED else names.COND_FAILED
        set_condition(status, kind, True, reason, message, self.now)
        set_condition(status, names.COND_READY, False, reason, message, self.now)
        if self.phase_before != new_phase:
            severity = "Normal" if new_phase == names.SUCCEEDED else "Warning"
            self.decision.events.append((severity, reason, message))
        return True

    # --- the steps, in the order decide() runs them (EVERY_PASS, then FIRST_THAT_ENDS), each followed
    # by the helpers only it uses ----------------------------------------------------------------

    def count_ended_attempts(self) -> None:
        """Counts every attempt that ended since the last pass, in order.

        Step 1. Assumes nothing: it runs on the status as last written. Adds the counters
        (failures, interruptions, oomKills, interruptionsInARow), status.attempts, lastOutcome and
        accountedAttempt, which every later step reads; no stops."""
        status = self.status
        # The copy this pass builds, never the written status's own records: settle_accounts changes
        # them in place, and a dropped pass must leave the cached TaskRun as it was.
        history: list[Obj] = list(status.get("attempts") or [])
        for number in range(int(self.written.get("accountedAttempt", 0)) + 1, self.attempt + 1):
            decided = self._attempt_outcome(number)
            if decided is None:
                break  # this attempt still runs
            pod, kind, outcome = decided
            if kind == names.OUTCOME_FAILED:
                status["failures"] += 1
                if any(memory.oom_killed(rank_pod.raw) for rank_pod in self._pods(number)):
                    status["oomKills"] = int(status.get("oomKills", 0)) + 1
            elif kind == names.OUTCOME_INTERRUPTED:
                status["interruptions"] += 1
                self._avoid_rejecting_nodes(number)
            elif kind == names.OUTCOME_RESCHEDULED:
                status["capacityFallback"] = {"reason": names.REASON_NO_SPOT_CAPACITY, "attempt": number}
                after = self.run.fallback_after_pending
                message = (
                    f"No spot capacity for attempt {number} in {after}s: the rest of the run is on on-demand capacity"
                )
                self.decision.events.append(("Normal", names.REASON_NO_SPOT_CAPACITY, message))
            if kind == names.OUTCOME_INTERRUPTED and not task_started(_raw(pod)):
                status[IN_A_ROW] = int(status.get(IN_A_ROW, 0)) + 1  # no progress: the next attempt backs off
            else:
                status.pop(IN_A_ROW, None)
            attempt_record = record(_raw(pod), number, outcome, kind, self.now)
            if self.size > 1:
                attempt_record["replicas"] = self.size
                attempt_record["rank"] = pod.rank if pod else 0
            start = self.written.get("startCheckpoint") or {}
            if int(start.get("attempt", 0)) == number and start.get("id"):
                attempt_record["resumedFrom"] = start["id"]
            self._place(attempt_record, pod)
            if self._ended(number):
                self._account(attempt_record)
            else:
                # Counted before its pod ended (its node is gone or not Ready): it may still commit in
                # its grace period, so its work and time are accounted once the pod has ended.
                attempt_record[PENDING_ACCOUNT] = True
            history.append(attempt_record)
            status["accountedAttempt"] = number
            status["lastOutcome"] = {"attempt": number, "kind": kind, "reason": outcome.reason, "fatal": outcome.fatal}
            status["lastEndTime"] = iso(self.now)
            if kind == names.OUTCOME_SUCCEEDED:
                lead = self.attempts[number].lead if number in self.attempts else None  # a gang's: rank 0's
                status["result"] = result(_raw(lead))
            detail = f" (exit code {outcome.exit_code})" if outcome.exit_code is not None else ""
            self.decision.events.append(
                (
                    "Normal" if kind in QUIET_OUTCOMES else "Warning",
                    f"Attempt{kind}",
                    f"Attempt {number} ({pod.name if pod else 'pod gone'}) {kind.lower()}: {outcome.reason}{detail}",
                )
            )
        status["attempts"] = history[-HISTORY:]

    def _avoid_rejecting_nodes(self, attempt: int) -> None:
        """The nodes whose kubelet refused one of the attempt's pods at admission (a broken device
        plugin, resources it does not have) are avoided by the next attempts for a while, so that one
        bad node does not take every replacement and use up the interruption budget."""
        until = iso(self.now + datetime.timedelta(seconds=policy.AVOID_SECONDS))
        for pod in self._pods(attempt):
            if rejected_at_admission(pod.raw):
                avoided = list(self.status.get("avoidNodes") or [])
                self.status["avoidNodes"] = policy.avoid_node(avoided, pod.node, until)

    def _own_outcome(self, pod: PodView | None) -> tuple[str, Any] | None:
        """One pod's (kind, outcome), the operator's stops taken into account; None while it runs."""
        key = pod.name if pod else ""
        if pod is None and not self.listed:
            return None  # never "gone" from a cache: not seen yet, until a live read says so
        if pod is None or key not in self._outcomes:
            node_exists, node_ready = self._node(pod)
            classified = classify(
                _raw(pod),
                node_exists=node_exists,
                node_ready=node_ready,
                rules=self.run.failure_rules,
                memory_policy=self.run.on_oom_killed is not None,
            )
            ended = None if classified is None else stopped_outcome(_raw(pod), after_notice(_raw(pod), classified))
            if pod is None:
                return ended
            self._outcomes[key] = ended
        return self._outcomes[key]

    def _rank_outcomes(self, attempt: int) -> list[tuple[str, Any] | None]:
        """Each rank's own outcome. A rank with no pod is one being created while its attempt is newer
        than status says (the pass that made the others stopped part way, or the API server refused
        it) and the others run; never created once they have ended; else gone (an interruption)."""
        pods = self._ranks(attempt)
        creating = attempt > int(self.written.get("attempt", 0))
        others_run = not any(pod.finished for pod in pods.values())
        outcomes: list[tuple[str, Any] | None] = []
        for rank in range(self.size):
            if rank in pods or not creating:
                outcomes.append(self._own_outcome(pods.get(rank)))
            else:
                outcomes.append(None if others_run else gang.NOT_CREATED)
        return outcomes

    def _attempt_outcome(self, attempt: int) -> tuple[PodView | None, str, Any] | None:
        """(the pod that decided it, kind, outcome) of an attempt that ended, else None."""
        if self.size == 1:
            pod = self.attempts[attempt].lead if attempt in self.attempts else None
            ended = self._own_outcome(pod)
            return None if ended is None else (pod, *ended)
        pods = self._ranks(attempt)
        decided = gang.combine(
            self._rank_outcomes(attempt), lambda r: accounting.ended_at(pods[r].raw) if r in pods else None
        )
        if decided is None:
            return None
        rank, kind, outcome = decided
        return pods.get(rank), kind, outcome

    def _account(self, attempt_record: Obj) -> None:
        last_commit, certain = self._last_commit(int(attempt_record["attempt"]))
        accounting.account(self.status, attempt_record, last_commit, self.config.prices)
        if not certain and "lostSeconds" in attempt_record:
            attempt_record["lostSecondsEstimated"] = True  # storage was not readable: at most this much

    def _place(self, attempt_record: Obj, pod: PodView | None) -> None:
        """The capacity an attempt ran on (for `any`, what its node was) and the node's instance type:
        from the node, or from what the pass saw while the pod ran (the node may be gone by now)."""
        node = self._node_facts(pod)
        seen = self.written.get("placement") or {}
        if seen.get("pod") != attempt_record["pod"]:
            seen = {}
        spot = node.get("spot", seen.get("spot"))
        if attempt_record["capacity"] == names.CAPACITY_ANY and spot is not None:
            attempt_record["capacity"] = names.CAPACITY_SPOT if spot else names.CAPACITY_ON_DEMAND
        instance = node.get("instanceType") or seen.get("instanceType")
        if instance:
            attempt_record["instanceType"] = instance

    def settle_accounts(self) -> None:
        """Accounts the attempts counted before their pods ended, once they have (or are gone).

        Step 2. Assumes count_ended_attempts has written status.attempts (an attempt it counted
        with its pods ended is accounted there already). Adds lost work and cost; no stops."""
        for attempt_record in self.status.get("attempts") or []:
            if not attempt_record.get(PENDING_ACCOUNT):
                continue
            if not self._ended(int(attempt_record["attempt"])):
                continue
            ended = self._ended_at(int(attempt_record["attempt"]))
            attempt_record["endTime"] = iso(min(ended, self.now) if ended else self.now)
            del attempt_record[PENDING_ACCOUNT]
            self._account(attempt_record)
            self.decision.events.append(
                (
                    "Normal",
                    "AttemptAccounted",
                    f"Attempt {attempt_record['attempt']} lost {attempt_record.get('lostSeconds', 0)}s of work",
                )
            )

    def release_counted_pods(self) -> None:
        """A counted pod lets go of its accounting finalizer once it is terminal, so that its final
        status stays readable until then. Recomputed each pass: a failed release is done again.

        Step 3. Assumes accountedAttempt is final for this pass (count_ended_attempts). Adds
        decision.release; no stops."""
        counted = int(self.status.get("accountedAttempt", 0))
        self.decision.release = [
            pod.name for pod in self.all_pods if pod.attempt <= counted and pod.finished and pod.holds_finalizer
        ]

    def force_delete_pods_of_gone_nodes(self) -> None:
        """Sorts the unfinished pods: those whose node is gone are force-deleted (its process is gone
        with it; PodGC waits 40 s or more); the live ones hold up the next attempt. A pod counted while
        it is still ending on a node that is not Ready does not: its kubelet is dead and will never
        finish it, and fencing keeps a survivor from writing over newer checkpoints.

        Step 4. Assumes accountedAttempt is final for this pass. Adds decision.force_delete and
        sets self.unfinished and self.live, which every later step reads (the steps that end the run
        stop self.unfinished); no stops."""
        counted = int(self.status.get("accountedAttempt", 0))
        unfinished = [pod for pod in self.all_pods if pod.attempt <= self.attempt and not pod.finished]
        for pod in unfinished:
            if not self._node(pod)[0]:
                self.decision.force_delete.append(pod.name)
        self.unfinished = [pod for pod in unfinished if pod.name not in self.decision.force_delete]
        self.live = [pod for pod in self.unfinished if pod.attempt > counted or self._node(pod)[1]]

    def notify_live_pod(self) -> None:
        """The current attempt's pod on a node with a reclaim notice or a drain: the pod is told (its
        notice annotation, once), and untold (the annotation emptied) when the node's notice or cordon
        goes. On a drain taint with voluntary Checkpoint the pass then waits for a checkpoint committed
        after the notice (or the timeout) and stops the pod itself: the drain completes and the
        attempt counts as an interruption, reason Drained. A plain cordon stops nothing: it opens the
        budget's eviction window instead (disruption.eviction_window), as consolidation
        AfterCheckpoint does after every fresh checkpoint.

        Step 5. Assumes self.live (force_delete_pods_of_gone_nodes). Adds decision.notify, the
        budget's floor and status.notice / drain / evictionWindow. Stops: a drained attempt's pods,
        before any other step can (so their reason is Drained, not GangEnded)."""
        self._notify_live_pod()
        self._set_budget_floor()

    def _notify_live_pod(self) -> None:
        status = self.status
        pod = self._noticed_pod()
        if pod is None or pod.deleting:
            status.pop("drain", None)
            status.pop("evictionWindow", None)  # the pod is going: the next attempt's starts closed
            return
        node = self._node_facts(pod)
        if pod.phase == "Running" and node:
            status["placement"] = {"pod": pod.name} | {k: node[k] for k in ("spot", "instanceType") if k in node}
        if self.run.voluntary != names.VOLUNTARY_CHECKPOINT:
            self._drop_budget()  # switched to Allow while the attempt runs: drains evict it from now on
        notice = self._node_notice(pod)
        given = disruption.Notice.of_pod(pod.raw)
        if notice is None and given is not None:
            self._withdraw_notice(pod, given)
            given = None
        if notice is not None and given is None:
            notice = given = dataclasses.replace(notice, time=iso(self.now))
        # A gang's ranks are all told, so that they join in one final checkpoint.
        for told in self._current():
            unaware = disruption.Notice.of_pod(told.raw) is None and not told.deleting
            if given is not None and unaware:
                self.decision.notify.append((told.name, given.annotation()))
        if notice is not None and given is notice:
            self.decision.events.append(
                (
                    "Normal",
                    "NoticeGiven",
                    f"Told pod {pod.name} of a {notice.kind.lower()} ({notice.reason} on node "
                    f"{pod.node}): {notice.seconds}s",
                )
            )
        if given is not None:
            status["notice"] = {"attempt": self.attempt, "time": given.time, "reason": given.reason, "kind": given.kind}
        cordon = notice if notice is not None and notice.reason == disruption.CORDONED else None
        self._eviction_window(pod, cordon)
        if notice is None or notice.kind != names.NOTICE_DRAIN or cordon is not None:
            status.pop("drain", None)
            return
        timeout = notice.seconds
        status["drain"], why = disruption.drain_step(
            status.get("drain"), pod.raw, self.attempt, self.latest(), self.now, timeout
        )
        if why is None:
            self.decision.requeue_after = min(disruption.DRAIN_POLL_SECONDS, self.decision.requeue_after or 60.0)
            return
        self._stop_attempt(pod, names.INTERRUPTION_DRAINED)
        self.decision.events.append(
            ("Normal", names.INTERRUPTION_DRAINED, f"Stopping pod {pod.name} for the drain: {why}")
        )

    def _withdraw_notice(self, pod: PodView, given: disruption.Notice) -> None:
        """The node's notice or cordon went (an uncordon, a notice taint removed): the ranks' notice
        annotations are emptied, which the operator and the SDK read as no notice, so that a task is
        not left preempted for the rest of its attempt, and a later notice is given afresh."""
        for told in self._current():
            if disruption.Notice.of_pod(told.raw) is not None and not told.deleting:
                self.decision.notify.append((told.name, ""))
        self.status.pop("notice", None)
        self.decision.events.append(
            (
                "Normal",
                "NoticeWithdrawn",
                f"Withdrew the {given.kind.lower()} notice of pod {pod.name}: {given.reason} on node "
                f"{pod.node} is gone",
            )
        )

    def _eviction_window(self, pod: PodView, cordon: disruption.Notice | None) -> None:
        """Keeps status.evictionWindow while a plain cordon or consolidation AfterCheckpoint wants one
        (reading storage every few seconds for a fresh checkpoint, or when the window closes)."""
        after = self.run.after_checkpoint
        window = self.status.get("evictionWindow")
        wanted = self.status.get("disruptionBudget") and (cordon is not None or after or "cordoned" in (window or {}))
        if not wanted:
            self.status.pop("evictionWindow", None)
            return
        was_open = disruption.window_open(window, self.now)
        window = disruption.eviction_window(
            window,
            pod.name,
            self.attempt,
            self.latest(),
            self.now,
            disruption.window_seconds(self.spec),
            cordon,
        )
        if cordon is None and not after:
            self.status.pop("evictionWindow", None)  # uncordoned: nothing wants a window any more
        else:
            self.status["evictionWindow"] = window
        now_open = disruption.window_open(window, self.now) and "evictionWindow" in self.status
        if now_open and not was_open:
            message = (
                f"Opened the PodDisruptionBudget of pod {pod.name} for "
                f"{disruption.window_seconds(self.spec)}s: checkpoint {window.get('checkpoint') or '(none)'}"
            )
            self.decision.events.append(("Normal", "EvictionWindowOpened", message))
        closes = disruption.window_closes_in(window, self.now) if now_open else None
        poll = disruption.DRAIN_POLL_SECONDS if cordon is not None else disruption.CONSOLIDATION_POLL_SECONDS
        self._requeue(min(poll, closes) if closes is not None else poll)

    def _set_budget_floor(self) -> None:
        """The budget's minAvailable for this pass: every rank while no window is open, else none (a
        gang's attempt ends with its first rank anyway). Stated every pass (level-based): the
        controller writes it only when it differs from what it last wrote."""
        if not self.status.get("disruptionBudget") or self.run.voluntary != names.VOLUNTARY_CHECKPOINT:
            return
        is_open = disruption.window_open(self.status.get("evictionWindow"), self.now)
        self.decision.budget_min_available = 0 if is_open else self.size

    def _noticed_pod(self) -> PodView | None:
        """The current attempt's pod whose node has a notice or drain (a gang's first such rank), else
        its first: the one a notice is read from."""
        current = self._current()
        if len(current) > 1:
            # The node's own notice first: once every rank has been told, a drain goes on from its node.
            for pod in current:
                if self._node_notice(pod):
                    return pod
            for pod in current:
                if disruption.Notice.of_pod(pod.raw):
                    return pod
        return current[0] if current else None

    def _node_notice(self, pod: PodView) -> disruption.Notice | None:
        """The reclaim notice or drain of the node `pod` is on, if it has one."""
        taints = (self.config.notice_taints, self.config.drain_taints)
        return disruption.node_notice(self._node_facts(pod), self.spec, *taints, self.run.grace_seconds)

    def stop_rest_of_gangs(self) -> None:
        """A gang's pod that ended other than in success ends its attempt: the ranks still running are
        stopped gracefully (SIGTERM, their grace period to join a final checkpoint).

        Step 6. Assumes the outcomes count_ended_attempts worked out (kept per pod). Stops: a
        gang's live ranks once one rank has ended its attempt; a pod a drain stops already keeps its
        reason (_stop adds a pod once)."""
        if self.size == 1:
            return
        for attempt in sorted(self.attempts):
            ranks = self._rank_outcomes(attempt)
            if not gang.stop_the_rest(ranks):
                continue
            for rank, pod in self.attempts[attempt].pods.items():
                if ranks[rank] is None and not pod.finished:
                    self._stop(pod, names.REASON_GANG_ENDED)

    def keep_finished(self) -> bool:
        """A finished run stops what is left of it, and goes when its TTL has passed.

        Step 7, the first that may end the pass. Assumes self.unfinished. Stops: every
        unfinished pod of a run whose phase was already terminal."""
        if self.phase_before not in names.TERMINAL_PHASES:
            return False
        reason = str(self.written.get("message", self.phase_before))
        self.decision.stop += [(pod.name, reason) for pod in self.unfinished]
        self._drop_budget()
        ttl = self.run.ttl_seconds_after_finished
        done_at = _parse(self.written.get("completionTime"))
        if ttl is not None and done_at is not None:
            left = (done_at + datetime.timedelta(seconds=int(ttl)) - self.now).total_seconds()
            if left <= 0:
                self.decision.delete_taskrun = True
            else:
                self._requeue(left)
        return True

    def finish_on_outcome(self) -> bool:
        """Success, a failurePolicy Fail rule, or a spent budget end the run.

        Step 8. Assumes lastOutcome and the counters are this pass's (count_ended_attempts) and
        the run was not finished before (keep_finished). Stops, through _finish, every unfinished pod."""
        last = self.last
        if last.get("kind") == names.OUTCOME_SUCCEEDED:
            return self._finish(names.SUCCEEDED, names.REASON_SUCCEEDED, f"attempt {last['attempt']} succeeded")
        if last.get("fatal"):
            message = f"attempt {last['attempt']} failed: a failurePolicy Fail rule matched"
            return self._finish(names.FAILED, names.REASON_FAILURE_POLICY, message)
        exhausted = policy.exhausted_budget(
            self.spec,
            self.status["failures"],
            self.status["interruptions"],
            self.config.default_retries,
            self.config.default_max_interruptions,
        )
        if exhausted:
            reason, message = exhausted
            ended = f"{message}; last attempt {last.get('attempt')} ended {last.get('reason')}"
            return self._finish(names.FAILED, reason, ended)
        return False

    def suspend(self) -> bool:
        """Suspended: the pod is stopped; as a batch/v1 Job's, the deadline timer stops and restarts on resume.

        Step 9. Assumes the run has not finished (the steps before). Stops every unfinished pod."""
        status = self.status
        if not self.run.suspend:
            set_condition(status, names.COND_SUSPENDED, False, "Resumed", "", self.now)
            return False
        self.decision.stop += [(pod.name, names.REASON_SUSPENDED) for pod in self.unfinished]
        status.pop("startTime", None)
        status.pop("progressDeadline", None)
        status.pop(PROGRESS_UNREADABLE, None)
        status["phase"] = names.SUSPENDED
        status["message"] = "suspended: the pod is stopped, its checkpoints are kept"
        set_condition(status, names.COND_SUSPENDED, True, names.REASON_SUSPENDED, status["message"], self.now)
        set_condition(status, names.COND_READY, False, names.REASON_SUSPENDED, status["message"], self.now)
        if self.phase_before != names.SUSPENDED:
            self.decision.events.append(("Normal", names.REASON_SUSPENDED, status["message"]))
        return True

    def deadline(self) -> bool:
        """activeDeadlineSeconds, counted from the startTime status had (suspend drops it, so the
        timer restarts on resume).

        Step 10. Assumes the run is neither finished nor suspended (the steps before end the pass
        then). Stops, through _finish, every unfinished pod once past it; else requeues for when it
        is due, and the pass goes on."""
        deadline, start = self.run.active_deadline_seconds, _parse(self.written.get("startTime"))
        if deadline is None or start is None:
            return False
        left = (start + datetime.timedelta(seconds=int(deadline)) - self.now).total_seconds()
        if left <= 0:
            message = f"the TaskRun ran longer than activeDeadlineSeconds ({deadline})"
            return self._finish(names.FAILED, names.REASON_DEADLINE, message)
        self._requeue(left)
        return False

    def heal_live_pod(self) -> bool:
        """The current attempt's pod, unless it is already being stopped: a spot pod with no room
        for afterPendingSeconds gives way to an on-demand attempt; a Running pod past its progress
        deadline (checked against storage first) is stopped, a failure. Never ends the pass.

        Step 11. Assumes the run goes on (the steps before did not end it) and decision.stop
        holds every stop of steps 5 and 6: a pod being stopped already is left alone."""
        current = self._current()
        pod = current[0] if current else None
        if pod is None or pod.deleting:
            self.status.pop("progressDeadline", None)
            self.status.pop(PROGRESS_UNREADABLE, None)
            return False
        stopping = {name for name, _ in self.decision.stop}
        if any(rank_pod.name in stopping or rank_pod.deleting for rank_pod in current):
            return False
        for rank_pod in current:
            give_way, wait = healing.spot_fallback(self.spec, rank_pod.raw, self.now)
            if give_way:
                # The gang moves together: its unscheduled pods are removed, its placed ones stopped.
                for other in current:
                    if other.node:
                        self._stop(other, names.REASON_GANG_ENDED)
                    else:
                        self.decision.reschedule.append(other.name)
                return False
            if wait is not None:
                self._requeue(wait)
        # A drain waiting for its checkpoint ends the attempt itself; on a node that is not Ready
        # the task cannot commit, and what ends it is an interruption, not a stall.
        if not self.status.get("drain") and self._node(pod)[1]:
            self._check_progress(pod)
        return False

    def _check_progress(self, pod: PodView) -> None:
        due = healing.progress_deadline(self.spec, pod.raw, self.attempt, self.status.get("checkpoint"), self.now)
        if due is None:
            self.status.pop("progressDeadline", None)
            self.status.pop(PROGRESS_UNREADABLE, None)
            return
        if due > self.now:
            self.status["progressDeadline"] = iso(due)
            self._requeue((due - self.now).total_seconds())
            return
        read, newest = self.latest()  # due: did the task commit since status last said?
        if not read:
            if not self.written.get(PROGRESS_UNREADABLE):
                message = (
                    f"progressDeadlineSeconds is not enforced while the operator cannot read "
                    f"{self.status['checkpoint']['uri']}: the pod is left running"
                )
                self.decision.events.append(("Warning", "ProgressUnknown", message))
            self.status[PROGRESS_UNREADABLE] = True
            self._requeue(healing.STORAGE_RETRY_SECONDS)
            return
        self.status.pop(PROGRESS_UNREADABLE, None)
        due = healing.progress_deadline(self.spec, pod.raw, self.attempt, newest, self.now) or self.now
        self.status["progressDeadline"] = iso(due)
        if due > self.now:
            self._requeue((due - self.now).total_seconds())
            return
        name, seconds = pod.name, self.run.progress_deadline_seconds
        self._stop_attempt(pod, names.REASON_PROGRESS_DEADLINE)
        self.decision.events.append(
            (
                "Warning",
                names.REASON_PROGRESS_DEADLINE,
                f"Stopping pod {name}: attempt {self.attempt} committed no checkpoint for "
                f"progressDeadlineSeconds ({seconds})",
            )
        )

    def wait_for_force_deleted_pod(self) -> bool:
        """The next attempt waits until a force-deleted pod is gone too (its deletion event starts the
        next pass), so that two pods of one TaskRun never exist at once.

        Step 12. Assumes decision.force_delete (step 4)."""
        if not self.decision.force_delete:
            return False
        gone = max(
            (pod for pod in self.all_pods if pod.name in self.decision.force_delete),
            key=lambda pod: pod.attempt,
        )
        self.status["podName"] = gone.name
        return self._wait(
            f"waiting for pod {gone.name} to be deleted: its node {gone.node} is gone",
            names.REASON_POD_PENDING,
            1.0,
        )

    def complete_gang(self) -> bool:
        """A gang's attempt whose pods were not all created (the pass that began it stopped part way,
        or the API server refused one): the missing ranks are created, as the first pods were.

        Step 13. Assumes no pod is being force-deleted (step 12 waits for it) and the run goes
        on. Adds the missing ranks' pods (or waits as create_next_attempt does); no stops."""
        pods = self._ranks(self.attempt)
        absent = gang.missing(pods, self.size) if self.size > 1 else []
        if not absent or not pods or self.attempt <= int(self.written.get("attempt", 0)):
            return False
        if any(pod.finished or pod.deleting for pod in pods.values()):
            return False  # it is ending: the rest is not wanted any more
        if self.refuse_invalid_spec():
            return True
        source = self.resume_source(self.resume_from)
        if source is None or self.refused_recently():
            return self.show_live_pod()
        capacity = next(iter(pods.values())).capacity
        self._create(self.attempt, capacity or names.CAPACITY_SPOT, source, absent)
        return True

    def show_live_pod(self) -> bool:
        """A live pod: Running, or why it is not (it does not start, or it is terminating).

        Step 14. Assumes self.live (step 4) and that no earlier step ended the pass. Adds
        status only; no stops."""
        if not self.live:
            return False
        status = self.status
        newest = [pod for pod in self.live if pod.attempt == self.live[-1].attempt]
        # A gang: the first of its pods that does not run says why, else rank 0 speaks for it.
        pod = next((rank_pod for rank_pod in newest if not rank_pod.running), newest[0])
        terminating = pod.deleting
        running = pod.running
        first = newest[0]  # status names rank 0's pod and node; the message, the one that does not run
        status["phase"] = names.RUNNING if running else names.PENDING
        status["podName"] = first.name
        status["nodeName"] = first.node
        status["capacity"] = first.capacity if first.capacity is not None else status.get("capacity", "")
        cause = None if running or terminating else pending_cause(pod.raw)
        reason = names.REASON_POD_RUNNING if running else (cause or (names.REASON_POD_PENDING, ""))[0]
        if running and self.size > 1:
            status["message"] = f"attempt {self.attempt} is running: {len(newest)} pods, rank 0 on {status['nodeName']}"
        elif running:
            status["message"] = f"attempt {self.attempt} is running on {status['nodeName']}"
        elif cause:
            status["message"] = f"pod {pod.name} is not starting: {cause[0]}: {cause[1]}"
        else:
            status["message"] = f"waiting for pod {pod.name} to {'terminate' if terminating else 'start'}"
        set_condition(status, names.COND_READY, running, reason, status["message"], self.now)
        return True

    def back_off(self) -> bool:
        """After a failure, the retry waits; after interruptions in a row of attempts that never
        started their task (a node that rejects every pod), so does the next attempt. The status
        names when it is due, not a countdown, so it stays the same while it waits.

        Step 15. Assumes no pod is live (step 14 ends the pass when one is) and lastOutcome is
        this pass's. Adds status and a requeue; no stops."""
        last, status = self.last, self.status
        if last.get("kind") == names.OUTCOME_FAILED:
            delay = policy.backoff_seconds(self.spec, status["failures"])
            ended = "failed"
        elif last.get("kind") == names.OUTCOME_INTERRUPTED:
            in_a_row = int(status.get(IN_A_ROW, 0))
            delay = policy.interruption_backoff_seconds(in_a_row)
            ended = f"was interrupted before its task started, {in_a_row} in a row"
        else:
            return False
        due = (_parse(status.get("lastEndTime")) or self.now) + datetime.timedelta(seconds=delay)
        wait = (due - self.now).total_seconds()
        if wait <= 0:
            return False
        status["phase"] = names.BACKOFF
        status["retryAfter"] = iso(due)
        status["message"] = (
            f"attempt {last['attempt']} {ended} ({last.get('reason')}); retrying at {status['retryAfter']}"
        )
        set_condition(status, names.COND_READY, False, names.REASON_BACKOFF, status["message"], self.now)
        if self.phase_before != names.BACKOFF:
            self.decision.events.append(("Normal", names.REASON_BACKOFF, status["message"]))
        self.decision.requeue_after = min(wait, self.decision.requeue_after or wait)
        return True

    def wait_for_namesakes(self) -> bool:
        """An earlier TaskRun of this name left pods: their owner is gone (a name names one TaskRun at a
        time), and the garbage collector may not notice when the name is taken again at once, so they
        are deleted here, gracefully, and the new run's first attempt waits until they are gone.

        Step 16. Assumes no pod of this run is live (step 14). Stops: an earlier namesake's pods
        (and releases them)."""
        if not self.namesakes:
            return False
        for pod in self.namesakes:
            if not pod.deleting:
                self.decision.stop.append((pod.name, "OwnerGone"))
            if pod.holds_finalizer:
                self.decision.release.append(pod.name)
        pod_name = self.namesakes[0].name
        message = f"waiting for pod {pod_name} of an earlier TaskRun named {self.run.name} to be gone"
        return self._wait(message, names.REASON_POD_PENDING, 2.0)

    def refuse_invalid_spec(self) -> bool:
        """A spec that can never run fails the run before its next attempt is built, with its first
        problem: no pod, Service or budget is created for it (nor is one left: _finish drops the budget).

        Step 17 (complete_gang calls it too, before it creates). Assumes nothing is live and no
        wait holds the run: it is about to create. Stops, through _finish, any unfinished pod."""
        found = validate.problems(self.taskrun, self.config)
        if not found:
            return False
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return self._finish(names.FAILED, found[0].reason, f"{found[0]}{more}")

    def resume_source(self, resolved: str | None) -> str | None:
        """The resumeFrom source, resolved once and kept: it matters only until the run has a checkpoint
        of its own, and the TaskRun it names may be deleted meanwhile. None: wait for it."""
        checkpoint = self.status["checkpoint"]
        source = resolved if resolved is not None else checkpoint.get("resumeFrom")
        if source is None and checkpoint.get("id"):
            return ""
        if source is None:
            missing = self.run.resume_from_taskrun
            # Not a failure: the source may be created after this run (one kubectl apply of both).
            message = (
                f"waiting for spec.checkpoint.resumeFrom.taskRun {missing!r}: no TaskRun of that name in namespace "
                f"{self.run.namespace}; create it, or name one that exists, or write its checkpoints' "
                "s3:// URI as spec.checkpoint.resumeFrom.uri"
            )
            if self.phase_before != names.PENDING or self.written.get("message") != message:
                self.decision.events.append(("Warning", REASON_RESUME_SOURCE_MISSING, message))
            self._wait(message, REASON_RESUME_SOURCE_MISSING, 10.0)
            return None
        if source:
            checkpoint["resumeFrom"] = source
        return source

    def refused_recently(self) -> bool:
        """The API server refused the last create (quota, PodSecurity, a webhook): wait, unchanged."""
        retry_at = _parse((self.status.get("podRefusal") or {}).get("retryAfter"))
        if retry_at is None or retry_at <= self.now:
            return False
        wait = (retry_at - self.now).total_seconds()
        self.decision.requeue_after = min(wait, self.decision.requeue_after or wait)
        return True

    def create_next_attempt(self) -> bool:
        """Step 18, the last: every step before it found nothing that holds the run (it is not finished,
        suspended or past its deadline, no pod of it or of a namesake is live or going, no backoff
        is due, its spec is valid). It still waits for a resumeFrom source not found yet, a refused
        create not due again, or an attempt not counted (a gang's, part made); else it creates the
        next attempt, on the capacity the interruptions so far call for. Always ends the pass."""
        source = self.resume_source(self.resume_from)
        if source is None or self.refused_recently():
            return True
        uncounted = int(self.status.get("accountedAttempt", 0)) < self.attempt
        if uncounted:  # never past an attempt not counted: its pods (a gang's, part made) still decide it
            self._wait(f"waiting for attempt {self.attempt} to end", names.REASON_POD_PENDING, 5.0)
            return True
        capacity = policy.capacity_for_next_attempt(
            self.spec, self.status["interruptions"], no_spot_capacity=bool(self.status.get("capacityFallback"))
        )
        self._create(self.attempt + 1, capacity, source, None)
        return True

    def _create(self, next_attempt: int, capacity: str, source: str, ranks: list[int] | None) -> None:
        """Creates attempt `next_attempt`'s pods (only `ranks` of a gang's, when given)."""
        status = self.status
        pods = build_pods(self.taskrun, next_attempt, capacity, self.config, resume_from=source, ranks=ranks)
        on_oom = self.run.on_oom_killed
        avoided = policy.avoided_nodes(list(status.get("avoidNodes") or []), iso(self.now))
        if avoided:
            status["avoidNodes"] = [e for e in status["avoidNodes"] if e["node"] in avoided]
        else:
            status.pop("avoidNodes", None)
        try:
            for pod in pods:
                pod["spec"] = avoid_nodes(memory.scale(pod["spec"], int(status.get("oomKills", 0)), on_oom), avoided)
        except ValueError as err:
            self._finish(names.FAILED, REASON_INVALID_MEMORY_POLICY, f"spec.resources.onOOMKilled: {err}")
            return
        pod = pods[0]
        if on_oom is not None:
            status["memory"] = memory.of_pod(pod)
        else:
            status.pop("memory", None)
        self.decision.pods = pods
        if self.size > 1:
            self.decision.service = build_service(self.taskrun)
        if self.run.voluntary == names.VOLUNTARY_CHECKPOINT:
            self.decision.budget = build_budget(self.taskrun)
            status["disruptionBudget"] = self.decision.budget["metadata"]["name"]
        else:
            self._drop_budget()
        status.pop("drain", None)
        status.pop("notice", None)
        # What it resumes from: storage is read once in this pass (already, when the attempt before
        # was counted here); attempt 1 starts from nothing of this run's.
        newest = (self.latest()[1] or {}).get("id") if next_attempt > 1 else None
        if newest:
            status["startCheckpoint"] = {"attempt": next_attempt, "id": newest}
        else:
            status.pop("startCheckpoint", None)
        status.pop("progressDeadline", None)
        status.pop(PROGRESS_UNREADABLE, None)
        status["attempt"] = next_attempt
        status["capacity"] = capacity
        status["podName"] = names.pod_name(self.run.name, next_attempt, 0 if self.size > 1 else None)
        status["nodeName"] = ""
        status["phase"] = names.PENDING
        status.pop("retryAfter", None)
        status.pop("podRefusal", None)
        status["message"] = f"created attempt {next_attempt} on {capacity} capacity"
        if self.size > 1:
            status["message"] += f": {self.size} pods"
        status.setdefault("startTime", iso(self.now))
        set_condition(status, names.COND_READY, False, names.REASON_POD_PENDING, status["message"], self.now)
        made = ", ".join(pod["metadata"]["name"] for pod in pods)
        self.decision.events.append(
            (
                "Normal",
                "AttemptCreated",
                f"Created pod{'s' if len(pods) > 1 else ''} {made} (attempt {next_attempt}, {capacity})",
            )
        )


# The steps of a pass, in order (the module docstring has their table). Every one of these runs.
EVERY_PASS: tuple[Callable[[_Pass], None], ...] = (
    _Pass.count_ended_attempts,
    _Pass.settle_accounts,
    _Pass.release_counted_pods,
    _Pass.force_delete_pods_of_gone_nodes,
    _Pass.notify_live_pod,
    _Pass.stop_rest_of_gangs,
)
# Then these, until the first that returns True: it ends the pass (create_next_attempt always does).
FIRST_THAT_ENDS: tuple[Callable[[_Pass], bool], ...] = (
    _Pass.keep_finished,
    _Pass.finish_on_outcome,
    _Pass.suspend,
    _Pass.deadline,
    _Pass.heal_live_pod,
    _Pass.wait_for_force_deleted_pod,
    _Pass.complete_gang,
    _Pass.show_live_pod,
    _Pass.back_off,
    _Pass.wait_for_namesakes,
    _Pass.refuse_invalid_spec,
    _Pass.create_next_attempt,
)


def _raw(pod: PodView | None) -> Obj | None:
    """The pod as the API server sent it, for the pure modules that take one (None: it is gone)."""
    return pod.raw if pod else None


def refused(
    taskrun: Obj, decision: Decision, code: int, message: str, now: datetime.datetime, what: str = ""
) -> Decision:
    """The pass whose pod the API server refused (HTTP `code`, its `message`): no attempt started.

    What the pass counted stays; the attempt it was about to start does not exist, so the status
    keeps the previous attempt. A template the API server finds invalid (422) cannot heal: the run
    fails with its message. Anything else (ResourceQuota, PodSecurity, an admission webhook) can:
    Ready False with the message, an Event when the message is new, and the next try after a wait
    that doubles with each refusal in a row (2 s to 300 s), not a retry every pass.
    """
    written: Obj = taskrun.get("status") or {}
    status = decision.status
    what = what or f"pod {(decision.create or {}).get('metadata', {}).get('name', '')}".rstrip()
    for key in ("attempt", "podName", "nodeName", "capacity", "startTime", "memory", "startCheckpoint"):
        if key in written:
            status[key] = written[key]
        else:
            status.pop(key, None)
    status.setdefault("attempt", 0)
    refusal = Decision(
        status=status,
        release=decision.release,
        stop=decision.stop,
        force_delete=decision.force_delete,
        notify=decision.notify,
        delete_budget=decision.delete_budget,
        budget_min_available=decision.budget_min_available,
        reschedule=decision.reschedule,
    )
    if decision.budget is None and "disruptionBudget" not in written:
        status.pop("disruptionBudget", None)  # the budget is created before the pod: it exists if it was asked for
    refusal.events = [e for e in decision.events if e[1] != "AttemptCreated"]
    if code == 422:
        invalid = f"the API server refused {what} as invalid: {message}"
        status["phase"] = names.FAILED
        status["message"] = invalid
        status.setdefault("completionTime", iso(now))
        set_condition(status, names.COND_FAILED, True, REASON_INVALID_TEMPLATE, invalid, now)
        set_condition(status, names.COND_READY, False, REASON_INVALID_TEMPLATE, invalid, now)
        refusal.events.append(("Warning", REASON_INVALID_TEMPLATE, invalid))
        return refusal
    previous: Obj = written.get("podRefusal") or {}
    count = int(previous.get("count", 0)) + 1
    first, cap = REFUSAL_BACKOFF
    wait = min(cap, first * 2 ** (count - 1))
    retry_at = iso(now + datetime.timedelta(seconds=wait))
    status["podRefusal"] = {"count": count, "code": code, "message": message, "retryAfter": retry_at}
    status["phase"] = names.PENDING
    status["message"] = f"the API server refused {what}: {message}; retrying at {retry_at}"
    set_condition(status, names.COND_READY, False, REASON_POD_REFUSED, status["message"], now)
    if previous.get("message") != message:
        refusal.events.append(("Warning", REASON_POD_REFUSED, status["message"]))
    refusal.requeue_after = wait
    return refusal
