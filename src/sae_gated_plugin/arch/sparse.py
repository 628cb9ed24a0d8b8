"""The sparse training step of ``gated_paper``: the reference pass's loss and gradients from one
dense encoder product ``E = x_c @ W_gate`` and the open latents (``pi_gate > 0``) only.

Every pre-activation gradient lives at the open pairs (the gate's Heaviside has zero gradient),
a few percent of a batch once training settles: decodes and weight gradients are
``F.embedding_bag`` calls over them, the pre-activation gradients a sampled dense-dense product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.kernels import (
    at,
    density_threshold,
    fresh_zeros_like,
    nonzero_flat,
    sampled_dots,
)

PROBE_ROWS = 256  # rows whose open fraction decides dense or sparse (the batch is shuffled)


@dataclass(frozen=True)
class OpenPairs:
    """The open (row, latent) pairs of a batch, where ``pi_gate = E + b_gate > 0``, in row-major
    order (for the decodes) and, suffixed ``_t``, latent-major order (for the weight gradients).
    ``*_starts`` are each bag's first offset (``latent_starts`` also ends with the total)."""

    flat: torch.Tensor  # row * d_sae + latent
    cols: torch.Tensor
    row_starts: torch.Tensor
    pre: torch.Tensor  # E at each pair
    rows_t: torch.Tensor
    cols_t: torch.Tensor
    latent_starts: torch.Tensor
    pre_t: torch.Tensor


@torch.no_grad()
def find_open_pairs(pre: torch.Tensor, b_gate: torch.Tensor) -> OpenPairs:
    """The open pairs of the batch x d_sae encoder product ``pre`` (``E`` without ``b_gate``)."""
    n_rows, n_latents = pre.shape
    pre = pre.contiguous()
    # pre > -b_gate is exactly pre + b_gate > 0: the difference of two floats rounds to 0 only
    # when it is 0, so the set is the dense path's without materialising pi_gate.
    flat = nonzero_flat(torch.gt(pre, b_gate.neg()))
    row_starts = torch.searchsorted(flat, torch.arange(n_rows, device=pre.device) * n_latents)
    cols = flat.remainder(n_latents)
    pre_pairs = at(pre.view(-1), flat)
    # Latent-major order from the row-major pairs: a stable sort by latent keeps the rows
    # ascending within each latent, and costs far less than transposing the batch x d_sae mask.
    narrow = cols.to(torch.int32) if n_latents < 2**31 else cols  # sorts twice as fast
    cols_t, order = torch.sort(narrow, stable=True)
    cols_t = cols_t.long()
    rows_t = at(flat.div(n_latents, rounding_mode="floor"), order)
    latent_starts = torch.searchsorted(cols_t, torch.arange(n_latents + 1, device=pre.device))
    return OpenPairs(
        flat, cols, row_starts, pre_pairs, rows_t, cols_t, latent_starts, at(pre_pairs, order)
    )


class _Options(NamedTuple):
    centred: bool  # apply_b_dec_to_input
    aux_trainable: bool  # else stop-gradient W_dec and b_dec in the auxiliary decode
    weighted_penalty: bool  # L1 weighted by decoder row norms
    # Return this module's parts of the sums over latents, without b_dec: a latent shard adds
    # them across ranks outside, where autograd gives b_dec its decode gradient.
    parts: bool


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _latent_sums(pairs: OpenPairs, values: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Sum of ``values`` (latent-major, one per pair) per latent."""
    return values.new_zeros(n_latents).index_add_(0, pairs.cols_t, values)


def _weighted_rows(
    pairs: OpenPairs, table: torch.Tensor, weights: torch.Tensor, latent_major: bool
) -> torch.Tensor:
    """Per bag, the ``weights``-weighted sum of ``table`` rows: one bag per input row (indexing
    decoder rows by latent) or one per latent (indexing ``table`` rows by input row)."""
    indices, starts = (
        (pairs.rows_t, pairs.latent_starts[:-1]) if latent_major else (pairs.cols, pairs.row_starts)
    )
    return F.embedding_bag(
        indices, table, starts, mode="sum", per_sample_weights=weights.to(table.dtype)
    )


class _SparseGatedStep(torch.autograd.Function):
    """``f @ W_dec + b_dec``, ``ReLU(pi_gate) @ W_dec + b_dec`` and the per-row mean of the
    (weighted) gate activations, from the open pairs (``options.parts``: without ``b_dec``).

    Tensors: ``sae_in`` (normalised, uncentred; no gradient), ``W_enc``, ``b_gate``, ``r_mag``,
    ``b_mag``, ``W_dec`` (``decoder_weight()``), ``b_dec`` (or the encoder's centring).
    """

    @staticmethod
    def forward(
        ctx: Any, pairs: OpenPairs, features: torch.Tensor, options: _Options, *args: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sae_in, w_enc, b_gate, r_mag, b_mag, w_dec, b_dec = args
        n_rows = sae_in.shape[0]
        gates = pairs.pre + at(b_gate, pairs.cols)
        recon = _weighted_rows(pairs, w_dec, features, latent_major=False)
        aux_recon = _weighted_rows(pairs, w_dec, gates, latent_major=False)
        if not options.parts:
            recon, aux_recon = recon + b_dec, aux_recon + b_dec
        if options.weighted_penalty:
            gates = gates * at(w_dec.norm(dim=-1), pairs.cols)
        acc = _accumulation_dtype(gates.dtype)
        penalty = (gates.sum(dtype=acc) / n_rows).to(gates.dtype)
        ctx.pairs, ctx.options = pairs, options
        x_c = sae_in - b_dec if options.centred else sae_in
        ctx.save_for_backward(x_c, w_enc, b_gate, r_mag, b_mag, w_dec)
        return recon, aux_recon, penalty

    @staticmethod
    def backward(
        ctx: Any, d_recon: torch.Tensor, d_aux: torch.Tensor, d_penalty: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        pairs: OpenPairs = ctx.pairs
        options: _Options = ctx.options
        x_c, w_enc, b_gate, r_mag, b_mag, w_dec = ctx.saved_tensors
        n_rows, n_latents = x_c.shape[0], w_dec.shape[0]
        acc = _accumulation_dtype(w_dec.dtype)
        cols = pairs.cols_t
        scale = r_mag.exp()
        # Recomputed with the dense path's operations and dtype, so the same pairs count as active.
        scale_t = at(scale, cols)
        magnitude = pairs.pre_t * scale_t + at(b_mag, cols)
        gates = pairs.pre_t + at(b_gate, cols)
        norms = w_dec.norm(dim=-1) if options.weighted_penalty else None

        recon_dots = sampled_dots(pairs.latent_starts, pairs.rows_t, w_dec, d_recon).to(acc)
        aux_dots = sampled_dots(pairs.latent_starts, pairs.rows_t, w_dec, d_aux).to(acc)
        d_magnitude = torch.where(magnitude > 0, recon_dots, 0)
        penalty_weight = d_penalty.to(acc) / n_rows
        per_pair_penalty = (
            penalty_weight if norms is None else penalty_weight * at(norms.to(acc), cols)
        )
        d_gate = aux_dots + per_pair_penalty
        scale_acc = scale.to(acc)
        d_pre = d_magnitude * scale_t.to(acc) + d_gate

        grad_b_gate = _latent_sums(pairs, d_gate, n_latents)
        grad_b_mag = _latent_sums(pairs, d_magnitude, n_latents)
        grad_r_mag = _latent_sums(pairs, d_magnitude * pairs.pre_t.to(acc), n_latents) * scale_acc
        needs = ctx.needs_input_grad
        grad_w_enc = _weighted_rows(pairs, x_c, d_pre, latent_major=True).t() if needs[4] else None
        grad_w_dec = None
        if needs[8]:
            grad_w_dec = _weighted_rows(pairs, d_recon, torch.relu(magnitude), latent_major=True)
            if options.aux_trainable:
                grad_w_dec += _weighted_rows(pairs, d_aux, gates, latent_major=True)
            if norms is not None:  # d ||W_j|| / d W_j = W_j / ||W_j||, times sum_b gate_bj / B
                gate_sums = _latent_sums(pairs, gates.to(acc), n_latents) * penalty_weight
                per_row = gate_sums / norms.to(acc).clamp_min(torch.finfo(acc).tiny)
                grad_w_dec.addcmul_(w_dec, per_row.to(w_dec.dtype)[:, None])
        grad_b_dec: torch.Tensor | None = None
        if not options.parts:
            grad_b_dec = d_recon.sum(0)
            if options.aux_trainable:
                grad_b_dec += d_aux.sum(0)
        if options.centred:  # x_c = sae_in - b_dec: minus W_enc times the column sums of d_pre
            centring = w_enc @ (grad_b_mag * scale_acc + grad_b_gate).to(w_enc.dtype)
            grad_b_dec = -centring if grad_b_dec is None else grad_b_dec.sub_(centring)
        latent_grads = (g.to(w_dec.dtype) for g in (grad_b_gate, grad_r_mag, grad_b_mag))
        return (None, None, None, None, grad_w_enc, *latent_grads, grad_w_dec, grad_b_dec)


def sparse_step_applies(sae: Any, sae_in: torch.Tensor) -> bool:
    """Whether the sparse step computes what the dense path does for this SAE and input (not
    with hooks on the pre-activations or features: it has no dense tensors to run them on)."""
    hooked = any(
        hook._forward_hooks or hook._forward_pre_hooks or hook._backward_hooks
        for hook in (sae.hook_sae_acts_pre, sae.hook_sae_acts_post)
    )
    return (
        isinstance(sae.cfg, GatedPaperTrainingSAEConfig)
        and sae_in.dim() == 2
        and not sae_in.requires_grad
        and sae_in.is_floating_point()
        and isinstance(sae.activation_fn, torch.nn.ReLU)
        and not hooked
    )


def open_fraction(
    pre: torch.Tensor,
    b_gate: torch.Tensor,
    rows: int = PROBE_ROWS,
    latent_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Fraction of open (row, latent) pairs among the first ``rows`` rows of the batch;
    ``latent_sum`` adds the counts over a latent shard's ranks, so all take the same decision."""
    probe = pre[:rows]
    opened = torch.count_nonzero(probe > b_gate.detach().neg())
    counts = torch.stack([opened, torch.full_like(opened, probe.numel())])
    if latent_sum is not None:
        counts = latent_sum(counts)
    n_open, total = counts.tolist()
    return n_open / total if total else 0.0


def sparse_training_forward_pass(
    sae: Any, step_input: TrainStepInput, sae_in: torch.Tensor, encoder_pre: torch.Tensor
) -> TrainStepOutput | None:
    """The training step of ``sae`` (a ``GatedPaperTrainingSAE``) from the open latents only,
    or None when its reference pass should run (too many open, or the step does not apply).

    Arguments as the reference pass's; ``encoder_pre``'s storage is reused for ``hidden_pre``.
    The returned ``feature_acts`` and ``hidden_pre`` carry no gradient (SAELens's trainer only
    counts firing latents). A latent shard sums fraction, decodes and penalty with ``latent_sum``.
    Under autocast the step runs in the parameters' dtype from the half-precision ``E``.
    """
    threshold = density_threshold(sae_in.device)
    if threshold <= 0 or not sparse_step_applies(sae, sae_in):
        return None
    pre = encoder_pre.detach()
    shard = not sae.holds_all_latents
    if open_fraction(pre, sae.b_gate, latent_sum=sae.latent_sum if shard else None) >= threshold:
        return None
    # Under autocast E comes in half precision; the dense path adds it to the float32 biases,
    # so the same pairs open and the rest of the step runs in the parameters' dtype.
    with torch.autocast(sae_in.device.type, enabled=False):
        return _sparse_step(sae, step_input, sae_in, pre.to(sae.b_gate.dtype), shard)


def _sparse_step(
    sae: Any, step_input: TrainStepInput, sae_in: torch.Tensor, pre: torch.Tensor, shard: bool
) -> TrainStepOutput:
    cfg = sae.cfg
    with torch.no_grad():
        pairs = find_open_pairs(pre, sae.b_gate)
        scale = sae.r_mag.exp()
        # The reference pass's magnitude (multiply, then add) so the same pairs are active.
        features = torch.relu(pairs.pre * at(scale, pairs.cols) + at(sae.b_mag, pairs.cols))
        feature_acts = fresh_zeros_like(pre)
        feature_acts.view(-1).index_copy_(0, pairs.flat, features)
        hidden_pre = torch.addcmul(sae.b_mag, pre, scale, out=pre)  # E's storage, one pass
    options = _Options(
        centred=cfg.apply_b_dec_to_input,
        aux_trainable=cfg.aux_decoder == "trainable",
        weighted_penalty=cfg.sparsity_penalty == "decoder_norm_weighted",
        parts=shard,
    )
    centring = sae.encoder_centring() if shard and cfg.apply_b_dec_to_input else sae.b_dec
    params = (sae.W_enc, sae.b_gate, sae.r_mag, sae.b_mag, sae.decoder_weight(), centring)
    recon, aux_recon, penalty = _SparseGatedStep.apply(pairs, features, options, sae_in, *params)
    if shard:
        aux_b_dec = sae.b_dec if options.aux_trainable else sae.b_dec.detach()
        recon = sae.latent_sum(recon) + sae.b_dec
        aux_recon = sae.latent_sum(aux_recon) + aux_b_dec
        penalty = sae.latent_sum(penalty)
    # The reference pass's terms, from the sparse decodes.
    sae_out = sae.reshape_fn_out(
        sae.run_time_activation_norm_fn_out(sae.hook_sae_recons(recon)), sae.d_head
    )
    losses = {
        "mse_loss": sae.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean(),
        "l1_loss": step_input.coefficients["l1"] * penalty,
        "auxiliary_reconstruction_loss": (aux_recon - sae_in).pow(2).sum(dim=-1).mean(),
    }
    return TrainStepOutput(
        sae_in=step_input.sae_in,
        sae_out=sae_out,
        feature_acts=sae.hook_sae_acts_post(feature_acts),
        hidden_pre=hidden_pre,
        loss=sum(losses.values()),
        losses=losses,
    )
