"""Data-parallel RegNet training with PyTorch's DistributedDataParallel and synchronised BatchNorm.

Run with torchrun (any backend; gloo on CPU here): ``torchrun --nproc-per-node 2 examples/ddp_pt.py``.
Each process trains on its share of every global batch; with ``sync_batchnorm()`` the step is
the one-device step on the whole batch (docs/SCALING.md).
"""

from __future__ import annotations

import argparse

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from regnet_core import RegNetConfig
from regnet_pt import RegNetForImageClassification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun provides rank, world size and the rendezvous
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    config = RegNetConfig(hidden_sizes=[16, 32], depths=[1, 2], groups_width=8, embedding_size=16, num_labels=4)
    model = DistributedDataParallel(RegNetForImageClassification(config).train().sync_batchnorm())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    generator = torch.Generator().manual_seed(1)  # every process draws the same global batches
    share = args.global_batch // world
    for step in range(args.steps):
        images = torch.randn(args.global_batch, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 4, (args.global_batch,), generator=generator)
        mine = slice(rank * share, (rank + 1) * share)
        loss = model(images[mine], labels=labels[mine]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            print(f"step {step}: global-batch loss {mean_loss.item() / world:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
