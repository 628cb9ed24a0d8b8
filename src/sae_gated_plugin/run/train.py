"""``sae-gated train``: from a validated ``TrainRunConfig`` to a trained, evaluated SAE.

The run itself is SAELens's: its ``LanguageModelSAERunnerConfig``, ``ActivationsStore``,
trainer, checkpoints and wandb logging. This module only builds the config, supplies the
embedded model and corpus when they are asked for, and evaluates the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sae_gated_plugin.arch.artifacts import EVAL_FILENAME, TRAIN_CONFIG_FILENAME
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import atomic_write_text
from sae_gated_plugin.run.caching import check_cache_matches
from sae_gated_plugin.run.output_folder import own_output_folder
from sae_gated_plugin.run.resume import check_resume
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
    import torch
    from sae_lens import SAE, TrainingSAE, TrainingSAEConfig
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
    from transformer_lens import HookedTransformer

    from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
    from sae_gated_plugin.eval.metrics import EvalReport
    from sae_gated_plugin.run.runner import GatedRunner


def gated_sae_config(cfg: TrainRunConfig, d_in: int) -> GatedPaperTrainingSAEConfig:
    """The ``gated_paper`` training-SAE config that ``cfg.sae`` describes, for width ``d_in``."""
    from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig

    sae_settings = cfg.sae.model_dump(exclude={"d_sae", "expansion_factor", "l1_warm_up_steps"})
    return GatedPaperTrainingSAEConfig(
        d_in=d_in,
        d_sae=cfg.sae.d_sae or cfg.sae.expansion_factor * d_in,
        l1_warm_up_steps=(
            cfg.default_warm_up_steps
            if cfg.sae.l1_warm_up_steps is None
            else cfg.sae.l1_warm_up_steps
        ),
        dtype=cfg.dtype,
        device=resolve_device(cfg.device),
        normalize_activations=cfg.normalize_activations,
        **sae_settings,
    )


def _logging_config(cfg: TrainRunConfig) -> LoggingConfig:
    from sae_lens.config import LoggingConfig

    return LoggingConfig(
        log_to_wandb=cfg.wandb.enabled,
        wandb_project=cfg.wandb.project,
        wandb_entity=cfg.wandb.entity,
        run_name=cfg.wandb.run_name,
        wandb_log_frequency=cfg.wandb.log_frequency,
        eval_every_n_wandb_logs=cfg.wandb.eval_every_n_logs,
    )


def _runner_settings(cfg: TrainRunConfig, resume_from: Path | None) -> dict[str, Any]:
    """The run config's fields under SAELens's names (the ``saelens:`` section not included)."""
    device = resolve_device(cfg.device)
    settings: dict[str, Any] = {
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "dataset_path": cfg.dataset,
        "dataset_trust_remote_code": False,
        "is_dataset_tokenized": cfg.is_dataset_tokenized,
        "streaming": cfg.streaming,
        "context_size": cfg.context_size,
        "training_tokens": cfg.training_tokens,
        "train_batch_size_tokens": cfg.train_batch_size_tokens,
        "store_batch_size_prompts": cfg.store_batch_size_prompts,
        "n_batches_in_buffer": cfg.n_batches_in_buffer,
        **cfg.saelens_optimiser_settings(),
        "seqpos_slice": cfg.training_positions,
        "exclude_special_tokens": cfg.exclude_special_tokens,
        "prepend_bos": cfg.prepend_bos,
        "device": device,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "n_checkpoints": cfg.n_checkpoints,
        "checkpoint_path": str(cfg.checkpoint_path),
        "output_path": cfg.output_path,
        "resume_from_checkpoint": str(resume_from) if resume_from else None,
        "model_from_pretrained_kwargs": model_from_pretrained_kwargs(cfg.model_name),
        "verbose": False,
    }
    if uses_cached_activations(cfg):
        # SAELens caches activations already cut to seqpos_slice but checks the cache against
        # the uncut context_size (sae-lens 6.x): give its runner the cut window. The SAE's
        # metadata gets the real window back (GatedRunner.metadata_overrides).
        settings["context_size"] = cfg.training_window
        settings["seqpos_slice"] = (None,)
    return settings


def build_runner_config(
    cfg: TrainRunConfig, d_in: int, resume_from: Path | None = None
) -> LanguageModelSAERunnerConfig[Any]:
    """SAELens's runner config for ``cfg`` (``gated_paper`` SAE, outputs under output_path)."""
    from sae_lens.config import LanguageModelSAERunnerConfig

    settings = {
        "sae": gated_sae_config(cfg, d_in),
        "logger": _logging_config(cfg),
        **cfg.saelens,
        # After the pass-through section: outputs go where the plugin's own settings say.
        **_runner_settings(cfg, resume_from),
    }
    try:
        runner_cfg = LanguageModelSAERunnerConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise GatedPluginError(f"SAELens rejected the run config: {exc}") from None
    # SAELens appends a random id to checkpoint_path; keep the documented location instead.
    runner_cfg.checkpoint_path = str(cfg.checkpoint_path)
    return runner_cfg


def uses_cached_activations(cfg: TrainRunConfig) -> bool:
    """Whether the run trains from activations cached by ``sae-gated cache``."""
    return bool(cfg.saelens.get("use_cached_activations"))


@dataclass
class TrainResult:
    """What a finished run produced."""

    trained_sae: TrainingSAE[Any]
    """The SAE as the trainer left it (activation scaling folded in)."""
    output_path: Path
    """The folder holding the saved inference SAE, its checkpoints and reports."""
    report: EvalReport | None
    """The held-out evaluation, when enabled."""


def train(
    cfg: TrainRunConfig,
    resume_from: Path | None = None,
    model: HookedTransformer | None = None,
    sae_config: TrainingSAEConfig | None = None,
) -> TrainResult:
    """Train a ``gated_paper`` SAE with SAELens's runner, then evaluate it on held-out text.

    Args:
        cfg: the validated run config.
        resume_from: a checkpoint folder of an earlier run of the same config to continue.
        model: an already loaded model to reuse (else loaded from ``cfg.model_name``).
        sae_config: a SAELens training-SAE config to train instead of the one ``cfg.sae``
            describes, with the same data, optimiser and evaluation (for baselines such as
            SAELens's ``standard``); its ``d_in`` must be the hook's width.
    """
    # -- distributed (issue 13): a torchrun worker trains as one rank of the run
    from sae_gated_plugin.sources import launched_by_torchrun

    if launched_by_torchrun():
        from sae_gated_plugin.run.distributed_train import train_distributed

        trained, report = train_distributed(
            cfg,
            resume_from,
            model,
            sae_config,
            runner_config=build_runner_config,
            evaluate=evaluate_run,
        )
        return TrainResult(trained_sae=trained, output_path=Path(cfg.output_path), report=report)
    # -- end distributed
    output = Path(cfg.output_path)
    if resume_from is not None:
        check_resume(cfg, resume_from)
    with own_output_folder(output) as folder:
        runner, model = _prepare_runner(cfg, resume_from, model, sae_config)
        config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        runner.extra_checkpoint_files = {TRAIN_CONFIG_FILENAME: config_text}
        atomic_write_text(output / TRAIN_CONFIG_FILENAME, config_text)
        folder.keep = True  # from here on, checkpoints may exist: the folder stays
        trained = runner.run()
        report = None
        if cfg.eval.enabled:
            report = evaluate_run(cfg, load_trained_sae(output, resolve_device(cfg.device)), model)
    return TrainResult(trained_sae=trained, output_path=output, report=report)


def _prepare_runner(
    cfg: TrainRunConfig,
    resume_from: Path | None,
    model: HookedTransformer | None,
    sae_config: TrainingSAEConfig | None,
) -> tuple[GatedRunner, HookedTransformer]:
    """Load what the run needs and build SAELens's runner (nothing is written yet)."""
    announce("loading SAELens...")
    import torch

    from sae_gated_plugin.arch.registry import register
    from sae_gated_plugin.run.runner import GatedRunner

    register()
    device = resolve_device(cfg.device)
    dataset = load_text_dataset(cfg.dataset, "train")
    if model is None:
        announce(f"loading {cfg.model_name}...")
        model = load_language_model(cfg.model_name, device)
    d_in = activation_width(model, cfg.hook_name, cfg.saelens.get("hook_head_index"))
    if uses_cached_activations(cfg):
        check_cache_matches(cfg, d_in)
    runner_cfg = build_runner_config(cfg, d_in, resume_from)
    if sae_config is not None:
        if sae_config.d_in != d_in:
            raise GatedPluginError(
                f"sae_config.d_in is {sae_config.d_in}, but {cfg.hook_name} is {d_in} wide"
            )
        runner_cfg.sae = sae_config

    # SAELens's runner config carries the seed but never applies it: seed the SAE's
    # initialisation and the activation buffer's shuffling here, so runs are repeatable.
    torch.manual_seed(cfg.seed)
    with dataset_load_errors(cfg.dataset, dataset):
        runner = GatedRunner(runner_cfg, override_model=model, override_dataset=dataset)
    runner.resampling = cfg.resampling
    runner.metadata_overrides = {
        "context_size": cfg.context_size,
        "seqpos_slice": cfg.training_positions,
    }
    return runner, model


def load_trained_sae(path: Path, device: str = "cpu") -> SAE[Any]:
    """The inference SAE saved in an output folder."""
    from sae_lens import SAE

    return SAE.load_from_disk(path, device=device)


def held_out_tokens(
    cfg: TrainRunConfig, model: HookedTransformer, eval_split: datasets.Dataset | None = None
) -> torch.Tensor:
    """The run's evaluation windows: ``cfg.eval.n_sequences`` of the dataset's held-out split
    (``eval_split`` when given), cut as training cuts them."""
    from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset

    if eval_split is None:
        eval_split = load_text_dataset(cfg.dataset, "eval")
    if eval_split is None:
        raise GatedPluginError(
            f"no held-out split is known for dataset {cfg.dataset!r}: use an embedded corpus, "
            "or evaluate with `sae-gated eval` on a dataset of your choice"
        )
    return eval_tokens_from_dataset(
        model,
        eval_split,
        context_size=cfg.context_size,
        n_sequences=cfg.eval.n_sequences,
        prepend_bos=cfg.prepend_bos,
    )


def evaluate_run(cfg: TrainRunConfig, sae: SAE[Any], model: HookedTransformer) -> EvalReport:
    """Evaluate on the held-out split with the training positions; write evaluation.json."""
    from sae_gated_plugin.eval.metrics import write_report
    from sae_gated_plugin.eval.splice import evaluate_sae, excluded_token_ids

    tokens = held_out_tokens(cfg, model)
    report = evaluate_sae(
        sae,
        model,
        tokens,
        hook_name=cfg.hook_name,
        seqpos_slice=cfg.training_positions,
        exclude_token_ids=excluded_token_ids(model, cfg.exclude_special_tokens),
        batch_size=cfg.eval.batch_size,
    )
    write_report(report, Path(cfg.output_path) / EVAL_FILENAME)
    return report
