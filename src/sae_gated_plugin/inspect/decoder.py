"""What a latent's decoder row does, independent of any text: the output tokens it promotes and
suppresses through the unembedding (``W_dec W_U``, as SAEDashboard's logit tables) and the
latents whose decoder rows point the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CHUNK = 256  # latents per product: a chunk x vocabulary block stays small in memory


@dataclass
class LogitEffects:
    """Per inspected latent: the top and bottom logit effects and their histogram."""

    top_ids: torch.Tensor  # (n_latents, k) token ids, largest effect first
    top_values: torch.Tensor
    bottom_ids: torch.Tensor  # (n_latents, k) token ids, most negative first
    bottom_values: torch.Tensor
    histogram_edges: torch.Tensor  # (n_latents, n_bins + 1)
    histogram_counts: torch.Tensor  # (n_latents, n_bins)


def logit_effects(
    w_dec: torch.Tensor, w_u: torch.Tensor, latents: torch.Tensor, *, k: int = 10, n_bins: int = 40
) -> LogitEffects:
    """The logit effect ``W_dec[latent] @ W_U`` of each latent in ``latents``: its ``k`` largest
    and smallest entries and a histogram over the vocabulary (bins from its min to its max)."""
    k = min(k, w_u.shape[1])
    parts: list[tuple[torch.Tensor, ...]] = []
    for chunk in latents.split(_CHUNK):
        effects = w_dec[chunk].float() @ w_u.float()
        top = effects.topk(k, dim=1)
        bottom = effects.topk(k, dim=1, largest=False)
        low, high = effects.min(dim=1).values, effects.max(dim=1).values
        high = torch.where(high > low, high, low + 1e-6)  # a constant row still gets one bin
        steps = torch.linspace(0, 1, n_bins + 1, device=effects.device)
        edges = low[:, None] + (high - low)[:, None] * steps
        edges[:, -1] = high
        # bins closed on the left, the last one on both sides (as torch.histogram)
        bins = (torch.searchsorted(edges, effects, right=True) - 1).clamp_(0, n_bins - 1)
        counts = torch.zeros(len(chunk), n_bins, dtype=torch.long, device=effects.device)
        counts.scatter_add_(1, bins, torch.ones_like(bins))
        parts.append((top.indices, top.values, bottom.indices, bottom.values, edges, counts))
    joined = [torch.cat(column).cpu() for column in zip(*parts, strict=True)]
    return LogitEffects(*joined)


def nearest_latents(
    w_dec: torch.Tensor, latents: torch.Tensor, *, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each latent in ``latents``, the ``k`` other latents (of all ``d_sae``) with the highest
    cosine similarity of decoder rows: ``(indices, cosines)``, each ``(n_latents, k)``."""
    directions = torch.nn.functional.normalize(w_dec.float(), dim=1)
    k = min(k, directions.shape[0] - 1)
    indices, cosines = [], []
    for chunk in latents.split(_CHUNK):
        similarity = directions[chunk] @ directions.T
        similarity[torch.arange(len(chunk)), chunk] = -torch.inf  # not itself
        best = similarity.topk(k, dim=1)
        indices.append(best.indices)
        cosines.append(best.values)
    return torch.cat(indices).cpu(), torch.cat(cosines).cpu()
