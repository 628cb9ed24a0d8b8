"""Where a run's model, text and device come from: the embedded ones or SAELens's loaders.

Every loading failure caused by the user's input becomes a ``GatedPluginError`` naming it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import datasets
import torch
from sae_lens.load_model import load_model
from transformer_lens import HookedTransformer

from sae_gated_plugin import embedded
from sae_gated_plugin.errors import GatedPluginError

_HUB_MODEL_KWARGS = {"center_writing_weights": False}  # SAELens's runner's default


def model_from_pretrained_kwargs(model_name: str) -> dict[str, Any]:
    """The ``model_from_pretrained_kwargs`` to record in SAELens configs (none for the embedded
    model, which is built unprocessed, not by ``from_pretrained``)."""
    return {} if embedded.is_embedded_model(model_name) else dict(_HUB_MODEL_KWARGS)


@contextmanager
def dataset_load_errors(dataset_name: str, embedded_dataset: Any) -> Iterator[None]:
    """Turn SAELens failing to load a Hub dataset (an ``OSError`` from ``datasets``) into an
    error naming it; ``embedded_dataset`` is what ``load_text_dataset`` returned."""
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
    """``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``; under torchrun,
    ``cuda`` is the rank's own GPU (``rank_device``)."""
    if launched_by_torchrun():
        return rank_device(device)
    return _auto(device)


def _auto(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def launched_by_torchrun() -> bool:
    """Whether this process is a worker of a torchrun (or compatible) launch."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 of a torchrun launch."""
    return os.environ.get("RANK", "0") == "0"


def env_int(name: str, default: str | None = None) -> int:
    """An integer environment variable set by torchrun; a clear error if it is not one."""
    value = os.environ.get(name, default)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GatedPluginError(
            f"environment variable {name}={value!r} is not an integer (set by torchrun)"
        ) from None


def rank_device(device: str) -> str:
    """The device a torchrun worker uses for ``device`` (``cpu``, ``cuda`` or ``auto``): each
    rank drives GPU ``LOCAL_RANK``. An explicit ``cuda:N`` would put every rank on one GPU."""
    device = _auto(device)
    if device == "cuda":
        return f"cuda:{env_int('LOCAL_RANK', os.environ.get('RANK', '0'))}"
    if device.startswith("cuda:"):
        raise GatedPluginError(
            f"device {device!r}: under torchrun each rank uses GPU LOCAL_RANK; set device to "
            "'cuda' or 'auto' (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    return device


def load_language_model(name: str, device: str) -> HookedTransformer:
    """The embedded SmolLM2 for ``smollm2-135m``, else SAELens's own model loader."""
    if embedded.is_embedded_model(name):
        return embedded.load_smollm2(device=device)
    try:
        return load_model(
            "HookedTransformer",
            name,
            device=device,
            model_from_pretrained_kwargs=dict(_HUB_MODEL_KWARGS),
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
        return embedded.load_corpus(name, split=split)  # type: ignore[arg-type]  # name checked by is_embedded_corpus
    return None


def announce(message: str) -> None:
    """Say on stderr what is happening now (e.g. a slow load), so no wait is silent."""
    print(message, file=sys.stderr, flush=True)


def activation_width(
    model: HookedTransformer, hook_name: str, head_index: int | None = None
) -> int:
    """Width of the activations an SAE at ``hook_name`` reads (one tiny forward pass): as
    SAELens, one head of a ``(batch, pos, n_heads, d_head)`` hook if ``head_index`` names it,
    else all heads flattened."""
    if hook_name not in model.hook_dict:
        raise GatedPluginError(
            f"hook_name {hook_name!r} is not a hook of model {model.cfg.model_name!r} "
            f"(e.g. blocks.0.hook_resid_post ... blocks.{model.cfg.n_layers - 1}.hook_resid_post)"
        )
    tokens = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    shape = tuple(cache[hook_name].shape)
    if len(shape) == 4:
        n_heads, d_head = shape[2], shape[3]
        if head_index is None:
            return int(n_heads * d_head)
        if not 0 <= head_index < n_heads:
            raise GatedPluginError(
                f"hook_head_index {head_index} is out of range: {hook_name} has {n_heads} heads"
            )
        return int(d_head)
    if len(shape) != 3 or head_index is not None:
        raise GatedPluginError(
            f"hook {hook_name!r} gives activations of shape {shape}; an SAE needs "
            "(batch, pos, d) or, with heads, (batch, pos, n_heads, d_head)"
            + (" (hook_head_index applies to hooks with a head axis only)" if head_index else "")
        )
    return int(shape[-1])


def load_hub_text_dataset(name: str, split: str) -> Any:
    """A Hugging Face dataset split, streamed; one that cannot be loaded is an error naming it."""
    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        raise GatedPluginError(
            f"dataset {name} (split {split!r}) cannot be loaded: {exc}"
        ) from None
