"""A sparse ``gated_paper`` training step: one dense encoder product, the rest on open latents.

In a Gated SAE past its first steps only a few percent of the (row, latent) pairs of a batch have
an open gate (``pi_gate > 0``), and every gradient with respect to the pre-activations lives
there: the Heaviside gate has zero gradient, the magnitude path's gradient lives where the gate
is open AND the magnitude pre-activation is > 0, the L1 and auxiliary terms' where the gate is
open. So only ``E = x_c @ W_gate`` must be dense. From ``E`` this module

- finds the open pairs in row-major order (for the decodes) and latent-major order (for the
  weight gradients);
- decodes ``f @ W_dec`` and ``ReLU(pi_gate) @ W_dec`` with ``F.embedding_bag`` (a weighted sum
  of the open latents' decoder rows per input row);
- in the backward pass, forms the pre-activation gradients at the open pairs only, with a
  sampled dense-dense product (``torch.sparse.sampled_addmm``), and both weight gradients with
  ``F.embedding_bag`` over the latent-major pairs.

Loss, every gradient and the ``TrainStepOutput`` are those of the dense path
(``GatedPaperTrainingSAE.training_forward_pass``), which stays the reference:
``tests/test_sparse_step.py`` compares them for every combination of the ablation switches.
No d_in x d_sae temporary is made besides the gradients themselves (the encoder's is produced
latent-major; autograd copies it once into ``W_enc``'s layout).

Whether a step runs sparse is decided per step from the fraction of open pairs (see
``density_threshold``); above it, the dense path is faster and runs unchanged.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from sae_lens.saes.gated_sae import GatedTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.errors import GatedPluginError

THRESHOLD_ENV = "SAE_GATED_PLUGIN_SPARSE_THRESHOLD"
"""Environment variable overriding ``DENSITY_THRESHOLDS``: a fraction of open (row, latent)
pairs below which the sparse step runs. ``0`` always runs the dense path, ``inf`` the sparse one
whenever it applies."""

# Fraction of open (row, latent) pairs below which the sparse step beats the dense one.
# cpu: calibrated on this project's 2-core AMD EPYC (torch 2.13, d_in 576, batch 4096,
#   d_sae 4608 and 16384), with a margin below the measured crossover, by
#   python benchmarks/step_speed.py --calibrate
# cuda: measured on an NVIDIA H100 80GB (torch 2.11+cu130, d_in 576, batch 4096) with
#   python benchmarks/step_speed.py --calibrate --device cuda --d-sae 16384 65536
#   sparse/dense time at 1% / 2% / 5% open: 0.51 / 0.72 / 1.33 (d_sae 16384) and
#   0.54 / 0.79 / 1.55 (d_sae 65536): the crossover is near 3%; 0.025 keeps a margin.
#   Other devices run dense unless THRESHOLD_ENV is set.
DENSITY_THRESHOLDS: dict[str, float] = {"cpu": 0.10, "cuda": 0.025}

PROBE_ROWS = 256
"""Rows of the batch whose open fraction decides dense or sparse (the batch is shuffled)."""

_BLOCK_LATENTS = 4096  # latents per upcast block where sampled_addmm lacks the dtype
_FRESH_MAPPING_BYTES = 32 * 2**20  # glibc's largest mmap threshold
_HUGE_PAGES = sys.platform == "linux" and hasattr(mmap, "MADV_HUGEPAGE")


def density_threshold(device: torch.device) -> float:
    """The open-pair fraction below which a training step on ``device`` runs sparse.

    ``SAE_GATED_PLUGIN_SPARSE_THRESHOLD`` overrides the calibrated ``DENSITY_THRESHOLDS``.
    """
    raw = os.environ.get(THRESHOLD_ENV, "").strip()
    if not raw:
        return DENSITY_THRESHOLDS.get(device.type, 0.0)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise GatedPluginError(
            f"{THRESHOLD_ENV}={raw!r}: expected a fraction of open latents >= 0 "
            "(0 = always dense, inf = always sparse)"
        )
    return value


@dataclass(frozen=True)
class OpenPairs:
    """The open (row, latent) pairs of a batch, where ``pi_gate = E + b_gate > 0``."""

    flat: torch.Tensor
    """Row-major flat index ``row * d_sae + latent`` of each pair."""
    cols: torch.Tensor
    """Latent of each pair, row-major order."""
    row_starts: torch.Tensor
    """Offset of each row's first pair in row-major order (``F.embedding_bag`` offsets)."""
    pre: torch.Tensor
    """Encoder product ``E`` at each pair, row-major order."""
    rows_t: torch.Tensor
    """Row of each pair, latent-major order."""
    cols_t: torch.Tensor
    """Latent of each pair, latent-major order."""
    latent_starts: torch.Tensor
    """Offset of each latent's first pair in latent-major order, plus the total (d_sae + 1)."""
    pre_t: torch.Tensor
    """Encoder product ``E`` at each pair, latent-major order."""


def _zeros_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.zeros_like(tensor)``; for a large CPU tensor on Linux, straight from the kernel.

    glibc serves allocations over 32 MiB with a fresh mmap, so ``torch.zeros`` page-faults
    every 4 KiB page and then writes zeros over memory the kernel has already zeroed. An
    anonymous mapping advised for transparent huge pages skips both: about 10% of a sparse step
    at d_sae 4608 on this project's CPU. The tensor owns the mapping (freed with it).
    """
    n_bytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or n_bytes < _FRESH_MAPPING_BYTES or not _HUGE_PAGES:
        return torch.zeros_like(tensor)
    buffer = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buffer.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buffer, dtype=tensor.dtype).view(tensor.shape)


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for 1-D tensors (index_select: several times faster on CPU)."""
    return values.index_select(0, index)


def _nonzero_flat(mask: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices of the True entries of a contiguous bool tensor.

    On CPU, ``nonzero`` costs about 1 ns per entry. At a few percent open, most groups of 8
    entries are all False: find the non-zero 8-byte words first, then the entries inside them
    (about 2.5x faster at 1% open).
    """
    flat = mask.view(-1)
    if flat.device.type != "cpu" or flat.numel() % 8 or sys.byteorder != "little":
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64)
    hit = (words != 0).nonzero().squeeze(1)
    inside = words.index_select(0, hit).view(torch.uint8).nonzero().squeeze(1)
    return _at(hit, inside >> 3) * 8 + (inside & 7)  # byte k of word w is entry 8 w + k


@torch.no_grad()
def find_open_pairs(pre: torch.Tensor, b_gate: torch.Tensor) -> OpenPairs:
    """The open pairs of the batch x d_sae encoder product ``pre`` (``E`` without ``b_gate``)."""
    n_rows, n_latents = pre.shape
    pre = pre.contiguous()
    # pre > -b_gate is exactly pre + b_gate > 0: the difference of two floats rounds to 0 only
    # when it is 0, so the set is the dense path's without materialising pi_gate.
    mask = torch.gt(pre, b_gate.neg())
    flat = _nonzero_flat(mask)
    row_starts = torch.searchsorted(flat, torch.arange(n_rows, device=pre.device) * n_latents)
    flat_t = _nonzero_flat(mask.t().contiguous())
    del mask
    cols_t = flat_t.div(n_rows, rounding_mode="floor")
    rows_t = flat_t - cols_t * n_rows
    latent_starts = torch.searchsorted(
        flat_t, torch.arange(n_latents + 1, device=pre.device) * n_rows
    )
    pre_flat = pre.view(-1)
    return OpenPairs(
        flat=flat,
        cols=flat.remainder(n_latents),
        row_starts=row_starts,
        pre=_at(pre_flat, flat),
        rows_t=rows_t,
        cols_t=cols_t,
        latent_starts=latent_starts,
        pre_t=_at(pre_flat, rows_t * n_latents + cols_t),
    )


class LatentParts(NamedTuple):
    """How a module holding only part of the latents (a latent shard) completes the step."""

    latent_sum: Callable[[torch.Tensor], torch.Tensor]
    """Adds this module's part of a sum over latents to the other parts' (differentiably)."""
    encoder_centring: Callable[[], torch.Tensor]
    """``b_dec`` as the encoder subtracts it, its gradient added over the parts."""


class _Options(NamedTuple):
    centred: bool
    """Input centred by ``b_dec`` (``apply_b_dec_to_input``)."""
    aux_trainable: bool
    """Auxiliary decoder trainable (else stop-gradient ``W_dec`` and ``b_dec``)."""
    weighted_penalty: bool
    """L1 weighted by decoder row norms."""
    parts: bool
    """Return this module's parts of the sums over latents, without ``b_dec``: a latent shard
    (``run/latent_sharding.py``) adds them across ranks outside, where autograd then gives
    ``b_dec`` its decode gradient; the ``b_dec`` input is then only the encoder's centring."""


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


def _sparse_csr(
    starts: torch.Tensor, columns: torch.Tensor, size: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    # int32 indices where they fit: what cuSPARSE and MKL handle natively.
    index_dtype = torch.int32 if columns.shape[0] < 2**31 and max(size) < 2**31 else torch.long
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used are stable
        warnings.simplefilter("ignore", UserWarning)
        values = torch.zeros(columns.shape[0], dtype=dtype, device=columns.device)
        return torch.sparse_csr_tensor(
            starts.to(index_dtype), columns.to(index_dtype), values, size, check_invariants=False
        )


def _sampled_dots(pairs: OpenPairs, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``weight[latent] . grad[row]`` for every open pair, latent-major order, with no
    batch x d_sae product: ``grad @ weight.T`` sampled at the open pairs."""
    n_latents, n_rows = weight.shape[0], grad.shape[0]
    if weight.dtype in (torch.float32, torch.float64):
        csr = _sparse_csr(pairs.latent_starts, pairs.rows_t, (n_latents, n_rows), weight.dtype)
        return torch.sparse.sampled_addmm(csr, weight, grad.t(), beta=0.0).values()
    # sampled_addmm has no half-precision kernels: upcast a block of decoder rows at a time.
    out = torch.zeros(pairs.rows_t.shape[0], dtype=torch.float32, device=weight.device)
    grad_t = grad.float().t()
    starts = pairs.latent_starts.tolist()
    for first in range(0, n_latents, _BLOCK_LATENTS):
        last = min(first + _BLOCK_LATENTS, n_latents)
        begin, end = starts[first], starts[last]
        if begin == end:
            continue
        block_starts = pairs.latent_starts[first : last + 1] - begin
        csr = _sparse_csr(block_starts, pairs.rows_t[begin:end], (last - first, n_rows), out.dtype)
        dots = torch.sparse.sampled_addmm(csr, weight[first:last].float(), grad_t, beta=0.0)
        out[begin:end] = dots.values()
    return out


class _SparseGatedStep(torch.autograd.Function):
    """Reconstruction, auxiliary reconstruction and sparsity penalty from the open pairs.

    Inputs after the non-tensor ones: ``sae_in`` (normalised, uncentred; no gradient),
    ``W_enc``, ``b_gate``, ``r_mag``, ``b_mag``, ``W_dec`` (as the loss sees it: through the
    tangent projection when unit norm), ``b_dec``. Outputs: ``f @ W_dec + b_dec``,
    ``ReLU(pi_gate) @ W_dec + b_dec`` and the per-row mean of the (weighted) gate activations
    (with ``options.parts``: the module's parts of these sums, without ``b_dec``).
    """

    @staticmethod
    def forward(
        ctx: Any,
        pairs: OpenPairs,
        features: torch.Tensor,
        options: _Options,
        sae_in: torch.Tensor,
        w_enc: torch.Tensor,
        b_gate: torch.Tensor,
        r_mag: torch.Tensor,
        b_mag: torch.Tensor,
        w_dec: torch.Tensor,
        b_dec: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_rows = sae_in.shape[0]
        gates = pairs.pre + _at(b_gate, pairs.cols)
        recon = _weighted_rows(pairs, w_dec, features, latent_major=False)
        aux_recon = _weighted_rows(pairs, w_dec, gates, latent_major=False)
        if not options.parts:
            recon, aux_recon = recon + b_dec, aux_recon + b_dec
        if options.weighted_penalty:
            gates = gates * _at(w_dec.norm(dim=-1), pairs.cols)
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
        scale_t = _at(scale, cols)
        magnitude = pairs.pre_t * scale_t + _at(b_mag, cols)
        gates = pairs.pre_t + _at(b_gate, cols)
        norms = w_dec.norm(dim=-1) if options.weighted_penalty else None

        d_magnitude = torch.where(magnitude > 0, _sampled_dots(pairs, w_dec, d_recon).to(acc), 0)
        penalty_weight = d_penalty.to(acc) / n_rows
        per_pair_penalty = penalty_weight
        if norms is not None:
            per_pair_penalty = penalty_weight * _at(norms.to(acc), cols)
        d_gate = _sampled_dots(pairs, w_dec, d_aux).to(acc) + per_pair_penalty
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
        dtype = w_dec.dtype
        return (
            None,
            None,
            None,
            None,
            grad_w_enc,
            grad_b_gate.to(dtype),
            grad_r_mag.to(dtype),
            grad_b_mag.to(dtype),
            grad_w_dec,
            grad_b_dec,
        )


def sparse_step_applies(sae: GatedTrainingSAE, sae_in: torch.Tensor) -> bool:
    """Whether the sparse step computes what the dense path does for this SAE and input.

    Only for a ``gated_paper`` SAE; not when the input needs a gradient, under autocast, with
    hooks on the pre-activation or feature hook points (the sparse step has no dense tensors to
    run them on), or with an activation function other than SAELens's ReLU.
    """
    hooked = any(
        hook._forward_hooks or hook._forward_pre_hooks or hook._backward_hooks
        for hook in (sae.hook_sae_acts_pre, sae.hook_sae_acts_post)
    )
    return (
        isinstance(sae.cfg, GatedPaperTrainingSAEConfig)
        and sae_in.dim() == 2
        and not sae_in.requires_grad
        and sae_in.is_floating_point()
        and not torch.is_autocast_enabled(sae_in.device.type)
        and isinstance(sae.activation_fn, torch.nn.ReLU)
        and not hooked
    )


def open_fraction(
    pre: torch.Tensor,
    b_gate: torch.Tensor,
    rows: int = PROBE_ROWS,
    latent_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Fraction of open (row, latent) pairs among the first ``rows`` rows of the batch.

    ``latent_sum`` adds the open and total counts over every part of the latents (a latent
    shard's ``_latent_sum``), so that all ranks take the same decision.
    """
    probe = pre[:rows]
    opened = torch.count_nonzero(probe > b_gate.detach().neg())
    counts = torch.stack([opened, torch.full_like(opened, probe.numel())])
    if latent_sum is not None:
        counts = latent_sum(counts)
    n_open, total = counts.tolist()
    return n_open / total if total else 0.0


def sparse_training_forward_pass(
    sae: GatedTrainingSAE,
    step_input: TrainStepInput,
    sae_in: torch.Tensor,
    encoder_pre: torch.Tensor,
    decoder_weight: Callable[[], torch.Tensor],
    threshold: float | None = None,
    parts: LatentParts | None = None,
) -> TrainStepOutput | None:
    """The training step from the open latents only, or None when the dense path should run.

    For a ``gated_paper`` SAE (``GatedPaperTrainingSAE``, which calls this from its
    ``training_forward_pass``): ``sae_in`` is the normalised, uncentred input, ``encoder_pre``
    its ``x_c @ W_enc`` and ``decoder_weight`` gives ``W_dec`` as the loss sees it, as the dense
    path computes them. On the sparse path ``encoder_pre``'s storage is reused for the
    returned ``hidden_pre``. ``threshold`` (default: ``density_threshold``) is the open fraction
    below which the step runs sparse; the returned ``feature_acts`` and ``hidden_pre`` carry no
    gradient (SAELens's trainer only counts firing latents in them). ``parts`` is given when
    ``sae`` holds only part of the latents: the open fraction, the decodes and the penalty are
    then summed over every part, so all parts take the same path and compute the same loss.
    """
    if threshold is None:
        threshold = density_threshold(sae_in.device)
    cfg = sae.cfg
    if not isinstance(cfg, GatedPaperTrainingSAEConfig) or threshold <= 0:
        return None
    if not sparse_step_applies(sae, sae_in):
        return None
    pre = encoder_pre.detach()
    latent_sum = None if parts is None else parts.latent_sum
    if open_fraction(pre, sae.b_gate, latent_sum=latent_sum) >= threshold:
        return None
    with torch.no_grad():
        pairs = find_open_pairs(pre, sae.b_gate)
        scale = sae.r_mag.exp()
        # The dense path's magnitude (multiply, then add) so the same pairs are active.
        features = torch.relu(pairs.pre * _at(scale, pairs.cols) + _at(sae.b_mag, pairs.cols))
        feature_acts = _zeros_like(pre)
        feature_acts.view(-1).index_copy_(0, pairs.flat, features)
        hidden_pre = torch.addcmul(sae.b_mag, pre, scale, out=pre)  # E's storage, one pass
    options = _Options(
        centred=cfg.apply_b_dec_to_input,
        aux_trainable=cfg.aux_decoder == "trainable",
        weighted_penalty=cfg.sparsity_penalty == "decoder_norm_weighted",
        parts=parts is not None,
    )
    centring = sae.b_dec
    if parts is not None and cfg.apply_b_dec_to_input:
        centring = parts.encoder_centring()
    recon, aux_recon, penalty = _SparseGatedStep.apply(
        pairs,
        features,
        options,
        sae_in,
        sae.W_enc,
        sae.b_gate,
        sae.r_mag,
        sae.b_mag,
        decoder_weight(),
        centring,
    )
    if parts is not None:
        aux_b_dec = sae.b_dec if options.aux_trainable else sae.b_dec.detach()
        recon = parts.latent_sum(recon) + sae.b_dec
        aux_recon = parts.latent_sum(aux_recon) + aux_b_dec
        penalty = parts.latent_sum(penalty)
    # As GatedPaperTrainingSAE.decode and gated_auxiliary_losses, from the sparse decodes.
    sae_out = sae.run_time_activation_norm_fn_out(sae.hook_sae_recons(recon))
    sae_out = sae.reshape_fn_out(sae_out, sae.d_head)
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
