"""The ``synthetic`` stream: SAEs trained on SAELens's synthetic model (known features) and each
scored against them on the same fresh samples (one fixed seed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from sae_lens.synthetic.evals import eval_sae_on_synthetic_data
from sae_lens.synthetic.synthetic_model import SyntheticModel, SyntheticModelConfig
from sae_lens.synthetic.training import SyntheticActivationIterator

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sweep.config import GridPoint, SweepConfig
from sae_gated_plugin.sweep.points import (
    Echo,
    Finished,
    coefficient_field,
    make_trainer,
    new_sae,
    point_record,
)
from sae_gated_plugin.sweep.synthetic_config import SyntheticSettings


def load_synthetic_model(settings: SyntheticSettings, device: str) -> SyntheticModel:
    """The sweep's synthetic model, built from its description or loaded from ``path``."""
    if settings.model is not None:
        config = SyntheticModelConfig.from_dict(settings.model.to_saelens())
        return SyntheticModel(config, device=device)
    try:
        return SyntheticModel.load_from_disk(str(settings.path), device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise GatedPluginError(
            f"synthetic.path {settings.path}: not a saved synthetic model ({exc})"
        ) from None


def finished(
    point: GridPoint,
    trainer: Any,
    result: Any,
    config: SweepConfig,
    seconds: tuple[float, float],
    label: str,
) -> Finished:
    """A finished synthetic point: its JSON line and progress message."""
    assert config.synthetic is not None
    record = {
        **point_record(point, trainer, config, seconds),
        "true_l0": result.true_l0,
        "l0": result.sae_l0,
        "mcc": result.mcc,
        "uniqueness": result.uniqueness,
        "precision": result.classification.precision,
        "recall": result.classification.recall,
        "f1": result.classification.f1_score,
        "shrinkage": result.shrinkage,
        "explained_variance": result.explained_variance,
        "dead_fraction": result.dead_latents / int(trainer.sae.cfg.d_sae),
        "samples_trained": int(trainer.n_training_samples),
        "eval_samples": config.synthetic.eval_samples,
    }
    message = (
        f"{label}: L0 {result.sae_l0:.2f} (true {result.true_l0:.2f}), MCC {result.mcc:.3f}, "
        f"F1 {result.classification.f1_score:.3f}, shrinkage {result.shrinkage:.3f}, dead "
        f"{record['dead_fraction']:.1%} ({record['seconds']:.0f} s)"
    )
    return Finished(point, record, message, trainer)


def train_synthetic(
    config: SweepConfig,
    todo: list[tuple[int, GridPoint]],
    total: int,
    device: str,
    echo: Echo,
) -> Iterator[Finished]:
    """Train and score each point on the sweep's synthetic model, one after the other."""
    assert config.synthetic is not None
    synthetic = load_synthetic_model(config.synthetic, device)
    d_in = synthetic.cfg.hidden_dim
    batch_size = config.run.train_batch_size_tokens
    for index, point in todo:
        label = f"[{index}/{total}] {point.label(coefficient_field(point.architecture))}"
        echo(label)
        started = time.perf_counter()
        sae = new_sae(point, config, d_in, device)
        data = SyntheticActivationIterator(
            synthetic.feature_dict, synthetic.activation_generator, batch_size
        )
        trainer = make_trainer(point, config, sae, data, device)
        trainer.fit()
        trained = time.perf_counter()
        torch.manual_seed(config.synthetic.eval_seed)
        result = eval_sae_on_synthetic_data(
            trainer.sae,
            synthetic.feature_dict,
            synthetic.activation_generator,
            num_samples=config.synthetic.eval_samples,
            batch_size=batch_size,
            activation_scaler=trainer.activation_scaler,
        )
        seconds = (trained - started, time.perf_counter() - trained)
        yield finished(point, trainer, result, config, seconds, label)
