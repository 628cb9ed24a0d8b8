"""The sweep's ``cached`` stream: activations cached once (``sae-gated cache``), held in memory,
and every SAE trained from them in its own seeded shuffle (in epochs if fewer than it needs)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import torch

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.splice import excluded_token_ids
from sae_gated_plugin.run.cache import cache_activations
from sae_gated_plugin.run.config import check_cache_matches
from sae_gated_plugin.sweep.config import GridPoint
from sae_gated_plugin.sweep.points import (
    Finished,
    SweepContext,
    coefficient_field,
    lm_finished,
    make_trainer,
    new_sae,
)


class CachedActivations:
    """The cached training activations in memory, special tokens already dropped."""

    def __init__(self, path: Path, hook_name: str, exclude_token_ids: Sequence[int]) -> None:
        # numpy, then torch.from_numpy: several times faster than datasets' torch format.
        cached = datasets.load_from_disk(str(path)).with_format("numpy")
        acts = torch.from_numpy(cached[hook_name][:])
        acts = acts.reshape(-1, acts.shape[-1])
        if exclude_token_ids and "token_ids" in cached.column_names:
            token_ids = torch.from_numpy(cached["token_ids"][:]).reshape(-1)
            exclude = torch.tensor(list(exclude_token_ids), dtype=token_ids.dtype)
            acts = acts[~torch.isin(token_ids, exclude)]
        self.activations = acts.contiguous()
        self.n_tokens = int(acts.shape[0])

    def batches(self, seed: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Batches in a fresh seeded shuffle each epoch, forever (the trainer stops)."""
        if self.n_tokens < batch_size:
            raise GatedPluginError(
                f"the cache holds {self.n_tokens} usable activations, fewer than one batch "
                f"({batch_size})"
            )
        generator = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(self.n_tokens, generator=generator)
            for start in range(0, self.n_tokens - batch_size + 1, batch_size):
                yield self.activations[order[start : start + batch_size]]


def train_cached(
    ctx: SweepContext, todo: list[tuple[int, GridPoint]], total: int
) -> Iterator[Finished]:
    """Train and evaluate each point from the in-memory cache, one after the other."""
    activations = load_cache(ctx)
    ctx.echo(
        f"{activations.n_tokens:,} cached activations; {ctx.config.run.training_tokens:,} "
        f"tokens per SAE = {ctx.config.run.training_tokens / activations.n_tokens:.2f} epochs"
    )
    for index, point in todo:
        label = f"[{index}/{total}] {point.label(coefficient_field(point.architecture))}"
        ctx.echo(label)
        started = time.perf_counter()
        sae = new_sae(point, ctx.config, ctx.d_in, ctx.device)
        data = activations.batches(point.seed, ctx.config.run.train_batch_size_tokens)
        trainer = make_trainer(point, ctx.config, sae, data, ctx.device)
        trainer.fit()
        trained = time.perf_counter()
        report = ctx.evaluation.evaluate(trainer.sae)
        seconds = (trained - started, time.perf_counter() - trained)
        yield lm_finished(point, trainer, report, ctx.config, seconds, activations.n_tokens, label)


def load_cache(ctx: SweepContext) -> CachedActivations:
    """The sweep's cached activations, made first (``sae-gated cache``) if missing."""
    config = ctx.config
    path = Path(config.cache_path or config.output + ".activations")
    cached = {"use_cached_activations": True, "cached_activations_path": str(path)}
    cache_cfg = config.run.model_copy(
        update={
            "training_tokens": config.cache_tokens or config.run.training_tokens,
            "saelens": {**config.run.saelens, **cached},
        }
    )
    if (path / "dataset_info.json").is_file():
        check_cache_matches(cache_cfg, ctx.d_in)
    else:
        ctx.echo(f"Caching {cache_cfg.training_tokens:,} activations in {path}")
        cache_activations(cache_cfg, model=ctx.model, dataset=ctx.train_dataset)
    exclude = excluded_token_ids(ctx.model, config.run.exclude_special_tokens)
    return CachedActivations(path, config.run.hook_name, exclude)
