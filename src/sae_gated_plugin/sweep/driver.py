"""``sae-gated sweep CONFIG``: train a grid of SAEs from one activation stream and evaluate each.

Three streams (``stream:`` in the config): ``cached`` (the default, the faster on the measured
grid: see docs/results.md; ``cached_stream``), ``multi`` (SAELens's multi-SAE runner,
``multi_stream``) and ``synthetic`` (SAELens's synthetic model, ``synthetic_stream``).

Each SAE is trained by SAELens's ``SAETrainer`` (the plugin's ``GuardedTrainer``: divergence
stop, optional dead-latent resampling), evaluated on the same held-out windows and positions
(``held_out``), and appended as one JSON line to ``output`` before the next starts. Points
already in ``output`` (same settings) are skipped, so an interrupted sweep resumes where it
stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from transformer_lens import HookedTransformer

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.splice import excluded_token_ids
from sae_gated_plugin.run.saelens_bridge import GuardedTrainer
from sae_gated_plugin.run.train import held_out_tokens
from sae_gated_plugin.sources import (
    activation_width,
    load_language_model,
    load_text_dataset,
    resolve_device,
)
from sae_gated_plugin.sweep import synthetic_stream
from sae_gated_plugin.sweep.cached_stream import train_cached
from sae_gated_plugin.sweep.config import GridPoint, SweepConfig, expand
from sae_gated_plugin.sweep.held_out import HeldOutEvaluation
from sae_gated_plugin.sweep.multi_stream import train_multi
from sae_gated_plugin.sweep.points import Echo, SweepContext, point_record
from sae_gated_plugin.sweep.results import line_key, open_results, read_results


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

            def write_synthetic(point: GridPoint, record: dict[str, Any], label: str) -> None:
                results.append(record)
                done[point.key()] = record
                echo(f"{label}: {synthetic_stream.summary(record)}")

            device = resolve_device(config.run.device)
            synthetic_stream.train_synthetic(
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
                train_cached(ctx, todo, len(points), write)
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
