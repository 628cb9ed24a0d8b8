"""Device-specific speed-ups of the training step: each returns what a one-line torch
expression would (the tests compare them), faster where that expression is slow.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import warnings
from typing import Any

import torch

from sae_gated_plugin.errors import GatedPluginError

THRESHOLD_ENV = "SAE_GATED_PLUGIN_SPARSE_THRESHOLD"
"""Overrides ``DENSITY_THRESHOLDS``: ``0`` always runs dense, ``inf`` sparse whenever it applies."""

# Fraction of open (row, latent) pairs below which the sparse step beats the dense one, with a
# margin below the crossover `python benchmarks/step_speed.py --calibrate [--device cuda]`
# measures. Other devices run dense unless THRESHOLD_ENV is set.
DENSITY_THRESHOLDS: dict[str, float] = {"cpu": 0.10, "cuda": 0.025}

BLOCK_LATENTS = 4096  # latents per upcast block where sampled_addmm lacks the dtype
FRESH_MAPPING_BYTES = 32 * 2**20  # glibc's largest mmap threshold
HUGE_PAGES = sys.platform == "linux" and hasattr(mmap, "MADV_HUGEPAGE")


def density_threshold(device: torch.device) -> float:
    """The open-pair fraction below which a training step on ``device`` runs sparse."""
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


class _CentredMatmul(torch.autograd.Function):
    """``(x - b) @ W`` whose backward forms ``dL/dx`` only if ``x`` needs it: plain autograd
    computes the full ``grad @ W.T`` just to sum it for ``b``; ``db = -(grad.sum(0)) @ W.T``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        centred = x - bias
        ctx.save_for_backward(centred, weight)
        return centred @ weight

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        centred, weight = ctx.saved_tensors
        grad_x = grad_bias = grad_weight = None
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight.T
        if ctx.needs_input_grad[1]:
            grad_bias = -(flat_grad.sum(0) @ weight.T)
        if ctx.needs_input_grad[2]:
            grad_weight = centred.reshape(-1, centred.shape[-1]).T @ flat_grad
        return grad_x, grad_bias, grad_weight


def centred_matmul(
    x: torch.Tensor, bias: torch.Tensor | None, weight: torch.Tensor
) -> torch.Tensor:
    """``(x - bias) @ weight`` (``x @ weight`` if ``bias`` is None), cheap to differentiate."""
    if bias is None:
        return x @ weight
    return _CentredMatmul.apply(x, bias, weight)


def fresh_zeros_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.zeros_like(tensor)``; for a large CPU tensor on Linux, straight from the kernel.

    ``torch.zeros`` page-faults every 4 KiB page of glibc's fresh mmap, then writes zeros over
    memory the kernel already zeroed; an anonymous huge-page mapping skips both (freed with it).
    """
    n_bytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != "cpu" or n_bytes < FRESH_MAPPING_BYTES or not HUGE_PAGES:
        return torch.zeros_like(tensor)
    buffer = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buffer.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buffer, dtype=tensor.dtype).view(tensor.shape)


def at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` for 1-D tensors (index_select: several times faster on CPU)."""
    return values.index_select(0, index)


def nonzero_flat(mask: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices of the True entries of a contiguous bool tensor.

    On CPU, when most groups of 8 entries are all False, finding the non-zero 8-byte words
    first, then the entries inside them, is several times faster than ``nonzero``.
    """
    flat = mask.view(-1)
    if flat.device.type != "cpu" or flat.numel() % 8 or sys.byteorder != "little":
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64)
    hit = (words != 0).nonzero().squeeze(1)
    inside = words.index_select(0, hit).view(torch.uint8).nonzero().squeeze(1)
    return at(hit, inside >> 3) * 8 + (inside & 7)  # byte k of word w is entry 8 w + k


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


def sampled_dots(
    latent_starts: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """``weight[latent] . grad[row]`` for every open pair, latent-major order, with no
    batch x d_sae product: ``grad @ weight.T`` sampled at the open pairs."""
    n_latents, n_rows = weight.shape[0], grad.shape[0]
    if weight.dtype in (torch.float32, torch.float64):
        csr = _sparse_csr(latent_starts, rows, (n_latents, n_rows), weight.dtype)
        return torch.sparse.sampled_addmm(csr, weight, grad.t(), beta=0.0).values()
    # sampled_addmm has no half-precision kernels: upcast a block of decoder rows at a time.
    out = torch.zeros(rows.shape[0], dtype=torch.float32, device=weight.device)
    grad_t = grad.float().t()
    starts = latent_starts.tolist()
    for first in range(0, n_latents, BLOCK_LATENTS):
        last = min(first + BLOCK_LATENTS, n_latents)
        begin, end = starts[first], starts[last]
        if begin == end:
            continue
        block_starts = latent_starts[first : last + 1] - begin
        csr = _sparse_csr(block_starts, rows[begin:end], (last - first, n_rows), out.dtype)
        dots = torch.sparse.sampled_addmm(csr, weight[first:last].float(), grad_t, beta=0.0)
        out[begin:end] = dots.values()
    return out
