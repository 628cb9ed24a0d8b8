"""``sae-gated train``: from a validated ``TrainRunConfig`` to a trained, evaluated SAE.

The run itself is SAELens's: its ``LanguageModelSAERunnerConfig``, ``ActivationsStore``,
trainer, checkpoints and wandb logging. This module only builds the config, supplies the
embedded model and corpus when they are asked for, and evaluates the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sae_gated_plugin import embedded
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run_config import TrainRunConfig

if TYPE_CHECKING:
    import datasets
    from sae_lens import SAE, TrainingSAE, TrainingSAEConfig
    from sae_lens.config import LanguageModelSAERunnerConfig
    from transformer_lens import HookedTransformer

    from sae_gated_plugin.evals import EvalReport

TRAIN_CONFIG_FILENAME = "train_config.yaml"
EVAL_FILENAME = "evaluation.json"
CHECKPOINT_FILES = (
    "cfg.json",
    "sae_weights.safetensors",
    "trainer_state.pt",
    "activations_store_state.safetensors",
)


HUB_MODEL_KWARGS = {"center_writing_weights": False}
"""How SAELens's runner loads a TransformerLens model by name (its default)."""


def model_from_pretrained_kwargs(model_name: str) -> dict[str, Any]:
    """The ``model_from_pretrained_kwargs`` to record for ``model_name`` in SAELens configs:
    none for the embedded model (built unprocessed, not by ``from_pretrained``)."""
    return {} if embedded.is_embedded_model(model_name) else dict(HUB_MODEL_KWARGS)


@contextmanager
def dataset_load_errors(dataset_name: str, embedded_dataset: Any) -> Iterator[None]:
    """Turn SAELens failing to load a Hub dataset (not found, offline, unreachable: all
    OSErrors from ``datasets``) into an error naming it; ``embedded_dataset`` is what
    ``load_text_dataset`` returned (an embedded corpus is never loaded by SAELens)."""
    try:
        yield
    except OSError as exc:
        if embedded_dataset is not None:
            raise
        raise GatedPluginError(
            f"dataset {dataset_name!r} could not be loaded ({type(exc).__name__}: {exc}). Use "
            "'wiki-summaries' (embedded, offline) or a Hugging Face dataset, online."
        ) from exc


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_language_model(name: str, device: str) -> HookedTransformer:
    """The embedded SmolLM2 for ``smollm2-135m``, else SAELens's own model loader."""
    if embedded.is_embedded_model(name):
        return embedded.load_smollm2(device=device)
    from sae_lens.load_model import load_model

    try:
        return load_model(  # type: ignore[return-value]
            "HookedTransformer",
            name,
            device=device,
            model_from_pretrained_kwargs=dict(HUB_MODEL_KWARGS),
        )
    except (ValueError, OSError) as exc:  # unknown name, no network, missing files
        # TransformerLens's unknown-name message lists every model it knows: keep the start.
        reason = str(exc).split(". Valid official model names")[0][:300]
        raise GatedPluginError(
            f"model {name!r} could not be loaded ({type(exc).__name__}: {reason}). Use "
            "'smollm2-135m' (embedded, offline) or a TransformerLens model name, online."
        ) from exc


def load_text_dataset(name: str, split: str) -> datasets.Dataset | None:
    """The embedded corpus split for an embedded name; None lets SAELens load a Hub dataset."""
    if embedded.is_embedded_corpus(name):
        return embedded.load_corpus(name, split=split)  # type: ignore[arg-type]
    return None


def activation_width(model: HookedTransformer, hook_name: str) -> int:
    """Width of the activations at ``hook_name`` (one tiny forward pass)."""
    import torch

    if hook_name not in model.hook_dict:
        raise GatedPluginError(
            f"hook_name {hook_name!r} is not a hook of model {model.cfg.model_name!r} "
            f"(e.g. blocks.0.hook_resid_post ... blocks.{model.cfg.n_layers - 1}.hook_resid_post)"
        )
    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    return int(cache[hook_name].shape[-1])


def build_runner_config(
    cfg: TrainRunConfig, d_in: int, resume_from: Path | None = None
) -> LanguageModelSAERunnerConfig[Any]:
    """SAELens's runner config for ``cfg`` (``gated_paper`` SAE, outputs under output_path)."""
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_gated_plugin.config import GatedPaperTrainingSAEConfig

    device = resolve_device(cfg.device)
    default_warm_up = cfg.total_steps // 20
    sae_settings = cfg.sae.model_dump(exclude={"d_sae", "expansion_factor", "l1_warm_up_steps"})
    sae_cfg = GatedPaperTrainingSAEConfig(
        d_in=d_in,
        d_sae=cfg.sae.d_sae or cfg.sae.expansion_factor * d_in,
        l1_warm_up_steps=(
            default_warm_up if cfg.sae.l1_warm_up_steps is None else cfg.sae.l1_warm_up_steps
        ),
        dtype=cfg.dtype,
        device=device,
        normalize_activations=cfg.normalize_activations,
        **sae_settings,
    )
    logger = LoggingConfig(
        log_to_wandb=cfg.wandb.enabled,
        wandb_project=cfg.wandb.project,
        wandb_entity=cfg.wandb.entity,
        run_name=cfg.wandb.run_name,
        wandb_log_frequency=cfg.wandb.log_frequency,
        eval_every_n_wandb_logs=cfg.wandb.eval_every_n_logs,
    )
    settings: dict[str, Any] = {
        "sae": sae_cfg,
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
        "lr": cfg.lr,
        "lr_warm_up_steps": default_warm_up
        if cfg.lr_warm_up_steps is None
        else cfg.lr_warm_up_steps,
        "lr_scheduler_name": cfg.lr_scheduler_name,
        "lr_decay_steps": cfg.lr_decay_steps,
        "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2,
        "seqpos_slice": cfg.training_positions,
        "exclude_special_tokens": cfg.exclude_special_tokens,
        "prepend_bos": cfg.prepend_bos,
        "device": device,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "n_checkpoints": cfg.n_checkpoints,
        "checkpoint_path": str(cfg.checkpoint_path),
        "output_path": cfg.output_path,
        "dead_feature_window": cfg.dead_feature_window,
        "feature_sampling_window": cfg.feature_sampling_window,
        "n_batches_for_norm_estimate": cfg.n_batches_for_norm_estimate,
        "resume_from_checkpoint": str(resume_from) if resume_from else None,
        "model_from_pretrained_kwargs": model_from_pretrained_kwargs(cfg.model_name),
        "logger": logger,
        "verbose": False,
        **cfg.saelens,
    }
    if uses_cached_activations(cfg):
        # SAELens caches activations already cut to seqpos_slice but checks the cache against
        # the uncut context_size (sae-lens 6.x): give its runner the cut window. The SAE's
        # metadata gets the real window back (GatedRunner.metadata_overrides).
        from sae_gated_plugin.caching import sliced_length

        settings["context_size"] = sliced_length(cfg.context_size, cfg.training_positions)
        settings["seqpos_slice"] = (None,)
    if cfg.n_batches_in_buffer * cfg.context_size < cfg.train_batch_size_tokens:
        raise GatedPluginError(
            f"n_batches_in_buffer * context_size ({cfg.n_batches_in_buffer * cfg.context_size}) "
            f"must be >= train_batch_size_tokens ({cfg.train_batch_size_tokens})"
        )
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


def check_output_folder(cfg: TrainRunConfig, resume_from: Path | None) -> None:
    """Refuse to overwrite a finished SAE; on resume, check the checkpoint is complete."""
    output = Path(cfg.output_path)
    if resume_from is None and (output / "cfg.json").exists():
        raise GatedPluginError(
            f"output_path {output} already holds a trained SAE; choose another output_path "
            "(nothing was overwritten)"
        )
    if resume_from is not None:
        if not resume_from.is_dir():
            raise GatedPluginError(f"--resume {resume_from}: no such checkpoint folder")
        missing = [name for name in CHECKPOINT_FILES if not (resume_from / name).exists()]
        if missing:
            raise GatedPluginError(
                f"--resume {resume_from}: not a complete SAELens checkpoint (missing {missing})"
            )


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
    import torch

    import sae_gated_plugin  # noqa: F401  (registers gated_paper)
    from sae_gated_plugin.trainer import GatedRunner

    check_output_folder(cfg, resume_from)
    device = resolve_device(cfg.device)
    dataset = load_text_dataset(cfg.dataset, "train")
    if model is None:
        model = load_language_model(cfg.model_name, device)
    d_in = activation_width(model, cfg.hook_name)
    if uses_cached_activations(cfg):
        from sae_gated_plugin.caching import check_cache_matches

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
    runner.metadata_overrides = {
        "context_size": cfg.context_size,
        "seqpos_slice": cfg.training_positions,
    }
    output = Path(cfg.output_path)
    output.mkdir(parents=True, exist_ok=True)
    (output / TRAIN_CONFIG_FILENAME).write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    trained = runner.run()
    report = None
    if cfg.eval.enabled:
        report = evaluate_run(cfg, load_trained_sae(output, device), model)
    return TrainResult(trained_sae=trained, output_path=output, report=report)


def load_trained_sae(path: Path, device: str = "cpu") -> SAE[Any]:
    """The inference SAE saved in an output folder."""
    from sae_lens import SAE

    return SAE.load_from_disk(path, device=device)


def evaluate_run(cfg: TrainRunConfig, sae: SAE[Any], model: HookedTransformer) -> EvalReport:
    """Evaluate on the held-out split with the training positions; write evaluation.json."""
    from sae_gated_plugin.evals import eval_tokens_from_dataset, evaluate_sae, write_report

    eval_split = load_text_dataset(cfg.dataset, "eval")
    if eval_split is None:
        raise GatedPluginError(
            f"no held-out split is known for dataset {cfg.dataset!r}; evaluate with "
            "`sae-gated eval` on a dataset of your choice"
        )
    tokens = eval_tokens_from_dataset(
        model,
        eval_split,
        context_size=cfg.context_size,
        n_sequences=cfg.eval.n_sequences,
        prepend_bos=cfg.prepend_bos,
    )
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


def excluded_token_ids(model: HookedTransformer, setting: bool | list[int]) -> list[int]:
    """The token ids an ``exclude_special_tokens`` setting excludes, as SAELens decides them."""
    from sae_gated_plugin.evals import special_token_ids

    if setting is False:
        return []
    return special_token_ids(model) if setting is True else list(setting)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, with an error naming the file when it is missing or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GatedPluginError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise GatedPluginError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GatedPluginError(f"{path}: expected a JSON object")
    return data
