"""A realistic training loop on spot capacity: SGD on a linear model, numpy only.

It restores the newest checkpoint (weights, optimizer state, step), checkpoints every
CHECKPOINT_EVERY steps, and on preemption commits one final checkpoint inside its grace period.
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

    @spotrun.on_preemption
    def final_checkpoint() -> None:
        cp.write(pack(state), step=int(state["step"]))
        print(f"preempted: committed step {state['step']} with {spotrun.seconds_left():.0f}s of grace left", flush=True)

    x, y = data(np.random.default_rng(0))
    w, velocity = np.array(state["w"]), np.array(state["velocity"])
    loss = float("nan")
    while state["step"] < STEPS:
        grad = 2 * x.T @ (x @ w - y) / len(y)
        velocity = 0.9 * velocity - 0.01 * grad
        w = w + velocity
        loss = float(np.mean((x @ w - y) ** 2))
        state.update(w=w, velocity=velocity, step=int(state["step"]) + 1)
        if state["step"] % CHECKPOINT_EVERY == 0:
            cp.write(pack(state), step=int(state["step"]), metadata={"loss": loss})
            print(f"step {state['step']} loss {loss:.4f} checkpointed", flush=True)
        time.sleep(STEP_SECONDS)
    return {"loss": round(loss, 6), "steps": state["step"], "resumed": state["resumed"], "attempt": ctx.attempt}


if __name__ == "__main__":
    print(train())
