"""``sae-gated eval SAE_PATH``: evaluate any saved SAELens SAE on held-out text, by default
with the model, hook, window length and positions its metadata says it was trained on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY

from sae_gated_plugin.arch.artifacts import CFG_FILENAME, EVAL_FILENAME, validate_sae_folder
from sae_gated_plugin.arch.registry import register
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import EvalReport, write_report
from sae_gated_plugin.eval.splice import evaluate_sae, excluded_token_ids
from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset
from sae_gated_plugin.io import unchanged_or_nothing, write_faults
from sae_gated_plugin.sources import (
    announce,
    load_hub_text_dataset,
    load_language_model,
    load_text_dataset,
    resolve_device,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def evaluate_saved_sae(
    sae_path: Path,
    *,
    model_name: str | None = None,
    dataset: str | None = None,
    split: str = "eval",
    n_sequences: int = 64,
    batch_size: int = 8,
    device: str = "auto",
    output: Path | None = None,
    overwrite: bool = False,
) -> EvalReport:
    """Evaluate the SAE in ``sae_path`` and write the report (default next to the SAE).

    An existing report is kept unless ``overwrite``; all but the model is checked before it loads.
    """
    if n_sequences <= 0 or batch_size <= 0:
        raise GatedPluginError("--n-sequences and --batch-size must be positive")
    output = output or sae_path / EVAL_FILENAME
    _check_report_path(output, overwrite)
    cfg = validate_sae_folder(sae_path)
    device = resolve_device(device)
    sae = load_saved_sae(sae_path, cfg["architecture"], device)
    text = held_out_text(
        cfg.get("metadata") or {}, f"{sae_path}/{CFG_FILENAME}",
        model_name=model_name, dataset=dataset, split=split,
    )  # fmt: skip
    announce(f"loading {text.model_name}...")
    model = load_language_model(text.model_name, device)
    report = evaluate_sae(
        sae,
        model,
        held_out_windows(model, text, n_sequences),
        hook_name=text.hook_name,
        seqpos_slice=text.seqpos_slice,
        exclude_token_ids=excluded_token_ids(model, text.exclude_special_tokens),
        batch_size=batch_size,
    )
    with write_faults(output, unchanged_or_nothing(output)):
        write_report(report, output)
    return report


def _check_report_path(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise GatedPluginError(f"--output {output} is a folder; give the report's file path")
    if output.exists() and not overwrite:
        raise GatedPluginError(
            f"{output} already exists (an earlier evaluation); pass --overwrite to replace it "
            "or --output to write elsewhere (nothing was changed)"
        )


@dataclass(frozen=True)
class HeldOutText:
    """Where an SAE is looked at: its model, held-out text, hook and windows as it was trained."""

    model_name: str
    dataset: str
    split: str
    hook_name: str | None
    context_size: int
    prepend_bos: bool
    seqpos_slice: tuple[int | None, ...]
    exclude_special_tokens: bool | list[int]


def held_out_text(
    metadata: Mapping[str, Any],
    where: str,
    *,
    model_name: str | None = None,
    dataset: str | None = None,
    split: str = "eval",
) -> HeldOutText:
    """The SAE's training setting from its ``metadata`` (read from ``where``), with the model
    and dataset overridable; a missing model or dataset is an error naming the option."""
    model_name = model_name or metadata.get("model_name")
    dataset = dataset or metadata.get("dataset_path")
    if not model_name:
        raise GatedPluginError(f"{where} names no model_name; pass --model")
    if not dataset:
        raise GatedPluginError(f"{where} names no dataset_path; pass --dataset")
    return HeldOutText(
        model_name=model_name,
        dataset=dataset,
        split=split,
        hook_name=metadata.get("hook_name"),
        context_size=int(metadata.get("context_size") or 128),
        prepend_bos=bool(metadata.get("prepend_bos", True)),
        seqpos_slice=tuple(metadata.get("seqpos_slice") or (None,)),
        exclude_special_tokens=metadata.get("exclude_special_tokens") or False,
    )


def held_out_windows(model: HookedTransformer, text: HeldOutText, n_sequences: int) -> torch.Tensor:
    """The first ``n_sequences`` windows of the held-out split, cut as SAELens trains."""
    dataset = load_text_dataset(text.dataset, text.split)
    dataset = load_hub_text_dataset(text.dataset, text.split) if dataset is None else dataset
    return eval_tokens_from_dataset(
        model, dataset, context_size=text.context_size, n_sequences=n_sequences,
        prepend_bos=text.prepend_bos,
    )  # fmt: skip


def load_saved_sae(sae_path: Path, architecture: str, device: str) -> SAE[Any]:
    """The SAE of a checked folder; an architecture SAELens does not know is an error."""
    register()
    if architecture not in SAE_CLASS_REGISTRY:
        raise GatedPluginError(
            f"{sae_path / CFG_FILENAME}: architecture {architecture!r} is not known to SAELens "
            f"(known: {', '.join(sorted(SAE_CLASS_REGISTRY))}); install the plugin that "
            "provides it"
        )
    return SAE.load_from_disk(sae_path, device=device)
