"""Dead-latent resampling (Bricken et al., 2023, "Towards Monosemanticity"), as the paper used it.

At each configured step, every latent that has not fired for ``dead_window`` steps is
re-initialised towards an input the SAE reconstructs badly:

1. the reconstruction loss ``||x - x_hat||^2`` of each input of the current training batch is
   computed, and inputs are drawn with probability proportional to its square;
2. the drawn input, centred by ``b_dec`` where the SAE centres its inputs and scaled to unit
   norm, becomes the dead latent's decoder row, and (times ``encoder_scale`` x the mean encoder
   norm of the alive latents) its encoder column;
3. the latent's per-latent parameters (``b_enc``; for gated SAEs ``b_gate``, ``b_mag`` and
   ``r_mag``) are zeroed, and Adam's moment estimates of every modified entry are reset;
4. the learning rate drops to ``lr_factor`` x its scheduled value and climbs back linearly over
   ``lr_warm_up_steps`` steps, so the reset Adam state does not make the first steps huge.

Deliberate differences from Bricken et al.: inputs are drawn from the current batch (not from
819,200 inputs), and are centred by ``b_dec`` first (a residual stream with a large common
direction would otherwise point every revived latent the same way).

SAELens has no resampling and no hook for it; ``GuardedTrainer.step`` calls
:meth:`DeadLatentResampler.after_step` (see ``GuardedTrainer.step`` for why there).
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
        if name in ("W_enc", "W_dec", "b_dec"):
            continue
        if name in PER_LATENT_ZEROED and tuple(param.shape) == (d_sae,):
            found[name] = param
            continue
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
        picks = torch.multinomial(weights, n_dead, replacement=replacement, generator=generator).to(
            x.device
        )
        directions = x[picks]
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
    """Resamples a trainer's dead latents at the configured steps and scales its learning rate
    down after each resampling (through optimiser step hooks, so SAELens's lr scheduler is left
    as it is: the factor is applied for the step and undone after it)."""

    def __init__(self, settings: ResamplingSettings, trainer: Any) -> None:
        self.settings = settings
        self.trainer = trainer
        self.n_resampled: list[int] = []
        """Latents resampled at each resampling step so far."""
        self._saved_lrs: list[float] = []
        optimizer = trainer.optimizer
        optimizer.register_step_pre_hook(self._scale_lr)
        optimizer.register_step_post_hook(self._restore_lr)

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier for optimiser step ``step`` (0-based)."""
        done = [s for s in self.settings.steps if s <= step]
        if not done:
            return 1.0
        since = step - done[-1]
        warm_up = self.settings.lr_warm_up_steps
        if since >= warm_up:
            return 1.0
        low = self.settings.lr_factor
        return low + (1.0 - low) * since / warm_up

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
        """Called after each optimiser step with the step's (scaled) batch; resamples when the
        step just taken completes one of ``settings.steps``. Returns the latents resampled."""
        trainer = self.trainer
        completed = trainer.n_training_steps + 1
        if completed not in self.settings.steps:
            return 0
        dead = trainer.n_forward_passes_since_fired >= self.settings.dead_window
        n = resample_dead_latents(
            trainer.sae,
            trainer.optimizer,
            sae_in,
            dead,
            encoder_scale=self.settings.encoder_scale,
        )
        trainer.n_forward_passes_since_fired[dead] = 0
        self.n_resampled.append(n)
        return n
