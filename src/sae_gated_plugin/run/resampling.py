"""Dead-latent resampling (Bricken et al., 2023), as the paper used it; SAELens has none.

At each configured step, each latent silent for ``dead_window`` steps gets, as decoder row and
(scaled by ``encoder_scale`` x the alive latents' mean encoder norm) encoder column, a unit-norm
input of the current batch drawn with probability ~ loss^2; its per-latent parameters and their
Adam moments are zeroed, and the lr drops to ``lr_factor`` x and climbs back over
``lr_warm_up_steps``. Unlike Bricken et al., inputs come from the current batch and are centred
by ``b_dec`` first (else a large common direction would point every revived latent one way).
"""

from __future__ import annotations

from typing import Any

import torch

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run.config import ResamplingSettings

PER_LATENT_ZEROED = ("b_enc", "b_gate", "b_mag", "r_mag")
"""Per-latent parameters a resampled latent gets back at zero (r_mag 0: W_mag = W_gate)."""


def _per_latent_parameters(sae: Any) -> dict[str, torch.nn.Parameter]:
    """The SAE's per-latent vectors, refusing parameters resampling does not know how to reset."""
    d_sae = sae.cfg.d_sae
    found = {}
    for name, param in sae.named_parameters():
        if name in PER_LATENT_ZEROED and tuple(param.shape) == (d_sae,):
            found[name] = param
        elif name not in ("W_enc", "W_dec", "b_dec"):
            raise GatedPluginError(
                f"resampling supports SAEs with W_enc, W_dec, b_dec and per-latent "
                f"{list(PER_LATENT_ZEROED)}; {sae.cfg.architecture()} has {name!r}"
            )
    return found


def _reset_adam(optimizer: torch.optim.Optimizer, param: torch.Tensor, index: Any) -> None:
    """Zero Adam's first and second moments of ``param[index]``."""
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state:
            state[key][index] = 0.0


def resample_dead_latents(
    sae: Any,
    optimizer: torch.optim.Optimizer,
    sae_in: torch.Tensor,
    dead: torch.Tensor,
    *,
    encoder_scale: float = 0.2,
    generator: torch.Generator | None = None,
) -> int:
    """Re-initialise the latents flagged in ``dead`` towards badly reconstructed rows of
    ``sae_in`` (the batch as the SAE sees it in training); returns how many were resampled."""
    index = dead.nonzero().squeeze(-1)
    n_dead = int(index.numel())
    if n_dead == 0:
        return 0
    per_latent = _per_latent_parameters(sae)
    with torch.no_grad():
        x = sae_in.to(sae.W_dec.dtype)
        losses = (x - sae.decode(sae.encode(x))).pow(2).sum(dim=-1)
        weights = losses.pow(2)
        if not bool(torch.isfinite(weights).all()) or float(weights.sum()) == 0.0:
            weights = torch.ones_like(weights)
        weights = weights.float().cpu()
        replacement = n_dead > int((weights > 0).sum())
        picks = torch.multinomial(weights, n_dead, replacement=replacement, generator=generator)
        directions = x[picks.to(x.device)]
        if getattr(sae.cfg, "apply_b_dec_to_input", False):
            directions = directions - sae.b_dec
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        alive = ~dead
        encoder_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else 1.0
        sae.W_dec.data[index] = directions
        sae.W_enc.data[:, index] = directions.T * (encoder_scale * encoder_norm)
        _reset_adam(optimizer, sae.W_dec, index)
        _reset_adam(optimizer, sae.W_enc, (slice(None), index))
        for param in per_latent.values():
            param.data[index] = 0.0
            _reset_adam(optimizer, param, index)
    return n_dead


class DeadLatentResampler:
    """Resamples a trainer's dead latents at the configured steps and lowers the lr after each
    (through optimiser step hooks, so SAELens's lr scheduler is left as it is)."""

    def __init__(self, settings: ResamplingSettings, trainer: Any) -> None:
        self.settings = settings
        self.trainer = trainer
        self.n_resampled: list[int] = []  # latents resampled at each resampling step
        self._saved_lrs: list[float] = []
        optimizer = trainer.optimizer
        optimizer.register_step_pre_hook(self._scale_lr)
        optimizer.register_step_post_hook(self._restore_lr)

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier for optimiser step ``step`` (0-based)."""
        last = max((s for s in self.settings.steps if s <= step), default=None)
        warm_up, low = self.settings.lr_warm_up_steps, self.settings.lr_factor
        if last is None or step - last >= warm_up:
            return 1.0
        return low + (1.0 - low) * (step - last) / warm_up

    def _scale_lr(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        factor = self.lr_factor(self.trainer.n_training_steps)
        self._saved_lrs = [group["lr"] for group in optimizer.param_groups]
        if factor != 1.0:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * factor

    def _restore_lr(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in zip(optimizer.param_groups, self._saved_lrs, strict=False):
            group["lr"] = lr

    def after_step(self, sae_in: torch.Tensor) -> int:
        """After each optimiser step: resample if it completed one of ``settings.steps``;
        returns the latents resampled."""
        trainer = self.trainer
        completed = trainer.n_training_steps + 1
        if completed not in self.settings.steps:
            return 0
        dead = trainer.n_forward_passes_since_fired >= self.settings.dead_window
        n = resample_dead_latents(
            trainer.sae, trainer.optimizer, sae_in, dead, encoder_scale=self.settings.encoder_scale
        )
        trainer.n_forward_passes_since_fired[dead] = 0
        self.n_resampled.append(n)
        return n
