"""Decoder rows at unit norm, the paper's constraint (Appendix D), as dictionary_learning's
ConstrainedAdam holds it: the ``W_dec`` gradient is projected onto each row's tangent space
(:func:`tangent_gradient`), and after every optimiser step that updates a registered SAE's
``W_dec`` its rows are renormalised (a post-step hook on every torch optimiser, since SAELens's
trainer builds its own optimiser and has no hook).
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class _TangentGradient(torch.autograd.Function):
    """Identity whose backward removes each row's gradient component parallel to that row: a
    step then changes a unit row's norm only to second order, which renormalising corrects."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (weight,) = ctx.saved_tensors
        # grad - (grad . w / |w|^2) w: two reductions and one fused pass, no row-sized temporary.
        squared_norms = torch.linalg.vecdot(weight, weight).clamp_min(1e-24)
        parallel = torch.linalg.vecdot(grad, weight) / squared_norms
        return torch.addcmul(grad, weight, parallel.unsqueeze(-1), value=-1)


def tangent_gradient(weight: torch.Tensor) -> torch.Tensor:
    """Return ``weight`` unchanged, with its gradient projected onto each row's tangent space."""
    return _TangentGradient.apply(weight)


class UnitDecoderModule(Protocol):
    """What the post-step hook needs of an SAE."""

    W_dec: torch.nn.Parameter

    @property
    def holds_unit_decoder(self) -> bool: ...

    def normalize_decoder_rows(self) -> None: ...


_UNIT_DECODER_MODULES: weakref.WeakSet[Any] = weakref.WeakSet()


def hold_unit_decoder_rows(module: UnitDecoderModule) -> None:
    """Renormalise ``module``'s decoder rows after every optimiser step that updates ``W_dec``
    (while ``module.holds_unit_decoder``); the module is held by a weak reference."""
    _UNIT_DECODER_MODULES.add(module)


def _renormalise_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not _UNIT_DECODER_MODULES:
        return
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in list(_UNIT_DECODER_MODULES):
        if module.holds_unit_decoder and id(module.W_dec) in owned:
            module.normalize_decoder_rows()


register_optimizer_step_post_hook(_renormalise_after_step)
