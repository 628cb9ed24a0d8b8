"""Cache a run's activations on disk with SAELens's ``CacheActivationsRunner``, from the same
run config that will train from them, so model, hook, corpus and positions agree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import staging_folder, write_faults
from sae_gated_plugin.run.config import TrainRunConfig
from sae_gated_plugin.run.saelens_bridge import ModelCacheActivationsRunner, cache_config
from sae_gated_plugin.sources import (
    activation_width,
    announce,
    dataset_load_errors,
    load_language_model,
    load_text_dataset,
    resolve_device,
)

if TYPE_CHECKING:
    import datasets
    from transformer_lens import HookedTransformer


def cache_activations(
    cfg: TrainRunConfig,
    model: HookedTransformer | None = None,
    dataset: datasets.Dataset | None = None,
) -> Path:
    """Cache ``cfg.training_tokens`` activations into ``saelens.cached_activations_path``
    (staged, renamed in when complete); ``model``/``dataset`` replace loading them. Returns it."""
    path = cfg.cached_activations_path
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GatedPluginError(f"{path} already exists and is not empty; nothing was overwritten")
    device = resolve_device(cfg.device)
    if dataset is None:
        dataset = load_text_dataset(cfg.dataset, "train")
    if model is None:
        announce(f"loading {cfg.model_name}...")
        model = load_language_model(cfg.model_name, device)
    staging = path.with_name(path.name + ".partial")
    settings = cache_config(cfg, activation_width(model, cfg.hook_name), device, staging)
    intact = "nothing was written (the partial cache was removed)"
    with write_faults(path, intact), staging_folder(staging):
        with dataset_load_errors(cfg.dataset, dataset):
            runner = ModelCacheActivationsRunner(settings, model, dataset)
        runner.run()
        if path.exists():
            path.rmdir()  # empty (checked above): rename onto it
        os.replace(staging, path)
    return path
