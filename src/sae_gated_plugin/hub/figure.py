"""The release's Pareto figure (L0 against loss recovered of its SAEs), drawn by the sweep's
plot code from one pseudo results line per SAE."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from sae_gated_plugin.hub.card import SAEEntry, sorted_entries


def _record(index: int, entry: SAEEntry) -> dict[str, Any]:
    """A results line for ``selection.group_lines``: one plotted line per hook and width."""
    label = f"{entry.hook_name or entry.sae_id}, width {entry.d_sae}"
    return {
        "architecture": label,
        "variant": "default",
        "coefficient": float(index),  # distinct: every SAE is its own point
        "lr": 0.0,
        "l0": entry.l0,
        "loss_recovered": entry.loss_recovered,
        "relative_reconstruction_bias": entry.relative_reconstruction_bias,
    }


def release_figure(entries: dict[str, SAEEntry]) -> bytes | None:
    """PNG bytes of the figure, or None when no SAE has both L0 (> 0) and loss recovered."""
    records = [
        _record(i, e)
        for i, e in enumerate(sorted_entries(entries))
        if e.l0 is not None and e.l0 > 0 and e.loss_recovered is not None
    ]
    if not records:
        return None
    from sae_gated_plugin.sweep.plot import build_figure  # matplotlib: only when drawing

    figure = build_figure(records, title="SAEs in this release")
    buffer = BytesIO()
    # No Software/date metadata: the same SAEs give the same bytes (no spurious commit).
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
