"""``sae-gated compare SWEEP.jsonl``: a sweep's results as the tables SAEs are compared by.

Two Markdown tables from the same lines as ``sae-gated plot`` (``plot.group_lines``):

- every point: coefficient, lr, seeds, L0, loss recovered, gamma, explained variance and dead
  latents (means over seeds, with their standard deviation where seeds repeat);
- L0 at equal loss recovered (left out when every line is one point): for each level, each
  line's L0 where its frontier first reaches it (linear in log L0 between the two points around
  it; blank where the line does not reach it or starts above it), and its ratio to a reference
  line's L0 at the same level - the paper's headline comparison ("about half the L0 of
  standard at equal fidelity").

Pure Python: no matplotlib, torch or SAELens.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.plot import group_lines, read_selected
from sae_gated_plugin.eval.results import compact_float

DEFAULT_LEVELS = (0.90, 0.93, 0.95, 0.97)
"""Loss-recovered levels at which ``compare`` reads each line's L0 by default."""


def l0_at_loss_recovered(points: Sequence[dict[str, Any]], level: float) -> float | None:
    """The L0 at which a line (points sorted by L0) first reaches loss recovered ``level``,
    interpolated linearly in log L0 between the two points around it; None when no two
    consecutive points bracket it."""
    for low, high in itertools.pairwise(points):
        y0, y1 = low["loss_recovered"], high["loss_recovered"]
        if not (math.isfinite(y0) and math.isfinite(y1)) or low["l0"] <= 0 or high["l0"] <= 0:
            continue
        if y0 <= level <= y1 and y1 > y0:
            t = (level - y0) / (y1 - y0)
            return math.exp(math.log(low["l0"]) + t * (math.log(high["l0"]) - math.log(low["l0"])))
    return None


def _with_std(point: dict[str, Any], key: str, digits: int, percent: bool = False) -> str:
    scale = 100.0 if percent else 1.0
    value = point[key] * scale
    if not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    if point["n_seeds"] > 1:
        text += f" ± {point[key + '_std'] * scale:.{digits}f}"
    return text + ("%" if percent else "")


def points_table(lines: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table of every point of every line."""
    rows = [
        "| line | coefficient | lr | seeds | L0 | loss recovered | gamma | explained variance "
        "| dead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, points in lines.items():
        for p in points:
            rows.append(
                f"| {label} | {compact_float(p['coefficient'])} | {compact_float(p['lr'])} "
                f"| {p['n_seeds']} "
                f"| {_with_std(p, 'l0', 1)} | {_with_std(p, 'loss_recovered', 4)} "
                f"| {_with_std(p, 'relative_reconstruction_bias', 3)} "
                f"| {_with_std(p, 'explained_variance', 3)} "
                f"| {_with_std(p, 'dead_fraction', 1, percent=True)} |"
            )
    return "\n".join(rows)


def equal_fidelity_table(
    lines: dict[str, list[dict[str, Any]]], reference: str, levels: Sequence[float]
) -> str:
    """Markdown table: each line's L0 at each loss-recovered level and its ratio to
    ``reference``'s L0 there."""
    header = "| line | " + " | ".join(f"L0 at {level:g} (x {reference})" for level in levels)
    rows = [header + " |", "|---|" + "---|" * len(levels)]
    reference_l0 = [l0_at_loss_recovered(lines[reference], level) for level in levels]
    for label, points in lines.items():
        cells = []
        for level, ref in zip(levels, reference_l0, strict=True):
            l0 = l0_at_loss_recovered(points, level)
            if l0 is None:
                cells.append("-")
            elif ref is None or label == reference:
                cells.append(f"{l0:.1f}")
            else:
                cells.append(f"{l0:.1f} ({l0 / ref:.2f}x)")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def compare_sweep(
    results: Path,
    *,
    select: Sequence[str] = (),
    points: Collection[tuple[Any, ...]] | None = None,
    reference: str | None = None,
    envelope: bool = False,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> str:
    """Both tables for the (selected) lines of a sweep's results file, as Markdown.
    ``select`` and ``points`` as in ``plot.select_records``, ``envelope`` as in
    ``plot.group_lines``; ``reference`` is a line label (default: the first ``standard`` line,
    else the first line)."""
    bad = [level for level in levels if not 0.0 < level < 1.0]
    if bad:
        raise GatedPluginError(f"--at {bad[0]}: loss-recovered levels must be between 0 and 1")
    records = read_selected(results, select, points, "compare")
    lines = group_lines(records, envelope)
    if reference is None:
        standard = [label for label in lines if re.match(r"standard($|,| \()", label)]
        reference = (standard or list(lines))[0]
    if reference not in lines:
        raise GatedPluginError(
            f"--reference {reference!r}: not a line of these results; lines: "
            + ", ".join(repr(label) for label in lines)
        )
    if all(len(line) < 2 for line in lines.values()):
        return points_table(lines) + "\n"  # no line to read an L0 from: single points only
    return (
        points_table(lines) + "\n\n" + equal_fidelity_table(lines, reference, sorted(levels)) + "\n"
    )
