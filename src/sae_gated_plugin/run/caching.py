"""Cache a run's activations on disk with SAELens's ``CacheActivationsRunner``.

A sweep over ``l1_coefficient`` then trains from the cache (``saelens:
{use_cached_activations: true, cached_activations_path: ...}``) instead of re-running the
language model for every SAE. The cache is made from the same run config as training, so model,
hook, corpus, window and training positions agree by construction.

SAELens's cache runner loads its model by name; for the embedded SmolLM2 (which no
TransformerLens name reaches) the already loaded model is handed in instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import staging_folder
from sae_gated_plugin.run.run_config import TrainRunConfig
from sae_gated_plugin.sources import (
    activation_width,
    announce,
    dataset_load_errors,
    load_language_model,
    load_text_dataset,
    model_from_pretrained_kwargs,
    resolve_device,
)

if TYPE_CHECKING:
    import datasets
    from sae_lens.cache_activations_runner import CacheActivationsRunner
    from sae_lens.config import CacheActivationsRunnerConfig
    from transformer_lens import HookedTransformer

MAX_BUFFER_GB = 2.0
"""SAELens's shard size limit (its datasets writer has trouble with larger shards)."""


def cached_activations_path(cfg: TrainRunConfig) -> Path:
    """The cache folder the run config names in ``saelens.cached_activations_path``."""
    path = cfg.saelens.get("cached_activations_path")
    if not path:
        raise GatedPluginError(
            "saelens.cached_activations_path is not set: name the folder to cache "
            "activations in (and to train from, with saelens.use_cached_activations: true)"
        )
    return Path(path)


def check_cache_matches(cfg: TrainRunConfig, d_in: int) -> None:
    """Before training from a cache: it exists and holds this run's hook, window and width."""
    import datasets

    path = cached_activations_path(cfg)
    if not (path / "dataset_info.json").is_file():
        raise GatedPluginError(
            f"saelens.cached_activations_path {path} holds no cached activations; make them "
            "with `sae-gated cache CONFIG` (the same config)"
        )
    features = datasets.load_from_disk(str(path)).features
    expected = (cfg.training_window, d_in)
    if cfg.hook_name not in features:
        raise GatedPluginError(
            f"cached activations in {path} are of {sorted(features)}, not {cfg.hook_name!r}"
        )
    shape = tuple(features[cfg.hook_name].shape)
    if shape != expected:
        raise GatedPluginError(
            f"cached activations in {path} have shape {shape} per window, this run needs "
            f"{expected} (context_size {cfg.context_size}, positions "
            f"{list(cfg.training_positions)}, d_in {d_in}): re-cache with this config"
        )


def _buffer_size_gb(cfg: TrainRunConfig, d_in: int, tokens_per_batch: int) -> float:
    """One shard for a small run (SAELens's default of 2 GB would cache far more tokens
    than asked for), SAELens's 2 GB shards for a large one."""
    import torch

    bytes_per_token = d_in * getattr(torch, cfg.dtype).itemsize
    batches = math.ceil(cfg.training_tokens / tokens_per_batch)
    wanted = batches * tokens_per_batch * bytes_per_token + bytes_per_token // 2
    return min(MAX_BUFFER_GB, wanted / 1e9)


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
    path = cached_activations_path(cfg)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GatedPluginError(f"{path} already exists and is not empty; nothing was overwritten")
    announce("loading SAELens...")
    from sae_lens.config import CacheActivationsRunnerConfig

    device = resolve_device(cfg.device)
    if dataset is None:
        dataset = load_text_dataset(cfg.dataset, "train")
    if model is None:
        announce(f"loading {cfg.model_name}...")
        model = load_language_model(cfg.model_name, device)
    d_in = activation_width(model, cfg.hook_name)
    positions = cfg.training_positions
    tokens_per_batch = cfg.store_batch_size_prompts * cfg.training_window
    staging = path.with_name(path.name + ".partial")
    try:
        cache_cfg = CacheActivationsRunnerConfig(
            dataset_path=cfg.dataset,
            model_name=cfg.model_name,
            model_batch_size=cfg.store_batch_size_prompts,
            hook_name=cfg.hook_name,
            d_in=d_in,
            training_tokens=cfg.training_tokens,
            context_size=cfg.context_size,
            new_cached_activations_path=str(staging),
            shuffle=True,
            seed=cfg.seed,
            dtype=cfg.dtype,
            device=device,
            buffer_size_gb=_buffer_size_gb(cfg, d_in, tokens_per_batch),
            prepend_bos=cfg.prepend_bos,
            seqpos_slice=positions,
            streaming=cfg.streaming,
            model_from_pretrained_kwargs=model_from_pretrained_kwargs(cfg.model_name),
        )
    except (TypeError, ValueError) as exc:
        raise GatedPluginError(f"SAELens rejected the cache config: {exc}") from None
    with staging_folder(staging):
        with dataset_load_errors(cfg.dataset, dataset):
            runner = _runner_with_model(cache_cfg, model, dataset)
        runner.run()
        if path.exists():
            path.rmdir()  # empty (checked above): rename onto it
        os.replace(staging, path)
    return path


def _runner_with_model(
    cache_cfg: CacheActivationsRunnerConfig,
    model: HookedTransformer,
    dataset: datasets.Dataset | None,
) -> CacheActivationsRunner:
    """SAELens's ``CacheActivationsRunner`` over an already loaded model.

    Its ``__init__`` always loads the model by name (no override argument in sae-lens 6.x),
    which no TransformerLens name reaches for the embedded SmolLM2; this subclass builds the
    same state around the given model instead, through SAELens's own store factory.
    """
    from datasets import Array2D, Features, Sequence, Value
    from sae_lens import cache_activations_runner as cache_module

    class ModelCacheActivationsRunner(cache_module.CacheActivationsRunner):
        def __init__(self) -> None:  # mirrors CacheActivationsRunner.__init__, minus load_model
            self.cfg = cache_cfg
            self.model = model
            self.activations_store = cache_module._mk_activations_store(
                model, cache_cfg, override_dataset=dataset
            )
            self.context_size = self._get_sliced_context_size(
                cache_cfg.context_size, cache_cfg.seqpos_slice
            )
            self.features = Features({
                cache_cfg.hook_name: Array2D(
                    shape=(self.context_size, cache_cfg.d_in), dtype=cache_cfg.dtype
                ),
                "token_ids": Sequence(Value(dtype="int32"), length=self.context_size),
            })  # fmt: skip

    return ModelCacheActivationsRunner()
