"""One grid point of a sweep, for every stream: its SAE config, SAE, trainer and result line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import TrainingSAE, TrainingSAEConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class

from sae_gated_plugin.arch.registry import register
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run.saelens_bridge import (
    GuardedTrainer,
    gated_paper_settings,
    sae_settings,
    trainer_config,
)
from sae_gated_plugin.sweep.config import PAPER_ARCHITECTURE, GridPoint, SweepConfig

if TYPE_CHECKING:
    import datasets
    from transformer_lens import HookedTransformer

    from sae_gated_plugin.eval.metrics import EvalReport
    from sae_gated_plugin.sweep.held_out import HeldOutEvaluation

Echo = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Finished:
    """A finished point: its result line, progress message, trainer and held-out report."""

    point: GridPoint
    record: dict[str, Any]
    message: str
    trainer: GuardedTrainer  # its SAE as trained (activation scaling folded in) and sparsity
    report: EvalReport | None = None  # the language-model streams' evaluation


REPORT_FIELDS = (
    "n_tokens l0 dead_fraction explained_variance loss_recovered delta_ce_loss "
    "relative_reconstruction_bias mse ce_loss_clean ce_loss_with_sae ce_loss_zero_ablation"
)
"""The held-out ``EvalReport`` fields of a language-model result line, in order."""
COEFFICIENT_FIELDS = ("k", "l1_coefficient", "l0_coefficient")
"""Sparsity coefficient field per architecture, the first its config class has."""
WARM_UP_FIELDS = {"l1_coefficient": "l1_warm_up_steps", "l0_coefficient": "l0_warm_up_steps"}


def _training_config_class(architecture: str) -> type[TrainingSAEConfig]:
    register()  # gated_paper, whether or not SAELens's import already registered it
    try:
        return get_sae_training_class(architecture)[1]
    except KeyError:
        known = sorted(SAE_TRAINING_CLASS_REGISTRY)
        raise GatedPluginError(
            f"architecture {architecture!r} is not registered in SAELens (known: {known})"
        ) from None


def coefficient_field(architecture: str) -> str:
    """The config field a grid's coefficient sets for ``architecture`` (k, l1_coefficient...)."""
    names = {f.name for f in dataclasses.fields(_training_config_class(architecture))}
    for name in COEFFICIENT_FIELDS:
        if name in names:
            return name
    raise GatedPluginError(f"architecture {architecture!r} has no sparsity coefficient field")


def build_sae_config(
    point: GridPoint, config: SweepConfig, d_in: int, device: str
) -> TrainingSAEConfig:
    """The SAELens training config of one point: the run's settings (plus ``run.sae``'s for
    ``gated_paper``), the point's coefficient, then the variant's overrides."""
    cfg_class = _training_config_class(point.architecture)
    names = {f.name for f in dataclasses.fields(cfg_class)}
    field = coefficient_field(point.architecture)
    settings = sae_settings(config.run, d_in, device)
    if point.architecture == PAPER_ARCHITECTURE:
        settings.update(gated_paper_settings(config.run))
    if field == "k":
        if point.coefficient != int(point.coefficient) or point.coefficient < 1:
            raise GatedPluginError(f"{point.label(field)}: k must be a positive integer")
        settings["k"] = int(point.coefficient)
    else:
        settings[field] = float(point.coefficient)
    warm_up = WARM_UP_FIELDS.get(field)
    if warm_up in names:
        settings[warm_up] = config.run.l1_warm_up_steps_in_force
    overrides = config.variants.get(point.variant, {})
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise GatedPluginError(
            f"variants.{point.variant}: {unknown} not field(s) of {point.architecture}'s config"
        )
    settings.update(overrides)
    try:
        return cfg_class(**settings)
    except (TypeError, ValueError) as exc:
        raise GatedPluginError(f"{point.label(field)}: invalid SAE config: {exc}") from None


def new_sae(point: GridPoint, config: SweepConfig, d_in: int, device: str) -> TrainingSAE[Any]:
    """A freshly initialised training SAE for ``point``, seeded by its seed."""
    sae_cfg = build_sae_config(point, config, d_in, device)
    torch.manual_seed(point.seed)
    sae_class = get_sae_training_class(sae_cfg.architecture())[0]
    return sae_class(sae_cfg)


def make_trainer(
    point: GridPoint, config: SweepConfig, sae: TrainingSAE[Any], data: Iterator[Any], device: str
) -> GuardedTrainer:
    """SAELens's trainer (as ``GuardedTrainer``) for one SAE, resampling when the point asks."""
    trainer = GuardedTrainer(trainer_config(config.run, point.lr, device), sae, data)
    if point.resampling:
        assert config.run.resampling is not None  # checked by SweepConfig
        trainer.enable_resampling(config.run.resampling)
    return trainer


def point_record(
    point: GridPoint, trainer: GuardedTrainer, config: SweepConfig, seconds: tuple[float, float]
) -> dict[str, Any]:
    """The fields every stream's result line starts with; ``seconds``: (training, evaluation)."""
    return {
        "architecture": point.architecture,
        "variant": point.variant,
        "coefficient": point.coefficient,
        "coefficient_name": coefficient_field(point.architecture),
        "lr": point.lr,
        "seed": point.seed,
        "resampling": point.resampling,
        "grids": list(point.grids),
        "d_sae": int(trainer.sae.cfg.d_sae),
        "n_resampled": list(trainer.resampler.n_resampled) if trainer.resampler else [],
        "seconds": seconds[0] + seconds[1],
        "train_seconds": seconds[0],
        "eval_seconds": seconds[1],
        "stream": config.stream,
        "settings_id": config.settings_id(),
    }


def lm_finished(
    point: GridPoint,
    trainer: GuardedTrainer,
    report: EvalReport,
    config: SweepConfig,
    seconds: tuple[float, float],
    cached_tokens: int | None,
    label: str,
) -> Finished:
    """A finished language-model point: its JSON line and progress message."""
    losses = trainer.losses or []
    tail = losses[-max(1, len(losses) // 10) :]
    tokens = int(trainer.n_training_samples)
    record = {
        **point_record(point, trainer, config, seconds),
        "tokens_trained": tokens,
        "epochs": tokens / cached_tokens if cached_tokens else None,
        **{name: getattr(report, name) for name in REPORT_FIELDS.split()},
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "hook_name": config.run.hook_name,
    }
    message = (
        f"{label}: L0 {report.l0:.1f}, loss recovered {report.loss_recovered:.3f}, gamma "
        f"{report.relative_reconstruction_bias:.3f}, dead {report.dead_fraction:.1%} "
        f"({record['seconds']:.0f} s)"
    )
    return Finished(point, record, message, trainer, report)


@dataclasses.dataclass
class SweepContext:
    """What every grid point of one sweep shares."""

    config: SweepConfig
    model: HookedTransformer
    d_in: int
    device: str
    evaluation: HeldOutEvaluation
    train_dataset: datasets.Dataset | None
    echo: Echo
