"""torch.distributed plumbing for runs launched by ``torchrun``: who this rank is, its process
group, and the few collectives the distributed trainers share.

``torchrun`` (or any launcher that sets the same variables) gives every worker ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the process group is
initialised from them (``env://``) with gloo on CPU and NCCL on CUDA, each rank on GPU
``LOCAL_RANK``. Every collective has the process group's timeout, so a rank that dies or hangs
makes the others fail within it instead of waiting forever (gloo notices a dead peer's closed
connection at once; torchrun's elastic agent also stops the remaining workers when one exits).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sources import env_int, rank_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a distributed run."""

    rank: int
    """Global rank, 0 .. world_size - 1; rank 0 logs, shows progress and writes files."""
    world_size: int
    """Number of ranks taking part."""
    local_rank: int
    """Rank on this machine; the CUDA device index on GPU machines."""
    device: str
    """The torch device this rank trains on: ``cpu`` or ``cuda:<local_rank>``."""

    @property
    def backend(self) -> str:
        """``nccl`` for CUDA ranks, ``gloo`` otherwise."""
        return "nccl" if self.device.startswith("cuda") else "gloo"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def context_from_environment(device: str) -> DistributedContext:
    """This worker's context from torchrun's environment variables; ``device`` is the run
    config's setting."""
    rank, world_size = env_int("RANK"), env_int("WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise GatedPluginError(f"RANK={rank} is not in 0 .. WORLD_SIZE-1 ({world_size - 1})")
    local_rank = env_int("LOCAL_RANK", str(rank))
    return DistributedContext(rank, world_size, local_rank, rank_device(device))


@contextmanager
def process_group(ctx: DistributedContext, timeout_s: float) -> Iterator[None]:
    """The default process group for ``ctx``, destroyed on exit. ``timeout_s`` bounds how long
    any collective waits for a peer."""
    if ctx.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(ctx.device))
    dist.init_process_group(
        backend=ctx.backend,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_ints(value: int, device: str) -> list[int]:
    """``value`` from every rank, in rank order."""
    world_size = dist.get_world_size()
    mine = torch.tensor([value], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    return [int(t.item()) for t in gathered]


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` from rank ``src`` (picklable; any value on the other ranks)."""
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter with rank ``src``'s copy."""
    for parameter in module.parameters():
        dist.broadcast(parameter.data, src=src)


# SAELens modules that draw tqdm bars during a run; their bars are disabled on ranks > 0.
_PROGRESS_MODULES = (
    "sae_lens.training.sae_trainer",
    "sae_lens.training.activation_scaler",
    "sae_lens.training.activations_store",
)


@contextmanager
def quiet_unless_main(ctx: DistributedContext) -> Iterator[None]:
    """On ranks other than 0, hide what every rank would print alike: SAELens's progress bars,
    its log messages below ERROR and Python warnings. Rank 0 shows them once."""
    if ctx.is_main:
        yield
        return
    import importlib

    with ExitStack() as stack:
        for name in _PROGRESS_MODULES:
            module = importlib.import_module(name)
            original = vars(module)["tqdm"]
            vars(module)["tqdm"] = partial(original, disable=True)
            stack.callback(vars(module).__setitem__, "tqdm", original)
        sae_lens_logger = logging.getLogger("sae_lens")
        stack.callback(sae_lens_logger.setLevel, sae_lens_logger.level)
        sae_lens_logger.setLevel(logging.ERROR)
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        yield
