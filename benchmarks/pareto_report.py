"""The tables of docs/results.md, computed from a sweep's results file.

    python benchmarks/pareto_report.py benchmarks/results/pareto_smollm2.jsonl

Prints markdown: every run; L0 at equal loss recovered between architectures (each frontier's
log L0 interpolated linearly in loss recovered, on its Pareto-optimal points, only inside both
frontiers' range); gamma and dead latents per architecture; seed spread; the learning-rate
sweep; the ablations; resampling.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sae_gated_plugin.sweep.results import read_results

ARCHITECTURES = ("gated_paper", "gated", "standard")
LEVELS = (0.90, 0.93, 0.95, 0.97, 0.98, 0.99)


def frontier(points: Iterable[dict[str, Any]]) -> list[tuple[float, float]]:
    """(loss recovered, L0) of the Pareto-optimal points: no other point has both a lower L0
    and a higher loss recovered. Sorted by L0."""
    kept: list[tuple[float, float]] = []
    best = -math.inf
    for l0, recovered in sorted((p["l0"], p["loss_recovered"]) for p in points):
        if recovered > best:
            kept.append((recovered, l0))
            best = recovered
    return kept


def l0_at(points: list[dict[str, Any]], recovered: float) -> float | None:
    """The frontier's L0 at a loss recovered (log-linear interpolation; None outside it)."""
    front = frontier(points)
    for (r_low, l0_low), (r_high, l0_high) in itertools.pairwise(front):
        if r_low <= recovered <= r_high and r_high > r_low:
            weight = (recovered - r_low) / (r_high - r_low)
            return math.exp(math.log(l0_low) + weight * (math.log(l0_high) - math.log(l0_low)))
    return None


def runs(records: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    """The records matching ``where`` (``grid`` matches membership in ``grids``)."""
    grid = where.pop("grid", None)
    return [
        r
        for r in records
        if all(r.get(k) == v for k, v in where.items()) and (grid is None or grid in r["grids"])
    ]


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell, '-' for missing."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """One table row per run."""
    return [
        [
            r["architecture"],
            r["variant"],
            f"{r['coefficient']:g}",
            f"{r['lr']:g}",
            str(r["seed"]),
            "yes" if r["resampling"] else "no",
            fmt(r["l0"], 1),
            fmt(r["loss_recovered"]),
            fmt(r["explained_variance"]),
            fmt(r["relative_reconstruction_bias"]),
            f"{100 * r['dead_fraction']:.1f}%",
            fmt(r["delta_ce_loss"]),
        ]
        for r in records
    ]


def equal_loss_rows(by_arch: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """L0 of each architecture at shared loss-recovered levels, and gated_paper's ratios."""
    rows = []
    for level in LEVELS:
        l0 = {arch: l0_at(points, level) for arch, points in by_arch.items()}
        paper = l0.get("gated_paper")
        ratios = [
            fmt(paper / l0[a], 2) if paper and l0.get(a) else "-" for a in ("standard", "gated")
        ]
        rows.append([f"{level:.2f}", *(fmt(l0.get(a), 1) for a in ARCHITECTURES), *ratios])
    return rows


def spread_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Mean and standard deviation over the seeds of the seed grid."""
    rows = []
    for arch in ARCHITECTURES:
        seeded = runs(records, architecture=arch, grid="seeds")
        if len(seeded) < 2:
            continue
        cells = [arch, f"{seeded[0]['coefficient']:g}", str(len(seeded))]
        for key in ("l0", "loss_recovered", "relative_reconstruction_bias", "dead_fraction"):
            values = [r[key] for r in seeded]
            cells.append(f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}")
        rows.append(cells)
    return rows


def main() -> None:
    """Print every table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    records = read_results(parser.parse_args().results)
    header = ["arch", "variant", "coef.", "lr", "seed", "resampling", "L0", "loss rec.",
              "expl. var.", "gamma", "dead", "delta CE"]  # fmt: skip
    for grid in ("frontier", "best-lr", "lr", "seeds", "ablations", "resampling"):
        selected = runs(records, grid=grid)
        if selected:
            print(f"\n### Runs of grid `{grid}`\n\n{table(header, run_rows(selected))}")
    for grid in ("frontier", "best-lr"):
        by_arch = {
            a: [r for r in runs(records, architecture=a, grid=grid) if r["variant"] in
                ("paper", "default") and not r["resampling"]]
            for a in ARCHITECTURES
        }  # fmt: skip
        if any(by_arch.values()):
            print(f"\n### L0 at equal loss recovered, grid `{grid}`\n")
            print(table(["loss recovered", *ARCHITECTURES, "gated_paper / standard",
                         "gated_paper / gated"], equal_loss_rows(by_arch)))  # fmt: skip
    rows = spread_rows(records)
    if rows:
        print("\n### Seed spread (mean ± std)\n")
        print(table(["arch", "coef.", "seeds", "L0", "loss rec.", "gamma", "dead"], rows))


if __name__ == "__main__":
    main()
