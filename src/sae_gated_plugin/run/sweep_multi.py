"""The sweep's ``multi`` stream: SAELens's ``MultiSAETrainingRunner`` trains every SAE of a
learning rate in lockstep from one language-model pass per batch.

Its config has one optimiser setting, so the grid is trained in one group per learning rate;
a group's results are written when the whole group has finished (a resumed sweep retrains an
unfinished group). Each per-SAE trainer becomes a ``GuardedTrainer`` (divergence stop,
resampling) at ``_run_with_interruption_handling``, the first place the runner hands its
``MultiSAETrainer`` over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sae_lens.multi_sae_training_runner import (
    MultiSAETrainingRunner,
    MultiSAETrainingRunnerConfig,
)

from sae_gated_plugin.run.runner import GuardedTrainer
from sae_gated_plugin.run.sweep_config import GridPoint
from sae_gated_plugin.run.sweep_points import SweepContext, coefficient_field, new_sae

if TYPE_CHECKING:
    from sae_gated_plugin.run.resampling import ResamplingSettings


class _GuardedMultiRunner(MultiSAETrainingRunner):
    """SAELens's multi-SAE runner whose per-SAE trainers are ``GuardedTrainer``s."""

    resampling: dict[str, ResamplingSettings] = {}  # noqa: RUF012  (replaced, never mutated)
    """Resampling settings per SAE name, for the SAEs that resample."""
    sae_trainers: dict[str, GuardedTrainer] = {}  # noqa: RUF012  (replaced, never mutated)
    """The per-SAE trainers of the last run (their losses and resampling counts)."""

    def _run_with_interruption_handling(self, trainer: Any) -> Any:
        self.sae_trainers = dict(trainer.trainers)
        for name, sae_trainer in trainer.trainers.items():
            sae_trainer.__class__ = GuardedTrainer
            if name in self.resampling:
                sae_trainer.enable_resampling(self.resampling[name])
        return super()._run_with_interruption_handling(trainer)


def _runner_config(ctx: SweepContext, lr: float, saes: dict[str, Any]) -> Any:
    """SAELens's multi-SAE runner config: the sweep's base run at learning rate ``lr``."""
    from sae_lens.config import LoggingConfig

    from sae_gated_plugin.sources import model_from_pretrained_kwargs

    base = ctx.config.run
    return MultiSAETrainingRunnerConfig(
        saes={name: sae.cfg for name, sae in saes.items()},
        hook_names=base.hook_name,
        model_name=base.model_name,
        dataset_path=base.dataset,
        dataset_trust_remote_code=False,
        streaming=base.streaming,
        context_size=base.context_size,
        n_batches_in_buffer=base.n_batches_in_buffer,
        training_tokens=base.training_tokens,
        store_batch_size_prompts=base.store_batch_size_prompts,
        seqpos_slice=base.training_positions,
        device=ctx.device,
        seed=base.seed,
        dtype=base.dtype,
        prepend_bos=base.prepend_bos,
        train_batch_size_tokens=base.train_batch_size_tokens,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
        **base.saelens_optimiser_settings(lr),
        exclude_special_tokens=base.exclude_special_tokens,
        model_from_pretrained_kwargs=model_from_pretrained_kwargs(base.model_name),
    )


def train_multi(
    ctx: SweepContext,
    todo: list[tuple[int, GridPoint]],
    total: int,
    write: Callable[..., None],
) -> None:
    """Train the points in one lockstep group per learning rate, then evaluate each."""
    import torch

    from sae_gated_plugin.sources import dataset_load_errors

    by_lr: dict[float, list[tuple[int, GridPoint]]] = {}
    for index, point in todo:
        by_lr.setdefault(point.lr, []).append((index, point))
    for lr, group in by_lr.items():
        names = {f"sae{index}": (index, point) for index, point in group}
        labels = {n: p.label(coefficient_field(p.architecture)) for n, (_, p) in names.items()}
        for name, (index, _) in names.items():
            ctx.echo(f"[{index}/{total}] {labels[name]} (lockstep group of {len(names)})")
        started = time.perf_counter()
        saes = {n: new_sae(p, ctx.config, ctx.d_in, ctx.device) for n, (_, p) in names.items()}
        torch.manual_seed(ctx.config.run.seed)
        with dataset_load_errors(ctx.config.run.dataset, ctx.train_dataset):
            runner = _GuardedMultiRunner(
                _runner_config(ctx, lr, saes),
                override_dataset=ctx.train_dataset,
                override_model=ctx.model,
                override_saes=saes,
            )
        resampling = ctx.config.run.resampling
        runner.resampling = {
            n: resampling for n, (_, p) in names.items() if p.resampling and resampling
        }
        runner.run()
        trainers = runner.sae_trainers
        train_seconds = (time.perf_counter() - started) / len(names)
        for name, (index, point) in names.items():
            evaluated = time.perf_counter()
            report = ctx.evaluation.evaluate(trainers[name].sae)
            seconds = (train_seconds, time.perf_counter() - evaluated)
            write(point, trainers[name], report, seconds, None, index, total, labels[name])
