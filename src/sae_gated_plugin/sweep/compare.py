"""``sae-gated compare SWEEP.jsonl``: a sweep's results as Markdown tables (pure Python).

First every point (means over seeds, ± their std); then, per line, L0 at equal loss recovered
(the paper's "half the L0 at equal fidelity") or, for another ``--y``, that metric at equal L0,
each with its ratio to a reference line. Both interpolate linearly in log L0.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sweep.results import compact_float
from sae_gated_plugin.sweep.selection import check_y, default_y, group_lines, read_selected

DEFAULT_LEVELS = (0.90, 0.93, 0.95, 0.97)
"""Loss-recovered levels at which ``compare`` reads each line's L0 by default."""
TRUE_L0_MULTIPLES = (0.5, 1.0, 2.0)
"""Multiples of the true L0 at which ``compare --y METRIC`` reads each line by default."""
LM_COLUMNS = (
    ("L0", "l0", 1),
    ("loss recovered", "loss_recovered", 4),
    ("gamma", "relative_reconstruction_bias", 3),
    ("explained variance", "explained_variance", 3),
    ("dead", "dead_fraction", 1),
)
"""``(header, key, digits)`` of the points table; ``dead_fraction`` is shown in percent."""
SYNTHETIC_COLUMNS = (
    ("L0", "l0", 2),
    *((name, name.lower(), 3) for name in ("MCC", "F1", "precision", "recall", "uniqueness")),
    ("shrinkage", "shrinkage", 3),
    ("explained variance", "explained_variance", 3),
    ("dead", "dead_fraction", 1),
)


def l0_at_loss_recovered(points: Sequence[dict[str, Any]], level: float) -> float | None:
    """The L0 at which a line (sorted by L0) first reaches loss recovered ``level``, or None."""
    for low, high in itertools.pairwise(points):
        y0, y1 = low["loss_recovered"], high["loss_recovered"]
        if not (math.isfinite(y0) and math.isfinite(y1)) or low["l0"] <= 0 or high["l0"] <= 0:
            continue
        if y0 <= level <= y1 and y1 > y0:
            t = (level - y0) / (y1 - y0)
            return math.exp(math.log(low["l0"]) + t * (math.log(high["l0"]) - math.log(low["l0"])))
    return None


def metric_at_l0(points: Sequence[dict[str, Any]], y: str, l0: float) -> float | None:
    """A line's (sorted by L0) ``y`` at L0 ``l0``, or None when no two points bracket it."""
    for low, high in itertools.pairwise(points):
        x0, x1 = low["l0"], high["l0"]
        if x0 <= 0 or not (math.isfinite(low[y]) and math.isfinite(high[y])):
            continue
        if x0 <= l0 <= x1 and x1 > x0:
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return low[y] + t * (high[y] - low[y])
    return None


def _with_std(point: dict[str, Any], key: str, digits: int) -> str:
    percent = key == "dead_fraction"
    scale = 100.0 if percent else 1.0
    value = point[key] * scale
    if not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    if point["n_seeds"] > 1:
        text += f" ± {point[key + '_std'] * scale:.{digits}f}"
    return text + ("%" if percent else "")


def points_table(
    lines: dict[str, list[dict[str, Any]]], columns: Sequence[tuple[str, str, int]]
) -> str:
    """Markdown table of every point of every line, one column per ``(header, key, digits)``."""
    rows = [
        "| line | coefficient | lr | seeds | " + " | ".join(c[0] for c in columns) + " |",
        "|---|---|---|---|" + "---|" * len(columns),
    ]
    for label, points in lines.items():
        for p in points:
            cells = [_with_std(p, key, digits) for _, key, digits in columns]
            rows.append(
                f"| {label} | {compact_float(p['coefficient'])} | {compact_float(p['lr'])} "
                f"| {p['n_seeds']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(rows)


def _ratio_table(
    lines: dict[str, list[dict[str, Any]]],
    reference: str,
    headers: Sequence[str],
    read: Callable[[list[dict[str, Any]], int], float | None],
    digits: int,
) -> str:
    """Markdown table: per line, ``read(points, column)`` and its ratio to ``reference``'s."""
    rows = ["| line | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    refs = [read(lines[reference], column) for column in range(len(headers))]
    for label, points in lines.items():
        cells = []
        for column, ref in enumerate(refs):
            value = read(points, column)
            if value is None:
                cells.append("-")
            elif not ref or label == reference:
                cells.append(f"{value:.{digits}f}")
            else:
                cells.append(f"{value:.{digits}f} ({value / ref:.2f}x)")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def equal_l0_table(
    lines: dict[str, list[dict[str, Any]]], reference: str, levels: Sequence[float], y: str
) -> str:
    """Markdown table: each line's ``y`` at each L0 level and its ratio to ``reference``'s."""
    headers = [f"{y} at L0 {level:.3g} (x {reference})" for level in levels]
    return _ratio_table(lines, reference, headers, lambda p, i: metric_at_l0(p, y, levels[i]), 3)


def equal_fidelity_table(
    lines: dict[str, list[dict[str, Any]]], reference: str, levels: Sequence[float]
) -> str:
    """Markdown table: each line's L0 at each loss-recovered level and its ratio to the ref's."""
    headers = [f"L0 at {level:g} (x {reference})" for level in levels]
    return _ratio_table(
        lines, reference, headers, lambda p, i: l0_at_loss_recovered(p, levels[i]), 1
    )


def compare_sweep(
    results: Path,
    *,
    select: Sequence[str] = (),
    points: Collection[tuple[Any, ...]] | None = None,
    reference: str | None = None,
    envelope: bool = False,
    levels: Sequence[float] | None = None,
    y: str | None = None,
) -> str:
    """Both tables for the selected lines of a results file (arguments as in ``selection``).
    ``reference``: default the first ``standard`` line, else the first; ``levels``: loss recovered
    for ``y`` = loss_recovered, else L0 values (default ``TRUE_L0_MULTIPLES`` of the true L0)."""
    records = read_selected(results, select, points, "compare")
    y = y or default_y(records)
    check_y(records, y)
    levels = _levels(records, y, levels)
    lines = group_lines(records, envelope, y)
    if reference is None:
        standard = [label for label in lines if re.match(r"standard($|,| \()", label)]
        reference = (standard or list(lines))[0]
    if reference not in lines:
        raise GatedPluginError(
            f"--reference {reference!r}: not a line of these results; lines: "
            + ", ".join(repr(label) for label in lines)
        )
    table = points_table(lines, LM_COLUMNS if y == "loss_recovered" else SYNTHETIC_COLUMNS)
    if all(len(line) < 2 for line in lines.values()):
        return table + "\n"  # no line to read a level from
    if y == "loss_recovered":
        return table + "\n\n" + equal_fidelity_table(lines, reference, levels) + "\n"
    return table + "\n\n" + equal_l0_table(lines, reference, levels, y) + "\n"


def _levels(
    records: Sequence[dict[str, Any]], y: str, levels: Sequence[float] | None
) -> list[float]:
    """The checked, sorted levels of the second table."""
    if y == "loss_recovered":
        levels = DEFAULT_LEVELS if levels is None else levels
        bad = [level for level in levels if not 0.0 < level < 1.0]
        if bad:
            raise GatedPluginError(f"--at {bad[0]}: loss-recovered levels must be between 0 and 1")
        return sorted(levels)
    if levels is None:
        true_l0 = [float(r["true_l0"]) for r in records if r.get("true_l0") is not None]
        if not true_l0:
            raise GatedPluginError(
                f"--y {y}: the results carry no true_l0; give L0 levels with --at"
            )
        mean = sum(true_l0) / len(true_l0)
        levels = [mean * multiple for multiple in TRUE_L0_MULTIPLES]
    bad = [level for level in levels if not level > 0]
    if bad:
        raise GatedPluginError(f"--at {bad[0]}: with --y {y} the levels are L0 values above 0")
    return sorted(levels)
