"""``sae-gated eval SAE_PATH``: evaluate any saved SAELens SAE on held-out text.

Model, hook, window length and spliced positions default to what the SAE's own metadata says
it was trained on, so an SAE is evaluated where it was trained (see ``evals.evaluate_sae``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sae_gated_plugin.arch.artifacts import CFG_FILENAME, EVAL_FILENAME, validate_sae_folder
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import write_report
from sae_gated_plugin.eval.splice import evaluate_sae, excluded_token_ids
from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset
from sae_gated_plugin.io import read_json
from sae_gated_plugin.sources import (
    load_hub_text_dataset,
    load_language_model,
    load_text_dataset,
    resolve_device,
)

if TYPE_CHECKING:
    from sae_gated_plugin.eval.metrics import EvalReport


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
) -> EvalReport:
    """Evaluate the SAE in ``sae_path``; writes the report JSON (default next to the SAE)."""
    from sae_lens import SAE

    if n_sequences <= 0 or batch_size <= 0:
        raise GatedPluginError("--n-sequences and --batch-size must be positive")
    validate_sae_folder(sae_path)
    metadata = read_json(sae_path / CFG_FILENAME).get("metadata") or {}
    model_name = model_name or metadata.get("model_name")
    dataset = dataset or metadata.get("dataset_path")
    if not model_name:
        raise GatedPluginError(f"{sae_path}/cfg.json names no model_name; pass --model")
    if not dataset:
        raise GatedPluginError(f"{sae_path}/cfg.json names no dataset_path; pass --dataset")
    device = resolve_device(device)
    text = load_text_dataset(dataset, split)
    if text is None:
        text = load_hub_text_dataset(dataset, split)
    sae = SAE.load_from_disk(sae_path, device=device)
    model = load_language_model(model_name, device)
    context_size = int(metadata.get("context_size") or 128)
    tokens = eval_tokens_from_dataset(
        model,
        text,
        context_size=context_size,
        n_sequences=n_sequences,
        prepend_bos=bool(metadata.get("prepend_bos", True)),
    )
    seqpos_slice = tuple(metadata.get("seqpos_slice") or (None,))
    report = evaluate_sae(
        sae,
        model,
        tokens,
        hook_name=metadata.get("hook_name"),
        seqpos_slice=seqpos_slice,
        exclude_token_ids=excluded_token_ids(model, metadata.get("exclude_special_tokens", False)),
        batch_size=batch_size,
    )
    write_report(report, output or sae_path / EVAL_FILENAME)
    return report
