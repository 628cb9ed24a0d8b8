"""Running test code as the ranks of a gloo process group on this machine (CPU).

``run_ranks(worker, n, *args)`` starts ``n`` processes with ``torch.multiprocessing.spawn``,
each with torchrun's environment variables set and the default process group initialised,
and calls ``worker(ctx, *args)`` in each. An exception in any rank fails the call (the other
ranks are terminated). Workers must be module-level functions (they are pickled by name).
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_gated_plugin import GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig
from sae_gated_plugin.distributed.context import DistributedContext, process_group

D_IN, D_SAE = 8, 32
GLOBAL_BATCH = 16
STEPS = 6
NORM_BATCHES = 2
LR = 1e-2


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun would set for ``rank``."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
    }


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    worker: Callable[..., None],
    args: tuple[Any, ...],
    with_group: bool,
) -> None:
    os.environ.update(rank_environment(rank, world_size, port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    ctx = DistributedContext(rank, world_size, rank, "cpu")
    if not with_group:
        worker(ctx, *args)
        return
    with process_group(ctx, timeout_s=60):
        worker(ctx, *args)


def run_ranks(
    worker: Callable[..., None], world_size: int, *args: Any, with_group: bool = True
) -> None:
    """Run ``worker(ctx, *args)`` on ``world_size`` gloo ranks; raises if any rank fails.
    Without ``with_group`` the worker gets torchrun's variables but makes the group itself."""
    torch.multiprocessing.spawn(
        _rank_main,
        args=(world_size, free_port(), worker, args, with_group),
        nprocs=world_size,
        join=True,
    )


def tiny_sae(seed: int = 0, dtype: str = "float32", **settings: Any) -> GatedPaperTrainingSAE:
    """A freshly initialised small ``gated_paper`` SAE (the same on every rank for a seed)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cfg = GatedPaperTrainingSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            dtype=dtype,
            l1_coefficient=0.5,
            l1_warm_up_steps=2,
            normalize_activations="expected_average_only_in",
            **settings,
        )
    return GatedPaperTrainingSAE(cfg)


def global_batches(n: int = NORM_BATCHES + STEPS, seed: int = 5) -> list[torch.Tensor]:
    """The global batches of a run, in order (norm-estimate batches first)."""
    gen = torch.Generator().manual_seed(seed)
    return [3.0 * torch.randn(GLOBAL_BATCH, D_IN, generator=gen) + 1.0 for _ in range(n)]


def rank_part(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous part of a global batch."""
    size = batch.shape[0] // world_size
    return batch[rank * size : (rank + 1) * size]


def trainer_config(**overrides: Any) -> SAETrainerConfig:
    """The trainer settings of every test run (global batch and token counts)."""
    settings: dict[str, Any] = {
        "total_training_samples": STEPS * GLOBAL_BATCH,
        "train_batch_size_samples": GLOBAL_BATCH,
        "lr": LR,
        "lr_end": LR,
        "adam_beta1": 0.0,
        "adam_beta2": 0.999,
        "n_batches_for_norm_estimate": NORM_BATCHES,
        "device": "cpu",
        **overrides,
    }
    return SAETrainerConfig(**settings)


def reference_run(sae: Any, **overrides: Any) -> SAETrainer[Any, Any]:
    """SAELens's own trainer, one process, on the global batches."""
    trainer: SAETrainer[Any, Any] = SAETrainer(
        cfg=trainer_config(**overrides), sae=sae, data_provider=iter(global_batches())
    )
    trainer.fit()
    return trainer


def local_batches(rank: int, world_size: int) -> Iterator[torch.Tensor]:
    """Rank ``rank``'s parts of the global batches, in order."""
    return iter([rank_part(b, rank, world_size) for b in global_batches()])


def tiny_language_model(context: int = 32) -> Any:
    """A random one-layer HookedTransformer (d_model 16) with SmolLM2's tokenizer, so that it
    reads the embedded corpus through SAELens's real ActivationsStore; the same on every rank."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from sae_gated_plugin import embedded

    tokenizer = AutoTokenizer.from_pretrained(embedded.smollm2_checkpoint_dir())
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(
            n_layers=1,
            d_model=16,
            n_ctx=context,
            d_head=4,
            d_vocab=len(tokenizer),
            act_fn="gelu",
            default_prepend_bos=True,
        )
        return HookedTransformer(cfg, tokenizer)
