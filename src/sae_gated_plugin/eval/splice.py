"""Evaluation of any SAELens SAE spliced into any HookedTransformer, with the paper's metrics.

Each window runs clean, with the SAE's reconstruction spliced in and zero-ablated. The SAE is
applied, and every SAE metric computed, only at the *spliced positions* (inside
``seqpos_slice``, token not in ``exclude_token_ids``); elsewhere the model runs clean. Evaluate
an SAE where it was trained: splicing anything into the attention sink of a model such as
SmolLM2 wrecks the model whatever the SAE (SAELens's ``run_evals`` ignores ``seqpos_slice``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.util import get_special_token_ids
from tqdm.auto import tqdm

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import EvalReport, MetricAccumulator

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

_Hooks = list[tuple[str | Callable[..., Any], Callable[..., Any]]]


def excluded_token_ids(model: HookedTransformer, setting: bool | list[int]) -> list[int]:
    """The token ids an ``exclude_special_tokens`` setting excludes, as SAELens decides them."""
    if setting is False:
        return []
    return special_token_ids(model) if setting is True else list(setting)


def special_token_ids(model: HookedTransformer) -> list[int]:
    """The token ids SAELens's ``exclude_special_tokens=True`` excludes (BOS, EOS, PAD, ...)."""
    tokenizer = getattr(model, "tokenizer", None)
    return [] if tokenizer is None else sorted(int(t) for t in get_special_token_ids(tokenizer))


def describe_positions(
    seqpos_slice: tuple[int | None, ...], exclude_ids: list[int], context_size: int, tokenizer: Any
) -> str:
    """The spliced positions in words, e.g. "positions 3: of each 128-token window"."""
    sl = slice(*seqpos_slice)
    if sl == slice(None):
        where = "all positions"
    else:
        bounds = ["" if b is None else str(b) for b in (sl.start, sl.stop, sl.step)]
        where = "positions " + ":".join(bounds if sl.step is not None else bounds[:2])
    text = f"{where} of each {context_size}-token window"
    if exclude_ids:
        text += f", excluding tokens [{', '.join(_token_label(t, tokenizer) for t in exclude_ids)}]"
    return text


def _token_label(token_id: int, tokenizer: Any) -> str:
    with contextlib.suppress(Exception):  # no tokenizer, or one that does not know the id
        return f"{token_id} {tokenizer.convert_ids_to_tokens(token_id)!r}"
    return str(token_id)


def sae_view(act: torch.Tensor, head_index: int | None) -> torch.Tensor:
    """The ``(batch, pos, d_in)`` part of a hook activation the SAE reads: as SAELens, one head
    of a ``(batch, pos, n_heads, d_head)`` activation if ``head_index`` names it, else all heads
    flattened."""
    if act.ndim == 4:
        return act[:, :, head_index] if head_index is not None else act.flatten(-2, -1)
    if act.ndim != 3 or head_index is not None:
        raise GatedPluginError(
            f"cannot splice an SAE into an activation of shape {tuple(act.shape)}"
            + (f" at head {head_index}" if head_index is not None else "")
        )
    return act


@contextlib.contextmanager
def hook_z_reshaping_off(sae: Any) -> Iterator[None]:
    """SAELens's hook_z SAEs reshape heads themselves; :func:`sae_view` does it here."""
    was_on = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if was_on:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if was_on:
            sae.turn_on_forward_pass_hook_z_reshaping()


def position_mask(
    tokens: torch.Tensor, seqpos_slice: tuple[int | None, ...], exclude: torch.Tensor | None
) -> torch.Tensor:
    """Boolean ``(batch, pos)`` mask of the spliced positions."""
    in_slice = torch.zeros(tokens.shape[1], dtype=torch.bool, device=tokens.device)
    in_slice[slice(*seqpos_slice)] = True
    mask = in_slice.expand_as(tokens)
    return mask & ~torch.isin(tokens, exclude) if exclude is not None else mask


def _splice(
    act: torch.Tensor,
    hook: Any,
    *,
    mask: torch.Tensor,
    head_index: int | None,
    replace: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Forward hook: the SAE's part of the activation ``replace``d at the spliced positions."""
    m = mask.to(act.device)
    if not bool(m.any()):
        return act
    out = act.clone(memory_format=torch.contiguous_format)
    view = sae_view(out, head_index)  # a view into ``out``
    view[m] = replace(view[m])
    return out


def _reconstruct(
    x: torch.Tensor, *, hook_name: str, sae: SAE[Any], accumulator: MetricAccumulator, scale: float
) -> torch.Tensor:
    """The SAE's reconstruction of the rows ``x``, fed to the metric sums."""
    if x.shape[-1] != sae.cfg.d_in:
        raise GatedPluginError(
            f"the SAE reads {sae.cfg.d_in} dimensions but {hook_name} gives {x.shape[-1]}"
        )
    feature_acts = sae.encode(x.to(accumulator.device) * scale)
    x_hat = (sae.decode(feature_acts) / scale).to(x.device, x.dtype)
    accumulator.update(x, x_hat, feature_acts)
    return x_hat


def _check_arguments(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hook_name: str | None,
    batch_size: int,
    seqpos_slice: tuple[int | None, ...],
    norm_scaling_factor: float | None,
) -> None:
    if not hook_name:
        raise GatedPluginError("hook_name is not given and the SAE's config does not name one")
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise GatedPluginError(
            f"tokens must be (n_sequences, context_size >= 2), got {tuple(tokens.shape)}"
        )
    if tokens.dtype not in (torch.int32, torch.int64):
        raise GatedPluginError(f"tokens must be integer token ids, got {tokens.dtype}")
    if batch_size < 1:
        raise GatedPluginError(f"batch_size must be at least 1, not {batch_size}")
    if not 1 <= len(seqpos_slice) <= 3:
        raise GatedPluginError(f"seqpos_slice must have 1 to 3 entries, got {seqpos_slice!r}")
    if norm_scaling_factor is not None and not norm_scaling_factor > 0:
        raise GatedPluginError(f"norm_scaling_factor must be positive, not {norm_scaling_factor}")
    if hook_name not in model.hook_dict:
        raise GatedPluginError(f"the model has no hook point {hook_name!r}")


def evaluate_sae(
    sae: SAE[Any],
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    hook_name: str | None = None,
    seqpos_slice: tuple[int | None, ...] = (None,),
    exclude_token_ids: Sequence[int] = (),
    batch_size: int = 8,
    show_progress: bool = True,
    norm_scaling_factor: float | None = None,
    reference_ce: tuple[float, float] | None = None,
) -> EvalReport:
    """Evaluate any SAELens ``sae`` (only ``encode``/``decode`` used) spliced into ``model``.

    Args:
        tokens: ``(n_sequences, context_size)`` token ids, used as given.
        hook_name: hook point; defaults to ``sae.cfg.metadata.hook_name``.
        seqpos_slice: slice over the sequence axis, as SAELens's (``(1, None)`` skips position 0).
        exclude_token_ids: token ids never spliced (e.g. :func:`special_token_ids`).
        norm_scaling_factor: for an SAE trained on activations times this factor that was not
            folded into its weights: it reads ``x * factor``, its output is divided by it.
        reference_ce: ``(ce_loss_clean, ce_loss_zero_ablation)`` of an earlier evaluation with
            the same model, tokens, hook and positions: the clean and zero runs are skipped.

    SAE metrics cover the spliced positions; CE losses average every predicted position of
    every window (``n_sequences * (context_size - 1)``).
    """
    hook_name = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    _check_arguments(model, tokens, hook_name, batch_size, seqpos_slice, norm_scaling_factor)
    assert hook_name is not None  # checked above
    n_sequences, context_size = tokens.shape
    tokens = tokens.to(device=model.cfg.device, dtype=torch.long)
    exclude_ids = sorted({int(t) for t in exclude_token_ids})
    exclude = torch.tensor(exclude_ids, device=tokens.device) if exclude_ids else None
    tokenizer = getattr(model, "tokenizer", None)
    description = describe_positions(seqpos_slice, exclude_ids, context_size, tokenizer)
    if not bool(position_mask(tokens, seqpos_slice, exclude).any()):
        raise GatedPluginError(
            "no token position is spliced: seqpos_slice and exclude_token_ids leave nothing "
            f"to evaluate ({description})"
        )
    sae_device = sae.device if hasattr(sae, "device") else next(sae.parameters()).device
    accumulator = MetricAccumulator(sae.cfg.d_sae, device=sae_device)
    head_index = getattr(sae.cfg.metadata, "hook_head_index", None)
    scale = 1.0 if norm_scaling_factor is None else float(norm_scaling_factor)

    ce_sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    progress = tqdm(
        range(0, n_sequences, batch_size), desc=f"Evaluating SAE at {hook_name}", unit="batch",
        disable=not show_progress, leave=False,
    )  # fmt: skip
    reconstruct = partial(
        _reconstruct, hook_name=hook_name, sae=sae, accumulator=accumulator, scale=scale
    )
    with torch.no_grad(), hook_z_reshaping_off(sae):
        for start in progress:
            batch = tokens[start : start + batch_size]
            splice = partial(
                _splice, mask=position_mask(batch, seqpos_slice, exclude), head_index=head_index
            )
            runs: dict[str, _Hooks] = {"sae": [(hook_name, partial(splice, replace=reconstruct))]}
            if reference_ce is None:
                zeros: _Hooks = [(hook_name, partial(splice, replace=torch.zeros_like))]
                runs = {"clean": [], **runs, "zero": zeros}
            for key, fwd_hooks in runs.items():
                loss = model.run_with_hooks(
                    batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks
                )
                ce_sums[key] += float(loss.sum(dtype=torch.float64))

    if accumulator.n_tokens == 0:  # the hook never ran
        raise GatedPluginError(f"the SAE hook at {hook_name!r} was never called")
    ce = {key: total / (n_sequences * (context_size - 1)) for key, total in ce_sums.items()}
    if reference_ce is not None:
        ce["clean"], ce["zero"] = reference_ce
    return _report(
        accumulator, ce, n_sequences=n_sequences, context_size=context_size,
        hook_name=hook_name, spliced_positions=description,
    )  # fmt: skip


def _report(accumulator: MetricAccumulator, ce: dict[str, float], **fields: Any) -> EvalReport:
    """The report from the metric sums and the mean CE of the clean, SAE and zero runs."""
    denominator = ce["zero"] - ce["clean"]
    return EvalReport(
        **accumulator.finalize(),
        ce_loss_clean=ce["clean"],
        ce_loss_with_sae=ce["sae"],
        ce_loss_zero_ablation=ce["zero"],
        delta_ce_loss=ce["sae"] - ce["clean"],
        loss_recovered=(ce["zero"] - ce["sae"]) / denominator if denominator != 0 else math.nan,
        **fields,
    )
