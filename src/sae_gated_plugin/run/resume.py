"""Checks before ``sae-gated train --resume CHECKPOINT`` writes anything: the config may change
only in :data:`MAY_CHANGE_ON_RESUME`, and every checkpoint file opens as training will open it
(so a garbled checkpoint is refused naming the file instead of failing mid-way)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import yaml

from sae_gated_plugin.arch.artifacts import (
    CFG_FILENAME,
    TRAIN_CONFIG_FILENAME,
    WEIGHTS_FILENAME,
    check_weights,
    read_cfg,
    read_safetensors,
)
from sae_gated_plugin.errors import CorruptArtifactError, GatedPluginError
from sae_gated_plugin.io import one_line, read_text
from sae_gated_plugin.run.config import TrainRunConfig
from sae_gated_plugin.run.output_folder import check_no_finished_sae

TRAINER_STATE_FILENAME = "trainer_state.pt"
ACTIVATIONS_STORE_FILENAME = "activations_store_state.safetensors"
CHECKPOINT_FILES = (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    TRAINER_STATE_FILENAME,
    ACTIVATIONS_STORE_FILENAME,
)
"""The files of a complete SAELens checkpoint."""

MAY_CHANGE_ON_RESUME = frozenset(
    {"training_tokens", "n_checkpoints", "eval", "wandb", "device", "distributed"}
)
"""Top-level fields a resume may change: none changes what training already did (the length
only while the schedules stay as they were; checkpoints are the same whatever the ranks)."""


def saved_train_config(checkpoint: Path) -> tuple[Path, dict[str, Any]]:
    """The run config that wrote ``checkpoint``: its own copy, else the run's output folder's."""
    for path in (
        checkpoint / TRAIN_CONFIG_FILENAME,
        checkpoint.parent.parent / TRAIN_CONFIG_FILENAME,
    ):
        if path.is_file():
            text = read_text(path, what="run config", error=CorruptArtifactError)
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise CorruptArtifactError(
                    f"{path}: not a readable run config ({one_line(exc)})"
                ) from None
            if not isinstance(data, dict):
                raise CorruptArtifactError(f"{path}: not a run config (not a mapping)")
            return path, data
    raise GatedPluginError(
        f"--resume {checkpoint}: no {TRAIN_CONFIG_FILENAME} in the checkpoint or in its run's "
        "output folder, so the config cannot be checked against it"
    )


def _schedule(cfg: TrainRunConfig) -> dict[str, Any]:
    """What the optimiser's and lambda's schedules are built from (must not change)."""
    return {
        "lr_warm_up_steps": cfg.lr_warm_up_steps_in_force,
        "l1_warm_up_steps": cfg.l1_warm_up_steps_in_force,
        "total_steps": cfg.total_steps
        if cfg.lr_scheduler_name != "constant" or cfg.lr_decay_steps
        else None,
    }


def check_config_matches(cfg: TrainRunConfig, saved: dict[str, Any], source: Path) -> None:
    """Refuse every change from the checkpoint's run config but :data:`MAY_CHANGE_ON_RESUME`."""
    current = cfg.model_dump(mode="json")
    changed = sorted(
        key
        for key in set(current) | set(saved)
        if key not in MAY_CHANGE_ON_RESUME and current.get(key) != saved.get(key)
    )
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise GatedPluginError(
            f"--resume: the config differs from the one that wrote the checkpoint ({source}) in "
            f"{changed} ({details}). Only {sorted(MAY_CHANGE_ON_RESUME)} may change on resume; "
            "start a new run for the rest"
        )
    try:
        before = TrainRunConfig.model_validate(saved)
    except ValueError as exc:
        raise CorruptArtifactError(f"{source}: not a valid run config ({exc})") from None
    if _schedule(before) != _schedule(cfg):
        raise GatedPluginError(
            f"--resume: training_tokens {before.training_tokens} -> {cfg.training_tokens} "
            f"changes the lr/lambda schedules ({_schedule(before)} -> {_schedule(cfg)}); set "
            "lr_warm_up_steps and sae.l1_warm_up_steps explicitly to their earlier values "
            "(with a constant lr schedule and no lr decay) to extend the run"
        )


def check_checkpoint_files(checkpoint: Path) -> None:
    """Open every file of the checkpoint as training will; corrupted ones name the file."""
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).exists()]
    if missing:
        raise GatedPluginError(
            f"--resume {checkpoint}: not a complete SAELens checkpoint (missing {missing})"
        )
    cfg = read_cfg(checkpoint / CFG_FILENAME)
    weights_path = checkpoint / WEIGHTS_FILENAME
    check_weights(cfg, read_safetensors(weights_path), weights_path)
    read_safetensors(checkpoint / ACTIVATIONS_STORE_FILENAME)
    state_path = checkpoint / TRAINER_STATE_FILENAME
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptArtifactError(
            f"{state_path}: not a readable trainer state ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    if not isinstance(state, dict) or "optimizer" not in state:
        raise CorruptArtifactError(f"{state_path}: not a SAELens trainer state")


def check_resume(cfg: TrainRunConfig, checkpoint: Path) -> None:
    """Everything ``--resume`` needs checked before anything is written."""
    if not checkpoint.is_dir():
        raise GatedPluginError(f"--resume {checkpoint}: no such checkpoint folder")
    check_no_finished_sae(Path(cfg.output_path))
    check_checkpoint_files(checkpoint)
    source, saved = saved_train_config(checkpoint)
    check_config_matches(cfg, saved, source)
    if checkpoint.name.isdigit() and int(checkpoint.name) >= cfg.training_tokens:
        raise GatedPluginError(
            f"--resume {checkpoint}: the checkpoint is at {int(checkpoint.name)} tokens, "
            f"training_tokens is {cfg.training_tokens}: nothing is left to train"
        )
