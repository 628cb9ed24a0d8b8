"""Per-latent activation statistics gathered in one streaming pass over batches of tokens.

Memory is bounded by the number of kept latents times (top-k + interval samples) times the
context window, plus one histogram per latent; it does not grow with the number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sae_gated_plugin.inspect.data import Context, ContextGroup, GateStatistics, LatentActivity
from sae_gated_plugin.inspect.slots import Slots

_STATE = ("latents", "n_firing", "total", "max", "exponent", "counts", "openings", "zero_openings")


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
        if len(self.latents) and not 0 <= self.latents.min() <= self.latents.max() < d_sae:
            raise ValueError(f"latents must lie in [0, {d_sae})")
        n = len(self.latents)
        self.every = latents is None
        self.n_bins, self.n_intervals, self.weak_fraction = n_bins, n_intervals, weak_fraction
        self.before, self.after = window
        width = self.before + 1 + self.after
        self.generator = torch.Generator().manual_seed(seed)
        self.n_sequences = self.n_tokens = 0
        self.total = torch.zeros(n, dtype=torch.float64)
        self.max = torch.zeros(n)
        self.exponent = torch.zeros(n, dtype=torch.long)
        """``R = 2 ** exponent`` for latents that have fired."""
        self.counts = torch.zeros(n, n_bins, dtype=torch.long)
        counters = (torch.zeros(n, dtype=torch.long) for _ in range(3))
        self.n_firing, self.openings, self.zero_openings = counters
        self.gated = False
        self.top = Slots(n, top_k, width)
        self.samples = Slots(n * n_intervals, samples_per_interval, width)

    def state(self) -> list[Tensor]:
        """Every tensor kept between updates."""
        own = [getattr(self, name) for name in _STATE]
        return [*own, *self.top.data, *self.samples.data]

    def _to(self, device: torch.device) -> None:
        for name in _STATE:
            setattr(self, name, getattr(self, name).to(device))
        for slots in (self.top, self.samples):
            slots.data = [t.to(device) for t in slots.data]

    def update(
        self, tokens: Tensor, acts: Tensor, spliced: Tensor, gate_open: Tensor | None = None
    ) -> None:
        """Add a batch: ``tokens`` (batch, pos), ``acts`` (batch, pos, d_sae) zero outside
        ``spliced`` (batch, pos), and for gated SAEs ``gate_open`` (batch, pos, d_sae)."""
        if self.n_firing.device != acts.device:
            self._to(acts.device)
        batch, length = tokens.shape
        n = len(self.latents)
        a = (acts if self.every else acts.index_select(-1, self.latents)).float()
        if bool((a < 0).any()):
            raise ValueError("activations must be non-negative")
        flat = a.reshape(batch * length, n)
        self.n_tokens += int(spliced.sum())
        fire = flat != 0
        self.n_firing += fire.sum(0)
        self.total += flat.sum(0, dtype=torch.float64)
        if gate_open is not None:
            self.gated = True
            opened = gate_open if self.every else gate_open.index_select(-1, self.latents)
            opened = opened.reshape(-1, n) & spliced.reshape(-1, 1)
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
            act = torch.where(inside, a[row, where, latent[i][:, None]], 0.0)
            return torch.where(inside, tokens[row, where], -1), act

        seq, pos = token // length + self.n_sequences, token % length
        ids = torch.arange(n * self.n_intervals, device=a.device)
        self.top.offer(ids[:n], latent, [value.double(), value, seq, pos], window)
        group = latent * self.n_intervals + (scaled * self.n_intervals).floor().long()
        key = torch.rand(len(value), generator=self.generator, dtype=torch.float64).to(a.device)
        self.samples.offer(ids, group, [key, value, seq, pos], window)
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
        self.samples.offer(old_group, none, [none] * 4, lambda i: (i[:, None], i[:, None]))

    def finalize(self, token_strings: Callable[[list[int]], list[str]]) -> list[LatentActivity]:
        """One ``LatentActivity`` per kept latent, in the order of ``latents``; a dead latent
        gets a zero histogram over ``[0, 1)`` and no context groups."""
        cpu = [t.cpu() for t in self.state()]
        for tok in (cpu[12], cpu[18]):  # where each window starts and stops inside its sequence
            cpu.append((tok[..., : self.before] < 0).sum(-1))
            cpu.append(tok.shape[-1] - (tok[..., self.before + 1 :] < 0).sum(-1))
        latents, n_firing, total, maxima, exponent, counts, openings, zero_openings, *slots = (
            t.tolist() for t in cpu
        )
        top_slots, sample_slots = slots[:6] + slots[12:14], slots[6:12] + slots[14:]
        reports = []
        for j, index in enumerate(latents):
            fired, peak = n_firing[j], maxima[j]
            span = 2.0 ** exponent[j] if fired else 1.0
            edges = [span * i / self.n_bins for i in range(self.n_bins + 1)]
            groups = []
            if fired:
                contexts = self._contexts(top_slots, j, token_strings)
                groups.append(ContextGroup("Top activations", -1.0, peak, -1.0, contexts))
            per = self.n_bins // self.n_intervals
            for i in reversed(range(self.n_intervals)):
                contexts = self._contexts(sample_slots, j * self.n_intervals + i, token_strings)
                if contexts:
                    lo, hi = edges[i * per], edges[(i + 1) * per]
                    share = sum(counts[j][i * per : (i + 1) * per]) / fired
                    title = f"Interval {lo:.3g} - {hi:.3g}"
                    groups.append(ContextGroup(title, lo, hi, share, contexts))
            gate = None
            if self.gated:
                weak_edge = self.weak_fraction * peak
                weak_bins = zip(counts[j], edges[1:], strict=True)
                weak = zero_openings[j] + sum(c for c, e in weak_bins if e <= weak_edge)
                gate = GateStatistics(openings[j], weak, self.weak_fraction)
            frequency = fired / self.n_tokens if self.n_tokens else 0.0
            mean = total[j] / fired if fired else 0.0
            reports.append(
                LatentActivity(index, fired, frequency, peak, mean, edges, counts[j], groups, gate)
            )
        return reports

    def _contexts(
        self, slots: list[list[Any]], group: int, token_strings: Callable[[list[int]], list[str]]
    ) -> list[Context]:
        """The kept contexts of one group, highest activation first."""
        key, val, seq, pos, tok, act, start, stop = (t[group] for t in slots)
        contexts = []
        for s in sorted((s for s in range(len(key)) if key[s] > -torch.inf), key=lambda s: -val[s]):
            window = slice(start[s], stop[s])
            tokens, values = token_strings(tok[s][window]), act[s][window]
            contexts.append(Context(tokens, values, self.before - start[s], seq[s], pos[s]))
        return contexts
