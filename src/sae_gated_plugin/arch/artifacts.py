"""Checks on a saved or downloaded SAE folder before anything is loaded from it: JSON and
safetensors only (never pickle); every problem raises ``CorruptArtifactError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sae_gated_plugin.arch.schema import ARCHITECTURE, GatedPaperSAESchema
from sae_gated_plugin.errors import CorruptArtifactError
from sae_gated_plugin.io import read_json, require_file

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
TRAIN_CONFIG_FILENAME = "train_config.yaml"  # the `sae-gated train` config, beside its SAE
EVAL_FILENAME = "evaluation.json"  # the evaluation report, beside its SAE
GATED_ARCHITECTURES = (ARCHITECTURE, "gated")
# cfg.json metadata key recording what an SAE was trained as and the form it is saved in.
PLUGIN_METADATA_KEY = "sae_gated_plugin"


def gated_parameter_shapes(d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a gated SAE's parameters (SAELens's gated file format)."""
    return {
        "W_enc": (d_in, d_sae),
        "b_gate": (d_sae,),
        "r_mag": (d_sae,),
        "b_mag": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }


def read_cfg(path: Path) -> dict[str, Any]:
    """Parse ``cfg.json``; for gated_paper also validate it with the pydantic schema."""
    if not path.exists():
        raise CorruptArtifactError(f"{path}: missing (an SAE folder needs {CFG_FILENAME})")
    cfg = read_json(path, error=CorruptArtifactError, expect_object=False)
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise CorruptArtifactError(f"{path}: not an SAELens config (no 'architecture' field)")
    if cfg["architecture"] == ARCHITECTURE:
        try:
            GatedPaperSAESchema.model_validate(cfg)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise CorruptArtifactError(f"{path}: invalid gated_paper config: {problems}") from None
    return cfg


def read_safetensors(path: Path) -> dict[str, Any]:
    """Load a safetensors file on the CPU; truncated or garbled files raise a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    require_file(path, what="safetensors file", error=CorruptArtifactError)
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        raise CorruptArtifactError(f"{path}: not a readable safetensors file ({reason})") from None


def check_weights(cfg: dict[str, Any], weights: dict[str, Any], path: Path) -> None:
    """Require the tensors a config implies: names and shapes (gated), dtype, finite values."""
    import torch
    from sae_lens.util import str_to_dtype

    if cfg.get("architecture") in GATED_ARCHITECTURES:
        expected = gated_parameter_shapes(int(cfg["d_in"]), int(cfg["d_sae"]))
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            raise CorruptArtifactError(
                f"{path}: parameters do not match cfg.json (missing {missing}, "
                f"unexpected {unexpected})"
            )
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise CorruptArtifactError(
                    f"{path}: {name} has shape {tuple(weights[name].shape)} but cfg.json "
                    f"(d_in={cfg['d_in']}, d_sae={cfg['d_sae']}) implies {shape}"
                )
    dtype = str_to_dtype(cfg.get("dtype", "float32"))
    for name, tensor in weights.items():
        if not tensor.is_floating_point():
            raise CorruptArtifactError(f"{path}: {name} has non-float dtype {tensor.dtype}")
        if tensor.dtype != dtype:
            raise CorruptArtifactError(
                f"{path}: {name} is {tensor.dtype} but cfg.json says dtype {cfg.get('dtype')}"
            )
        if not torch.isfinite(tensor).all():
            raise CorruptArtifactError(f"{path}: {name} contains NaN or infinite values")


def validate_sae_folder(folder: Path) -> dict[str, Any]:
    """Validate ``cfg.json``, the weights and any sparsity of an SAE folder; return the cfg."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorruptArtifactError(f"{folder}: no such SAE folder")
    cfg = read_cfg(folder / CFG_FILENAME)
    check_weights(cfg, read_safetensors(folder / WEIGHTS_FILENAME), folder / WEIGHTS_FILENAME)
    sparsity_path = folder / SPARSITY_FILENAME
    if os.path.lexists(sparsity_path):
        sparsity = read_safetensors(sparsity_path).get("sparsity")
        if sparsity is None or tuple(sparsity.shape) != (int(cfg["d_sae"]),):
            raise CorruptArtifactError(
                f"{sparsity_path}: expected a 'sparsity' tensor of shape ({cfg['d_sae']},)"
            )
    return cfg
