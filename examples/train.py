"""A realistic training loop on spot capacity: SGD on a linear model, numpy only.

It restores the newest checkpoint (weights, optimizer state, step), checkpoints every
CHECKPOINT_EVERY steps, and on preemption commits one final checkpoint inside its grace period.
Given an interruption notice it commits at once; for a drain it then stops (the operator moves it),
for a reclaim it trains on while the notice leaves time and makes its last commit as late as still
fits (the time its last commit took, plus a margin), then stops: nothing is lost even when a
commit takes longer than the grace period SIGTERM leaves.
SAVE_SECONDS stands in for the upload of a large model (every commit takes that much longer).
The TaskRun's result says which step each attempt resumed from.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import spotrun

STEPS = int(os.environ.get("STEPS", "400"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.05"))
CHECKPOINT_EVERY = int(os.environ.get("CHECKPOINT_EVERY", "20"))
SAVE_SECONDS = float(os.environ.get("SAVE_SECONDS", "0"))
MARGIN_SECONDS = 2.0  # the last commit after a notice starts this much before it would not fit


def data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(256, 8))
    true_w = np.arange(1, 9, dtype=float)
    return x, x @ true_w + rng.normal(scale=0.1, size=256)


def pack(state: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in state.items()})
    return buffer.getvalue()


def unpack(raw: bytes) -> dict[str, object]:
    with np.load(io.BytesIO(raw)) as saved:
        return {
            "w": saved["w"],
            "velocity": saved["velocity"],
            "step": int(saved["step"]),
            "resumed": [int(s) for s in saved["resumed"]],
        }


@spotrun.task(retries=2)
def train() -> dict[str, object]:
    ctx = spotrun.current_context()
    cp = ctx.checkpoint
    raw = cp.read()
    state = unpack(raw) if raw else {"w": np.zeros(8), "velocity": np.zeros(8), "step": 0, "resumed": []}
    state["resumed"] = [*state["resumed"], state["step"]]
    print(
        f"attempt {ctx.attempt} on {os.environ.get('SPOTRUN_CAPACITY', 'local')} resumed from step {state['step']}",
        flush=True,
    )

    took = [SAVE_SECONDS]  # how long the last commit took

    def commit(**metadata: object) -> None:
        started = time.monotonic()
        time.sleep(SAVE_SECONDS)
        cp.write(pack(state), step=int(state["step"]), metadata=metadata or None)
        took[0] = time.monotonic() - started

    @spotrun.on_preemption
    def final_checkpoint() -> None:
        commit()
        committed_on_notice[0] = True
        print(f"preempted: committed step {state['step']} with {spotrun.seconds_left():.0f}s left", flush=True)

    committed_on_notice = [False]

    x, y = data(np.random.default_rng(0))
    w, velocity = np.array(state["w"]), np.array(state["velocity"])
    loss = float("nan")
    while state["step"] < STEPS:
        grad = 2 * x.T @ (x @ w - y) / len(y)
        velocity = 0.9 * velocity - 0.01 * grad
        w = w + velocity
        loss = float(np.mean((x @ w - y) ** 2))
        state.update(w=w, velocity=velocity, step=int(state["step"]) + 1)
        periodic = state["step"] % CHECKPOINT_EVERY == 0
        # After a notice, the last commit that still fits, counting a periodic one due now: then
        # nothing is lost even when a commit on SIGTERM could not fit its grace period.
        needed = took[0] * (2 if periodic else 1) + STEP_SECONDS + MARGIN_SECONDS
        notice = spotrun.notice()
        if notice is not None and notice.kind == "Drain" and committed_on_notice[0]:
            # A drain: the operator stops the pod once this commit is seen; training on would be lost.
            raise spotrun.RecoverableError("stopped for a drain after the checkpoint taken on its notice")
        if notice is not None and spotrun.seconds_left() <= needed:
            commit(loss=loss)
            print(
                f"notice: committed step {state['step']}, stopping with {spotrun.seconds_left():.0f}s left", flush=True
            )
            raise spotrun.RecoverableError("stopped on an interruption notice after its last checkpoint")
        if periodic:
            commit(loss=loss)
            print(f"step {state['step']} loss {loss:.4f} checkpointed", flush=True)
        time.sleep(STEP_SECONDS)
    return {"loss": round(loss, 6), "steps": state["step"], "resumed": state["resumed"], "attempt": ctx.attempt}


if __name__ == "__main__":
    print(train())
