"""``inspect_sae``: one streaming pass of held-out text through the model and the SAE, then the
feature browser (and optionally a Neuronpedia export), each written whole or not at all."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_gated_plugin.arch.artifacts import CFG_FILENAME, validate_sae_folder
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.saved import held_out_text, held_out_windows, load_saved_sae
from sae_gated_plugin.eval.splice import describe_positions, excluded_token_ids
from sae_gated_plugin.inspect.activations import activation_batches
from sae_gated_plugin.inspect.collect import LatentStatistics
from sae_gated_plugin.inspect.data import InspectReport, LatentReport
from sae_gated_plugin.inspect.decoder import logit_effects, nearest_latents
from sae_gated_plugin.inspect.neuronpedia import write_neuronpedia_export
from sae_gated_plugin.inspect.options import EXPORT_MARKER, INSPECT_FILENAME, parse_latents
from sae_gated_plugin.inspect.site import write_site
from sae_gated_plugin.io import atomic_write_json, folder_written_whole, write_faults
from sae_gated_plugin.sources import (
    activation_width,
    announce,
    load_language_model,
    resolve_device,
)

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


def _load(sae: str, sae_id: str | None, revision: str | None, device: str) -> SAE[Any]:
    """The SAE of a folder, or of a Hub repo with ``sae_id``."""
    folder = Path(sae)
    if folder.exists():
        if sae_id is not None:
            raise GatedPluginError(f"{sae} is a local folder; --sae-id applies to Hub repo ids")
        return load_saved_sae(folder, validate_sae_folder(folder)["architecture"], device)
    from sae_gated_plugin.hub.load import load_sae

    assert sae_id is not None  # the command checks it
    return load_sae(sae, sae_id, revision=revision, device=device)


def _check_model(model: HookedTransformer, sae: SAE[Any], hook_name: str) -> None:
    """The model gives what the SAE reads at ``hook_name``: same width."""
    head_index = getattr(sae.cfg.metadata, "hook_head_index", None)
    width = activation_width(model, hook_name, head_index)
    if width != sae.cfg.d_in:
        raise GatedPluginError(
            f"the SAE reads {sae.cfg.d_in} dimensions but {model.cfg.model_name}'s {hook_name} "
            f"gives {width}: the SAE was not trained on this model"
        )


def _vocabulary(model: HookedTransformer) -> list[str]:
    """Every token id's text, as the model's tokenizer decodes it alone."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        return [str(i) for i in range(model.cfg.d_vocab)]
    return [str(tokenizer.decode([i])) for i in range(model.cfg.d_vocab)]


def inspect_sae(
    sae: str,
    *,
    sae_id: str | None = None,
    revision: str | None = None,
    model_name: str | None = None,
    dataset: str | None = None,
    split: str = "eval",
    n_tokens: int = 100_000,
    latents: str | None = None,
    output: Path,
    neuronpedia: Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    show_progress: bool = True,
    model: HookedTransformer | None = None,
    creator: dict[str, str | None] | None = None,
) -> Path:
    """Inspect the SAE of folder or Hub repo ``sae``: write the browser to ``output`` (and a
    Neuronpedia export to ``neuronpedia``, naming ``creator``'s ``creator_name`` and
    ``creator_id`` where given); return the browser's index page. ``model``, when given,
    replaces loading the SAE's model by name."""
    device = resolve_device(device)
    loaded = _load(sae, sae_id, revision, device)
    chosen = parse_latents(latents, loaded.cfg.d_sae)
    metadata = loaded.cfg.metadata
    text = held_out_text(
        metadata, f"{sae}/{sae_id or ''}/{CFG_FILENAME}".replace("//", "/"),
        model_name=model_name, dataset=dataset, split=split,
    )  # fmt: skip
    if not text.hook_name:
        raise GatedPluginError(f"{sae}: the SAE's metadata names no hook_name")
    if model is None:
        announce(f"loading {text.model_name}...")
        model = load_language_model(text.model_name, device)
    _check_model(model, loaded, text.hook_name)
    tokens = held_out_windows(model, text, math.ceil(n_tokens / text.context_size))
    exclude = excluded_token_ids(model, text.exclude_special_tokens)
    indices = torch.tensor(chosen) if chosen is not None else torch.arange(loaded.cfg.d_sae)
    statistics = LatentStatistics(loaded.cfg.d_sae, latents=indices)
    for batch in activation_batches(
        loaded, model, tokens, hook_name=text.hook_name, seqpos_slice=text.seqpos_slice,
        exclude_token_ids=exclude, batch_size=batch_size, show_progress=show_progress,
    ):  # fmt: skip
        statistics.update(batch.tokens, batch.acts, batch.spliced, batch.gate_open)
    vocabulary = _vocabulary(model)
    report = InspectReport(
        sae=sae if sae_id is None else f"{sae}/{sae_id}",
        architecture=loaded.cfg.architecture(),
        model_name=text.model_name,
        hook_name=text.hook_name,
        d_in=loaded.cfg.d_in,
        d_sae=loaded.cfg.d_sae,
        dataset=text.dataset,
        split=text.split,
        n_sequences=int(tokens.shape[0]),
        context_size=text.context_size,
        n_tokens=statistics.n_tokens,
        positions=describe_positions(
            text.seqpos_slice, exclude, text.context_size, model.tokenizer
        ),
        latents=_latent_reports(loaded, model, indices, statistics, vocabulary),
    )
    named = {key: value for key, value in (creator or {}).items() if value}
    return _write(report, output, neuronpedia, named)


def _latent_reports(
    sae: SAE[Any],
    model: HookedTransformer,
    indices: torch.Tensor,
    statistics: LatentStatistics,
    vocabulary: list[str],
) -> list[LatentReport]:
    """Each inspected latent's activation statistics joined with its decoder row's effects."""
    w_dec = sae.W_dec.detach()
    fits_unembedding = w_dec.shape[1] == model.W_U.shape[0]  # not so for hook_z SAEs
    effects = logit_effects(w_dec, model.W_U.detach(), indices) if fits_unembedding else None
    near_ids, near_cos = nearest_latents(w_dec, indices)
    reports = []
    for row, partial in enumerate(statistics.finalize(lambda ids: [vocabulary[i] for i in ids])):
        promoted: list[tuple[str, float]] = []
        suppressed: list[tuple[str, float]] = []
        logit_edges: list[float] = []
        logit_counts: list[int] = []
        if effects is not None:
            promoted = _tokens(vocabulary, effects.top_ids[row], effects.top_values[row])
            suppressed = _tokens(vocabulary, effects.bottom_ids[row], effects.bottom_values[row])
            logit_edges = effects.histogram_edges[row].tolist()
            logit_counts = effects.histogram_counts[row].tolist()
        reports.append(
            LatentReport(
                **vars(partial),
                promoted=promoted,
                suppressed=suppressed,
                logit_histogram_edges=logit_edges,
                logit_histogram_counts=logit_counts,
                nearest=list(zip(near_ids[row].tolist(), near_cos[row].tolist(), strict=True)),
            )
        )
    return reports


def _tokens(
    vocabulary: list[str], ids: torch.Tensor, values: torch.Tensor
) -> list[tuple[str, float]]:
    return [(vocabulary[i], v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]


def _write(
    report: InspectReport, output: Path, neuronpedia: Path | None, creator: dict[str, Any]
) -> Path:
    """The browser (and the export), each staged and moved into place when complete."""
    if neuronpedia is not None:
        intact = _intact(neuronpedia)
        with write_faults(neuronpedia, intact), folder_written_whole(neuronpedia) as staging:
            write_neuronpedia_export(report, staging, **creator)
            (staging / EXPORT_MARKER).touch()
    with write_faults(output, _intact(output)), folder_written_whole(output) as staging:
        write_site(report, staging)
        summary = {key: value for key, value in asdict(report).items() if key != "latents"}
        summary["latents"] = [
            {key: getattr(latent, key) for key in ("index", "n_firing", "frequency",
                                                    "max_activation", "mean_activation")}
            for latent in report.latents
        ]  # fmt: skip
        atomic_write_json(staging / INSPECT_FILENAME, summary)
    return output / "index.html"


def _intact(target: Path) -> str:
    """What a failed write of ``target`` leaves (its staging folder is removed)."""
    return "the earlier output is unchanged" if target.exists() else "nothing was written there"
