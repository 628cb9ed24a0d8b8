"""Autograd building blocks of the gated_paper training pass, and the unit-norm step hook.

Two small custom ``torch.autograd.Function``s, each replacing a pattern whose default autograd
does needless work or lacks the constraint the paper asks for, and a global optimizer post-step
hook that puts decoder rows back at unit norm after every step.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


class _CentredMatmul(torch.autograd.Function):
    """``(x - b) @ W`` whose backward never forms ``dL/dx`` unless ``x`` needs it.

    Autograd of the plain expression computes the full ``grad @ W.T`` (a batch x d_in x d_sae
    matmul) only to sum it over the batch for ``b``. Here ``db = -(grad.sum(0)) @ W.T``, which
    is the same number at a fraction of the cost.
    """

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


class _TangentGradient(torch.autograd.Function):
    """Identity whose backward removes each row's gradient component parallel to that row.

    For decoder rows held at unit norm this is the projection of dictionary_learning's
    ConstrainedAdam: a step along the projected gradient does not change a row's norm to first
    order, so renormalising after the step only corrects second-order drift.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (weight,) = ctx.saved_tensors
        unit_rows = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        parallel = (grad * unit_rows).sum(dim=-1, keepdim=True)
        return grad - parallel * unit_rows


def tangent_gradient(weight: torch.Tensor) -> torch.Tensor:
    """Return ``weight`` unchanged, with its gradient projected onto each row's tangent space."""
    return _TangentGradient.apply(weight)


class UnitDecoderModule(Protocol):
    """What the unit-norm step hook needs of an SAE."""

    W_dec: torch.nn.Parameter

    @property
    def holds_unit_decoder(self) -> bool: ...

    def normalize_decoder_rows(self) -> None: ...


_UNIT_DECODER_MODULES: weakref.WeakSet[Any] = weakref.WeakSet()


def hold_unit_decoder_rows(module: UnitDecoderModule) -> None:
    """Renormalise ``module``'s decoder rows after every optimizer step that updates ``W_dec``
    (while ``module.holds_unit_decoder``); the module is held by a weak reference."""
    _UNIT_DECODER_MODULES.add(module)


def _renormalise_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    # The paper renormalises decoder rows after every optimiser step. SAELens's trainer has no
    # hook for that, so a global post-step hook does it for whichever optimiser owns W_dec;
    # this way any trainer (SAELens's, the plugin's, a user's) keeps the rows at unit norm.
    if not _UNIT_DECODER_MODULES:
        return
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in list(_UNIT_DECODER_MODULES):
        if module.holds_unit_decoder and id(module.W_dec) in owned:
            module.normalize_decoder_rows()


register_optimizer_step_post_hook(_renormalise_after_step)
