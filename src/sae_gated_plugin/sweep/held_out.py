"""The held-out evaluation (``eval.splice.evaluate_sae``) a sweep gives every SAE.

Paid once per sweep: the clean and zero-ablated losses, and, for a residual-stream hook, the
model up to the hook (clean there, so each SAE's run can resume from cached activations).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from sae_gated_plugin.eval.splice import evaluate_sae

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_gated_plugin.eval.metrics import EvalReport

_RESID_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)")


def resume_layer(hook_name: str) -> int | None:
    """The block a forward pass resumes at after ``hook_name``; None for other hooks."""
    match = _RESID_HOOK.fullmatch(hook_name)
    return None if match is None else int(match.group(1)) + (match.group(2) == "post")


class ResumeAtHook:
    """The model for ``evaluate_sae``, but ``run_with_hooks`` on a cached window resumes from the
    cached activations at the hook (after its hook functions)."""

    def __init__(self, model: HookedTransformer, tokens: torch.Tensor, hook_name: str) -> None:
        layer = resume_layer(hook_name)
        if layer is None:
            raise ValueError(f"{hook_name!r} is not a residual-stream hook")
        self._model = model
        self._hook_name = hook_name
        self._layer = layer
        cached = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], 16):
                batch = tokens[start : start + 16].to(model.cfg.device)
                _, cache = model.run_with_cache(
                    batch, names_filter=hook_name, stop_at_layer=layer if layer > 0 else 1
                )
                cached.append(cache[hook_name])
        self._activations = torch.cat(cached)
        # A window's first row (reversed, so earlier rows overwrite later duplicates).
        self._rows = {w.numpy().tobytes(): row for row, w in reversed(list(enumerate(tokens)))}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        *,
        return_type: str,
        loss_per_token: bool,
        fwd_hooks: Sequence[tuple[str, Callable[..., torch.Tensor]]] = (),
    ) -> torch.Tensor:
        """The model's per-token loss on ``tokens`` with ``fwd_hooks`` at the cached hook."""
        rows = [self._rows[window.cpu().numpy().tobytes()] for window in tokens]
        act = self._activations[rows]
        for name, hook_fn in fwd_hooks:
            if name != self._hook_name:
                raise ValueError(f"only hooks at {self._hook_name!r} can be resumed, not {name!r}")
            act = hook_fn(act, hook=None)
        return self._model(
            act,
            start_at_layer=self._layer,
            tokens=tokens,
            return_type=return_type,
            loss_per_token=loss_per_token,
        )


class HeldOutEvaluation:
    """Evaluates SAEs on fixed held-out windows with the clean/zero references computed once."""

    def __init__(
        self,
        model: HookedTransformer,
        tokens: torch.Tensor,
        *,
        hook_name: str,
        seqpos_slice: tuple[int | None, ...],
        exclude_token_ids: Sequence[int],
        batch_size: int,
    ) -> None:
        self.tokens = tokens
        self._evaluate = functools.partial(
            evaluate_sae,
            hook_name=hook_name,
            seqpos_slice=seqpos_slice,
            exclude_token_ids=list(exclude_token_ids),
            batch_size=batch_size,
            show_progress=False,
        )
        self.model: Any = (
            ResumeAtHook(model, tokens, hook_name) if resume_layer(hook_name) is not None else model
        )
        self.reference_ce: tuple[float, float] | None = None

    def evaluate(self, sae: SAE[Any]) -> EvalReport:
        """The paper's metrics for ``sae`` (its first call also measures the references)."""
        was_training = getattr(sae, "training", False)
        sae.eval()
        try:
            report = self._evaluate(sae, self.model, self.tokens, reference_ce=self.reference_ce)
        finally:
            sae.train(was_training)
        if self.reference_ce is None:
            self.reference_ce = (report.ce_loss_clean, report.ce_loss_zero_ablation)
        return report
