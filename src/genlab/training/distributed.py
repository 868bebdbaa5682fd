"""Data-parallel training on several processes (DDP), the path from one machine to a cluster.

    torchrun --standalone --nproc_per_node 2 $(which genlab) train gan --out runs/gan

torchrun starts one process per "rank" and tells each its RANK and WORLD_SIZE. Every rank
holds a full copy of the model and draws its own share of each batch (--batch-size is the
total, split evenly). After backward, one all-reduce sums the gradients of all ranks and
each divides by the number of ranks: every rank now holds the gradient of the whole batch,
takes the same optimizer step, and the copies stay identical without ever being sent.
(Exactly so for losses that are means over samples; batch statistics, such as a GAN's batch
norm or minibatch deviation, are computed over each rank's share.)

That is what torch.nn.parallel.DistributedDataParallel does (it also overlaps the
all-reduce with backward, in buckets). genlab averages by hand after backward instead,
because its loss functions reach inside their models (a GAN's two networks, a transformers
model's `labels=`), which DDP's wrapper would have to be threaded through. On CPU the
transport is gloo; on GPUs it would be nccl. Rank 0 alone writes files and prints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int]:
    """Join the process group torchrun describes (once), and return (rank, world size).
    Without torchrun this is (0, 1) and nothing else happens."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import atexit

        dist.init_process_group("gloo")
        atexit.register(dist.destroy_process_group)  # a group left open can abort the process as it exits
        if dist.get_rank() != 0:
            from ..progress import console

            console.quiet = True  # one progress bar and one set of messages, from rank 0 (errors still print)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def average_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """All-reduce every gradient (and the loss, for the log) as one flat buffer, then divide
    by the world size. Returns the mean loss over ranks."""
    world = dist.get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1]


def broadcast_state(model: torch.nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's weights (or only its buffers: batch-norm statistics, which each rank
    updates from its own share of the batch) to every rank."""
    for t in model.buffers() if buffers_only else model.state_dict().values():
        dist.broadcast(t, src=0)


def gather_states(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a random generator's state (a byte tensor of the same size on each), for rank 0 to save."""
    states = [torch.empty_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather(states, state)
    return states


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
