"""Latent sharding: a ``gated_paper`` SAE too wide for one device, split across ranks by latent.

Rank r of W owns latents [r * d_sae / W, (r + 1) * d_sae / W): its columns of ``W_enc``, its
entries of ``b_gate``, ``r_mag``, ``b_mag`` and its rows of ``W_dec``; ``b_dec`` is replicated.
Every rank sees the whole batch, so encoder products are local and each sum over latents is a
local part added across ranks (``sum_over_shards``). The loss is then the unsharded model's on
every rank, and so are the gradients. The sparse step (``arch/sparse.py``) adds its parts the
same way. Checkpoints are ordinary full-width files: ``gather_*`` collects the shards on rank
0's host, ``scatter_*`` and ``slice_*`` split full tensors back into shards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sae_lens.constants import SAE_WEIGHTS_FILENAME
from safetensors import safe_open
from typing_extensions import override

from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperTrainingSAE
from sae_gated_plugin.errors import GatedPluginError

# The latent dimension of each gated_paper parameter (None: replicated on every rank).
LATENT_DIMS: dict[str, int | None] = dict(W_enc=1, b_gate=0, r_mag=0, b_mag=0, W_dec=0, b_dec=None)


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    total = tensor.clone()
    dist.all_reduce(total)
    return total


class _AllReduceOneWay(torch.autograd.Function):
    """Sum over ranks in the forward pass only (identity backward) or in the backward only."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, in_forward: bool) -> torch.Tensor:
        ctx.in_forward = in_forward
        return _summed(tensor) if in_forward else tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (grad if ctx.in_forward else _summed(grad)), None


def sum_over_shards(partial: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``partial``, for a loss all ranks compute. Its backward passes
    the gradient through: ``torch.distributed.nn``'s all_reduce would sum it, W times too big."""
    return _AllReduceOneWay.apply(partial, True)


def copy_to_shards(replicated: torch.Tensor) -> torch.Tensor:
    """``replicated`` itself, whose gradient adds up every rank's contribution (each rank's
    encoder sees only its own latents' share)."""
    return _AllReduceOneWay.apply(replicated, False)


@dataclass(frozen=True)
class LatentShard:
    """Which latents one rank owns, of a dictionary of ``d_sae``."""

    rank: int
    world_size: int
    d_sae: int

    def __post_init__(self) -> None:
        if self.d_sae % self.world_size:
            raise GatedPluginError(
                f"latent sharding: d_sae ({self.d_sae}) must be divisible by the number of "
                f"ranks ({self.world_size})"
            )

    @property
    def width(self) -> int:
        """Latents on each rank."""
        return self.d_sae // self.world_size

    @property
    def start(self) -> int:
        """Index of this rank's first latent."""
        return self.rank * self.width

    def index(self, name: str) -> tuple[slice, ...]:
        """This rank's part of parameter ``name``'s full-width tensor, as an index."""
        dim = LATENT_DIMS[name]
        if dim is None:
            return (slice(None),)
        return (slice(None),) * dim + (slice(self.start, self.start + self.width),)

    def take(self, full: torch.Tensor, name: str) -> torch.Tensor:
        """This rank's part of the full-width tensor of parameter ``name`` (a view)."""
        return full[self.index(name)]

    def full_shape(self, local: torch.Tensor, name: str) -> tuple[int, ...]:
        """The full-width shape of this rank's tensor ``local`` of parameter ``name``."""
        dim = LATENT_DIMS[name]
        return tuple(self.d_sae if i == dim else n for i, n in enumerate(local.shape))


class LatentShardedGatedSAE(GatedPaperTrainingSAE):
    """One rank's slice of a ``gated_paper`` training SAE (``cfg.d_sae`` is the slice's width).
    Forward passes are collective: every rank must run them, on the same input."""

    shard: LatentShard
    holds_all_latents = False

    @classmethod
    def for_rank(cls, cfg: GatedPaperTrainingSAEConfig, shard: LatentShard) -> Any:
        """This rank's freshly initialised slice of the SAE ``cfg`` configures."""
        if cfg.d_sae != shard.d_sae:
            raise ValueError(f"cfg.d_sae {cfg.d_sae} != shard.d_sae {shard.d_sae}")
        changes: dict[str, Any] = {"d_sae": shard.width}  # (a base-class field mypy misses)
        sae = cls(dataclasses.replace(cfg, **changes))
        sae.shard = shard
        return sae

    def full_config(self, device: str = "cpu") -> GatedPaperTrainingSAEConfig:
        """The whole dictionary's config (sharing this slice's metadata), on ``device``."""
        changes: dict[str, Any] = {"d_sae": self.shard.d_sae, "device": device}
        return dataclasses.replace(self.cfg, **changes)

    @override
    def encoder_centring(self) -> torch.Tensor:
        return copy_to_shards(self.b_dec)

    @override
    def latent_sum(self, partial: torch.Tensor) -> torch.Tensor:
        return sum_over_shards(partial)

    @override
    @torch.no_grad()
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        """Read this rank's slice of a full-width checkpoint (only the slice is read)."""
        path = Path(checkpoint_path) / SAE_WEIGHTS_FILENAME
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            for name, parameter in self.named_parameters():
                if name not in weights.keys():  # noqa: SIM118  (safe_open has no __contains__)
                    raise GatedPluginError(f"{path}: no tensor {name!r}")
                stored, full_shape = weights.get_slice(name), self.shard.full_shape(parameter, name)
                if tuple(stored.get_shape()) != full_shape:
                    raise GatedPluginError(
                        f"{path}: {name} has shape {tuple(stored.get_shape())}, this run's "
                        f"dictionary needs {full_shape}"
                    )
                parameter.copy_(stored[self.shard.index(name)])

    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        raise RuntimeError("a latent shard is not saved alone: gather it (gather_sae) first")

    save_inference_model = save_model


def gather_tensor(local: torch.Tensor, dim: int | None, out: torch.Tensor | None) -> None:
    """Collect every rank's ``local`` into rank 0's ``out`` (full width along ``dim``; rank 0's
    copy when ``dim`` is None). Collective; only one shard at a time is on rank 0's device."""
    if dist.get_rank() != 0:
        if dim is not None:
            dist.send(local.contiguous(), dst=0)
        return
    assert out is not None
    parts = [out] if dim is None else out.split(local.shape[dim], dim)
    parts[0].copy_(local)
    buffer = torch.empty_like(local, memory_format=torch.contiguous_format)
    for source, part in enumerate(parts[1:], start=1):
        dist.recv(buffer, src=source)
        part.copy_(buffer)


def scatter_tensor(full: torch.Tensor | None, local: torch.Tensor, dim: int | None) -> None:
    """Overwrite every rank's ``local`` with its part of rank 0's ``full``. Collective."""
    if dist.get_rank() == 0:
        assert full is not None
        parts = [full] if dim is None else full.split(local.shape[dim], dim)
        local.copy_(parts[0])
        for target, part in enumerate(parts[1:], start=1):
            dist.send(part.contiguous().to(local.device), dst=target)
    elif dim is not None:
        buffer = torch.empty_like(local, memory_format=torch.contiguous_format)
        dist.recv(buffer, src=0)
        local.copy_(buffer)
    if dim is None:
        dist.broadcast(local, src=0)


@torch.no_grad()
def gather_sae(shard_sae: LatentShardedGatedSAE, full_sae: GatedPaperTrainingSAE | None) -> None:
    """Copy every rank's slice into rank 0's full-width ``full_sae``. Collective."""
    full = dict(full_sae.named_parameters()) if full_sae is not None else {}
    for name, parameter in shard_sae.named_parameters():
        gather_tensor(parameter.data, LATENT_DIMS[name], full[name].data if full else None)


@torch.no_grad()
def scatter_sae(full_sae: GatedPaperTrainingSAE | None, shard_sae: LatentShardedGatedSAE) -> None:
    """Overwrite every rank's slice with its part of rank 0's ``full_sae``. Collective."""
    full = dict(full_sae.named_parameters()) if full_sae is not None else {}
    for name, parameter in shard_sae.named_parameters():
        scatter_tensor(full[name].data if full else None, parameter.data, LATENT_DIMS[name])


def gather_optimizer_state(
    shard_sae: LatentShardedGatedSAE, state_dict: dict[str, Any]
) -> dict[str, Any] | None:
    """The full-width version of a shard's optimiser ``state_dict`` (Adam's moments gathered
    like their parameters) on rank 0's host; None elsewhere. Collective."""
    is_main, params = dist.get_rank() == 0, list(shard_sae.named_parameters())
    gathered: dict[int, dict[str, Any]] = {}
    for index in sorted(state_dict["state"]):
        name, parameter = params[index]
        gathered[index] = {}
        for key, value in state_dict["state"][index].items():
            if isinstance(value, torch.Tensor) and value.shape == parameter.shape:
                full_shape = shard_sae.shard.full_shape(value, name)
                out = torch.empty(full_shape, dtype=value.dtype) if is_main else None
                gather_tensor(value, LATENT_DIMS[name], out)
                value = out
            elif isinstance(value, torch.Tensor):
                value = value.cpu()
            gathered[index][key] = value
    return {"state": gathered, "param_groups": state_dict["param_groups"]} if is_main else None


def slice_optimizer_state(
    shard_sae: LatentShardedGatedSAE, state_dict: dict[str, Any]
) -> dict[str, Any]:
    """This rank's part of a full-width optimiser ``state_dict`` (the inverse of gathering)."""
    params, shard = list(shard_sae.named_parameters()), shard_sae.shard
    sliced: dict[int, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        name, parameter = params[int(index)]
        full_shape = shard.full_shape(parameter, name)
        sliced[index] = {
            key: shard.take(value, name).clone()
            if isinstance(value, torch.Tensor) and tuple(value.shape) == full_shape
            else value
            for key, value in entry.items()
        }
    return {"state": sliced, "param_groups": state_dict["param_groups"]}


class GlobalGradClip:
    """Clip a latent-sharded SAE's gradients by the whole dictionary's norm once backward has
    produced them all; SAELens's own clip (hard-coded 1.0) then leaves them unchanged."""

    def __init__(self, sae: LatentShardedGatedSAE, max_norm: float = 1.0):
        self.max_norm = max_norm
        self.is_main = dist.get_rank() == 0
        self.parameters = {name: p for name, p in sae.named_parameters() if p.requires_grad}
        self.accumulated, self.clips = 0, 0
        """Gradients accumulated since the last clip; clips done (one per backward pass)."""
        for parameter in self.parameters.values():
            parameter.register_post_accumulate_grad_hook(self._accumulated)

    def _accumulated(self, parameter: torch.Tensor) -> None:
        self.accumulated += 1
        if self.accumulated == len(self.parameters):
            self.accumulated = 0
            self.clip()

    @torch.no_grad()
    def clip(self) -> None:
        """Scale every rank's gradients by min(1, max_norm / (global norm + 1e-6))."""
        grads = {name: p.grad for name, p in self.parameters.items() if p.grad is not None}
        assert len(grads) == len(self.parameters)
        # A replicated parameter's gradient is the same on every rank: count it once.
        counted = [g for n, g in grads.items() if LATENT_DIMS[n] is not None or self.is_main]
        total = torch.stack([g.float().pow(2).sum() for g in counted]).sum()
        dist.all_reduce(total)
        torch.nn.utils.clip_grads_with_norm_(self.parameters.values(), self.max_norm, total.sqrt())
        self.clips += 1
