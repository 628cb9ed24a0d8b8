"""A small hand-built :class:`InspectReport` shared by the site and export tests."""

from __future__ import annotations

import pytest

from sae_gated_plugin.inspect.data import (
    Context,
    ContextGroup,
    GateStatistics,
    InspectReport,
    LatentReport,
)

TRICKY_TOKEN = "<b>&\"x'</b>"


def context(tokens: list[str], values: list[float], sequence: int = 0) -> Context:
    """A context whose qualifying token is where ``values`` peaks."""
    return Context(
        tokens=tokens,
        values=values,
        qualifying_index=values.index(max(values)),
        sequence=sequence,
        position=3 + values.index(max(values)),
    )


def live_latent(index: int, scale: float, nearest: list[tuple[int, float]]) -> LatentReport:
    top = ContextGroup(
        title="Top activations",
        bin_min=-1.0,
        bin_max=2.0 * scale,
        bin_contains=-1.0,
        contexts=[
            context([" The", " cat", TRICKY_TOKEN, "\n"], [0.0, 2.0 * scale, 0.5 * scale, 0.0]),
            context(["Once", " upon", " a"], [0.1 * scale, 0.0, 1.5 * scale], sequence=4),
        ],
    )
    interval = ContextGroup(
        title=f"Interval {0.5 * scale:.2f} - {1.0 * scale:.2f}",
        bin_min=0.5 * scale,
        bin_max=1.0 * scale,
        bin_contains=0.25,
        contexts=[context([" dog", "\t", " sat"], [0.0, 0.0, 0.8 * scale], sequence=7)],
    )
    return LatentReport(
        index=index,
        n_firing=40 * index + 10,
        frequency=(40 * index + 10) / 1000,
        max_activation=2.0 * scale,
        mean_activation=0.9 * scale,
        histogram_edges=[0.0, 0.5 * scale, 1.0 * scale, 1.5 * scale, 2.0 * scale],
        histogram_counts=[20, 10, 5, 2],
        groups=[top, interval],
        gate=None,
        promoted=[(" cat", 1.25), (TRICKY_TOKEN, 0.5), (" dog", 0.25)],
        suppressed=[("\n", -1.5), (" the", -0.75)],
        logit_histogram_edges=[-2.0, -1.0, 0.0, 1.0, 2.0],
        logit_histogram_counts=[3, 40, 50, 7],
        nearest=nearest,
    )


def build_report() -> InspectReport:
    """Three live latents (one with gate statistics) and a dead one, of a ``d_sae`` of 16."""
    latents = [
        live_latent(0, 1.0, [(3, 0.5), (9, 0.25)]),
        live_latent(3, 2.0, [(0, 0.5)]),
        live_latent(5, 0.5, [(0, 0.125)]),
        LatentReport(
            index=7,
            n_firing=0,
            frequency=0.0,
            max_activation=0.0,
            mean_activation=0.0,
            histogram_edges=[],
            histogram_counts=[],
            groups=[],
            gate=None,
            promoted=[(" a", 0.1)],
            suppressed=[(" b", -0.1)],
            logit_histogram_edges=[-1.0, 0.0, 1.0],
            logit_histogram_counts=[4, 6],
            nearest=[(0, 0.1)],
        ),
    ]
    latents[1].gate = GateStatistics(openings=130, weak_openings=12, weak_fraction=0.1)
    return InspectReport(
        sae="tests/gated-sae",
        architecture="gated_paper",
        model_name="SmolLM2-135M",
        hook_name="blocks.4.hook_resid_post",
        d_in=8,
        d_sae=16,
        dataset="wiki",
        split="test",
        n_sequences=10,
        context_size=100,
        n_tokens=1000,
        positions="all but the first",
        latents=latents,
    )


@pytest.fixture
def report() -> InspectReport:
    """A fresh small report (tests may modify it)."""
    return build_report()
