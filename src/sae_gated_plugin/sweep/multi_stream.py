"""The sweep's ``multi`` stream: SAELens's multi-SAE runner trains the SAEs of one learning rate
(its config has one optimiser) in lockstep from one language-model pass per batch; a group's
results are written when all of it has finished (a resumed sweep retrains an unfinished group).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from sae_gated_plugin.run.saelens_bridge import GuardedMultiRunner, multi_runner_config
from sae_gated_plugin.sources import dataset_load_errors
from sae_gated_plugin.sweep.config import GridPoint
from sae_gated_plugin.sweep.points import (
    Finished,
    SweepContext,
    coefficient_field,
    lm_finished,
    new_sae,
)


def train_multi(
    ctx: SweepContext, todo: list[tuple[int, GridPoint]], total: int
) -> Iterator[Finished]:
    """Train the points in one lockstep group per learning rate, then evaluate each."""
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
        resampling = ctx.config.run.resampling
        with dataset_load_errors(ctx.config.run.dataset, ctx.train_dataset):
            runner = GuardedMultiRunner(
                multi_runner_config(ctx.config.run, lr, ctx.device, saes),
                override_dataset=ctx.train_dataset,
                override_model=ctx.model,
                override_saes=saes,
                resampling={
                    n: resampling for n, (_, p) in names.items() if p.resampling and resampling
                },
            )
        runner.run()
        train_seconds = (time.perf_counter() - started) / len(names)
        for name, (index, point) in names.items():
            trainer, evaluated = runner.sae_trainers[name], time.perf_counter()
            report = ctx.evaluation.evaluate(trainer.sae)
            seconds = (train_seconds, time.perf_counter() - evaluated)
            label = f"[{index}/{total}] {labels[name]}"
            yield lm_finished(point, trainer, report, ctx.config, seconds, None, label)
