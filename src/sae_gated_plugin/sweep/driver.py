"""``sae-gated sweep CONFIG``: train a grid of SAEs from one activation stream and evaluate each.

Streams: ``cached_stream`` (default), ``multi_stream``, ``synthetic_stream``. Each finished SAE is
saved as ``save`` says (``saved``) and appended to ``output`` before the next starts; points
already there are skipped (resume).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
from transformer_lens import HookedTransformer

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.splice import excluded_token_ids
from sae_gated_plugin.run.train import held_out_tokens
from sae_gated_plugin.sources import (
    activation_width,
    load_language_model,
    load_text_dataset,
    resolve_device,
)
from sae_gated_plugin.sweep.cached_stream import train_cached
from sae_gated_plugin.sweep.config import GridPoint, SweepConfig, expand
from sae_gated_plugin.sweep.held_out import HeldOutEvaluation
from sae_gated_plugin.sweep.multi_stream import train_multi
from sae_gated_plugin.sweep.points import Echo, Finished, SweepContext
from sae_gated_plugin.sweep.results import line_key, open_results, read_results
from sae_gated_plugin.sweep.saved import SweepSaves
from sae_gated_plugin.sweep.synthetic_stream import train_synthetic


def run_sweep(
    config: SweepConfig,
    *,
    only: Sequence[str] = (),
    model: HookedTransformer | None = None,
    train_dataset: datasets.Dataset | None = None,
    eval_dataset: datasets.Dataset | None = None,
    echo: Echo = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every point of grids ``only`` (default all) not yet in the output;
    return all their result lines in grid order. ``model`` and the datasets replace the run's."""
    points = expand(config, only)
    output = Path(config.output)
    settings_id = config.settings_id()
    with open_results(output) as append:
        done = {line_key(r): r for r in read_results(output)}
        other = sorted({r.get("settings_id") for r in done.values()} - {settings_id}, key=str)
        if other:
            raise GatedPluginError(
                f"{output} holds runs made with other settings ({other}, this config: "
                f"{settings_id}); write to another output or restore that config"
            )
        todo = [(i, p) for i, p in enumerate(points, start=1) if p.key() not in done]
        echo(f"Sweep of {len(points)} SAEs: {len(points) - len(todo)} already in {output}")
        saves = SweepSaves(output, config)
        saves.clean_staging()
        if todo:
            stream = _stream(config, todo, len(points), model, train_dataset, eval_dataset, echo)
            for finished in stream:
                record = saves.save(finished, list(done.values()))
                append(record)
                done[finished.point.key()] = record
                saves.prune(list(done.values()))
                echo(finished.message)
    return [done[p.key()] for p in points]


def _stream(
    config: SweepConfig,
    todo: list[tuple[int, GridPoint]],
    total: int,
    model: HookedTransformer | None,
    train_dataset: datasets.Dataset | None,
    eval_dataset: datasets.Dataset | None,
    echo: Echo,
) -> Iterator[Finished]:
    """The finished points of the config's stream (language models: loaded, held-out built)."""
    base = config.run
    device = resolve_device(base.device)
    if config.stream == "synthetic":
        return train_synthetic(config, todo, total, device, echo)
    model = load_language_model(base.model_name, device) if model is None else model
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
    ctx = SweepContext(config, model, d_in, device, evaluation, train_dataset, echo)
    return (train_cached if config.stream == "cached" else train_multi)(ctx, todo, total)
