"""Cache a run's activations on disk with SAELens's ``CacheActivationsRunner``.

A sweep over ``l1_coefficient`` then trains from the cache (``saelens:
{use_cached_activations: true, cached_activations_path: ...}``) instead of re-running the
language model for every SAE. The cache is made from the same run config as training, so model,
hook, corpus, window and training positions agree by construction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import staging_folder
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
    """Cache ``cfg.training_tokens`` activations of the run's hook and positions.

    Written to a staging folder and renamed into ``saelens.cached_activations_path`` when
    complete, so an interrupted run leaves no half-written cache. Returns the cache folder.

    Args:
        cfg: the run config that will train from the cache.
        model: an already loaded model to reuse (else loaded from ``cfg.model_name``).
        dataset: an in-memory training dataset to use instead of ``cfg.dataset``.
    """
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
    with staging_folder(staging):
        with dataset_load_errors(cfg.dataset, dataset):
            runner = ModelCacheActivationsRunner(settings, model, dataset)
        runner.run()
        if path.exists():
            path.rmdir()  # empty (checked above): rename onto it
        os.replace(staging, path)
    return path
