"""The paper's metrics (arXiv:2404.16014): the report of one evaluation and its streaming sums.

Reconstruction metrics come from float64 sums over the WHOLE evaluation set, so batching never
changes them; the CE losses are computed by :mod:`sae_gated_plugin.eval.splice`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import atomic_write_json, json_safe


@dataclass
class EvalReport:
    """The paper's metrics for one SAE on one set of evaluation windows."""

    l0: float  # mean number of non-zero latents per evaluated token
    dead_fraction: float  # fraction of latents that never fired
    alive_fraction: float  # 1 - dead_fraction
    explained_variance: float  # 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
    mse: float  # mean over tokens of ||x - x_hat||^2 (summed over d_in)
    relative_reconstruction_bias: float  # gamma = E||x_hat||^2 / E[x . x_hat]; < 1: shrinkage
    ce_loss_clean: float  # next-token CE (nats) of the unmodified model
    ce_loss_with_sae: float  # CE with the reconstruction spliced in at the spliced positions
    ce_loss_zero_ablation: float  # CE with the activation zeroed at the spliced positions
    delta_ce_loss: float  # ce_loss_with_sae - ce_loss_clean
    loss_recovered: float  # (ce_zero - ce_sae) / (ce_zero - ce_clean)
    n_tokens: int  # token positions evaluated (the spliced positions)
    n_sequences: int
    context_size: int
    hook_name: str
    spliced_positions: str  # human-readable description of where the SAE was spliced in

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict (field order kept; non-finite floats kept as floats)."""
        return asdict(self)

    def to_table(self) -> str:
        """An aligned two-column text table for the terminal."""
        rows = [(f.name, _format_value(getattr(self, f.name))) for f in fields(self)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _format_value(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_report(report: EvalReport, path: Path | str) -> None:
    """Write ``report`` atomically as strict JSON; non-finite values become ``null``."""
    atomic_write_json(path, json_safe(report.to_dict()))


class MetricAccumulator:
    """Streaming float64 sums for the SAE metrics, exact over the whole set whatever the batching.

    The total variance about the GLOBAL mean uses Chan et al.'s parallel update, so it neither
    depends on the batching nor cancels catastrophically when the mean is large. A latent is
    active where its activation is non-zero (negative ones count too, as in SAELens).
    """

    def __init__(self, d_sae: int, device: torch.device | str | None = None) -> None:
        if d_sae <= 0:
            raise GatedPluginError(f"d_sae must be positive, not {d_sae}")
        self.d_sae = int(d_sae)
        self.device = torch.device(device or "cpu")
        self.n_tokens = 0
        self._fired = torch.zeros(self.d_sae, dtype=torch.bool, device=self.device)
        self._l0_sum = self._resid_sq_sum = self._x_hat_sq_sum = self._x_dot_x_hat_sum = 0.0
        self._mean: torch.Tensor | None = None  # per-dimension running mean of x
        self._m2: torch.Tensor | None = None  # per-dimension sum of squared deviations

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, feature_acts: torch.Tensor) -> None:
        """Add tokens: ``x``, ``x_hat`` ``(..., d_in)`` and ``feature_acts`` ``(..., d_sae)``."""
        if x.shape != x_hat.shape:
            raise GatedPluginError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
        if feature_acts.shape[-1] != self.d_sae:
            raise GatedPluginError(
                f"feature_acts has {feature_acts.shape[-1]} latents, expected {self.d_sae}"
            )
        if feature_acts.is_sparse:
            feature_acts = feature_acts.to_dense()
        d_in = x.shape[-1]
        xs = x.detach().reshape(-1, d_in).to(device=self.device, dtype=torch.float64)
        xh = x_hat.detach().reshape(-1, d_in).to(device=self.device, dtype=torch.float64)
        active = feature_acts.detach().reshape(-1, self.d_sae).to(self.device) != 0
        n = xs.shape[0]
        if active.shape[0] != n:
            raise GatedPluginError(f"feature_acts has {active.shape[0]} rows, x has {n}")
        if n == 0:
            return
        self._l0_sum += float(active.sum(dtype=torch.float64))
        self._fired |= active.any(dim=0)
        self._resid_sq_sum += float((xs - xh).pow(2).sum())
        self._x_hat_sq_sum += float(xh.pow(2).sum())
        self._x_dot_x_hat_sum += float((xs * xh).sum())

        batch_mean = xs.mean(dim=0)
        batch_m2 = (xs - batch_mean).pow(2).sum(dim=0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = batch_mean, batch_m2
        else:
            if batch_mean.shape != self._mean.shape:
                raise GatedPluginError(f"d_in changed from {self._mean.shape[0]} to {d_in}")
            total = self.n_tokens + n
            delta = batch_mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + batch_m2 + delta.pow(2) * (self.n_tokens * n / total)
        self.n_tokens += n

    @property
    def l0(self) -> float:
        """Mean number of non-zero latents per token."""
        return self._l0_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def dead_fraction(self) -> float:
        """Fraction of latents that never fired."""
        return 1.0 - self.alive_fraction

    @property
    def alive_fraction(self) -> float:
        """Fraction of latents that fired at least once."""
        return float(self._fired.sum()) / self.d_sae

    @property
    def total_variance(self) -> float:
        """``sum_i ||x_i - mean(x)||^2`` over all tokens seen (the mean taken over all of them)."""
        return float(self._m2.sum()) if self._m2 is not None else math.nan

    @property
    def explained_variance(self) -> float:
        """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens seen."""
        total = self.total_variance
        if self.n_tokens == 0 or total == 0.0:
            return math.nan
        return 1.0 - self._resid_sq_sum / total

    @property
    def mse(self) -> float:
        """Mean over tokens of ``||x - x_hat||^2`` (summed over the input dimensions)."""
        return self._resid_sq_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def relative_reconstruction_bias(self) -> float:
        """``gamma = E||x_hat||^2 / E[x . x_hat]`` over all tokens seen (nan if undefined)."""
        if self.n_tokens == 0 or self._x_dot_x_hat_sum == 0.0:
            return math.nan
        return self._x_hat_sq_sum / self._x_dot_x_hat_sum

    def finalize(self) -> dict[str, Any]:
        """All metrics at once, named as the :class:`EvalReport` fields, and ``n_tokens``."""
        names = (
            "l0", "dead_fraction", "alive_fraction", "explained_variance", "mse",
            "relative_reconstruction_bias", "n_tokens",
        )  # fmt: skip
        return {name: getattr(self, name) for name in names}
