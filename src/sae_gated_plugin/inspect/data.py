"""What `sae-gated inspect` learns about each latent: plain data, no torch, shared by the
collector (which fills it), the site and the Neuronpedia export (which read it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Context:
    """A window of tokens around one token where a latent fired."""

    tokens: list[str]
    """The window's tokens as strings."""
    values: list[float]
    """The latent's activation at each token of the window (0 where it did not fire or the
    SAE is not applied, such as an attention-sink position)."""
    qualifying_index: int
    """The index in ``tokens`` of the token this window was chosen for."""
    sequence: int
    """Which held-out window (row of the token tensor) the context comes from."""
    position: int
    """The position of the qualifying token in that window."""

    @property
    def value(self) -> float:
        """The activation at the qualifying token."""
        return self.values[self.qualifying_index]


@dataclass
class ContextGroup:
    """Contexts shown together: the top activations, or samples from one activation interval."""

    title: str
    """Human-readable heading, e.g. ``"Top activations"`` or ``"Interval 1.20 - 2.40"``."""
    bin_min: float
    """Lower bound of the interval (Neuronpedia's ``binMin``; -1 for the top group)."""
    bin_max: float
    """Upper bound of the interval (``binMax``; the maximum activation for the top group)."""
    bin_contains: float
    """Fraction of the latent's firings inside the interval (``binContains``; -1 for top)."""
    contexts: list[Context] = field(default_factory=list)


@dataclass
class GateStatistics:
    """For gated SAEs: how the gate and the magnitude path agree on this latent."""

    openings: int
    """Spliced tokens where the gate opened (gate pre-activation > 0)."""
    weak_openings: int
    """Openings whose activation is below ``weak_fraction`` of the latent's maximum, counted at
    histogram-bin granularity: openings with zero activation plus the firings in histogram
    bins whose upper edge is at most ``weak_fraction`` times the maximum."""
    weak_fraction: float
    """The threshold of ``weak_openings`` as a fraction of the maximum activation."""


@dataclass
class LatentActivity:
    """What one latent does on the inspected tokens (``collect.LatentStatistics`` makes it)."""

    index: int
    n_firing: int
    """Spliced tokens where the latent's activation is non-zero."""
    frequency: float
    """``n_firing`` over the spliced tokens seen."""
    max_activation: float
    mean_activation: float
    """Mean activation over the tokens where it fired (0 for a dead latent)."""
    histogram_edges: list[float]
    """``len(histogram_counts) + 1`` bin edges of the histogram of non-zero activations."""
    histogram_counts: list[int]
    groups: list[ContextGroup]
    """Top activations first, then interval samples from the highest interval down."""
    gate: GateStatistics | None
    """For gated SAEs; None otherwise."""

    @property
    def dead(self) -> bool:
        """Whether the latent never fired on the inspected tokens."""
        return self.n_firing == 0


@dataclass
class LatentReport(LatentActivity):
    """Everything the browser and the export show about one latent: its activity and what its
    decoder row does."""

    promoted: list[tuple[str, float]]
    """Output tokens the decoder row raises most through the unembedding (token, logit)."""
    suppressed: list[tuple[str, float]]
    """Output tokens it lowers most (most negative first)."""
    logit_histogram_edges: list[float]
    logit_histogram_counts: list[int]
    """Histogram of the decoder row's logit effect over the whole vocabulary."""
    nearest: list[tuple[int, float]]
    """Latents with the most similar decoder rows: (index, cosine similarity)."""


@dataclass
class InspectReport:
    """An inspected SAE: where its data came from and one report per inspected latent."""

    sae: str
    """The SAE folder or Hub id as given."""
    architecture: str
    model_name: str
    hook_name: str
    d_in: int
    d_sae: int
    dataset: str
    split: str
    n_sequences: int
    context_size: int
    n_tokens: int
    """Spliced tokens seen (the denominator of every frequency)."""
    positions: str
    """Which positions of each window the SAE reads, in words."""
    latents: list[LatentReport]
