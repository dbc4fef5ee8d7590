"""A task for the operator tests: counts to STEPS, one step every STEP_SECONDS, a checkpoint per step.

It returns the step it resumed from on each attempt, so a test can tell that an attempt resumed
from a checkpoint rather than from zero. Exit code EXIT_AT_STEP=N:CODE makes attempt 1 exit.
CHECKPOINT_EVERY=K commits every K steps only; FINAL_SAVE=1 also commits from an on_preemption
callback (at a notice and at SIGTERM), printing when. STALL_AT_STEP=N makes attempt 1 hang after
its commit of step N, alive but making no progress.
"""

import os
import time

import spotrun

STEPS = int(os.environ.get("STEPS", "20"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.5"))
CHECKPOINT_EVERY = int(os.environ.get("CHECKPOINT_EVERY", "1"))


@spotrun.task
def count() -> dict[str, object]:
    ctx = spotrun.current_context()
    cp = ctx.checkpoint
    raw = cp.read()
    state = {"step": 0, "resumed": []} if raw is None else eval(raw.decode())
    state["resumed"].append(state["step"])
    print(f"attempt {ctx.attempt} resumed from step {state['step']}", flush=True)
    exit_at = os.environ.get("EXIT_AT_STEP", "")
    if os.environ.get("FINAL_SAVE"):

        @spotrun.on_preemption
        def final_save() -> None:
            info = cp.write(repr(state).encode(), step=state["step"])
            print(f"final save of step {state['step']} as {info.id} at {time.time():.3f}", flush=True)

    while state["step"] < STEPS:
        time.sleep(STEP_SECONDS)
        state["step"] += 1
        if state["step"] % CHECKPOINT_EVERY == 0 or state["step"] == STEPS:
            cp.write(repr(state).encode(), step=state["step"])
        if exit_at and ctx.attempt == 1 and state["step"] == int(exit_at.split(":")[0]):
            raise SystemExit(int(exit_at.split(":")[1]))
        if ctx.attempt == 1 and state["step"] == int(os.environ.get("STALL_AT_STEP", "0")):
            print(f"stalling after step {state['step']} at {time.time():.3f}", flush=True)
            time.sleep(3600)
    return {"steps": state["step"], "resumed": state["resumed"], "attempt": ctx.attempt}


if __name__ == "__main__":
    count()
