"""Exact conversions of gated SAEs: ``gated_paper`` <-> SAELens ``gated`` (same parameters, the
architecture renamed) and into SAELens ``jumprelu`` (see :func:`jumprelu_parameters`)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError

from sae_gated_plugin.arch.schema import ARCHITECTURE, GatedPaperSAESchema
from sae_gated_plugin.errors import GatedPluginError

CFG_FIELDS = ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
              "normalize_activations", "reshape_activations", "metadata")  # fmt: skip
"""cfg.json fields every SAELens inference config shares (the jumprelu config has no others)."""


def renamed_cfg(cfg: dict[str, Any], target: str) -> dict[str, Any]:
    """``cfg`` of a ``gated`` / ``gated_paper`` SAE with its architecture set to ``target`` (the
    two share every other field)."""
    if cfg["architecture"] == target:
        raise GatedPluginError(
            f"the SAE is already {target!r}; nothing to convert (copy the folder instead)"
        )
    out = dict(cfg)
    out["architecture"] = target
    if target == ARCHITECTURE:
        try:
            GatedPaperSAESchema.model_validate(out)
        except ValidationError as exc:
            raise GatedPluginError(f"cannot convert to {ARCHITECTURE}: {exc}") from None
    return out


def jumprelu_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` of a gated SAE as a SAELens ``jumprelu`` config (same input handling)."""
    out = {name: cfg[name] for name in CFG_FIELDS if name in cfg}
    out["architecture"] = "jumprelu"
    return out


@torch.no_grad()
def jumprelu_parameters(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The SAELens ``jumprelu`` parameters that compute what a gated SAE computes, and how many
    latents had a negative threshold (set to 0). Computed in float64, rounded once to the dtype.

    Proof. Per latent, with g = x_c . W_gate[:, i] and s = exp(r_mag[i]) > 0, the gated SAE
    outputs f = 1[g + b_gate > 0] ReLU(m) with m = s g + b_mag. As s > 0, g + b_gate > 0 <=>
    m > theta := b_mag - s b_gate, so f = 1[m > theta] ReLU(m). JumpReLU outputs 1[p > t] ReLU(p)
    with p = x_c . W_enc[:, i] + b_enc[i] = m for W_enc = s W_gate, b_enc = b_mag. Take
    t = max(theta, 0): if theta >= 0 the expressions are equal; if theta < 0, t = 0 and for
    m > 0 both output m, for m <= 0 both output 0 (strict inequalities: also at m = 0, theta).
    With t >= 0, 1[m > t] ReLU(m) = 1[m > t] m, the textbook JumpReLU z H(z - t)
    (arXiv:2407.14435) of Gemma Scope and SAELens's training code; there a negative t would pass
    m in (theta, 0] through. W_dec and b_dec are copied, so reconstructions are equal too.
    A latent whose s overflows or underflows in the SAE's dtype is refused.
    """
    dtype = weights["W_enc"].dtype
    scale_in_dtype = weights["r_mag"].exp()
    broken = ~torch.isfinite(scale_in_dtype) | (scale_in_dtype == 0)
    if broken.any():
        latents = broken.nonzero().flatten()[:5].tolist()
        raise GatedPluginError(
            f"cannot convert to jumprelu: exp(r_mag) overflows or underflows in {dtype} for "
            f"{int(broken.sum())} latents (e.g. {latents}), so the magnitude path there is not "
            "a scaled gate path and no JumpReLU threshold reproduces it"
        )
    scale = weights["r_mag"].double().exp()
    theta = weights["b_mag"].double() - scale * weights["b_gate"].double()
    out = {
        "W_enc": (weights["W_enc"].double() * scale).to(dtype),
        "b_enc": weights["b_mag"].clone(),
        "threshold": theta.clamp_min(0.0).to(dtype),
        "W_dec": weights["W_dec"].clone(),
        "b_dec": weights["b_dec"].clone(),
    }
    for name in ("W_enc", "threshold"):
        if not torch.isfinite(out[name]).all():
            raise GatedPluginError(
                f"cannot convert to jumprelu: the JumpReLU {name} overflows {dtype} "
                "(W_gate * exp(r_mag) or b_mag - exp(r_mag) * b_gate is too large)"
            )
    return out, int((theta < 0).sum())
