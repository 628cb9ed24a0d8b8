"""The ``synthetic`` sweep stream: SAEs trained on SAELens's synthetic model and scored against
its true features; ``compare``/``plot`` read the ground-truth metrics with ``--y``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from sae_lens import SAE

from sae_gated_plugin.cli import EXIT_INVALID, EXIT_OK, main
from sae_gated_plugin.sweep import synthetic_stream as sweep_synthetic
from sae_gated_plugin.sweep.compare import compare_sweep, metric_at_l0
from sae_gated_plugin.sweep.results import read_results, saved_sae_folder
from sae_gated_plugin.sweep.selection import on_frontier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GROUND_TRUTH_FIELDS = (
    "true_l0",
    "mcc",
    "uniqueness",
    "precision",
    "recall",
    "f1",
    "shrinkage",
    "explained_variance",
    "l0",
    "dead_fraction",
    "samples_trained",
    "eval_samples",
)


def synthetic_sweep(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """2 architectures x 2 coefficients on a 48-feature model in 12 dimensions."""
    config: dict[str, Any] = {
        "output": str(tmp_path / "synthetic.jsonl"),
        "stream": "synthetic",
        "synthetic": {
            "model": {
                "num_features": 48,
                "hidden_dim": 12,
                "firing": {"max_prob": 0.2, "min_prob": 0.01},
                "hierarchy": {"total_root_nodes": 6, "branching_factor": 2},
                "correlation": {"rank": 4},
                "std_firing_magnitude": 0.2,
                "seed": 3,
            },
            "eval_samples": 2048,
        },
        "run": {
            "training_tokens": 16 * 256,
            "train_batch_size_tokens": 256,
            "lr": 3e-3,
            "normalize_activations": "none",
            "sae": {"d_sae": 48},
        },
        "grids": [
            {"name": name, "architectures": [name], "coefficients": {name: [0.5, 4.0]}}
            for name in ("gated_paper", "standard")
        ],
    }
    config.update(changes)
    path = tmp_path / "synthetic.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return config


def test_a_synthetic_sweep_scores_against_the_truth_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic_sweep(tmp_path)
    config = str(tmp_path / "synthetic.yaml")
    assert main(["sweep", config, "--grid", "gated_paper"]) == EXIT_OK
    first = read_results(tmp_path / "synthetic.jsonl")
    assert [r["architecture"] for r in first] == ["gated_paper", "gated_paper"]

    trained: list[str] = []
    original = sweep_synthetic.new_sae

    def counting_new_sae(point: Any, *args: Any) -> Any:
        trained.append(point.architecture)
        return original(point, *args)

    sweep_synthetic.new_sae = counting_new_sae  # type: ignore[assignment]
    try:
        assert main(["sweep", config]) == EXIT_OK
    finally:
        sweep_synthetic.new_sae = original  # type: ignore[assignment]
    assert trained == ["standard", "standard"]  # the finished points were kept
    results = read_results(tmp_path / "synthetic.jsonl")
    assert results[:2] == first
    assert [(r["architecture"], r["coefficient"]) for r in results] == [
        ("gated_paper", 0.5),
        ("gated_paper", 4.0),
        ("standard", 0.5),
        ("standard", 4.0),
    ]
    for record in results:
        assert all(record[key] is not None for key in GROUND_TRUTH_FIELDS), record
        assert record["samples_trained"] == 16 * 256
        assert record["eval_samples"] == 2048
        assert record["stream"] == "synthetic"
        assert 0.0 <= record["mcc"] <= 1.0 and 0.0 <= record["f1"] <= 1.0
    # Every SAE is scored on the same samples: one true L0; a larger coefficient is sparser.
    assert len({r["true_l0"] for r in results}) == 1
    for architecture in ("gated_paper", "standard"):
        dense, sparse = (r for r in results if r["architecture"] == architecture)
        assert sparse["l0"] < dense["l0"]

    # save: frontier (default): the SAEs on each line's MCC frontier load with SAELens.
    front = on_frontier(results, "mcc")
    for record in results:
        folder = saved_sae_folder(tmp_path / "synthetic.jsonl", record)
        if record not in front:
            assert folder is None
            continue
        assert folder is not None and folder.parent == tmp_path / "synthetic-saes"
        sae = SAE.load_from_disk(folder, device="cpu")
        assert (sae.cfg.architecture(), sae.cfg.d_sae) == (record["architecture"], 48)
    assert len(list((tmp_path / "synthetic-saes").iterdir())) == len(front)

    assert main(["compare", str(tmp_path / "synthetic.jsonl")]) == EXIT_OK  # default --y mcc
    assert "| MCC |" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "synthetic.jsonl"), "--y", "f1"]) == EXIT_OK
    assert (tmp_path / "synthetic.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            {"synthetic": {"model": {"num_features": 0, "hidden_dim": 8}}},
            "synthetic.model.num_features",
        ),
        ({"synthetic": {"model": {"num_features": 8}}}, "synthetic.model.hidden_dim"),
        ({"synthetic": {"eval_samples": 10}}, "exactly one of model"),
        (
            {"synthetic": {"path": "x", "model": {"num_features": 8, "hidden_dim": 4}}},
            "exactly one",
        ),
        ({"synthetic": {"model": {"num_features": 8, "hidden_dim": 4, "colour": 1}}}, "colour"),
        (
            {
                "synthetic": {
                    "model": {
                        "num_features": 8,
                        "hidden_dim": 4,
                        "firing": {"min_prob": 0.9, "max_prob": 0.1},
                    }
                }
            },
            "min_prob",
        ),
        ({"stream": "cached"}, "synthetic: section goes with stream 'synthetic'"),
    ],
)
def test_synthetic_config_errors_name_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], fragment: str
) -> None:
    synthetic_sweep(tmp_path, **changes)
    assert main(["sweep", str(tmp_path / "synthetic.yaml")]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "synthetic.jsonl").exists()


def test_a_missing_saved_synthetic_model_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic_sweep(tmp_path, synthetic={"path": str(tmp_path / "nowhere")})
    assert main(["sweep", str(tmp_path / "synthetic.yaml")]) == EXIT_INVALID
    assert "synthetic.path" in capsys.readouterr().err


def truth_record(architecture: str, coefficient: float, l0: float, mcc: float) -> dict[str, Any]:
    return {
        "architecture": architecture,
        "variant": "paper" if architecture == "gated_paper" else "default",
        "coefficient": coefficient,
        "lr": 1e-3,
        "seed": 0,
        "resampling": False,
        "true_l0": 4.0,
        "l0": l0,
        "mcc": mcc,
        "f1": mcc / 2,
        "shrinkage": 0.9,
        "dead_fraction": 0.0,
    }


def test_metric_at_l0_is_interpolated_in_log_l0() -> None:
    line = [{"l0": 2.0, "mcc": 0.6}, {"l0": 8.0, "mcc": 0.9}]
    assert metric_at_l0(line, "mcc", 4.0) == pytest.approx(0.75)  # the geometric middle
    assert metric_at_l0(line, "mcc", 2.0) == pytest.approx(0.6)
    assert metric_at_l0(line, "mcc", 1.0) is None
    assert metric_at_l0(line, "mcc", 16.0) is None
    assert metric_at_l0([{"l0": 2.0, "mcc": math.nan}, line[1]], "mcc", 4.0) is None


def test_compare_y_mcc_reads_each_line_at_the_true_l0(tmp_path: Path) -> None:
    records = [truth_record("standard", c, l0, m) for c, l0, m in ((1, 2.0, 0.5), (2, 8.0, 0.7))]
    records += [
        truth_record("gated_paper", c, l0, m) for c, l0, m in ((1, 1.0, 0.7), (2, 4.0, 0.9))
    ]
    results = tmp_path / "truth.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    table = compare_sweep(results, y="mcc").split("\n\n")[1]
    header, _, *rows = table.splitlines()
    assert "mcc at L0 2 " in header and "mcc at L0 4 " in header and "mcc at L0 8 " in header
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:-1]] for row in rows}
    # standard at 2, 4, 8: 0.5, 0.6 (geometric middle), 0.7; gated_paper at 2: 0.8, 4: 0.9.
    assert cells["standard"] == ["0.500", "0.600", "0.700"]
    assert cells["gated_paper"] == ["0.800 (1.60x)", "0.900 (1.50x)", "-"]
    assert "f1 at L0 3 " in compare_sweep(results, y="f1", levels=[3.0])
    with pytest.raises(Exception, match="L0 values above 0"):
        compare_sweep(results, y="mcc", levels=[0.0])
