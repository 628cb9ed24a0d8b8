"""The ``sae-gated train`` config (YAML or JSON, checked by pydantic; errors name the field),
with the paper's recipe as defaults where SAELens exposes it; ``sae-gated schema`` prints it."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sae_gated_plugin import embedded
from sae_gated_plugin.arch.schema import (
    GatedPaperTrainingFields,
    InputCentring,
    NormalizeActivations,
)
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import one_line, read_text

Model = TypeVar("Model", bound=BaseModel)

PLUGIN_OWNED_RUNNER_FIELDS = frozenset({
    "sae", "logger", "model_name", "hook_name", "dataset_path", "dataset_trust_remote_code",
    "is_dataset_tokenized", "streaming", "context_size", "training_tokens",
    "train_batch_size_tokens", "store_batch_size_prompts", "n_batches_in_buffer", "lr",
    "lr_warm_up_steps", "lr_scheduler_name", "lr_decay_steps", "adam_beta1", "adam_beta2",
    "seqpos_slice", "exclude_special_tokens", "prepend_bos", "device", "dtype", "seed",
    "n_checkpoints", "checkpoint_path", "output_path", "dead_feature_window",
    "feature_sampling_window", "n_batches_for_norm_estimate", "resume_from_checkpoint",
    "model_from_pretrained_kwargs", "verbose",
})  # fmt: skip
"""SAELens runner fields the plugin sets itself; the ``saelens:`` section may not set them."""


class ResamplingSettings(BaseModel):
    """When and how dead latents are resampled (off unless a ``resampling:`` section is given)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(
        min_length=1, description="Optimiser steps after which dead latents are resampled."
    )
    dead_window: int = Field(
        default=100,
        gt=0,
        description="A latent that has not fired for this many steps counts as dead.",
    )
    encoder_scale: float = Field(
        default=0.2,
        gt=0,
        description="A revived encoder column's norm, relative to the alive columns' mean norm.",
    )
    lr_factor: float = Field(
        default=0.1, gt=0, le=1, description="Learning-rate multiplier right after resampling."
    )
    lr_warm_up_steps: int = Field(
        default=50, ge=0, description="Steps over which the learning rate climbs back to normal."
    )

    @field_validator("steps")
    @classmethod
    def _check_steps(cls, value: list[int]) -> list[int]:
        if any(step <= 0 for step in value):
            raise ValueError("resampling steps must be positive step counts")
        if len(set(value)) != len(value):
            raise ValueError("resampling steps must not repeat")
        return sorted(value)


class SAESettings(GatedPaperTrainingFields, InputCentring):
    """The dictionary to train: its size and the ``gated_paper`` loss options."""

    model_config = ConfigDict(extra="forbid")

    d_sae: int | None = Field(
        default=None, gt=0, description="Number of latents; default expansion_factor * d_in."
    )
    expansion_factor: int = Field(
        default=8, gt=0, description="d_sae = expansion_factor * d_in when d_sae is not set."
    )
    l1_warm_up_steps: int | None = Field(  # type: ignore[assignment]  # optional here: None means 5% of steps
        default=None,
        ge=0,
        description="Steps over which lambda rises linearly from 0; default 5% of the steps.",
    )


class WandbSettings(BaseModel):
    """Weights & Biases logging through SAELens (off unless enabled)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Log to wandb (needs wandb login).")
    project: str = Field(default="sae-gated-plugin", description="wandb project.")
    entity: str | None = Field(default=None, description="wandb entity (team or user).")
    run_name: str | None = Field(default=None, description="wandb run name.")
    log_frequency: int = Field(default=10, gt=0, description="Log every N training steps.")
    eval_every_n_logs: int = Field(default=100, gt=0, description="SAELens's evals every N logs.")


class EvalSettings(BaseModel):
    """The evaluation run after training, on the held-out split."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Evaluate the SAE when training ends.")
    n_sequences: int = Field(default=64, gt=0, description="Held-out windows to evaluate on.")
    batch_size: int = Field(default=8, gt=0, description="Windows per forward pass.")


class DistributedSettings(BaseModel):
    """How a run launched with torchrun uses its ranks (ignored without torchrun)."""

    model_config = ConfigDict(extra="forbid")

    latent_sharding: bool = Field(
        default=False,
        description="Split the dictionary's latents across the ranks (each holds d_sae / ranks "
        "of them and trains them on the whole batch) instead of a full copy per rank: for "
        "dictionaries too wide for one device. gated_paper only.",
    )
    timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a rank waits for the others at a collective before the run stops "
        "with an error (a rank that died or hangs); longer than any checkpoint save.",
    )


class TrainRunConfig(BaseModel):
    """Everything ``sae-gated train`` needs; defaults follow the paper where SAELens allows."""

    model_config = ConfigDict(extra="forbid")

    output_path: str = Field(
        description="Folder for the trained SAE, its checkpoints and its evaluation report."
    )
    model_name: str = Field(
        default="smollm2-135m",
        description="'smollm2-135m' (embedded, offline) or any TransformerLens model name.",
    )
    hook_name: str = Field(
        default="blocks.11.hook_resid_post", description="TransformerLens hook to train on."
    )
    dataset: str = Field(
        default="wiki-summaries",
        description="'wiki-summaries' (embedded, offline; the train split) or a Hugging Face "
        "dataset path with a 'text' column or pre-tokenised 'tokens'/'input_ids'.",
    )
    is_dataset_tokenized: bool = Field(default=False, description="Hub dataset is pre-tokenised.")
    streaming: bool = Field(default=True, description="Stream a Hub dataset.")
    context_size: int = Field(default=128, gt=1, le=2**31 - 1, description="Tokens per window.")
    training_tokens: int = Field(default=2_000_000, gt=0, description="Tokens to train on.")
    train_batch_size_tokens: int = Field(
        default=4096, gt=0, description="Activations per optimiser step (the paper: 4096)."
    )
    store_batch_size_prompts: int = Field(
        default=16, gt=0, description="Windows per LM forward pass when filling the buffer."
    )
    n_batches_in_buffer: int = Field(
        default=64,
        gt=1,
        description="Shuffle-buffer size: SAELens 6.x holds n_batches_in_buffer * (trained "
        "positions per window) activations, which must be >= train_batch_size_tokens.",
    )
    lr: float = Field(default=3e-4, gt=0, description="Adam learning rate (the paper: 3e-4).")
    lr_warm_up_steps: int | None = Field(
        default=None, ge=0, description="Linear lr warm-up steps; default 5% of the steps."
    )
    lr_scheduler_name: Literal["constant", "cosineannealing", "cosineannealingwarmrestarts"] = (
        Field(default="constant", description="SAELens lr schedule after warm-up.")
    )
    lr_decay_steps: int = Field(default=0, ge=0, description="Linear lr decay steps at the end.")
    adam_beta1: float = Field(default=0.0, ge=0, lt=1, description="Adam beta1 (the paper: 0).")
    adam_beta2: float = Field(default=0.999, ge=0, lt=1, description="Adam beta2 (paper: 0.999).")
    seqpos_slice: tuple[int | None, ...] | None = Field(
        default=None,
        description="Positions of each window to train on, as a Python slice. Default: "
        "[3, null] for smollm2-135m (position 0 is its attention sink, and positions 1-2 "
        "sometimes become one), [null] (all positions, SAELens's default) for other models.",
    )
    exclude_special_tokens: bool | list[int] = Field(
        default=True, description="Skip BOS/EOS/pad (True) or the listed token ids."
    )
    prepend_bos: bool = Field(default=True, description="Start each window with BOS.")
    normalize_activations: NormalizeActivations = Field(
        default="expected_average_only_in",
        description="Scale activations to norm sqrt(d_in) in training (folded into the saved "
        "SAE, which then works on raw activations).",
    )
    n_batches_for_norm_estimate: int = Field(
        default=25,
        gt=0,
        description="Training batches used to estimate the activation norm (SAELens's default "
        "of 1000 costs more LM passes than a short run itself).",
    )
    device: str = Field(default="auto", description="'auto' (cuda if present), 'cpu', 'cuda'...")
    dtype: str = Field(default="float32", description="SAE dtype.")
    seed: int = Field(default=42, description="Random seed.")
    n_checkpoints: int = Field(default=4, ge=0, description="Checkpoints saved evenly in training.")
    dead_feature_window: int = Field(
        default=1000, gt=0, description="Steps without firing after which a latent is dead."
    )
    feature_sampling_window: int = Field(
        default=2000, gt=0, description="Steps per sparsity-statistics window."
    )
    sae: SAESettings = Field(default_factory=SAESettings, description="The dictionary.")
    resampling: ResamplingSettings | None = Field(
        default=None,
        description="Dead-latent resampling (Bricken et al., as the paper); null: none.",
    )
    wandb: WandbSettings = Field(default_factory=WandbSettings, description="wandb logging.")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="Final evaluation.")
    distributed: DistributedSettings = Field(
        default_factory=DistributedSettings, description="Runs launched with torchrun."
    )
    saelens: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other LanguageModelSAERunnerConfig field, passed through verbatim.",
    )

    @field_validator("seqpos_slice")
    @classmethod
    def _check_seqpos_slice(
        cls, value: tuple[int | None, ...] | None
    ) -> tuple[int | None, ...] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= 3:
            raise ValueError("seqpos_slice takes 1 to 3 entries, like Python's slice()")
        if len(value) == 3 and value[2] is not None and value[2] <= 0:
            raise ValueError("seqpos_slice step must be positive")
        return value

    @field_validator("saelens")
    @classmethod
    def _check_passthrough(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(value) & PLUGIN_OWNED_RUNNER_FIELDS)
        if owned:
            raise ValueError(
                f"{owned} are set by the plugin's own fields (e.g. output_path, context_size, "
                "lr at the top level, the SAE under sae:); set them there, not under saelens:"
            )
        if not value:
            return value
        # Imported only when the section is used: the rest of the schema needs no SAELens.
        from sae_lens.config import LanguageModelSAERunnerConfig

        known = {f.name for f in fields(LanguageModelSAERunnerConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown LanguageModelSAERunnerConfig field(s): {unknown}")
        cache = value.get("cached_activations_path")
        if cache is not None and not isinstance(cache, str):
            raise ValueError(f"cached_activations_path must be a folder path, got {cache!r}")
        return value

    @model_validator(mode="after")
    def _check_buffer(self) -> TrainRunConfig:
        # SAELens's ActivationsStore refuses a buffer smaller than a batch; it holds only the
        # training positions of each window, so count those (seqpos_slice), not context_size.
        buffer = self.n_batches_in_buffer * self.training_window
        if buffer < self.train_batch_size_tokens:
            raise ValueError(
                f"n_batches_in_buffer * (training positions per window) = "
                f"{self.n_batches_in_buffer} * {self.training_window} = {buffer} must be >= "
                f"train_batch_size_tokens ({self.train_batch_size_tokens}): raise "
                "n_batches_in_buffer or context_size, or lower train_batch_size_tokens"
            )
        return self

    @property
    def training_positions(self) -> tuple[int | None, ...]:
        """The seqpos_slice in force: the configured one, else the model's default."""
        if self.seqpos_slice is not None:
            return tuple(self.seqpos_slice)
        if embedded.is_embedded_model(self.model_name):
            return embedded.SMOLLM2_SEQPOS_SLICE
        return (None,)

    @property
    def training_window(self) -> int:
        """How many positions of each ``context_size`` window are trained on."""
        return len(range(self.context_size)[slice(*self.training_positions)])

    @property
    def total_steps(self) -> int:
        """Optimiser steps the run takes."""
        return self.training_tokens // self.train_batch_size_tokens

    @property
    def default_warm_up_steps(self) -> int:
        """The lr and lambda warm-up used when none is set: 5% of the steps."""
        return self.total_steps // 20

    @property
    def lr_warm_up_steps_in_force(self) -> int:
        """``lr_warm_up_steps``, or the default warm-up when it is not set."""
        steps = self.lr_warm_up_steps
        return self.default_warm_up_steps if steps is None else steps

    @property
    def l1_warm_up_steps_in_force(self) -> int:
        """``sae.l1_warm_up_steps``, or the default warm-up when it is not set."""
        steps = self.sae.l1_warm_up_steps
        return self.default_warm_up_steps if steps is None else steps

    @property
    def uses_cached_activations(self) -> bool:
        """Whether the run trains from activations cached by ``sae-gated cache``."""
        return bool(self.saelens.get("use_cached_activations"))

    @property
    def cached_activations_path(self) -> Path:
        """The cache folder named in ``saelens.cached_activations_path``."""
        path = self.saelens.get("cached_activations_path")
        if not path:
            raise GatedPluginError(
                "saelens.cached_activations_path is not set: name the folder to cache "
                "activations in (and to train from, with saelens.use_cached_activations: true)"
            )
        return Path(path)

    @property
    def checkpoint_path(self) -> Path:
        """Where checkpoints go: ``<output_path>/checkpoints``."""
        return Path(self.output_path) / "checkpoints"


def check_cache_matches(cfg: TrainRunConfig, d_in: int) -> None:
    """Before training from a cache: it exists and holds this run's hook, window and width."""
    import datasets  # only when training from a cache: the config module stays light

    path = cfg.cached_activations_path
    if not (path / "dataset_info.json").is_file():
        raise GatedPluginError(
            f"saelens.cached_activations_path {path} holds no cached activations; make them "
            "with `sae-gated cache CONFIG` (the same config)"
        )
    try:
        cached = datasets.load_from_disk(str(path))
        cached[len(cached) - 1]  # the last window: a cut-short file fails here, not mid-training
        features = cached.features
    except Exception as exc:  # any failure to read a cache is a bad cache: json, arrow, OS
        reason = " ".join(str(exc).split())[:300]
        raise GatedPluginError(
            f"cached activations in {path} cannot be read ({type(exc).__name__}: {reason}); "
            "re-cache with `sae-gated cache CONFIG`"
        ) from None
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


def json_schema() -> dict[str, Any]:
    """JSON Schema of the ``sae-gated train`` config (for editors and validators)."""
    schema = TrainRunConfig.model_json_schema()
    schema["title"] = "sae-gated train config"
    return schema


def _set_dotted(target: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = target
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise GatedPluginError(f"--set {dotted_key}: {part!r} is not a section")
        node = child
    node[leaf] = value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for sections; values parsed as YAML)."""
    result = copy.deepcopy(raw)  # YAML values need not be JSON (dates, non-string keys)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise GatedPluginError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise GatedPluginError(
                f"--set {item}: the value is not valid YAML ({reason})"
            ) from None
        _set_dotted(result, key.strip(), value)
    return result


def validated(model: type[Model], raw: Mapping[str, Any], source: str, what: str) -> Model:
    """``model`` validated from ``raw``; errors become one ``GatedPluginError`` naming each."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise GatedPluginError(f"{source}: invalid {what}: {problems}") from None


def parse_config(raw: Mapping[str, Any], source: str = "config") -> TrainRunConfig:
    """Validate a config mapping; errors become ``GatedPluginError`` naming field and source."""
    return validated(TrainRunConfig, raw, source, "config")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping, with errors that name the file."""
    path = Path(path)
    text = read_text(path, what="config file")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = path.suffix.lstrip(".") or "YAML"
        raise GatedPluginError(f"{path}: not valid {kind}: {one_line(exc)}") from None
    except RecursionError:
        raise GatedPluginError(f"{path}: nested too deeply to be a config") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise GatedPluginError(
            f"{path}: the config must be a mapping of fields, got {type(data).__name__}"
        )
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainRunConfig:
    """Read, override and validate a config file."""
    raw = apply_overrides(read_config_file(path), overrides)
    return parse_config(raw, source=str(path))
