"""The held-out evaluation a sweep gives every SAE: the same windows, positions and metrics.

Each SAE is scored by ``eval.splice.evaluate_sae`` (the code behind ``sae-gated eval``). Two costs
that do not depend on the SAE are paid once per sweep instead of once per SAE:

* the clean and zero-ablated cross-entropies (``evaluate_sae(reference_ce=...)``);
* the language model up to the hook: for a residual-stream hook, the activations there are
  cached once and each SAE's run starts at the next block (TransformerLens's
  ``start_at_layer``). The model is clean up to the hook, so this is the same computation.
"""

from __future__ import annotations

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
    if match is None:
        return None
    layer = int(match.group(1))
    return layer + 1 if match.group(2) == "post" else layer


class ResumeAtHook:
    """A stand-in for the model in ``evaluate_sae``: ``run_with_hooks`` on one of the cached
    windows starts from the cached activations at the hook, applies the hook functions given
    for that hook point, and runs the rest of the model. Everything else is the model's."""

    def __init__(self, model: HookedTransformer, tokens: torch.Tensor, hook_name: str) -> None:
        layer = resume_layer(hook_name)
        if layer is None:
            raise ValueError(f"{hook_name!r} is not a residual-stream hook")
        self._model = model
        self._hook_name = hook_name
        self._layer = layer
        self._rows: dict[bytes, int] = {}
        cached = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], 16):
                batch = tokens[start : start + 16].to(model.cfg.device)
                _, cache = model.run_with_cache(
                    batch, names_filter=hook_name, stop_at_layer=layer if layer > 0 else 1
                )
                cached.append(cache[hook_name])
        self._activations = torch.cat(cached)
        for row, window in enumerate(tokens):
            self._rows.setdefault(window.numpy().tobytes(), row)

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
        self.hook_name = hook_name
        self.seqpos_slice = seqpos_slice
        self.exclude_token_ids = list(exclude_token_ids)
        self.batch_size = batch_size
        self.model: Any = (
            ResumeAtHook(model, tokens, hook_name) if resume_layer(hook_name) is not None else model
        )
        self.reference_ce: tuple[float, float] | None = None

    def evaluate(self, sae: SAE[Any]) -> EvalReport:
        """The paper's metrics for ``sae`` (its first call also measures the references)."""
        was_training = getattr(sae, "training", False)
        sae.eval()
        try:
            report = evaluate_sae(
                sae,
                self.model,
                self.tokens,
                hook_name=self.hook_name,
                seqpos_slice=self.seqpos_slice,
                exclude_token_ids=self.exclude_token_ids,
                batch_size=self.batch_size,
                show_progress=False,
                reference_ce=self.reference_ce,
            )
        finally:
            sae.train(was_training)
        if self.reference_ce is None:
            self.reference_ce = (report.ce_loss_clean, report.ce_loss_zero_ablation)
        return report
