"""torch.distributed plumbing for runs launched by ``torchrun``: this rank's place, its process
group (gloo on CPU, NCCL on CUDA; every collective bounded by the group's timeout)."""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sources import env_int, rank_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a distributed run (rank 0 logs and writes files)."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # cpu or cuda:<local_rank>

    @property
    def backend(self) -> str:
        """``nccl`` for CUDA ranks, ``gloo`` otherwise."""
        return "nccl" if self.device.startswith("cuda") else "gloo"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def context_from_environment(device: str) -> DistributedContext:
    """This worker's context from torchrun's variables; ``device`` is the run config's."""
    rank, world_size = env_int("RANK"), env_int("WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise GatedPluginError(f"RANK={rank} is not in 0 .. WORLD_SIZE-1 ({world_size - 1})")
    local_rank = env_int("LOCAL_RANK", str(rank))
    return DistributedContext(rank, world_size, local_rank, rank_device(device))


@contextmanager
def process_group(ctx: DistributedContext, timeout_s: float) -> Iterator[None]:
    """The default process group for ``ctx`` (``env://``), destroyed on exit; ``timeout_s``
    bounds how long any collective waits for a peer."""
    if ctx.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(ctx.device))
    dist.init_process_group(
        ctx.backend, rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    dist.all_reduce(tensor)
    return tensor


# SAELens modules (of sae_lens.training) that draw tqdm bars; disabled on ranks > 0.
_PROGRESS_MODULES = ("sae_trainer", "activation_scaler", "activations_store")


@contextmanager
def quiet_unless_main(ctx: DistributedContext) -> Iterator[None]:
    """On ranks other than 0, hide what every rank would print alike: SAELens's progress bars,
    its log messages below ERROR and Python warnings."""
    if ctx.is_main:
        yield
        return
    with ExitStack() as stack:
        for name in _PROGRESS_MODULES:
            module = vars(importlib.import_module(f"sae_lens.training.{name}"))
            stack.callback(module.__setitem__, "tqdm", module["tqdm"])
            module["tqdm"] = partial(module["tqdm"], disable=True)
        sae_lens_logger = logging.getLogger("sae_lens")
        stack.callback(sae_lens_logger.setLevel, sae_lens_logger.level)
        sae_lens_logger.setLevel(logging.ERROR)
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        yield
