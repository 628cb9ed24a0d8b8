"""A saprmarks/dictionary_learning ``GatedAutoEncoder`` folder (``ae.pt``, ``config.json``) read
as a gated_paper SAE (docs/conversions.md). Its biases are saved already scaled by norm_factor,
so the SAE reads raw activations; the training backup, saved before that scaling, is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.util import dtype_to_str

from sae_gated_plugin.arch.artifacts import gated_parameter_shapes
from sae_gated_plugin.arch.config import GatedPaperSAEConfig
from sae_gated_plugin.convert.folders import PROVENANCE_KEY
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import read_json

STATE_FILENAME = "ae.pt"
CONFIG_FILENAME = "config.json"
DICT_CLASS = "GatedAutoEncoder"
TRAINED_AS = "dictionary_learning GatedAutoEncoder"
"""``trained_architecture`` recorded in a converted SAE's provenance."""

_RENAMES = {"encoder.weight": "W_enc", "gate_bias": "b_gate", "r_mag": "r_mag",
            "mag_bias": "b_mag", "decoder.weight": "W_dec", "decoder_bias": "b_dec"}  # fmt: skip
_TRANSPOSED = {"encoder.weight", "decoder.weight"}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``ae.pt`` read with ``torch.load(weights_only=True)``; refused unless all are tensors."""
    if not path.is_file():
        raise GatedPluginError(f"{path}: missing (a dictionary_learning folder holds {path.name})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an untrusted file: whatever torch.load raises is a refusal
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise GatedPluginError(
            f"{path}: refused: torch.load(weights_only=True) cannot read it ({first_line}). "
            "It holds objects other than tensors, or is not a PyTorch file; it was not unpickled "
            "any further"
        ) from None
    if not isinstance(state, dict):
        raise GatedPluginError(
            f"{path}: refused: holds a {type(state).__name__}, not a state dict of tensors"
        )
    others = {str(k): type(v).__name__ for k, v in state.items() if not isinstance(v, torch.Tensor)}
    if others:
        hint = ""
        if {"ae", "optimizer"} <= set(state):
            hint = (
                " (this is dictionary_learning's training backup, whose biases are not yet "
                "scaled by norm_factor; convert the final ae.pt written when training ends)"
            )
        listed = ", ".join(f"{k!r}: {t}" for k, t in sorted(others.items())[:5])
        raise GatedPluginError(
            f"{path}: refused: a state dict must hold tensors only, but holds {listed}{hint}"
        )
    return state


def _check_layout(state: dict[str, torch.Tensor], path: Path, trainer: dict[str, Any]) -> None:
    missing = sorted(set(_RENAMES) - set(state))
    unexpected = sorted(set(state) - set(_RENAMES))
    if missing or unexpected:
        raise GatedPluginError(
            f"{path}: not a dictionary_learning {DICT_CLASS} state dict (missing {missing}, "
            f"unexpected {unexpected})"
        )
    dict_size, activation_dim = state["encoder.weight"].shape
    shapes = gated_parameter_shapes(activation_dim, dict_size)
    for name, new in _RENAMES.items():
        shape = shapes[new][::-1] if name in _TRANSPOSED else shapes[new]
        if tuple(state[name].shape) != shape:
            raise GatedPluginError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, but encoder.weight "
                f"[{dict_size}, {activation_dim}] implies {shape}"
            )
    for key, size in (("activation_dim", activation_dim), ("dict_size", dict_size)):
        if key in trainer and trainer[key] != size:
            raise GatedPluginError(
                f"{path}: {key} is {size} but {CONFIG_FILENAME} says {trainer[key]}"
            )
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise GatedPluginError(
            f"{path}: tensors must share one floating-point dtype, found {sorted(map(str, dtypes))}"
        )
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise GatedPluginError(f"{path}: {name} contains NaN or infinite values")


def gated_parameters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GatedAutoEncoder state dict as gated SAE parameters (SAELens names and layouts)."""
    return {
        new: (state[old].T if old in _TRANSPOSED else state[old]).contiguous().clone()
        for old, new in _RENAMES.items()
    }


def _hook_name(trainer: dict[str, Any]) -> str | None:
    # dictionary_learning hooks the output of model.layers[layer] (resid_post, as SAELens's own
    # loader of these checkpoints assumes) unless its submodule_name label says otherwise.
    layer, label = trainer.get("layer"), trainer.get("submodule_name")
    if isinstance(layer, int) and (label is None or str(label).startswith("resid_post")):
        return f"blocks.{layer}.hook_resid_post"
    return None


def sae_cfg(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """A ``gated_paper`` cfg.json for the checkpoint, with the metadata config.json gives."""
    trainer, buffer = config.get("trainer") or {}, config.get("buffer") or {}
    metadata: dict[str, Any] = {}
    if isinstance(trainer.get("lm_name"), str):
        metadata["model_name"] = trainer["lm_name"]
    if (hook := _hook_name(trainer)) is not None:
        metadata["hook_name"] = hook
    if isinstance(buffer.get("ctx_len"), int):
        metadata["context_size"] = buffer["ctx_len"]
    metadata[PROVENANCE_KEY] = {"trained_architecture": TRAINED_AS, "dictionary_learning": config}
    dict_size, activation_dim = state["encoder.weight"].shape
    cfg = GatedPaperSAEConfig(
        d_in=int(activation_dim),
        d_sae=int(dict_size),
        dtype=dtype_to_str(state["encoder.weight"].dtype),
        apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(**metadata),
    )
    return cfg.to_dict()


def read_checkpoint(src: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``gated_paper`` cfg.json and the checked ``ae.pt`` state dict of a folder."""
    src = Path(src)
    if not src.is_dir():
        raise GatedPluginError(f"{src}: no such folder (a dictionary_learning training folder)")
    config = read_json(src / CONFIG_FILENAME)
    trainer = config.get("trainer")
    if not isinstance(trainer, dict):
        raise GatedPluginError(f"{src / CONFIG_FILENAME}: no 'trainer' section")
    dict_class = trainer.get("dict_class", DICT_CLASS)
    if dict_class != DICT_CLASS:
        raise GatedPluginError(
            f"{src / CONFIG_FILENAME}: dict_class is {dict_class!r}; only {DICT_CLASS} "
            "checkpoints convert to a gated SAE"
        )
    state = load_state_dict(src / STATE_FILENAME)
    _check_layout(state, src / STATE_FILENAME, trainer)
    return sae_cfg(state, config), state


class DictionaryLearningReference:
    """dictionary_learning's ``GatedAutoEncoder`` forward on a state dict, in SAELens's names."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def process_sae_in(self, x: torch.Tensor) -> torch.Tensor:
        """``x - decoder_bias``, what the encoder multiplies."""
        return x - self.state["decoder_bias"]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``GatedAutoEncoder.encode``."""
        x_enc = torch.nn.functional.linear(self.process_sae_in(x), self.state["encoder.weight"])
        gate = (x_enc + self.state["gate_bias"] > 0).to(x_enc.dtype)
        return gate * torch.relu(self.state["r_mag"].exp() * x_enc + self.state["mag_bias"])

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """``GatedAutoEncoder.decode``."""
        decoded = torch.nn.functional.linear(features, self.state["decoder.weight"])
        return decoded + self.state["decoder_bias"]
