"""``sae-gated eval SAE_PATH``: evaluate any saved SAELens SAE on held-out text, by default
with the model, hook, window length and positions its metadata says it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY

from sae_gated_plugin.arch.artifacts import CFG_FILENAME, EVAL_FILENAME, validate_sae_folder
from sae_gated_plugin.arch.registry import register
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import EvalReport, write_report
from sae_gated_plugin.eval.splice import evaluate_sae, excluded_token_ids
from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset
from sae_gated_plugin.sources import (
    announce,
    load_hub_text_dataset,
    load_language_model,
    load_text_dataset,
    resolve_device,
)


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
    sae = _load_sae(sae_path, cfg["architecture"], device)
    metadata = cfg.get("metadata") or {}
    model_name = model_name or metadata.get("model_name")
    dataset = dataset or metadata.get("dataset_path")
    if not model_name:
        raise GatedPluginError(f"{sae_path}/cfg.json names no model_name; pass --model")
    if not dataset:
        raise GatedPluginError(f"{sae_path}/cfg.json names no dataset_path; pass --dataset")
    text = load_text_dataset(dataset, split)
    text = load_hub_text_dataset(dataset, split) if text is None else text
    announce(f"loading {model_name}...")
    model = load_language_model(model_name, device)
    tokens = eval_tokens_from_dataset(
        model,
        text,
        context_size=int(metadata.get("context_size") or 128),
        n_sequences=n_sequences,
        prepend_bos=bool(metadata.get("prepend_bos", True)),
    )
    report = evaluate_sae(
        sae,
        model,
        tokens,
        hook_name=metadata.get("hook_name"),
        seqpos_slice=tuple(metadata.get("seqpos_slice") or (None,)),
        exclude_token_ids=excluded_token_ids(model, metadata.get("exclude_special_tokens", False)),
        batch_size=batch_size,
    )
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


def _load_sae(sae_path: Path, architecture: str, device: str) -> SAE[Any]:
    register()
    if architecture not in SAE_CLASS_REGISTRY:
        raise GatedPluginError(
            f"{sae_path / CFG_FILENAME}: architecture {architecture!r} is not known to SAELens "
            f"(known: {', '.join(sorted(SAE_CLASS_REGISTRY))}); install the plugin that "
            "provides it"
        )
    return SAE.load_from_disk(sae_path, device=device)
