"""A sweep's saved SAEs: folder names, ``sae_path`` resolution, and what ``frontier`` prunes
(fabricated result lines; the trained folders are checked in test_sweep and the synthetic test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sae_gated_plugin.sweep.config import GridPoint, parse_sweep_config
from sae_gated_plugin.sweep.points import Finished
from sae_gated_plugin.sweep.results import saes_folder, saved_sae_folder
from sae_gated_plugin.sweep.saved import SweepSaves, point_folder_name


def config(tmp_path: Path, save: str = "frontier") -> Any:
    """A synthetic sweep config (no language model) writing ``tmp_path/run.jsonl``."""
    return parse_sweep_config({
        "output": str(tmp_path / "run.jsonl"),
        "stream": "synthetic",
        "save": save,
        "synthetic": {"model": {"num_features": 8, "hidden_dim": 4}},
        "run": {"training_tokens": 256, "train_batch_size_tokens": 64},
        "grids": [{"name": "g", "architectures": ["standard"], "coefficients": {"standard": [1]}}],
    })  # fmt: skip


def line(coefficient: float, l0: float, mcc: float, folder: str | None = None) -> dict[str, Any]:
    """A synthetic results line of ``standard`` at ``coefficient``, saved in ``folder``."""
    record: dict[str, Any] = {
        "architecture": "standard",
        "variant": "default",
        "coefficient": coefficient,
        "lr": 1e-3,
        "seed": 0,
        "resampling": False,
        "l0": l0,
        "mcc": mcc,
    }
    if folder is not None:
        record["sae_path"] = folder
    return record


def make_folder(results: Path, relative: str) -> Path:
    """A stand-in SAE folder (a cfg.json) at ``relative`` to the results file's folder."""
    folder = results.parent / relative
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text("{}", encoding="utf-8")
    return folder


def test_folder_names_are_readable_and_exact() -> None:
    point = GridPoint("gated_paper", "no aux/loss", 2.0, 3e-4, 1, True)
    assert point_folder_name(point) == "gated_paper_no-aux-loss_l1-2_lr-3e-4_seed-1_resampling"
    assert point_folder_name(GridPoint("topk", "default", 32, 1e-3, 0, False)) == (
        "topk_k-32_lr-1e-3_seed-0"
    )
    close = GridPoint("standard", "default", 1.00000001, 1e-3, 0, False)
    assert point_folder_name(close) == "standard_l1-1.00000001_lr-1e-3_seed-0"


def test_saved_sae_folder_resolves_against_the_results_folder(tmp_path: Path) -> None:
    results = tmp_path / "out" / "run.jsonl"
    assert saes_folder(results) == tmp_path / "out" / "run-saes"
    folder = make_folder(results, "run-saes/a")
    assert saved_sae_folder(results, line(1, 1, 1, "run-saes/a")) == folder
    assert saved_sae_folder(results, line(1, 1, 1)) is None
    assert saved_sae_folder(results, line(1, 1, 1, "run-saes/gone")) is None


def test_frontier_prunes_only_dominated_folders_this_sweep_wrote(tmp_path: Path) -> None:
    saves = SweepSaves(tmp_path / "run.jsonl", config(tmp_path))
    results = saves.results_path
    front = make_folder(results, "run-saes/front")
    dominated = make_folder(results, "run-saes/dominated")
    elsewhere = make_folder(results, "other/dominated")
    foreign = make_folder(results, "run-saes/not-a-line")
    records = [
        line(1, l0=10, mcc=0.9, folder="run-saes/front"),
        line(2, l0=12, mcc=0.5, folder="run-saes/dominated"),  # more L0, less MCC
        line(3, l0=20, mcc=0.4, folder="other/dominated"),
    ]
    saves.prune(records)
    assert front.exists() and foreign.exists() and elsewhere.exists()
    assert not dominated.exists()
    # all and none remove nothing
    for mode in ("all", "none"):
        kept = make_folder(results, f"run-saes/{mode}")
        SweepSaves(results, config(tmp_path, mode)).prune([line(4, 30, 0.1, f"run-saes/{mode}")])
        assert kept.exists()


@pytest.mark.parametrize("mode", ["frontier", "none"])
def test_a_point_that_is_not_kept_gets_no_folder(tmp_path: Path, mode: str) -> None:
    saves = SweepSaves(tmp_path / "run.jsonl", config(tmp_path, mode))
    point = GridPoint("standard", "default", 2.0, 1e-3, 0, False)
    finished = Finished(point, line(2, l0=12, mcc=0.5), "", trainer=None)  # type: ignore[arg-type]
    record = saves.save(finished, [line(1, l0=10, mcc=0.9)])
    assert "sae_path" not in record
    assert not saes_folder(saves.results_path).exists()


def test_leftover_staging_folders_are_cleaned(tmp_path: Path) -> None:
    saves = SweepSaves(tmp_path / "run.jsonl", config(tmp_path))
    staged = saes_folder(saves.results_path) / ".standard_l1-1_lr-1e-3_seed-0.partial"
    staged.mkdir(parents=True)
    finished = make_folder(saves.results_path, "run-saes/standard_l1-2_lr-1e-3_seed-0")
    saves.clean_staging()
    assert not staged.exists() and finished.exists()
