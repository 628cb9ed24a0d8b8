"""Per-latent activation statistics gathered in one streaming pass over batches of tokens.

Memory is bounded by the number of kept latents times (top-k + interval samples) times the
context window, plus one histogram per latent; it does not grow with the number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sae_gated_plugin.inspect.data import Context, ContextGroup, GateStatistics


@dataclass
class LatentActivity:
    """The fields of a ``LatentReport`` that come from activations.

    ``LatentReport(**vars(activity), promoted=..., ...)`` completes it.
    """

    index: int
    n_firing: int
    frequency: float
    max_activation: float
    mean_activation: float
    histogram_edges: list[float]
    histogram_counts: list[int]
    groups: list[ContextGroup]
    gate: GateStatistics | None


def _select(group: Tensor, key: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Entries with the ``size`` largest keys of each group: (entry, group, rank in group).

    Ties keep the earlier entry, so the order of entries makes the choice deterministic.
    """
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    rank = torch.arange(len(order), device=key.device)
    rank = rank - torch.searchsorted(sorted_group, sorted_group)
    keep = rank < size
    return order[keep], sorted_group[keep], rank[keep]


class _Slots:
    """Per group, the ``size`` entries with the largest keys, each with its context window."""

    def __init__(self, groups: int, size: int, width: int) -> None:
        self.size = size
        self.key = torch.full((groups, size), -torch.inf, dtype=torch.float64)
        self.val = torch.zeros(groups, size)
        self.seq = torch.full((groups, size), -1, dtype=torch.long)
        self.pos = torch.full((groups, size), -1, dtype=torch.long)
        self.tok = torch.full((groups, size, width), -1, dtype=torch.long)
        self.act = torch.zeros(groups, size, width)

    def tensors(self) -> list[Tensor]:
        return [self.key, self.val, self.seq, self.pos, self.tok, self.act]

    def to(self, device: torch.device) -> None:
        self.key, self.val, self.seq, self.pos, self.tok, self.act = (
            t.to(device) for t in self.tensors()
        )

    def offer(
        self,
        old_group: Tensor,
        group: Tensor,
        key: Tensor,
        val: Tensor,
        seq: Tensor,
        pos: Tensor,
        window: Callable[[Tensor], tuple[Tensor, Tensor]],
    ) -> None:
        """Merge new entries into the kept ones; ``old_group`` maps each kept group to its
        (possibly coarser) group now; ``window(i)`` gives the windows of new entries ``i``."""
        size = self.key.shape[1]
        flat_key = self.key.reshape(-1)
        kept = torch.nonzero(flat_key > -torch.inf).squeeze(1)
        n_kept = len(kept)
        pool_group = torch.cat([old_group.repeat_interleave(size)[kept], group])
        pool_key = torch.cat([flat_key[kept], key])
        entry, dest_group, dest_rank = _select(pool_group, pool_key, size)
        is_old = entry < n_kept
        src_old, src_new = kept[entry[is_old]], entry[~is_old] - n_kept
        tok_new, act_new = window(src_new)
        columns: list[tuple[Tensor, Tensor]] = [
            (self.key, key),
            (self.val, val),
            (self.seq, seq),
            (self.pos, pos),
        ]
        fresh = []
        for old, new in columns:
            out = torch.full_like(old, -torch.inf if old is self.key else -1)
            out[dest_group[is_old], dest_rank[is_old]] = old.reshape(-1)[src_old]
            out[dest_group[~is_old], dest_rank[~is_old]] = new[src_new].to(old.dtype)
            fresh.append(out)
        self.key, self.val, self.seq, self.pos = fresh
        windows = []
        for old, new in ((self.tok, tok_new), (self.act, act_new)):
            out = torch.full_like(old, -1) if old is self.tok else torch.zeros_like(old)
            out[dest_group[is_old], dest_rank[is_old]] = old.reshape(-1, old.shape[-1])[src_old]
            out[dest_group[~is_old], dest_rank[~is_old]] = new
            windows.append(out)
        self.tok, self.act = windows


class LatentStatistics:
    """Streams batches of SAE activations and keeps, per latent, frequency, max and mean,
    an exact histogram, the top-activating contexts, uniform samples of contexts from
    activation intervals and, for gated SAEs, gate statistics.

    The histogram has ``n_bins`` linear bins over ``[0, R)`` where ``R`` is the smallest power
    of two above every activation seen; when a larger value arrives, ``R`` doubles and bins
    merge pairwise, so counts stay exact. The ``n_intervals`` sample intervals are coarse bins
    of the same grid. Activations must be non-negative (ReLU, JumpReLU, TopK, gated SAEs).

    ``weak_openings`` counts the gate openings with zero activation plus the firings in
    histogram bins whose upper edge is at most ``weak_fraction`` times the latent's maximum.
    """

    def __init__(
        self,
        d_sae: int,
        *,
        latents: Tensor | None = None,
        top_k: int = 20,
        n_intervals: int = 5,
        samples_per_interval: int = 5,
        n_bins: int = 60,
        window: tuple[int, int] = (12, 4),
        weak_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        if n_bins % n_intervals:
            raise ValueError(f"n_bins ({n_bins}) must be divisible by n_intervals ({n_intervals})")
        self.latents = torch.arange(d_sae) if latents is None else latents.long().flatten()
        if len(self.latents) and not 0 <= int(self.latents.min()) <= int(self.latents.max()) < d_sae:
            raise ValueError(f"latents must lie in [0, {d_sae})")
        n = len(self.latents)
        self.n_bins, self.n_intervals, self.weak_fraction = n_bins, n_intervals, weak_fraction
        self.before, self.after = window
        width = self.before + 1 + self.after
        self.generator = torch.Generator().manual_seed(seed)
        self.n_sequences = 0
        self.n_tokens = 0
        self.n_firing = torch.zeros(n, dtype=torch.long)
        self.total = torch.zeros(n, dtype=torch.float64)
        self.max = torch.zeros(n)
        self.exponent = torch.zeros(n, dtype=torch.long)
        """``R = 2 ** exponent`` for latents that have fired."""
        self.counts = torch.zeros(n, n_bins, dtype=torch.long)
        self.openings = torch.zeros(n, dtype=torch.long)
        self.zero_openings = torch.zeros(n, dtype=torch.long)
        self.gated = False
        self.top = _Slots(n, top_k, width)
        self.samples = _Slots(n * n_intervals, samples_per_interval, width)

    def state(self) -> list[Tensor]:
        """Every tensor kept between updates."""
        own = [self.latents, self.n_firing, self.total, self.max, self.exponent, self.counts]
        return own + [self.openings, self.zero_openings, *self.top.tensors(), *self.samples.tensors()]

    def _to(self, device: torch.device) -> None:
        for name in ("latents", "n_firing", "total", "max", "exponent", "counts"):
            setattr(self, name, getattr(self, name).to(device))
        self.openings, self.zero_openings = self.openings.to(device), self.zero_openings.to(device)
        self.top.to(device)
        self.samples.to(device)

    def update(
        self, tokens: Tensor, acts: Tensor, spliced: Tensor, gate_open: Tensor | None = None
    ) -> None:
        """Add a batch: ``tokens`` (batch, pos), ``acts`` (batch, pos, d_sae) zero outside
        ``spliced`` (batch, pos), and for gated SAEs ``gate_open`` (batch, pos, d_sae)."""
        if self.n_firing.device != acts.device:
            self._to(acts.device)
        batch, length = tokens.shape
        n = len(self.latents)
        a = acts.index_select(-1, self.latents).float()
        if bool((a < 0).any()):
            raise ValueError("activations must be non-negative")
        flat = a.reshape(batch * length, n)
        self.n_tokens += int(spliced.sum())
        fire = flat != 0
        self.n_firing += fire.sum(0)
        self.total += flat.sum(0, dtype=torch.float64)
        if gate_open is not None:
            self.gated = True
            opened = gate_open.index_select(-1, self.latents).reshape(-1, n)
            opened = opened & spliced.reshape(-1, 1)
            self.openings += opened.sum(0)
            self.zero_openings += (opened & ~fire).sum(0)
        if len(flat):
            self._grow(flat.max(0).values)
        token, latent = torch.nonzero(fire, as_tuple=True)
        value = flat[token, latent]
        scaled = torch.ldexp(value.double(), -self.exponent[latent])
        bins = (scaled * self.n_bins).floor().long()
        self.counts.view(-1).index_add_(0, latent * self.n_bins + bins, torch.ones_like(bins))
        offsets = torch.arange(-self.before, self.after + 1, device=a.device)

        def window(i: Tensor) -> tuple[Tensor, Tensor]:
            row, pos = (token[i] // length)[:, None], token[i] % length
            where = pos[:, None] + offsets
            inside = (where >= 0) & (where < length)
            where = where.clamp(0, length - 1)
            tok = torch.where(inside, tokens[row, where], -1)
            return tok, torch.where(inside, a[row, where, latent[i][:, None]], 0.0)

        seq, pos = token // length + self.n_sequences, token % length
        same = torch.arange(n, device=a.device)
        self.top.offer(same, latent, value.double(), value, seq, pos, window)
        interval = (scaled * self.n_intervals).floor().long()
        key = torch.rand(len(value), generator=self.generator, dtype=torch.float64)
        same = torch.arange(n * self.n_intervals, device=a.device)
        group = latent * self.n_intervals + interval
        self.samples.offer(same, group, key.to(a.device), value, seq, pos, window)
        self.n_sequences += batch

    def _grow(self, batch_max: Tensor) -> None:
        """Raise each latent's range ``R`` above ``batch_max``, merging histogram bins and
        sample intervals."""
        fired = batch_max > 0
        need = torch.frexp(batch_max).exponent.long()
        first = fired & (self.max == 0)
        self.max = torch.maximum(self.max, batch_max)
        self.exponent = torch.where(first, need, self.exponent)
        shift = torch.where(fired & ~first, (need - self.exponent).clamp(min=0), 0)
        if not bool((shift > 0).any()):
            return
        self.exponent += shift
        shift = shift.clamp(max=62)
        coarse = torch.arange(self.n_bins, device=shift.device) >> shift[:, None]
        self.counts = torch.zeros_like(self.counts).scatter_add_(1, coarse, self.counts)
        n, k = len(shift), self.n_intervals
        interval = torch.arange(k, device=shift.device) >> shift[:, None]
        old_group = (torch.arange(n, device=shift.device)[:, None] * k + interval).reshape(-1)
        none = torch.zeros(0, dtype=torch.long, device=shift.device)
        width = self.before + 1 + self.after

        def no_window(i: Tensor) -> tuple[Tensor, Tensor]:
            return i.new_full((0, width), -1), torch.zeros(0, width, device=i.device)

        self.samples.offer(old_group, none, none.double(), none.float(), none, none, no_window)

    def finalize(self, token_strings: Callable[[list[int]], list[str]]) -> list[LatentActivity]:
        """One ``LatentActivity`` per kept latent, in the order of ``latents``; a dead latent
        gets a zero histogram over ``[0, 1)`` and no context groups."""
        cpu = [t.cpu() for t in self.state()]
        latents, n_firing, total, maxima, exponent, counts, openings, zero_openings = cpu[:8]
        top_slots, sample_slots = cpu[8:14], cpu[14:20]
        reports = []
        for j, index in enumerate(latents.tolist()):
            fired = int(n_firing[j])
            peak = float(maxima[j])
            span = 2.0 ** int(exponent[j]) if fired else 1.0
            edges = torch.linspace(0, span, self.n_bins + 1, dtype=torch.float64)
            groups = []
            if fired:
                contexts = self._contexts(top_slots, j, token_strings)
                groups.append(ContextGroup("Top activations", -1.0, peak, -1.0, contexts))
            per = self.n_bins // self.n_intervals
            for i in reversed(range(self.n_intervals)):
                contexts = self._contexts(sample_slots, j * self.n_intervals + i, token_strings)
                if contexts:
                    lo, hi = float(edges[i * per]), float(edges[(i + 1) * per])
                    share = int(counts[j, i * per : (i + 1) * per].sum()) / fired
                    title = f"Interval {lo:.3g} - {hi:.3g}"
                    groups.append(ContextGroup(title, lo, hi, share, contexts))
            gate = None
            if self.gated:
                weak_bins = edges[1:] <= self.weak_fraction * peak
                weak = int(zero_openings[j]) + int(counts[j][weak_bins].sum())
                gate = GateStatistics(int(openings[j]), weak, self.weak_fraction)
            reports.append(
                LatentActivity(
                    index=index,
                    n_firing=fired,
                    frequency=fired / self.n_tokens if self.n_tokens else 0.0,
                    max_activation=peak,
                    mean_activation=float(total[j]) / fired if fired else 0.0,
                    histogram_edges=edges.tolist(),
                    histogram_counts=counts[j].tolist(),
                    groups=groups,
                    gate=gate,
                )
            )
        return reports

    def _contexts(
        self, slots: list[Tensor], group: int, token_strings: Callable[[list[int]], list[str]]
    ) -> list[Context]:
        """The kept contexts of one group, highest activation first."""
        key, val, seq, pos, tok, act = (t[group] for t in slots)
        contexts = []
        for s in torch.argsort(val, descending=True, stable=True).tolist():
            if key[s] == -torch.inf:
                continue
            inside = tok[s] >= 0
            contexts.append(
                Context(
                    tokens=token_strings(tok[s][inside].tolist()),
                    values=act[s][inside].tolist(),
                    qualifying_index=int(inside[: self.before].sum()),
                    sequence=int(seq[s]),
                    position=int(pos[s]),
                )
            )
        return contexts
