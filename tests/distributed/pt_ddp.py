"""DistributedDataParallel (and FSDP) over 2 gloo processes on CPU against one process, same global batches.

Variants: DDP with synchronised BatchNorm, DDP without (each process normalises its own
share), and FSDP (``fully_shard`` per block, regnet_pt.distributed.fully_shard_blocks) with
synchronised BatchNorm.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import multiprocessing
from torch.nn.parallel import DistributedDataParallel

from regnet_pt import backend as pt_backend
from regnet_pt.distributed import fully_shard_blocks
from regnet_pt.weights import state_to_canonical
from tests.distributed.common import (
    GLOBAL_BATCH,
    LEARNING_RATE,
    MOMENTUM,
    STEPS,
    batches,
    compare,
    initial_state,
    report,
    small_config,
)

WORLD_SIZE = 2
VARIANTS = ("synced", "unsynced", "fsdp")


def train(model: torch.nn.Module, shard: slice = slice(None)) -> list[float]:
    """STEPS SGD steps (momentum) on this process's ``shard`` of each global batch; the losses."""
    images, labels = batches()
    images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    losses = []
    for step in range(STEPS):
        batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        loss = model(images[batch][shard], labels=labels[batch][shard]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def worker(rank: int, port: int, directory: str) -> None:
    """One DDP process: trains each variant on its half of every global batch and saves its weights."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        config = small_config()
        per_process = GLOBAL_BATCH // WORLD_SIZE
        shard = slice(rank * per_process, (rank + 1) * per_process)
        for variant in VARIANTS:
            model = pt_backend.from_canonical(config, initial_state(config)).train()
            if variant != "unsynced":
                model.sync_batchnorm()
            if variant == "fsdp":
                losses = train(fully_shard_blocks(model), shard)
            else:
                losses = train(DistributedDataParallel(model), shard)
            # FSDP holds DTensor pieces: gather each whole (a collective every process joins)
            state = {
                name: getattr(value, "full_tensor", lambda v=value: v)() for name, value in model.state_dict().items()
            }
            state = state_to_canonical(state)
            np.savez(Path(directory) / f"{variant}-{rank}.npz", losses=np.array(losses), **state)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    torch.set_num_threads(1)
    config = small_config()
    initial = initial_state(config)
    single = pt_backend.from_canonical(config, initial).train()
    single_loss = train(single)
    single_state = pt_backend.to_canonical(single)
    results = {"processes": WORLD_SIZE, "single_loss": single_loss}
    with tempfile.TemporaryDirectory() as directory:
        multiprocessing.spawn(worker, args=(free_port(), directory), nprocs=WORLD_SIZE)
        for variant in VARIANTS:
            ranks = [dict(np.load(Path(directory) / f"{variant}-{rank}.npz")) for rank in range(WORLD_SIZE)]
            losses = [rank_state.pop("losses") for rank_state in ranks]
            results[variant] = {
                **compare(single_state, ranks[0], initial),
                # the global batch's mean loss: the mean of the processes' equal-sized shares
                "loss": np.mean(losses, axis=0).tolist(),
                "between_processes": compare(ranks[0], ranks[1], initial)["max_abs_difference"],
            }
    report(results)


if __name__ == "__main__":
    main()
