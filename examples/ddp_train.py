"""PyTorch DistributedDataParallel on CPU (gloo) as a gang of pods on spot: `replicas: 2`.

`init_process_group("gloo")` reads the env contract the operator gives every rank (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE). Each rank trains on its own shard of a synthetic regression
problem; DDP averages the gradients, so every rank holds the same model. Every CHECKPOINT_EVERY
steps all ranks save together: the checkpoint is committed for every rank or for none, and the
next attempt's ranks all restore the same one. Each step the ranks also agree whether one of them
was told to stop (a notice or SIGTERM): if so they all save at that step, then stop.

Training is deterministic (fixed seeds, data chosen by step and rank), so an interrupted run ends
with the same model as an uninterrupted one. `python ddp_train.py --reference` computes that
model in one process, averaging the ranks' gradients by hand, and prints it as JSON.
The TaskRun's result (rank 0's) holds the final parameters, the loss, and the step every rank
resumed from on every attempt.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import sys
import time

import spotrun
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

STEPS = int(os.environ.get("STEPS", "300"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.05"))
CHECKPOINT_EVERY = int(os.environ.get("CHECKPOINT_EVERY", "20"))
FEATURES, HIDDEN, BATCH, LR = 8, 8, 32, 0.05


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s data at `step`: the same on every attempt."""
    generator = torch.Generator().manual_seed(100_003 * step + rank)
    x = torch.randn(BATCH, FEATURES, generator=generator)
    y = (x * torch.arange(1, FEATURES + 1) / FEATURES).sum(dim=1, keepdim=True).sin()
    return x, y


def pack(state: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def parameters(net: torch.nn.Module) -> list[float]:
    return [round(float(v), 6) for p in net.parameters() for v in p.detach().flatten()]


@spotrun.task
def train() -> dict[str, object]:
    ctx = spotrun.current_context()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    net = model()
    ddp = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    cp = ctx.checkpoint
    raw = cp.read()  # this rank's part of the one checkpoint the gang restores
    step, resumed = 0, []
    if raw:
        state = torch.load(io.BytesIO(raw), weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, resumed = int(state["step"]), list(state["resumed"])
    resumed.append(step)
    print(f"rank {rank}/{world} attempt {ctx.attempt} resumed from step {step}", flush=True)

    def save() -> None:
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "resumed": resumed}
        info = cp.write(pack(state), step=step)
        print(f"rank {rank} committed {info.id} at step {step}", flush=True)

    loss = torch.tensor(0.0)
    while step < STEPS:
        x, y = batch(step, rank)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        loss.backward()  # DDP averages the gradients over the ranks
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"rank {rank} step {step} loss {loss.item():.5f}", flush=True)
        stop = torch.tensor([1 if spotrun.preempted() else 0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # one rank told to stop: all save, then stop
        if stop.item() or step % CHECKPOINT_EVERY == 0 or step == STEPS:
            save()
        if stop.item() and step < STEPS:
            dist.destroy_process_group()
            raise spotrun.RecoverableError(f"stopping at step {step}: a rank of the gang is being preempted")
        time.sleep(STEP_SECONDS)
    everyone: list[object] = [None] * world
    dist.all_gather_object(everyone, resumed)
    dist.destroy_process_group()
    return {"steps": step, "loss": round(loss.item(), 6), "parameters": parameters(net), "resumed": everyone}


def reference(steps: int, world: int) -> list[float]:
    """The model after `steps` uninterrupted steps of `world` ranks, in one process."""
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    for step in range(steps):
        optimizer.zero_grad()
        for rank in range(world):
            x, y = batch(step, rank)
            (torch.nn.functional.mse_loss(net(x), y) / world).backward()  # what DDP's allreduce averages
        optimizer.step()
    return parameters(net)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reference"]:
        print(json.dumps(reference(STEPS, int(os.environ.get("WORLD_SIZE", "2")))))
    else:
        train()
