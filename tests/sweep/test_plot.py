"""``sae-gated plot``: PNG and SVG, labelled log-L0 axes, one line per architecture/variant,
seed error bars."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sae_gated_plugin.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, main
from sae_gated_plugin.sweep.plot import X_LABEL, build_figure
from sae_gated_plugin.sweep.selection import group_lines


def record(architecture: str, coefficient: float, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A result line whose metrics depend on the coefficient (and a little on the seed)."""
    return {
        "architecture": architecture,
        "variant": "paper" if architecture == "gated_paper" else "default",
        "coefficient": coefficient,
        "lr": 1e-3,
        "seed": seed,
        "resampling": False,
        "grids": ["frontier"],
        "l0": 100.0 / coefficient + seed,
        "loss_recovered": 1 - 0.05 * coefficient - 0.01 * seed,
        "relative_reconstruction_bias": 1.0 if architecture == "gated_paper" else 0.9,
        **extra,
    }


def write_results(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sweep_records() -> list[dict[str, Any]]:
    records = [record(a, c) for a in ("gated_paper", "gated", "standard") for c in (1, 2, 4)]
    records += [record("gated_paper", 2, seed) for seed in (1, 2)]
    records += [
        record("gated_paper", c, variant="trainable_aux", grids=["ablations"]) for c in (1, 4)
    ]
    return records


def test_plot_writes_png_and_svg_with_one_line_per_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = write_results(tmp_path / "sweep.jsonl", sweep_records())
    previous = os.umask(0o022)
    try:
        assert main(["plot", str(results), "--select", "grids=frontier"]) == EXIT_OK
    finally:
        os.umask(previous)
    for suffix in (".png", ".svg"):
        path = tmp_path / f"sweep{suffix}"
        assert path.is_file() and path.stat().st_size > 1000
        assert path.stat().st_mode & 0o777 == 0o644  # the umask's, not mkstemp's 0600
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "sweep.svg").read_text(encoding="utf-8")[:500]
    assert "sweep.png" in capsys.readouterr().out


def test_figure_axes_lines_and_error_bars() -> None:
    records = sweep_records()
    figure = build_figure(records, title="test")
    left, right = figure.axes
    assert [ax.get_xlabel() for ax in (left, right)] == [X_LABEL, X_LABEL]
    assert (left.get_ylabel(), right.get_ylabel()) == (
        "loss recovered",
        "relative reconstruction bias γ",
    )
    assert left.get_xscale() == right.get_xscale() == "log"
    labels = left.get_legend_handles_labels()[1]
    assert sorted(labels) == ["gated", "gated_paper", "gated_paper (trainable_aux)", "standard"]
    assert len(left.containers) == len(right.containers) == 4  # one errorbar line each

    lines = group_lines(records)
    seeded = next(p for p in lines["gated_paper"] if p["coefficient"] == 2)
    assert seeded["n_seeds"] == 3
    assert seeded["l0"] == pytest.approx(51.0) and seeded["l0_std"] == pytest.approx(1.0)
    gated_line = left.containers[labels.index("gated_paper")]
    assert gated_line.has_yerr and gated_line.has_xerr  # seeds repeat on this line
    assert not left.containers[labels.index("standard")].has_yerr
    # Points are joined in order of L0.
    assert [p["l0"] for p in lines["standard"]] == sorted(p["l0"] for p in lines["standard"])


def test_lines_split_by_learning_rate_and_resampling_only_when_they_vary() -> None:
    records = [record("gated_paper", c) for c in (1, 2)]
    records += [record("gated_paper", c, lr=3e-3) for c in (1, 2)]
    records += [record("gated_paper", 1, resampling=True)]
    assert sorted(group_lines(records)) == [
        "gated_paper, lr 1e-3",
        "gated_paper, lr 1e-3, resampling",
        "gated_paper, lr 3e-3",
    ]


def test_plot_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(tmp_path / "sweep.jsonl", sweep_records())
    assert main(["plot", str(tmp_path / "missing.jsonl")]) == EXIT_INVALID
    assert "no such results file" in capsys.readouterr().err
    assert main(["plot", str(results), "--select", "colour=red"]) == EXIT_INVALID
    assert "no result line has a field 'colour'" in capsys.readouterr().err
    assert main(["plot", str(results), "--select", "architecture=topk"]) == EXIT_INVALID
    assert "no result lines to plot" in capsys.readouterr().err


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_plot_onto_a_full_or_read_only_disk_exits_1_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    small_disk: Callable[[int], Path],
    read_only: Callable[[Path], None],
    fault: str,
) -> None:
    results = write_results(tmp_path / "sweep.jsonl", sweep_records())
    disk = small_disk(8)  # a figure is larger than 8 KiB
    if fault == "read-only":
        read_only(disk)
    assert main(["plot", str(results), "--output", str(disk / "plot")]) == EXIT_FAILED
    err = capsys.readouterr().err
    cause = os.strerror(errno.ENOSPC if fault == "full" else errno.EROFS)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(disk / "plot.png") in err and cause in err and "nothing was written" in err
    assert list(disk.iterdir()) == []
