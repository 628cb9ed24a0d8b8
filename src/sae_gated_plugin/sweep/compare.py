"""``sae-gated compare SWEEP.jsonl``: a sweep's results as Markdown tables (pure Python).

First every point (means over seeds, ± their std); then, per line, L0 at equal loss recovered
(the paper's "half the L0 at equal fidelity") or, for another ``--y``, that metric at equal L0,
each with its ratio to a reference line. Both interpolate linearly in log L0.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sweep.results import compact_float
from sae_gated_plugin.sweep.selection import group_lines, read_selected

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
        bad = not (math.isfinite(y0) and math.isfinite(y1)) or low["l0"] <= 0 or high["l0"] <= 0
        if not bad and y0 <= level <= y1 and y1 > y0:
            t = (level - y0) / (y1 - y0)
            return math.exp(math.log(low["l0"]) + t * (math.log(high["l0"]) - math.log(low["l0"])))
    return None


def metric_at_l0(points: Sequence[dict[str, Any]], y: str, l0: float) -> float | None:
    """A line's (sorted by L0) ``y`` at L0 ``l0``, or None when no two points bracket it."""
    for low, high in itertools.pairwise(points):
        x0, x1 = low["l0"], high["l0"]
        bad = x0 <= 0 or not (math.isfinite(low[y]) and math.isfinite(high[y]))
        if not bad and x0 <= l0 <= x1 and x1 > x0:
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return low[y] + t * (high[y] - low[y])
    return None


def _with_std(point: dict[str, Any], key: str, digits: int) -> str:
    scale = 100.0 if key == "dead_fraction" else 1.0  # a percentage
    value = point[key] * scale
    if not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    if point["n_seeds"] > 1:
        text += f" ± {point[key + '_std'] * scale:.{digits}f}"
    return text + ("%" if scale == 100.0 else "")


def _markdown(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    table = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(table + ["| " + " | ".join(row) + " |" for row in rows])


def points_table(
    lines: dict[str, list[dict[str, Any]]], columns: Sequence[tuple[str, str, int]]
) -> str:
    """Markdown table of every point of every line, one column per ``(header, key, digits)``."""
    rows = (
        [label, compact_float(p["coefficient"]), compact_float(p["lr"]), str(p["n_seeds"])]
        + [_with_std(p, key, digits) for _, key, digits in columns]
        for label, points in lines.items()
        for p in points
    )
    return _markdown(["line", "coefficient", "lr", "seeds", *(c[0] for c in columns)], rows)


def _ratio_table(
    values: dict[str, list[float | None]], reference: str, headers: Sequence[str], digits: int
) -> str:
    """Markdown table: per line, its values and their ratios to ``reference``'s."""

    def cell(value: float | None, ref: float | None, label: str) -> str:
        if value is None:
            return "-"
        if not ref or label == reference:
            return f"{value:.{digits}f}"
        return f"{value:.{digits}f} ({value / ref:.2f}x)"

    refs = values[reference]
    rows = ([k, *map(cell, row, refs, [k] * len(row))] for k, row in values.items())
    return _markdown(["line", *headers], rows)


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
    records, y = read_selected(results, select, points, "compare", y)
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
    if y == "loss_recovered":  # each line's L0 at equal loss recovered
        headers = [f"L0 at {level:g} (x {reference})" for level in levels]
        values = {k: [l0_at_loss_recovered(p, lv) for lv in levels] for k, p in lines.items()}
    else:  # each line's y at equal L0
        headers = [f"{y} at L0 {level:.3g} (x {reference})" for level in levels]
        values = {k: [metric_at_l0(p, y, lv) for lv in levels] for k, p in lines.items()}
    digits = 1 if y == "loss_recovered" else 3
    return table + "\n\n" + _ratio_table(values, reference, headers, digits) + "\n"


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
