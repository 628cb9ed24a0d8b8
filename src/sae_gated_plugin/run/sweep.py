"""``sae-gated sweep CONFIG``: train a grid of SAEs from one activation stream and evaluate each.

Two streams (``stream:`` in the config):

* ``cached`` (the default, the faster on the measured grid: see docs/results.md): the run's
  activations are cached once with ``sae-gated cache`` (SAELens's ``CacheActivationsRunner``),
  loaded into memory, and every SAE trains from them in its own seeded shuffle, in epochs when
  ``cache_tokens`` < ``training_tokens``. The language model runs once for the whole sweep.
* ``multi``: SAELens's ``MultiSAETrainingRunner``, one language-model pass per batch feeding
  every SAE of a learning rate in lockstep (its config has one optimiser setting).

Each SAE is trained by SAELens's ``SAETrainer`` (the plugin's ``GuardedTrainer``: divergence
stop, optional dead-latent resampling), evaluated on the same held-out windows and positions
(``sweep_eval``), and appended as one JSON line to ``output`` before the next starts. Points
already in ``output`` (same settings) are skipped, so an interrupted sweep resumes where it
stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.results import line_key, open_results, read_results
from sae_gated_plugin.run.sweep_config import GridPoint, SweepConfig, expand
from sae_gated_plugin.run.sweep_multi import train_multi
from sae_gated_plugin.run.sweep_points import (
    Echo,
    SweepContext,
    coefficient_field,
    make_trainer,
    new_sae,
    point_record,
)

if TYPE_CHECKING:
    import datasets
    import torch
    from transformer_lens import HookedTransformer

    from sae_gated_plugin.run.runner import GuardedTrainer


class CachedActivations:
    """The cached training activations in memory, special tokens already dropped."""

    def __init__(self, path: Path, hook_name: str, exclude_token_ids: Sequence[int]) -> None:
        import datasets
        import torch

        # numpy, then torch.from_numpy: several times faster than datasets' torch format.
        cached = datasets.load_from_disk(str(path)).with_format("numpy")
        acts = torch.from_numpy(cached[hook_name][:])
        acts = acts.reshape(-1, acts.shape[-1])
        if exclude_token_ids and "token_ids" in cached.column_names:
            token_ids = torch.from_numpy(cached["token_ids"][:]).reshape(-1)
            exclude = torch.tensor(list(exclude_token_ids), dtype=token_ids.dtype)
            acts = acts[~torch.isin(token_ids, exclude)]
        self.activations = acts.contiguous()

    @property
    def n_tokens(self) -> int:
        """Activations held."""
        return int(self.activations.shape[0])

    def batches(self, seed: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Batches in a fresh seeded shuffle each epoch, forever (the trainer stops)."""
        import torch

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


def result_line(
    point: GridPoint,
    trainer: GuardedTrainer,
    report: Any,
    *,
    config: SweepConfig,
    seconds: tuple[float, float],
    cached_tokens: int | None,
) -> dict[str, Any]:
    """The JSON line of one finished grid point."""
    losses = trainer.losses or []
    tail = losses[-max(1, len(losses) // 10) :]
    tokens = int(trainer.n_training_samples)
    return {
        **point_record(point, trainer, config, seconds),
        "tokens_trained": tokens,
        "epochs": tokens / cached_tokens if cached_tokens else None,
        "n_tokens": report.n_tokens,
        "l0": report.l0,
        "dead_fraction": report.dead_fraction,
        "explained_variance": report.explained_variance,
        "loss_recovered": report.loss_recovered,
        "delta_ce_loss": report.delta_ce_loss,
        "relative_reconstruction_bias": report.relative_reconstruction_bias,
        "mse": report.mse,
        "ce_loss_clean": report.ce_loss_clean,
        "ce_loss_with_sae": report.ce_loss_with_sae,
        "ce_loss_zero_ablation": report.ce_loss_zero_ablation,
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "hook_name": config.run.hook_name,
    }


def summary(record: dict[str, Any]) -> str:
    """One line of a finished point's results for the progress log."""
    return (
        f"L0 {record['l0']:.1f}, loss recovered {record['loss_recovered']:.3f}, gamma "
        f"{record['relative_reconstruction_bias']:.3f}, dead {record['dead_fraction']:.1%} "
        f"({record['seconds']:.0f} s)"
    )


def _train_cached(
    ctx: SweepContext, todo: list[tuple[int, GridPoint]], total: int, write: Callable[..., None]
) -> None:
    """Train and evaluate each point from the in-memory cache, one after the other."""
    activations = load_cache(ctx)
    ctx.echo(
        f"{activations.n_tokens:,} cached activations; {ctx.config.run.training_tokens:,} "
        f"tokens per SAE = {ctx.config.run.training_tokens / activations.n_tokens:.2f} epochs"
    )
    for index, point in todo:
        label = point.label(coefficient_field(point.architecture))
        ctx.echo(f"[{index}/{total}] {label}")
        started = time.perf_counter()
        sae = new_sae(point, ctx.config, ctx.d_in, ctx.device)
        data = activations.batches(point.seed, ctx.config.run.train_batch_size_tokens)
        trainer = make_trainer(point, ctx.config, sae, data, ctx.device)
        trainer.fit()
        trained = time.perf_counter()
        report = ctx.evaluation.evaluate(trainer.sae)
        seconds = (trained - started, time.perf_counter() - trained)
        write(point, trainer, report, seconds, activations.n_tokens, index, total, label)


def load_cache(ctx: SweepContext) -> CachedActivations:
    """The sweep's cached activations, made first (``sae-gated cache``) if missing."""
    from sae_gated_plugin.eval.splice import excluded_token_ids
    from sae_gated_plugin.run.caching import cache_activations, check_cache_matches

    config = ctx.config
    path = config.activations_path
    cache_cfg = config.run.model_copy(
        update={
            "training_tokens": config.cache_tokens or config.run.training_tokens,
            "saelens": {
                **config.run.saelens,
                "use_cached_activations": True,
                "cached_activations_path": str(path),
            },
        }
    )
    if (path / "dataset_info.json").is_file():
        check_cache_matches(cache_cfg, ctx.d_in)
    else:
        ctx.echo(f"Caching {cache_cfg.training_tokens:,} activations in {path}")
        cache_activations(cache_cfg, model=ctx.model, dataset=ctx.train_dataset)
    exclude = excluded_token_ids(ctx.model, config.run.exclude_special_tokens)
    return CachedActivations(path, config.run.hook_name, exclude)


def run_sweep(
    config: SweepConfig,
    *,
    only: Sequence[str] = (),
    model: HookedTransformer | None = None,
    train_dataset: datasets.Dataset | None = None,
    eval_dataset: datasets.Dataset | None = None,
    echo: Echo = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every grid point not yet in ``config.output``; return all the
    selected points' result lines (earlier and new), in grid order.

    Args:
        config: the validated sweep config.
        only: names of the grids to run (default all).
        model: an already loaded model (else ``run.model_name``).
        train_dataset, eval_dataset: in-memory datasets instead of ``run.dataset``'s splits.
        echo: where progress lines go.
    """
    points = expand(config, only)
    output = Path(config.output)
    settings_id = config.settings_id()
    with open_results(output) as results:
        done = {line_key(r): r for r in read_results(output)}
        other = sorted({r.get("settings_id") for r in done.values()} - {settings_id}, key=str)
        if other:
            raise GatedPluginError(
                f"{output} holds runs made with other settings ({other}, this config: "
                f"{settings_id}); write to another output or restore that config"
            )
        todo = [(i, p) for i, p in enumerate(points, start=1) if p.key() not in done]
        echo(f"Sweep of {len(points)} SAEs: {len(points) - len(todo)} already in {output}")
        if todo and config.stream == "synthetic":
            from sae_gated_plugin.run import sweep_synthetic
            from sae_gated_plugin.sources import resolve_device

            def write_synthetic(point: GridPoint, record: dict[str, Any], label: str) -> None:
                results.append(record)
                done[point.key()] = record
                echo(f"{label}: {sweep_synthetic.summary(record)}")

            device = resolve_device(config.run.device)
            sweep_synthetic.train_synthetic(
                config, todo, len(points), write_synthetic, device, echo
            )
        elif todo:
            ctx = _context(config, model, train_dataset, eval_dataset, echo)

            def write(point: GridPoint, trainer: Any, report: Any, *rest: Any) -> None:
                seconds, cached, index, total, label = rest
                record = result_line(
                    point, trainer, report, config=config, seconds=seconds, cached_tokens=cached
                )
                results.append(record)
                done[point.key()] = record
                echo(f"[{index}/{total}] {label}: {summary(record)}")

            if config.stream == "cached":
                _train_cached(ctx, todo, len(points), write)
            else:
                train_multi(ctx, todo, len(points), write)
    return [done[p.key()] for p in points]


def _context(
    config: SweepConfig,
    model: HookedTransformer | None,
    train_dataset: datasets.Dataset | None,
    eval_dataset: datasets.Dataset | None,
    echo: Echo,
) -> SweepContext:
    """Load the model and build the shared held-out evaluation."""
    from sae_gated_plugin.eval.splice import excluded_token_ids
    from sae_gated_plugin.run.sweep_eval import HeldOutEvaluation
    from sae_gated_plugin.run.train import held_out_tokens
    from sae_gated_plugin.sources import (
        activation_width,
        load_language_model,
        load_text_dataset,
        resolve_device,
    )

    base = config.run
    device = resolve_device(base.device)
    if model is None:
        model = load_language_model(base.model_name, device)
    d_in = activation_width(model, base.hook_name)
    tokens = held_out_tokens(base, model, eval_dataset)
    if train_dataset is None:
        train_dataset = load_text_dataset(base.dataset, "train")
    evaluation = HeldOutEvaluation(
        model,
        tokens,
        hook_name=base.hook_name,
        seqpos_slice=base.training_positions,
        exclude_token_ids=excluded_token_ids(model, base.exclude_special_tokens),
        batch_size=base.eval.batch_size,
    )
    return SweepContext(config, model, d_in, device, evaluation, train_dataset, echo)
