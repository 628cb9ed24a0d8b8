"""Check a converted SAE against its source on synthetic probes: per entry they may differ only
by rounding (``tol * (||x_c|| ||W_mag[:, i]|| + |b_mag[i]|)``, ``tol = 16 eps sqrt(d_in)``), a
gate may flip only within rounding of zero; anything else refuses the conversion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from sae_gated_plugin.errors import GatedPluginError

N_PROBES = 256
"""Probe activations per check (half random directions, half sparse decoder combinations)."""


class GatedReference(Protocol):
    """The source model in SAELens's method names (a SAELens SAE, or another library's);
    ``process_sae_in`` gives the input as the encoder multiplies it (normalised, centred)."""

    def encode(self, x: torch.Tensor, /) -> torch.Tensor: ...
    def decode(self, features: torch.Tensor, /) -> torch.Tensor: ...
    def process_sae_in(self, x: torch.Tensor, /) -> torch.Tensor: ...


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of a passed check; errors are in units of the allowed rounding (<= 1 passes)."""

    n_probes: int
    n_entries: int  # feature entries compared (probes x latents)
    gate_boundary_flips: int  # gates opened in one model only, all within rounding of 0
    max_feature_error: float
    max_reconstruction_error: float


def tolerance(dtype: torch.dtype, d_in: int) -> float:
    """Allowed rounding, relative to the scale of the terms summed: 16 eps sqrt(d_in)."""
    return 16 * torch.finfo(dtype).eps * math.sqrt(d_in)


def probe_activations(
    weights: dict[str, torch.Tensor], n: int = N_PROBES, seed: int = 0
) -> torch.Tensor:
    """Inputs that put every latent's gate on both sides of zero: random directions around
    ``b_dec`` at radii over three decades, and sparse decoder combinations near the thresholds."""
    work = _work_dtype(weights["W_enc"].dtype)
    w_gate, w_dec = weights["W_enc"].to(work), weights["W_dec"].to(work)
    b_gate, b_dec = weights["b_gate"].to(work), weights["b_dec"].to(work)
    d_in, d_sae = w_gate.shape
    gen = torch.Generator().manual_seed(seed)
    col_norm = w_gate.norm(dim=0).median().clamp_min(1e-30)
    bias_scale = b_gate.abs().median()
    bias_scale = bias_scale if bias_scale > 0 else torch.tensor(1.0, dtype=work)
    n_dir = n // 2
    directions = torch.randn(n_dir, d_in, generator=gen, dtype=work)
    directions /= directions.norm(dim=-1, keepdim=True)
    radius = bias_scale * math.sqrt(d_in) / col_norm
    radii = radius * 10 ** (torch.rand(n_dir, 1, generator=gen, dtype=work) * 3 - 1.5)
    n_dec, k = n - n_dir, min(8, d_sae)
    latents = torch.stack([torch.randperm(d_sae, generator=gen)[:k] for _ in range(n_dec)])
    response = torch.einsum("id,di->i", w_dec, w_gate).abs().clamp_min(1e-30)
    crossing = (b_gate.abs() + 1e-3 * bias_scale) / response  # coefficient that opens the gate
    coeffs = crossing[latents] * torch.rand(n_dec, k, generator=gen, dtype=work) * 3
    combos = torch.einsum("pk,pkd->pd", coeffs, w_dec[latents])
    probes = torch.cat([directions * radii, combos]) + b_dec
    return probes.to(weights["W_enc"].dtype)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for a float64 SAE: precise enough to measure the SAE's rounding."""
    return torch.promote_types(dtype, torch.float32)


@torch.no_grad()
def verify_conversion(
    converted: Any,
    reference: GatedReference,
    weights: dict[str, torch.Tensor],
    *,
    n_probes: int = N_PROBES,
) -> VerifyReport:
    """Compare ``converted`` with ``reference`` (source ``weights`` in SAELens names) on probe
    activations; raise ``GatedPluginError`` naming a latent where they differ beyond rounding."""
    x = probe_activations(weights, n_probes)
    work, tol = _work_dtype(x.dtype), tolerance(x.dtype, x.shape[-1])
    outputs = []
    for model in (reference, converted):
        # encode then decode, in that order: SAELens's run-time normalisations keep the
        # input's scale on the module between the two calls.
        features = model.encode(x)
        outputs += [features.to(work), model.decode(features).to(work)]
    f_ref, r_ref, f_new, r_new = outputs

    w = {name: tensor.to(work) for name, tensor in weights.items()}
    x_c = reference.process_sae_in(x).to(work)
    gate = x_c @ w["W_enc"] + w["b_gate"]
    x_norm = x_c.norm(dim=-1, keepdim=True)
    gate_scale = x_norm * w["W_enc"].norm(dim=0) + w["b_gate"].abs()
    feature_scale = x_norm * (w["W_enc"].norm(dim=0) * w["r_mag"].exp()) + w["b_mag"].abs()
    # Floored only to avoid 0 / 0 (where the scale is 0 the values must be equal).
    feature_error = (f_new - f_ref).abs() / (tol * feature_scale).clamp_min(1e-30)
    beyond = feature_error > 1
    wrong = beyond & ~(gate.abs() <= tol * gate_scale)
    if wrong.any():
        probe, latent = (int(i) for i in wrong.nonzero()[0])
        raise GatedPluginError(
            f"the converted SAE is not exact: {int(wrong.sum())} of {wrong.numel()} feature "
            f"values differ beyond rounding on the check's probe activations (e.g. latent "
            f"{latent}: {f_ref[probe, latent].item():.6g} in the source, "
            f"{f_new[probe, latent].item():.6g} converted, gate pre-activation "
            f"{gate[probe, latent].item():.3g}); nothing was written"
        )
    recon_scale = (feature_scale + f_ref.abs()) @ w["W_dec"].abs() + w["b_dec"].abs()
    recon_error = (r_new - r_ref).abs() / (tol * recon_scale).clamp_min(1e-30)
    recon_error = recon_error[~beyond.any(dim=-1)]
    max_recon = float(recon_error.max()) if recon_error.numel() else 0.0
    if max_recon > 1:
        raise GatedPluginError(
            "the converted SAE is not exact: its reconstructions differ from the source's beyond "
            f"rounding (by {max_recon:.3g} times the allowed rounding) where the "
            "features agree; nothing was written"
        )
    return VerifyReport(
        n_probes=x.shape[0],
        n_entries=f_ref.numel(),
        gate_boundary_flips=int(beyond.sum()),
        max_feature_error=float(feature_error[~beyond].max()) if (~beyond).any() else 0.0,
        max_reconstruction_error=max_recon,
    )
