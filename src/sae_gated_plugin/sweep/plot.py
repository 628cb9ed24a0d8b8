"""``sae-gated plot SWEEP.jsonl``: L0 (log) against ``--y`` and against gamma (or shrinkage),
one line per ``selection.group_lines`` label with seed std error bars; PNG and SVG (Agg)."""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from sae_gated_plugin.io import atomic_write_bytes, unchanged_or_nothing, write_faults
from sae_gated_plugin.sweep.selection import GAMMA, Y_METRICS, group_lines, read_selected

X_LABEL = "L0 (active latents per token, log scale)"


def build_figure(
    records: list[dict[str, Any]],
    title: str | None = None,
    envelope: bool = False,
    y: str = "loss_recovered",
) -> Figure:
    """The two-panel figure of ``records``, with the true L0 marked where the results know it."""
    synthetic = not any(GAMMA in r for r in records)
    right = ("explained_variance" if y == "shrinkage" else "shrinkage") if synthetic else GAMMA
    right_label = Y_METRICS.get(right, "relative reconstruction bias γ")
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for label, points in group_lines(records, envelope, y).items():
        xs = [p["l0"] for p in points]
        xerr = [p["l0_std"] for p in points] if any(p["n_seeds"] > 1 for p in points) else None
        for ax, key in zip(axes, (y, right), strict=True):
            ys = [p[key] for p in points]
            yerr = [p[key + "_std"] for p in points] if xerr is not None else None
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=label)
    true_l0 = [float(r["true_l0"]) for r in records if r.get("true_l0") is not None]
    for ax, y_label in zip(axes, (Y_METRICS[y], right_label), strict=True):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(y_label)
        ax.grid(True, which="both", alpha=0.3)
        if true_l0:
            ax.axvline(statistics.fmean(true_l0), color="black", linestyle=":", linewidth=1)
    if right in (GAMMA, "shrinkage"):
        axes[1].axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes[0].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_sweep(
    results: Path,
    *,
    output: Path | None = None,
    select: Sequence[str] = (),
    points: Collection[tuple[Any, ...]] | None = None,
    title: str | None = None,
    envelope: bool = False,
    y: str | None = None,
) -> list[Path]:
    """Plot a results file to ``<output>.png`` and ``.svg`` (default: the results path without
    its suffix) and return both paths; the other arguments as in ``selection``."""
    records, y = read_selected(results, select, points, "plot", y)
    prefix = output if output is not None else results.with_suffix("")
    figure = build_figure(records, title, envelope, y)
    paths = [prefix.with_name(prefix.name + suffix) for suffix in (".png", ".svg")]
    for path in paths:  # rendered in memory, then written atomically
        buffer = BytesIO()
        figure.savefig(buffer, format=path.suffix[1:], dpi=150)
        with write_faults(path, unchanged_or_nothing(path)):
            atomic_write_bytes(path, buffer.getvalue())
    return paths
