"""Exact conversions between gated SAEs and SAELens's ``gated`` and ``jumprelu`` architectures.

``gated_paper`` and SAELens's ``gated`` share parameters and inference: converting between
them rewrites the architecture in cfg.json and copies the weights file byte for byte.

A Gated SAE with tied weights is a JumpReLU SAE (arXiv:2404.16014, appendix E); see
:func:`jumprelu_parameters` for the parameters and the proof, including latents whose
threshold is negative.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError

from sae_gated_plugin.arch.schema import ARCHITECTURE, GatedPaperSAESchema
from sae_gated_plugin.errors import GatedPluginError

CFG_FIELDS = (
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
)
"""cfg.json fields every SAELens inference config shares (the jumprelu config has no others)."""


def renamed_cfg(cfg: dict[str, Any], target: str) -> dict[str, Any]:
    """``cfg`` of a ``gated`` / ``gated_paper`` SAE with its architecture set to ``target``.

    The two architectures have the same config fields, so everything else is kept as it is.
    """
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
    """The SAELens ``jumprelu`` parameters that compute what a gated SAE computes.

    Returns the parameters (``W_enc``, ``b_enc``, ``threshold``, ``W_dec``, ``b_dec``) and how
    many latents had a negative threshold (set to 0, see below). Computed in float64 and
    rounded once to the SAE's dtype.

    Proof. Per latent i, with g = x_c . W_gate[:, i] and s = exp(r_mag[i]) > 0, the gated SAE
    computes pi = g + b_gate and m = s g + b_mag, and outputs f = 1[pi > 0] ReLU(m). As s > 0,
    pi > 0 <=> s g > -s b_gate <=> m > b_mag - s b_gate =: theta, so f = 1[m > theta] ReLU(m).
    SAELens's JumpReLU (``JumpReLUSAE.encode``) outputs 1[p > t] ReLU(p) with
    p = x_c . W_enc[:, i] + b_enc[i]; with W_enc[:, i] = s W_gate[:, i] and b_enc = b_mag,
    p = m. Take t = max(theta, 0). If theta >= 0, t = theta and the outputs are the same
    expression. If theta < 0, t = 0: for m > 0 both indicators are 1 (m > 0 > theta) and both
    output m; for m <= 0 both output ReLU(m) = 0. So f = 1[m > t] ReLU(m) for every m,
    including m = 0 and m = theta (both strict inequalities give 0 there).

    Why 0 and not theta itself: with t >= 0, m > t already implies m > 0, so
    1[m > t] ReLU(m) = 1[m > t] m, the textbook JumpReLU z H(z - t) (arXiv:2407.14435) that
    Gemma Scope's and SAELens's training code compute without a ReLU. A negative t would give
    the same outputs in SAELens's inference class (it applies ReLU) but pass the negative values
    m in (theta, 0] through in those implementations. W_dec and b_dec are copied, so the
    reconstructions are the same too.

    The algebra needs s finite and > 0 in the SAE's dtype: a latent whose exp(r_mag) overflows
    or underflows there (where the gated SAE itself computes m = inf or m = b_mag) is refused.
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
