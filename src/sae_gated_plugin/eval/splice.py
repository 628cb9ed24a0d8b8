"""Evaluation of any SAELens SAE spliced into any HookedTransformer, with the paper's metrics.

:func:`evaluate_sae` runs each window three times - clean, with the SAE's reconstruction
spliced in and with the activation zero-ablated - and builds an :class:`EvalReport` from
float64 sums over the whole set (:class:`MetricAccumulator`).

Spliced positions
-----------------
The SAE is applied - and every SAE metric computed - only at the *spliced positions*: positions
inside ``seqpos_slice`` whose token is not in ``exclude_token_ids``. Everywhere else the model
runs clean, in the SAE run and in the zero-ablation run alike. Evaluate an SAE where it was
trained (same ``seqpos_slice`` and excluded tokens): splicing an SAE or zeros into the attention
sink of a model such as SmolLM2 wrecks the language model whatever the SAE. (SAELens's own
``run_evals`` ignores ``seqpos_slice`` and zero-ablates every position.) The SAE's inputs are
taken inside the splicing hook (the model is clean up to it), not in an extra forward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.util import get_special_token_ids
from tqdm.auto import tqdm

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import EvalReport, MetricAccumulator

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


def excluded_token_ids(model: HookedTransformer, setting: bool | list[int]) -> list[int]:
    """The token ids an ``exclude_special_tokens`` setting excludes, as SAELens decides them."""
    if setting is False:
        return []
    return special_token_ids(model) if setting is True else list(setting)


def special_token_ids(model: HookedTransformer) -> list[int]:
    """The token ids SAELens's ``exclude_special_tokens=True`` excludes (BOS, EOS, PAD, ...)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return []
    return sorted(int(t) for t in get_special_token_ids(tokenizer))


def _describe_positions(
    seqpos_slice: tuple[int | None, ...],
    exclude_token_ids: Sequence[int],
    context_size: int,
    model: Any,
) -> str:
    sl = slice(*seqpos_slice)
    if sl == slice(None):
        text = f"all positions of each {context_size}-token window"
    else:
        bounds = ["" if b is None else str(b) for b in (sl.start, sl.stop, sl.step)]
        span = ":".join(bounds if sl.step is not None else bounds[:2])
        text = f"positions {span} of each {context_size}-token window"
    if exclude_token_ids:
        ids = sorted({int(t) for t in exclude_token_ids})
        tokenizer = getattr(model, "tokenizer", None)
        labels = []
        for token_id in ids:
            label = str(token_id)
            if tokenizer is not None:
                with contextlib.suppress(Exception):
                    label += f" {tokenizer.convert_ids_to_tokens(token_id)!r}"
            labels.append(label)
        text += f", excluding tokens [{', '.join(labels)}]"
    return text


def _input_device(model: Any) -> torch.device:
    cfg_device = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_device is not None:
        return torch.device(cfg_device)
    with contextlib.suppress(StopIteration):
        return next(model.parameters()).device
    return torch.device("cpu")


def _sae_view(act: torch.Tensor, head_index: int | None) -> torch.Tensor:
    """The part of a hook activation the SAE reads, as ``(batch, pos, d_in)``.

    As SAELens: an activation with a head axis, ``(batch, pos, n_heads, d_head)`` (``hook_q``,
    ``hook_k``, ``hook_v``, ``hook_z``, ...), gives one head where the SAE names a
    ``hook_head_index``, else all heads flattened.
    """
    if act.ndim == 4:
        return act[:, :, head_index] if head_index is not None else act.flatten(-2, -1)
    if act.ndim != 3 or head_index is not None:
        raise GatedPluginError(
            f"cannot splice an SAE into an activation of shape {tuple(act.shape)}"
            + (f" at head {head_index}" if head_index is not None else "")
        )
    return act


def _write_back(act: torch.Tensor, new_view: torch.Tensor, head_index: int | None) -> torch.Tensor:
    """Inverse of :func:`_sae_view`: a full activation with ``new_view`` in the SAE's part."""
    if head_index is not None:
        out = act.clone()
        out[:, :, head_index] = new_view
        return out
    return new_view.reshape(act.shape)


@contextlib.contextmanager
def _hook_z_reshaping_off(sae: Any) -> Iterator[None]:
    """SAELens's hook_z SAEs reshape heads themselves; we flatten heads here instead."""
    was_on = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if was_on:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if was_on:
            sae.turn_on_forward_pass_hook_z_reshaping()


def _position_mask(
    tokens: torch.Tensor,
    seqpos_slice: tuple[int | None, ...],
    exclude: torch.Tensor | None,
) -> torch.Tensor:
    """Boolean ``(batch, pos)`` mask of the spliced positions."""
    context_size = tokens.shape[1]
    in_slice = torch.zeros(context_size, dtype=torch.bool, device=tokens.device)
    in_slice[torch.arange(context_size, device=tokens.device)[slice(*seqpos_slice)]] = True
    mask = in_slice.unsqueeze(0).expand_as(tokens)
    if exclude is not None and exclude.numel():
        mask = mask & ~torch.isin(tokens, exclude)
    return mask


class _SpliceHooks:
    """The two forward hooks of one batch: splice the SAE (feeding the metric sums) or zeros
    into the activation at the spliced positions ``mask``; elsewhere the model runs clean."""

    def __init__(
        self,
        sae: SAE[Any],
        accumulator: MetricAccumulator,
        mask: torch.Tensor,
        head_index: int | None,
        scale: float,
        hook_name: str,
    ) -> None:
        self.sae = sae
        self.accumulator = accumulator
        self.mask = mask
        self.head_index = head_index
        self.scale = scale
        self.hook_name = hook_name
        self.sae_device = accumulator.device

    def _check_width(self, view: torch.Tensor) -> None:
        if view.shape[-1] != self.sae.cfg.d_in:
            raise GatedPluginError(
                f"the SAE reads {self.sae.cfg.d_in} dimensions but {self.hook_name} gives "
                f"{view.shape[-1]} (activation shape {tuple(view.shape)})"
            )

    def splice_sae(self, act: torch.Tensor, hook: Any) -> torch.Tensor:
        """Replace the spliced positions by the SAE's reconstruction."""
        view = _sae_view(act, self.head_index)
        self._check_width(view)
        m = self.mask.to(act.device)
        if not bool(m.any()):
            return act
        x = view[m]
        sae_in = x.to(self.sae_device)
        feature_acts = self.sae.encode(sae_in * self.scale if self.scale != 1.0 else sae_in)
        x_hat = self.sae.decode(feature_acts)
        x_hat = (x_hat / self.scale if self.scale != 1.0 else x_hat).to(act.device, act.dtype)
        self.accumulator.update(x, x_hat, feature_acts)
        new_view = view.clone()
        new_view[m] = x_hat
        return _write_back(act, new_view, self.head_index)

    def splice_zeros(self, act: torch.Tensor, hook: Any) -> torch.Tensor:
        """Zero the activation at the spliced positions."""
        view = _sae_view(act, self.head_index)
        new_view = view.masked_fill(self.mask.to(act.device).unsqueeze(-1), 0.0)
        return _write_back(act, new_view, self.head_index)


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
    if tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise GatedPluginError(f"tokens must be integer token ids, got {tokens.dtype}")
    if batch_size < 1:
        raise GatedPluginError(f"batch_size must be at least 1, not {batch_size}")
    if not 1 <= len(seqpos_slice) <= 3:
        raise GatedPluginError(f"seqpos_slice must have 1 to 3 entries, got {seqpos_slice!r}")
    if norm_scaling_factor is not None and not norm_scaling_factor > 0:
        raise GatedPluginError(f"norm_scaling_factor must be positive, not {norm_scaling_factor}")
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and hook_name not in hook_dict:
        raise GatedPluginError(f"the model has no hook point {hook_name!r}")


def _runs(
    hooks: _SpliceHooks, hook_name: str, with_references: bool
) -> dict[str, list[tuple[str | Callable[..., Any], Callable[..., Any]]]]:
    """The forward hooks of each run of a batch: the SAE spliced in, and (unless the clean and
    zero-ablated losses are known) none and zeros spliced in."""
    runs: dict[str, list[tuple[str | Callable[..., Any], Callable[..., Any]]]] = {
        "clean": [],
        "sae": [(hook_name, hooks.splice_sae)],
        "zero": [(hook_name, hooks.splice_zeros)],
    }
    return runs if with_references else {"sae": runs["sae"]}


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
    """Evaluate ``sae`` spliced into ``model`` at ``hook_name`` on the windows ``tokens``.

    Args:
        sae: any SAELens SAE (standard, topk, jumprelu, gated, gated_paper, ...); only its
            ``encode`` and ``decode`` are used, its ``use_error_term`` is not touched.
        model: the language model.
        tokens: ``(n_sequences, context_size)`` token ids, e.g. from
            :func:`sae_gated_plugin.eval.tokens.eval_tokens_from_dataset`. Used as given.
        hook_name: hook point; defaults to ``sae.cfg.metadata.hook_name``.
        seqpos_slice: python slice over the sequence axis, as SAELens's ``seqpos_slice``
            (e.g. ``(1, None)`` skips position 0, the attention sink of Llama-style models).
        exclude_token_ids: token ids never spliced (e.g. :func:`special_token_ids`).
        batch_size: windows per forward pass.
        show_progress: draw a tqdm progress bar.
        norm_scaling_factor: for an SAE trained on activations multiplied by this factor
            (SAELens ``normalize_activations="expected_average_only_in"``) whose factor was not
            folded into its weights: the SAE reads ``x * factor`` and its output is divided by
            it. Metrics are always in the model's units. SAELens folds the factor at the end
            of training, so finished SAEs need none.
        reference_ce: ``(ce_loss_clean, ce_loss_zero_ablation)`` of an earlier evaluation on
            the same model, tokens, hook and positions: the clean and zero-ablated runs are
            then skipped (a sweep evaluating many SAEs on the same windows runs them once).

    Returns:
        An :class:`EvalReport`. SAE metrics cover the spliced positions only; CE losses are
        averaged over every predicted position of every window (``n_sequences *
        (context_size - 1)``), with the model clean outside the spliced positions.
    """
    hook_name = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    _check_arguments(model, tokens, hook_name, batch_size, seqpos_slice, norm_scaling_factor)
    assert hook_name is not None  # checked above
    n_sequences, context_size = tokens.shape
    device = _input_device(model)
    tokens = tokens.to(device=device, dtype=torch.long)
    exclude_ids = sorted({int(t) for t in exclude_token_ids})
    exclude = torch.tensor(exclude_ids, dtype=torch.long, device=device) if exclude_ids else None
    description = _describe_positions(seqpos_slice, exclude_ids, context_size, model)
    if not bool(_position_mask(tokens, seqpos_slice, exclude).any()):
        raise GatedPluginError(
            "no token position is spliced: seqpos_slice and exclude_token_ids leave nothing "
            f"to evaluate ({description})"
        )
    sae_device = sae.device if hasattr(sae, "device") else next(sae.parameters()).device
    accumulator = MetricAccumulator(sae.cfg.d_sae, device=sae_device)
    scale = float(norm_scaling_factor) if norm_scaling_factor is not None else 1.0
    head_index = getattr(sae.cfg.metadata, "hook_head_index", None)

    ce_sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    starts = range(0, n_sequences, batch_size)
    progress = tqdm(
        starts, desc=f"Evaluating SAE at {hook_name}", unit="batch", disable=not show_progress,
        leave=False,
    )  # fmt: skip
    with torch.no_grad(), _hook_z_reshaping_off(sae):
        for start in progress:
            batch = tokens[start : start + batch_size]
            mask = _position_mask(batch, seqpos_slice, exclude)
            hooks = _SpliceHooks(sae, accumulator, mask, head_index, scale, hook_name)
            for key, fwd_hooks in _runs(hooks, hook_name, reference_ce is None).items():
                loss = model.run_with_hooks(
                    batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks
                )
                ce_sums[key] += float(loss.sum(dtype=torch.float64))

    if accumulator.n_tokens == 0:  # the hook never ran
        raise GatedPluginError(f"the SAE hook at {hook_name!r} was never called")
    n_predicted = n_sequences * (context_size - 1)
    ce_means = {key: total / n_predicted for key, total in ce_sums.items()}
    if reference_ce is not None:
        ce_means["clean"], ce_means["zero"] = reference_ce
    return _report(accumulator, ce_means, tokens.shape, hook_name, description)


def _report(
    accumulator: MetricAccumulator,
    ce: dict[str, float],
    shape: tuple[int, ...] | torch.Size,
    hook_name: str,
    description: str,
) -> EvalReport:
    """The report from the metric sums and the mean CE of the clean, SAE and zero runs."""
    denominator = ce["zero"] - ce["clean"]
    return EvalReport(
        l0=accumulator.l0,
        dead_fraction=accumulator.dead_fraction,
        alive_fraction=accumulator.alive_fraction,
        explained_variance=accumulator.explained_variance,
        mse=accumulator.mse,
        relative_reconstruction_bias=accumulator.relative_reconstruction_bias,
        ce_loss_clean=ce["clean"],
        ce_loss_with_sae=ce["sae"],
        ce_loss_zero_ablation=ce["zero"],
        delta_ce_loss=ce["sae"] - ce["clean"],
        loss_recovered=(ce["zero"] - ce["sae"]) / denominator if denominator != 0 else math.nan,
        n_tokens=accumulator.n_tokens,
        n_sequences=int(shape[0]),
        context_size=int(shape[1]),
        hook_name=hook_name,
        spliced_positions=description,
    )
