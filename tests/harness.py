"""Running the protocol harness's machines: configuration, profiles, seeds, the SDK's test settings, statistics.

`run()` runs a machine (`tests.protocol_model.ProtocolMachine`, `tests.gang_model.GangMachine`)
with a seed it prints first, and prints examples, steps and faults (and their rates per minute)
last, whatever pytest captures. Environment:

    HYPOTHESIS_PROFILE        ci (default: bounded, about a minute) or soak (many more examples)
    SPOTRUN_HARNESS_SEED      the seed to run (to reproduce a failure: the one it printed)
    SPOTRUN_HARNESS_EXAMPLES  examples per machine, instead of the profile's
    SPOTRUN_HARNESS_BLOB      a failure's @reproduce_failure blob, to replay that very example
    SPOTRUN_HARNESS_WITHOUT   parts to turn off (Config's fields, comma-separated), e.g. hostile,sidecars
    SPOTRUN_HARNESS_WITH      parts to turn on that are off by default: coarse_mtimes
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test
from spotrun import _checkpoint, _gang
from spotrun._storage import Storage

from tests.checkpoint_model import Model
from tests.faults import NO_FAULTS, Fault, Injection, Journal, Plan, Tally

StorageFactory = Callable[[Path], Storage]  # a handle on a new, empty location (given a scratch directory)
M = TypeVar("M", bound=RuleBasedStateMachine)

KEEPS = (2, 3)
RERUN_VARIABLES = ("SPOTRUN_HARNESS_EXAMPLES", "SPOTRUN_HARNESS_WITHOUT", "SPOTRUN_HARNESS_WITH")
INLINE_MAX = 24  # small, so that small checkpoints go inside their manifest and the rest to data/


@dataclasses.dataclass(frozen=True)
class Config:
    """What the machine may do. Every part is on by default; `SPOTRUN_HARNESS_WITHOUT` (a comma
    list of field names) turns parts off, so that a defect found by one part does not hide what
    another finds, and `SPOTRUN_HARNESS_WITH=coarse_mtimes` turns on the one that is off."""

    user_files: bool = True  # restore directories hold the user's own files
    rewrites: bool = True  # the task rewrites restored files in place
    hostile: bool = True  # a hostile writer of the prefix
    sidecars: bool = True  # a second writer of the same attempt
    faults: bool = True  # injected storage faults
    holds: bool = True  # SLOW faults hold a process mid-call while others act
    # A same-size rewrite keeps its mtime, as one within a tick of a coarse clock does (its ctime
    # still moves: utime sets it); off by default: it fails an SDK that trusts size and mtime alone.
    coarse_mtimes: bool = False
    max_writers: int = 4  # writer processes at once: tasks, zombies, sidecars
    max_attempt: int = 5
    # A gang's wait for its other rank: a fault-free save must commit within it, and a rank that
    # failed without a word costs the other this much.
    gang_timeout: float = 1.5

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        flags: dict[str, Any] = dict(overrides)
        for name in filter(None, os.environ.get("SPOTRUN_HARNESS_WITHOUT", "").split(",")):
            flags[name.strip().replace("-", "_")] = False
        for name in filter(None, os.environ.get("SPOTRUN_HARNESS_WITH", "").split(",")):
            flags[name.strip().replace("-", "_")] = True
        unknown = set(flags) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown harness settings {sorted(unknown)}")
        return cls(**flags)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # Examples and steps per machine, tuned on a 2-core machine: see the test modules for the times.
    "ci": {
        "protocol": {"max_examples": 200, "stateful_step_count": 50},
        "gang": {"max_examples": 20, "stateful_step_count": 10},
    },
    # Hours: about 20 minutes of the protocol machine per 1,000 examples on a loaded 2-core machine.
    "soak": {
        "protocol": {"max_examples": 20_000, "stateful_step_count": 80},
        "gang": {"max_examples": 1_000, "stateful_step_count": 12},
    },
}


def profile() -> str:
    """HYPOTHESIS_PROFILE when it names one of this harness's profiles (ci, soak); else ci, so that
    a profile of other hypothesis tests leaves this harness bounded."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    return name if name in PROFILES else "ci"


def profile_settings(machine: str, *, scale: float = 1.0) -> settings:
    """The settings of `machine` ("protocol" or "gang") under HYPOTHESIS_PROFILE; `scale` shrinks
    the example count for a slower storage. SPOTRUN_HARNESS_EXAMPLES sets the count (before scale)."""
    chosen = PROFILES[profile()][machine]
    examples = int(os.environ.get("SPOTRUN_HARNESS_EXAMPLES") or chosen["max_examples"])
    return settings(
        max_examples=max(1, int(examples * scale)),
        stateful_step_count=chosen["stateful_step_count"],
        deadline=None,  # a step is many storage calls, and gangs wait out timeouts
        database=None,  # a run reproduces from its printed seed; nothing is written into the repository
        print_blob=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink, Phase.explain),
        suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
    )


def plans(kinds: tuple[Fault, ...], *, most: int = 2, one_in: int = 3) -> st.SearchStrategy[Plan]:
    """No faults for most operations; for one in `one_in`, up to `most` faults at its first calls.
    It shrinks toward no faults."""
    injection = st.builds(Injection, at=st.integers(0, 10), fault=st.sampled_from(kinds), pick=st.integers(0, 40))
    faulty = st.lists(injection, min_size=1, max_size=most, unique_by=lambda i: i.at).map(lambda xs: Plan(tuple(xs)))
    return st.integers(0, one_in - 1).flatmap(lambda n: faulty if n == one_in - 1 else st.just(NO_FAULTS))


# ----- the run's statistics -------------------------------------------------------------------------------


@dataclasses.dataclass
class RunStats:
    name: str
    tally: Tally = dataclasses.field(default_factory=Tally)
    examples: int = 0
    steps: int = 0
    ops: Counter[str] = dataclasses.field(default_factory=Counter)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        minutes = max(elapsed / 60, 1e-9)
        faults = ", ".join(f"{f.value} {n}" for f, n in sorted(self.tally.faults.items(), key=lambda x: x[0].value))
        return (
            f"{self.name}: {self.examples} examples run (shrinking's included), {self.steps} steps, "
            f"{self.tally.calls} storage calls and {self.tally.total} faults injected ({faults or 'none'}) "
            f"in {elapsed:.1f}s: "
            f"{self.examples / minutes:.0f} examples/min, {self.steps / minutes:.0f} steps/min, "
            f"{self.tally.total / minutes:.0f} faults/min; operations: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        )


# ----- SDK settings for a run -----------------------------------------------------------------------------


@contextlib.contextmanager
def sdk_settings() -> Iterator[None]:
    """Small inline checkpoints (so that both kinds occur), nonces from a counter (so that a run
    is the same every time: storage keys, and so the order of listings, depend on them), and a
    gang's polling fast."""
    patches = [
        (vars(_checkpoint), "INLINE_MAX", INLINE_MAX),
        (vars(_checkpoint), "new_nonce", NONCES.next),
        (vars(_gang), "POLL_SECONDS", (0.01, 0.05)),
    ]
    saved = [(namespace, name, namespace[name]) for namespace, name, _ in patches]
    for namespace, name, value in patches:
        namespace[name] = value
    try:
        yield
    finally:
        for namespace, name, value in saved:
            namespace[name] = value


class _Nonces:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def reset(self) -> None:
        with self._lock:
            self._n = 0

    def next(self) -> str:
        with self._lock:
            self._n += 1
            return f"{self._n:08x}feed"  # unique in any prefix of 8 or more, as uuid4().hex[:12] is


NONCES = _Nonces()


# ----- what both machines share ---------------------------------------------------------------------------


class OnStorage(RuleBasedStateMachine):
    """A machine over a new, empty storage location per example: the journal of every call that took
    effect there, and the model built from it. `machine_for` gives `make_storage` and `config`;
    teardown empties the location and removes the example's scratch directory."""

    config: ClassVar[Config] = Config()
    stats: ClassVar[RunStats]
    scratch_prefix: ClassVar[str]

    def make_storage(self, scratch: Path) -> Storage:
        """A handle on a new, empty location; `machine_for` gives it."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        NONCES.reset()
        self.stats.examples += 1
        self.scratch = Path(tempfile.mkdtemp(prefix=self.scratch_prefix))
        self.inner = self.make_storage(self.scratch)
        self.journal = Journal()
        self.model = Model(self.inner, self.journal)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            keys = [key for key, _ in self.inner.list("")]
            if keys:
                self.inner.delete(keys)
        shutil.rmtree(self.scratch, ignore_errors=True)


# ----- running a machine ----------------------------------------------------------------------------------


def machine_for(base: type[M], make_storage: StorageFactory, config: Config | None = None) -> type[M]:
    """`base` over the locations `make_storage` gives, with `config` (from the environment by default)."""
    return type(
        f"{base.__name__}Run",
        (base,),
        {"make_storage": staticmethod(make_storage), "config": config or Config.from_env()},
    )


def run(machine: type[RuleBasedStateMachine], *, name: str, settings: settings, say: Callable[[str], None]) -> RunStats:
    """Runs `machine` with a seed it prints first (SPOTRUN_HARNESS_SEED, or a new one) and its
    statistics last; a failure carries the seed in a note."""
    seed = int(os.environ.get("SPOTRUN_HARNESS_SEED") or random.SystemRandom().randrange(2**32))
    chosen = profile()
    stats = RunStats(name)
    machine.stats = stats
    hypothesis.seed(seed)(machine)
    blob = os.environ.get("SPOTRUN_HARNESS_BLOB")
    if blob:
        hypothesis.reproduce_failure(hypothesis.__version__, blob.encode())(machine)
    config = getattr(machine, "config", None)
    rerun = " ".join(
        [f"SPOTRUN_HARNESS_SEED={seed}", f"HYPOTHESIS_PROFILE={chosen}"]
        + [f"{v}={os.environ[v]}" for v in RERUN_VARIABLES if os.environ.get(v)]
    )
    say(
        f"{name}: seed {seed}, profile {chosen} ({settings.max_examples} examples of up to "
        f"{settings.stateful_step_count} steps); rerun with {rerun}" + (f"; {config}" if config != Config() else "")
    )
    try:
        with sdk_settings():
            run_state_machine_as_test(machine, settings=settings)
    except BaseException as err:
        err.add_note(f"{name}: seed {seed}; rerun with {rerun}")
        raise
    finally:
        say(stats.summary())
    return stats


def replay(machine: type[M], steps: list[tuple[str, dict[str, Any]]], *, invariant: str) -> None:
    """Runs `steps` (rule name, arguments) on a new `machine`, checking `invariant` after each, as
    hypothesis would: an explicit example, for a regression test of one scenario."""
    with sdk_settings():
        state = machine()
        try:
            for name, arguments in steps:
                getattr(state, name)(**arguments)
                getattr(state, invariant)()
        finally:
            state.teardown()
