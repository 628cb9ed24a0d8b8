"""Latent sharding: a ``gated_paper`` SAE too wide for one device, split across ranks by latent.

Rank r of W owns latents [r * d_sae / W, (r + 1) * d_sae / W): its columns of ``W_enc``
(W_gate), its entries of ``b_gate``, ``r_mag`` and ``b_mag`` and its rows of ``W_dec``.
``b_dec`` is replicated. Every rank sees the whole batch, so the encoder products are local;
each sum over latents (the reconstruction, the sparsity penalty, the auxiliary reconstruction)
is a local part added across ranks. The loss every rank computes is then the unsharded
model's, and so are the gradients, given two autograd operations (Megatron-LM's "g" and "f"):

* ``sum_over_shards``: forward all-reduces the parts; backward passes the gradient through
  unchanged, since every rank computes the same loss from the sum.
  ``torch.distributed.nn.functional.all_reduce`` is not used: its backward also all-reduces,
  which is the gradient of the sum of the W ranks' losses, W times the loss here.
* ``copy_to_shards`` on ``b_dec`` where it centres the encoder input: forward is the identity;
  backward all-reduces, since each rank's encoder sees only its own latents' share of
  ``b_dec``'s gradient.

The sparse step (``arch/sparse.py``) runs on shards too: its decodes and penalty are this
rank's parts, added by ``sum_over_shards``, and the open fraction that picks dense or sparse
is counted over all ranks, so that every rank takes the same path (and the same collectives).

The unit-norm constraint is per decoder row, so each rank keeps its own rows at unit norm.
Checkpoints and the final SAE are ordinary full-width SAELens files: ``gather_*`` collects the
shards on rank 0 (host memory, one shard at a time on the device), ``scatter_*`` and
``slice_*`` split full tensors back into shards.
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

LATENT_DIMS: dict[str, int | None] = {
    "W_enc": 1,
    "b_gate": 0,
    "r_mag": 0,
    "b_mag": 0,
    "W_dec": 0,
    "b_dec": None,
}
"""The latent dimension of each ``gated_paper`` parameter (None: replicated on every rank)."""

SAELENS_MAX_GRAD_NORM = 1.0
"""The gradient-norm clip SAELens's trainer applies (hard-coded there)."""


class _SumOverShards(torch.autograd.Function):
    """All-reduce (sum) forward, identity backward: the result feeds a loss every rank shares."""

    @staticmethod
    def forward(ctx: Any, partial: torch.Tensor) -> torch.Tensor:
        total = partial.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _CopyToShards(torch.autograd.Function):
    """Identity forward, all-reduce (sum) backward: a replicated tensor used by each shard."""

    @staticmethod
    def forward(ctx: Any, replicated: torch.Tensor) -> torch.Tensor:
        return replicated.view_as(replicated)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def sum_over_shards(partial: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``partial``, differentiable for a loss all ranks compute."""
    return _SumOverShards.apply(partial)


def copy_to_shards(replicated: torch.Tensor) -> torch.Tensor:
    """``replicated`` itself, whose gradient adds up every rank's contribution."""
    return _CopyToShards.apply(replicated)


@dataclass(frozen=True)
class LatentShard:
    """Which latents one rank owns."""

    rank: int
    world_size: int
    d_sae: int
    """Latents of the whole dictionary."""

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

    def take(self, full: torch.Tensor, name: str) -> torch.Tensor:
        """This rank's part of the full-width tensor of parameter ``name`` (a view)."""
        dim = LATENT_DIMS[name]
        return full if dim is None else full.narrow(dim, self.start, self.width)


class LatentShardedGatedSAE(GatedPaperTrainingSAE):
    """One rank's slice of a ``gated_paper`` training SAE. Its ``cfg.d_sae`` is the slice's
    width; ``shard`` says where the slice sits in the whole dictionary. Forward passes are
    collective: every rank must run them, on the same input."""

    shard: LatentShard
    holds_all_latents = False

    @classmethod
    def for_rank(cls, cfg: GatedPaperTrainingSAEConfig, shard: LatentShard) -> Any:
        """This rank's slice of an SAE configured by ``cfg`` (the whole dictionary's config),
        freshly initialised."""
        if cfg.d_sae != shard.d_sae:
            raise ValueError(f"cfg.d_sae {cfg.d_sae} != shard.d_sae {shard.d_sae}")
        # (d_sae is a field of SAELens's base config class, which mypy does not see here)
        changes: dict[str, Any] = {"d_sae": shard.width}
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
                full_shape = _full_shape(parameter, name, self.shard.d_sae)
                stored = weights.get_slice(name)
                if tuple(stored.get_shape()) != full_shape:
                    raise GatedPluginError(
                        f"{path}: {name} has shape {tuple(stored.get_shape())}, this run's "
                        f"dictionary needs {full_shape}"
                    )
                parameter.copy_(_read_slice(stored, LATENT_DIMS[name], self.shard))

    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        raise RuntimeError("a latent shard is not saved alone: gather it (gather_sae) first")

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        raise RuntimeError("a latent shard is not saved alone: gather it (gather_sae) first")


def _full_shape(local: torch.Tensor, name: str, d_sae: int) -> tuple[int, ...]:
    dim = LATENT_DIMS[name]
    shape = list(local.shape)
    if dim is not None:
        shape[dim] = d_sae
    return tuple(shape)


def _read_slice(stored: Any, dim: int | None, shard: LatentShard) -> torch.Tensor:
    stop = shard.start + shard.width
    if dim is None:
        return stored[:]
    if dim == 0:
        return stored[shard.start : stop]
    return stored[:, shard.start : stop]


def gather_tensor(local: torch.Tensor, dim: int | None, out: torch.Tensor | None) -> None:
    """Collect every rank's ``local`` into rank 0's ``out`` (full width along ``dim``; a
    replicated tensor when ``dim`` is None: rank 0's copy). Collective; ``out`` is ignored on
    other ranks. Only one shard at a time is on rank 0's device."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        if dim is not None:
            dist.send(local.contiguous(), dst=0)
        return
    assert out is not None
    if dim is None:
        out.copy_(local)
        return
    width = local.shape[dim]
    out.narrow(dim, 0, width).copy_(local)
    buffer = torch.empty_like(local, memory_format=torch.contiguous_format)
    for source in range(1, world_size):
        dist.recv(buffer, src=source)
        out.narrow(dim, source * width, width).copy_(buffer)


def scatter_tensor(full: torch.Tensor | None, local: torch.Tensor, dim: int | None) -> None:
    """Overwrite every rank's ``local`` with its part of rank 0's ``full``. Collective."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if dim is None:
        if rank == 0:
            assert full is not None
            local.copy_(full)
        dist.broadcast(local, src=0)
        return
    width = local.shape[dim]
    if rank == 0:
        assert full is not None
        local.copy_(full.narrow(dim, 0, width))
        for target in range(1, world_size):
            part = full.narrow(dim, target * width, width).contiguous().to(local.device)
            dist.send(part, dst=target)
        return
    buffer = torch.empty_like(local, memory_format=torch.contiguous_format)
    dist.recv(buffer, src=0)
    local.copy_(buffer)


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
    """The full-width version of a shard's optimiser ``state_dict`` (Adam's ``exp_avg`` and
    ``exp_avg_sq`` gathered like their parameters), on rank 0's host; None elsewhere."""
    is_main = dist.get_rank() == 0
    names = [name for name, _ in shard_sae.named_parameters()]
    params = dict(shard_sae.named_parameters())
    gathered: dict[int, dict[str, Any]] = {}
    for index in sorted(state_dict["state"]):
        name = names[index]
        entry: dict[str, Any] = {}
        for key, value in state_dict["state"][index].items():
            if isinstance(value, torch.Tensor) and value.shape == params[name].shape:
                full_shape = _full_shape(value, name, shard_sae.shard.d_sae)
                out = torch.empty(full_shape, dtype=value.dtype) if is_main else None
                gather_tensor(value, LATENT_DIMS[name], out)
                entry[key] = out
            else:
                entry[key] = value.cpu() if isinstance(value, torch.Tensor) else value
        gathered[index] = entry
    if not is_main:
        return None
    return {"state": gathered, "param_groups": state_dict["param_groups"]}


def slice_optimizer_state(
    shard_sae: LatentShardedGatedSAE, state_dict: dict[str, Any]
) -> dict[str, Any]:
    """This rank's part of a full-width optimiser ``state_dict`` (the inverse of
    ``gather_optimizer_state``)."""
    names = [name for name, _ in shard_sae.named_parameters()]
    params = dict(shard_sae.named_parameters())
    sliced: dict[int, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        name = names[int(index)]
        full_shape = _full_shape(params[name], name, shard_sae.shard.d_sae)
        sliced[index] = {
            key: shard_sae.shard.take(value, name).clone()
            if isinstance(value, torch.Tensor) and tuple(value.shape) == full_shape
            else value
            for key, value in entry.items()
        }
    return {"state": sliced, "param_groups": state_dict["param_groups"]}


class GlobalGradClip:
    """Clip the gradients of a latent-sharded SAE by the whole dictionary's gradient norm, as
    ``clip_grad_norm_`` would for the unsharded SAE, as soon as backward has produced all of
    them (a post-accumulate-grad hook per parameter). SAELens's own clip, which follows, sees
    a rank's part of an already clipped gradient and leaves it unchanged (to its 1e-6)."""

    def __init__(self, sae: LatentShardedGatedSAE, max_norm: float = SAELENS_MAX_GRAD_NORM):
        self.max_norm = max_norm
        self.is_main = dist.get_rank() == 0
        self.parameters = {name: p for name, p in sae.named_parameters() if p.requires_grad}
        self.pending: set[str] = set()
        self.clips = 0
        """Number of clips done (one per backward pass)."""
        for name, parameter in self.parameters.items():
            parameter.register_post_accumulate_grad_hook(self._hook_for(name))

    def _hook_for(self, name: str) -> Any:
        def accumulated(parameter: torch.Tensor) -> None:
            self.pending.add(name)
            if len(self.pending) == len(self.parameters):
                self.pending.clear()
                self.clip()

        return accumulated

    @torch.no_grad()
    def clip(self) -> None:
        """Scale every rank's gradients by min(1, max_norm / (global norm + 1e-6))."""
        squares = []
        for name, parameter in self.parameters.items():
            assert parameter.grad is not None
            # A replicated parameter's gradient is the same on every rank: count it once.
            if LATENT_DIMS[name] is not None or self.is_main:
                squares.append(parameter.grad.float().pow(2).sum())
        total = torch.stack(squares).sum()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        coefficient = (self.max_norm / (total.sqrt() + 1e-6)).clamp(max=1.0)
        for parameter in self.parameters.values():
            assert parameter.grad is not None
            parameter.grad.mul_(coefficient.to(parameter.grad.dtype))
        self.clips += 1
