"""``sae-gated compare``: the points table and L0 at equal loss recovered (log-L0 interpolation)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_plot import record, write_results

from sae_gated_plugin.cli import EXIT_INVALID, EXIT_OK, main
from sae_gated_plugin.sweep.compare import compare_sweep, l0_at_loss_recovered


def point(l0: float, loss_recovered: float) -> dict[str, Any]:
    return {"l0": l0, "loss_recovered": loss_recovered}


def test_l0_is_interpolated_in_log_l0_between_the_points_around_the_level() -> None:
    line = [point(10.0, 0.90), point(40.0, 0.96)]
    assert l0_at_loss_recovered(line, 0.90) == pytest.approx(10.0)
    assert l0_at_loss_recovered(line, 0.96) == pytest.approx(40.0)
    # Half way in loss recovered is the geometric mean in L0.
    assert l0_at_loss_recovered(line, 0.93) == pytest.approx(20.0)
    assert l0_at_loss_recovered(line, 0.89) is None  # the line starts above the level
    assert l0_at_loss_recovered(line, 0.97) is None  # never reached


def test_the_first_crossing_from_the_sparse_end_counts() -> None:
    # A non-monotonic line: the level is first reached between 10 and 20.
    line = [point(10.0, 0.90), point(20.0, 0.94), point(40.0, 0.92), point(80.0, 0.95)]
    assert l0_at_loss_recovered(line, 0.92) == pytest.approx(math.sqrt(10.0 * 20.0))
    assert l0_at_loss_recovered([point(5.0, math.nan), point(10.0, 0.9)], 0.9) is None


def _line_of_the_table(table: str, label: str) -> list[str]:
    (row,) = [r for r in table.splitlines() if r.startswith(f"| {label} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_compare_reports_every_point_and_ratios_to_the_reference(tmp_path: Path) -> None:
    # test_plot.record: l0 = 100 / c (+ seed), loss recovered = 1 - 0.05 c (- 0.01 seed).
    records = [record("standard", c) for c in (1, 2, 4)]
    records += [record("gated_paper", c, l0=50.0 / c) for c in (1, 2, 4)]
    records += [record("gated_paper", 2, seed, l0=25.0 + seed) for seed in (1, 2)]
    results = write_results(tmp_path / "sweep.jsonl", records)
    text = compare_sweep(results, levels=[0.85, 0.9])
    points, fidelity = text.split("\n\n")
    assert len(points.splitlines()) == 2 + 6
    seeded = [r for r in points.splitlines() if r.startswith("| gated_paper | 2 |")]
    # Three seeds at coefficient 2: L0 25, 26, 27 -> mean 26 with std 1.
    assert seeded == [
        "| gated_paper | 2 | 1e-3 | 3 | 26.0 ± 1.0 | 0.8900 ± 0.0100 | 1.000 ± 0.000 | - | - |"
    ]
    standard = _line_of_the_table(fidelity, "standard")
    # standard: (25, 0.80), (50, 0.90), (100, 0.95); 0.85 is half way from 25 to 50.
    assert standard[1:] == [f"{math.sqrt(25.0 * 50.0):.1f}", "50.0"]
    gated = _line_of_the_table(fidelity, "gated_paper")
    # gated_paper points: (12.5, 0.80), (26, 0.89 mean of seeds), (50, 0.95).
    expected_09 = math.exp(math.log(26.0) + (0.9 - 0.89) / 0.06 * math.log(50.0 / 26.0))
    assert gated[2] == f"{expected_09:.1f} ({expected_09 / 50.0:.2f}x)"
    assert main(["compare", str(results), "--reference", "gated_paper", "--at", "0.9"]) == EXIT_OK


def test_compare_refuses_what_it_cannot_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = write_results(tmp_path / "sweep.jsonl", [record("standard", c) for c in (1, 2)])
    assert main(["compare", str(results), "--reference", "gated"]) == EXIT_INVALID
    assert "--reference 'gated': not a line" in capsys.readouterr().err
    assert main(["compare", str(results), "--at", "1.5"]) == EXIT_INVALID
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.jsonl")]) == EXIT_INVALID
    assert "no such results file" in capsys.readouterr().err
    assert main(["compare", str(results), "--select", "grids=nothing"]) == EXIT_INVALID
    assert "no result lines" in capsys.readouterr().err


def test_grid_selection_keeps_the_points_of_that_grid_of_the_sweep_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = Path(__file__).resolve().parents[2] / "benchmarks/pareto_sweep.yaml"
    # The committed sweep's lr grid has gated_paper at coefficient 4 only, at every lr.
    records = [record("gated_paper", 4, lr=lr) for lr in (3e-4, 1e-3)]
    records += [record("gated_paper", 2.5), record("gated_paper", 4, lr=5e-4)]
    results = write_results(tmp_path / "sweep.jsonl", records)
    args = ["compare", str(results), "--sweep", str(sweep), "--grid", "lr"]
    assert main(args) == EXIT_OK
    out = capsys.readouterr().out
    assert "L0 at" not in out  # single points: no L0 at equal loss recovered to read
    points = [r for r in out.splitlines() if r.startswith("| gated_paper")]
    assert [r.split("|")[1:3] for r in points[:2]] == [
        [" gated_paper, lr 3e-4 ", " 4 "],
        [" gated_paper, lr 1e-3 ", " 4 "],
    ]
    assert not any("2.5" in r or "5e-4" in r for r in points)
    assert main(["compare", str(results), "--grid", "lr"]) == EXIT_INVALID
    assert "--grid needs --sweep" in capsys.readouterr().err
    assert main(["plot", str(results), "--sweep", str(sweep), "--grid", "nope"]) == EXIT_INVALID
    assert "no such grid" in capsys.readouterr().err
    assert main(["plot", str(results), "--sweep", str(sweep), "--grid", "lr"]) == EXIT_OK
    assert (tmp_path / "sweep.png").is_file()


def test_the_envelope_is_each_architectures_pareto_front_over_its_lrs(tmp_path: Path) -> None:
    def at(lr: float, coefficient: float, l0: float, loss_recovered: float) -> dict[str, Any]:
        return record("standard", coefficient, lr=lr, l0=l0, loss_recovered=loss_recovered)

    records = [at(1e-3, 8, 10.0, 0.80), at(1e-3, 2, 40.0, 0.95)]
    records += [at(3e-3, 8, 10.0, 0.85), at(3e-3, 2, 40.0, 0.93), at(3e-3, 1, 80.0, 0.94)]
    records += [record("gated_paper", 4, lr=3e-3, l0=20.0, loss_recovered=0.9)]
    results = write_results(tmp_path / "sweep.jsonl", records)
    points, fidelity = compare_sweep(results, envelope=True, levels=[0.9]).split("\n\n")
    front = [r.split("|")[2:4] for r in points.splitlines() if r.startswith("| standard |")]
    # (10, 0.80) and (40, 0.93) are dominated; (80, 0.94) has more L0 than (40, 0.95).
    assert front == [[" 8 ", " 3e-3 "], [" 2 ", " 1e-3 "]]
    expected = math.exp(math.log(10.0) + (0.9 - 0.85) / 0.10 * math.log(4.0))
    assert _line_of_the_table(fidelity, "standard")[1] == f"{expected:.1f}"
    # Without --envelope each lr is its own line.
    lines = {r.split("|")[1].strip() for r in compare_sweep(results).splitlines()[2:] if r}
    assert {"standard, lr 1e-3", "standard, lr 3e-3"} <= lines
