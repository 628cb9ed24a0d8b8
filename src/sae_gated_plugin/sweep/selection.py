"""Which results of a sweep a plot or comparison shows (``--select``, grid points), and their
lines: one per architecture and variant (and lr or resampling where they differ), seeds averaged."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sweep.results import DEFAULT_VARIANTS, compact_float, line_key, read_results

Y_METRICS = {
    "loss_recovered": "loss recovered",
    "mcc": "MCC (decoder rows vs true features)",
    "f1": "F1 (latents as detectors of true features)",
    "precision": "precision (latents as detectors)",
    "recall": "recall (latents as detectors)",
    "uniqueness": "uniqueness (latents tracking distinct features)",
    "shrinkage": "shrinkage |x̂| / |x| (1 = none)",
    "explained_variance": "explained variance",
}
"""The metrics ``--y`` can plot and compare against L0, with their axis labels."""
GAMMA = "relative_reconstruction_bias"
POINT_METRICS = ("l0", GAMMA, "dead_fraction", "true_l0", *Y_METRICS)
"""The metrics a point of a line averages over its seeds (with their standard deviation)."""


def _equal(item: Any, text: str) -> bool:
    if isinstance(item, bool):
        return str(item).lower() == text.lower()
    if isinstance(item, (int, float)):
        with contextlib.suppress(ValueError):
            return math.isclose(float(item), float(text), rel_tol=1e-9)
        return False
    return str(item) == text


def _matches(record: dict[str, Any], field: str, wanted: list[str]) -> bool:
    value = record.get(field)
    values = value if isinstance(value, list) else [value]
    return any(_equal(item, text) for item in values for text in wanted)


def select_records(
    records: list[dict[str, Any]],
    select: Sequence[str],
    points: Collection[tuple[Any, ...]] | None = None,
) -> list[dict[str, Any]]:
    """The records matching every ``FIELD=V1,V2`` filter (list fields by membership) and, if
    given, whose ``results.line_key`` is among ``points``."""
    if points is not None:
        records = [r for r in records if line_key(r) in points]
    for item in select:
        field, sep, values = item.partition("=")
        if not sep or not field or not values:
            raise GatedPluginError(f"--select expects FIELD=V1,V2, got {item!r}")
        if records and all(field not in r for r in records):
            raise GatedPluginError(f"--select {item!r}: no result line has a field {field!r}")
        records = [r for r in records if _matches(r, field, values.split(","))]
    return records


def read_selected(
    results: Path,
    select: Sequence[str],
    points: Collection[tuple[Any, ...]] | None,
    purpose: str,
    y: str | None,
) -> tuple[list[dict[str, Any]], str]:
    """The ``select_records`` of a results file and the checked ``--y`` (default loss_recovered
    for a language-model sweep, mcc for a synthetic one)."""
    if not results.is_file():
        raise GatedPluginError(f"{results}: no such results file")
    records = select_records(read_results(results), select, points)
    if not records:
        raise GatedPluginError(f"{results}: no result lines to {purpose} (after --select {select})")
    y = y or ("loss_recovered" if any("loss_recovered" in r for r in records) else "mcc")
    if y not in Y_METRICS:
        raise GatedPluginError(f"--y {y!r}: choose one of {', '.join(Y_METRICS)}")
    if not any(r.get(y) is not None for r in records):
        raise GatedPluginError(f"--y {y!r}: no selected result line has it")
    return records, y


def line_label(record: dict[str, Any], show_lr: bool, show_resampling: bool) -> str:
    """The legend entry of the line ``record`` belongs to."""
    label = record["architecture"]
    if record["variant"] not in DEFAULT_VARIANTS:
        label += f" ({record['variant']})"
    if show_lr:
        label += f", lr {compact_float(float(record['lr']))}"
    if show_resampling and record.get("resampling"):
        label += ", resampling"
    return label


def _mean_std(values: list[Any]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, 0.0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def pareto_front(points: list[dict[str, Any]], y: str = "loss_recovered") -> list[dict[str, Any]]:
    """The points no other point dominates (as low an L0 and as high a ``y``), by L0."""
    front: list[dict[str, Any]] = []
    for point in sorted(points, key=lambda p: (p["l0"], -p[y])):
        if not front or point[y] > front[-1][y]:
            front.append(point)
    return front


def group_lines(
    records: list[dict[str, Any]], envelope: bool = False, y: str = "loss_recovered"
) -> dict[str, list[dict[str, Any]]]:
    """Points per line label, one per coefficient and lr (seed means, stds, ``n_seeds``), by L0.
    ``envelope``: lines not split by lr, each the ``pareto_front`` in ``y`` over all its lrs."""
    label_of = _labeller(records, envelope)
    by_line: dict[str, dict[tuple[float, float], list[dict[str, Any]]]] = {}
    for record in records:
        label = label_of(record)
        point_key = (float(record["coefficient"]), float(record["lr"]))
        by_line.setdefault(label, {}).setdefault(point_key, []).append(record)
    lines: dict[str, list[dict[str, Any]]] = {}
    for label, by_point in by_line.items():
        points = []
        for (coefficient, lr), seeds in by_point.items():
            point: dict[str, Any] = {"coefficient": coefficient, "lr": lr, "n_seeds": len(seeds)}
            for key in POINT_METRICS:
                point[key], point[key + "_std"] = _mean_std([r.get(key) for r in seeds])
            points.append(point)
        points.sort(key=lambda p: p["l0"])
        lines[label] = pareto_front(points, y) if envelope else points
    return lines


def _labeller(records: list[dict[str, Any]], envelope: bool) -> Callable[[dict[str, Any]], str]:
    """The ``line_label`` of a record among ``records`` (lr shown where lines split by it)."""
    show_lr = not envelope and len({float(r["lr"]) for r in records}) > 1
    show_resampling = len({bool(r.get("resampling")) for r in records}) > 1
    return lambda record: line_label(record, show_lr, show_resampling)


def on_frontier(records: list[dict[str, Any]], y: str) -> list[dict[str, Any]]:
    """The records (every seed) of the points on their line's Pareto front in ``y``, the lines
    as ``group_lines(records, envelope=True)`` draws them."""
    label_of = _labeller(records, envelope=True)
    front = {
        (label, point["coefficient"], point["lr"])
        for label, points in group_lines(records, envelope=True, y=y).items()
        for point in points
    }
    return [r for r in records if (label_of(r), float(r["coefficient"]), float(r["lr"])) in front]
