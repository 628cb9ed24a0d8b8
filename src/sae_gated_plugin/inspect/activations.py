"""The SAE's latent activations on held-out windows, batch by batch: the model runs only up to
the SAE's hook, and the SAE reads the positions the evaluation splices (``eval.splice``)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from sae_gated_plugin.eval.splice import hook_z_reshaping_off, position_mask, sae_view

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass
class ActivationBatch:
    """One batch of windows and what the SAE's latents do on it."""

    tokens: torch.Tensor  # (batch, pos) token ids
    acts: torch.Tensor  # (batch, pos, d_sae) latent activations, zero where not spliced
    spliced: torch.Tensor  # (batch, pos) the positions the SAE read
    gate_open: torch.Tensor | None  # (batch, pos, d_sae) for gated SAEs: where the gate opened


def is_gated(sae: SAE[Any]) -> bool:
    """Whether ``sae`` has a gate path and a magnitude path (SAELens ``gated``, ``gated_paper``)."""
    return all(hasattr(sae, name) for name in ("b_gate", "b_mag", "r_mag"))


def gated_encode(sae: SAE[Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A gated SAE's latent activations and gate openings from one encoder product; the
    activations are ``sae.encode(x)`` (to float rounding for SAELens's ``gated``)."""
    encoder_pre = sae.process_sae_in(x) @ sae.W_enc
    gate_open = encoder_pre + sae.b_gate > 0
    magnitude = sae.hook_sae_acts_pre(encoder_pre * sae.r_mag.exp() + sae.b_mag)
    acts = torch.where(gate_open, sae.activation_fn(magnitude), 0.0)
    return sae.hook_sae_acts_post(acts), gate_open


def stop_layer(hook_name: str) -> int | None:
    """The first block the SAE's hook does not need (None: run the whole model)."""
    found = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(found.group(1)) + 1 if found else None


def activation_batches(
    sae: SAE[Any],
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    hook_name: str,
    seqpos_slice: tuple[int | None, ...],
    exclude_token_ids: Sequence[int],
    batch_size: int,
    show_progress: bool = True,
) -> Iterator[ActivationBatch]:
    """The latent activations of ``sae`` on ``tokens``, ``batch_size`` windows at a time."""
    head_index = getattr(sae.cfg.metadata, "hook_head_index", None)
    exclude_ids = sorted(set(exclude_token_ids))
    exclude = torch.tensor(exclude_ids, dtype=torch.long) if exclude_ids else None
    gated = is_gated(sae)
    device = next(sae.parameters()).device
    stop_at_layer = stop_layer(hook_name)
    starts = range(0, tokens.shape[0], batch_size)
    progress = tqdm(starts, desc=f"Inspecting latents at {hook_name}", unit="batch",
                    disable=not show_progress)  # fmt: skip
    with torch.no_grad(), hook_z_reshaping_off(sae):
        for start in progress:
            batch = tokens[start : start + batch_size]
            _, cache = model.run_with_cache(
                batch.to(model.cfg.device), names_filter=hook_name, stop_at_layer=stop_at_layer
            )
            x = sae_view(cache[hook_name], head_index).to(device)
            spliced = position_mask(batch, seqpos_slice, exclude).to(device)
            rows = x[spliced]
            acts = torch.zeros(*spliced.shape, sae.cfg.d_sae, device=device)
            gate_open = None
            if gated:
                row_acts, row_gate = gated_encode(sae, rows)
                gate_open = torch.zeros(acts.shape, dtype=torch.bool, device=device)
                gate_open[spliced] = row_gate
            else:
                row_acts = sae.encode(rows)
            acts[spliced] = row_acts.float()
            yield ActivationBatch(batch.to(device), acts, spliced, gate_open)
