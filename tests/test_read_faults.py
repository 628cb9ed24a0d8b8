"""Read faults of every kind, in every file a verb reads: exit 2, one line naming the file.

A table of targets (a verb and one file it reads, built valid) crossed with a table of faults
(the file made not UTF-8, binary, empty, cut in half, a folder, a dangling symlink, a symlink
loop, or a path through a regular file). Each case runs ``cli.main`` in-process and requires
exit status 2, the file's name in a single-line message, and no traceback. Every fault is
found before any model loads. Unreadable-by-permission is not among them: the tests may run as
root, where ``chmod 000`` does not stop a read; the loop and path-through-a-file cases fail in
``open`` the same way for every user.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_bad_inputs import base_config, write_checkpoint, write_sae, write_yaml

EXIT_INVALID = 2


def fault_not_utf8(path: Path, good: bytes) -> None:
    path.write_bytes(b"\xff\xfe\xc3(" + good[:64])


def fault_binary(path: Path, good: bytes) -> None:
    path.write_bytes(b"\x00\x01\x02\x03\x1b\x7f" * 64)


def fault_empty(path: Path, good: bytes) -> None:
    path.write_bytes(b"")


def fault_truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2])


def fault_folder(path: Path, good: bytes) -> None:
    path.mkdir()


def fault_dangling_symlink(path: Path, good: bytes) -> None:
    path.symlink_to(path.parent / "gone-away")


def fault_symlink_loop(path: Path, good: bytes) -> None:
    other = path.with_name(path.name + ".loop")
    path.symlink_to(other)
    other.symlink_to(path)


def fault_through_a_file(path: Path, good: bytes) -> None:
    plain = path.with_name(path.name + ".plain")
    plain.write_text("a regular file")
    path.symlink_to(plain / "inside")  # opening it fails with ENOTDIR


FAULTS: dict[str, Callable[[Path, bytes], None]] = {
    "not-utf8": fault_not_utf8,
    "binary": fault_binary,
    "empty": fault_empty,
    "truncated": fault_truncated,
    "folder": fault_folder,
    "dangling-symlink": fault_dangling_symlink,
    "symlink-loop": fault_symlink_loop,
    "through-a-file": fault_through_a_file,
}
CONTENT_FAULTS = ("not-utf8", "binary", "empty", "truncated")


@dataclass
class Target:
    build: Callable[[Path], tuple[list[str], Path]]
    """Makes valid files under the folder; returns the command line and the file to damage."""
    faults: tuple[str, ...] = tuple(FAULTS)
    """The faults that apply (an optional file that is empty or half-cut can still be valid)."""


def sweep_config(tmp: Path) -> dict[str, Any]:
    return {
        "output": str(tmp / "sweep" / "results.jsonl"),
        "run": last_required(base_config(tmp / "out"), "output_path"),
        "grids": [
            {"name": "g", "architectures": ["gated_paper"], "coefficients": {"gated_paper": [1]}}
        ],
    }


def results_file(tmp: Path) -> Path:
    line = {
        "architecture": "gated_paper",
        "variant": "paper",
        "coefficient": 1.0,
        "lr": 3e-4,
        "seed": 0,
        "resampling": False,
        "l0": 5.0,
        "loss_recovered": 0.9,
    }
    path = tmp / "results.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    return path


def last_required(config: dict[str, Any], field: str) -> dict[str, Any]:
    """``config`` with the required ``field`` last, so that any cut-off prefix is invalid."""
    return {**{k: v for k, v in config.items() if k != field}, field: config[field]}


def config_target(verb: str, suffix: str = ".yaml") -> Target:
    def build(tmp: Path) -> tuple[list[str], Path]:
        config = base_config(tmp / "out")
        if verb == "cache":
            config["saelens"] = {"cached_activations_path": str(tmp / "cache")}
        config = last_required(config, "output_path")
        path = tmp / f"cfg{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(config), encoding="utf-8")
        else:
            write_yaml(path, config)
        return [verb, str(path)], path

    return Target(build)


def sweep_target(tmp: Path) -> tuple[list[str], Path]:
    path = write_yaml(tmp / "sweep.yaml", sweep_config(tmp))
    return ["sweep", str(path)], path


def results_target(verb: str) -> Target:
    return Target(lambda tmp: ([verb, str(p := results_file(tmp))], p))


def grid_sweep_target(tmp: Path) -> tuple[list[str], Path]:
    path = write_yaml(tmp / "sweep.yaml", sweep_config(tmp))
    return ["compare", str(results_file(tmp)), "--sweep", str(path), "--grid", "g"], path


def sae_target(verb: str, filename: str, faults: tuple[str, ...] = tuple(FAULTS)) -> Target:
    def build(tmp: Path) -> tuple[list[str], Path]:
        folder = write_sae(tmp / "sae")
        if filename == "train_config.yaml":
            write_yaml(folder / filename, base_config(tmp / "out"))
        elif filename == "evaluation.json":
            (folder / filename).write_text(json.dumps({"l0": 3.0}), encoding="utf-8")
        argv = {
            "eval": ["eval", str(folder)],
            "inspect": ["inspect", str(folder), "--output", str(tmp / "site")],
            "push": ["push", str(folder), "me/repo", "--sae-id", "layer_2"],
            "convert": ["convert", str(folder), str(tmp / "dst"), "--to", "gated"],
        }[verb]
        return argv, folder / filename

    return Target(build, faults)


def dictionary_learning_target(filename: str) -> Target:
    def build(tmp: Path) -> tuple[list[str], Path]:
        folder = tmp / "dl"
        folder.mkdir()
        d_in, d_sae = 8, 16
        state = {
            "encoder.weight": torch.zeros(d_sae, d_in),
            "decoder.weight": torch.zeros(d_in, d_sae),
            "bias": torch.zeros(d_in),
            "r_mag": torch.zeros(d_sae),
            "gate_bias": torch.zeros(d_sae),
            "mag_bias": torch.zeros(d_sae),
        }
        torch.save(state, folder / "ae.pt")
        trainer = {"dict_class": "GatedAutoEncoder", "activation_dim": d_in, "dict_size": d_sae}
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}), encoding="utf-8")
        argv = ["convert", str(folder), str(tmp / "dst"), "--to", "gated_paper"]
        return [*argv, "--from", "dictionary_learning"], folder / filename

    return Target(build)


def resume_target(filename: str, faults: tuple[str, ...] = tuple(FAULTS)) -> Target:
    def build(tmp: Path) -> tuple[list[str], Path]:
        config = base_config(tmp / "out")
        checkpoint = write_checkpoint(tmp, config)
        path = write_yaml(tmp / "cfg.yaml", config)
        return ["train", str(path), "--resume", str(checkpoint)], checkpoint / filename

    return Target(build, faults)


TARGETS: dict[str, Target] = {
    "train-config-yaml": config_target("train"),
    "train-config-json": config_target("train", ".json"),
    "cache-config": config_target("cache"),
    "sweep-config": Target(sweep_target),
    "plot-results": results_target("plot"),
    "compare-results": results_target("compare"),
    "compare-grid-sweep-config": Target(grid_sweep_target),
    "eval-cfg": sae_target("eval", "cfg.json"),
    "eval-weights": sae_target("eval", "sae_weights.safetensors"),
    "inspect-cfg": sae_target("inspect", "cfg.json"),
    "inspect-weights": sae_target("inspect", "sae_weights.safetensors"),
    "push-cfg": sae_target("push", "cfg.json"),
    "push-weights": sae_target("push", "sae_weights.safetensors"),
    "push-evaluation": sae_target("push", "evaluation.json"),
    # An empty or half-cut YAML file can still be valid YAML: only the other faults apply.
    "push-train-config": sae_target(
        "push", "train_config.yaml", ("not-utf8", "binary", *tuple(FAULTS)[4:])
    ),
    "convert-cfg": sae_target("convert", "cfg.json"),
    "convert-weights": sae_target("convert", "sae_weights.safetensors"),
    "convert-dl-config": dictionary_learning_target("config.json"),
    "convert-dl-state": dictionary_learning_target("ae.pt"),
    "resume-cfg": resume_target("cfg.json"),
    "resume-weights": resume_target("sae_weights.safetensors"),
    "resume-store-state": resume_target("activations_store_state.safetensors"),
    "resume-trainer-state": resume_target("trainer_state.pt"),
    # The run config falls back to the output folder's copy when the checkpoint's is absent.
    "resume-train-config": resume_target("train_config.yaml", ("not-utf8", "binary", "empty")),
}
MODEL_LOADERS = (
    "sae_gated_plugin.run.saelens_bridge",
    "sae_gated_plugin.run.cache",
    "sae_gated_plugin.sweep.driver",
    "sae_gated_plugin.eval.saved",
    "sae_gated_plugin.inspect.api",
)
"""The modules that load a language model, each through its own ``load_language_model``."""


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model loader replaced by one that fails the test: a fault must be found first."""

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a read fault went unnoticed: the verb went on to load a model")

    for module in MODEL_LOADERS:
        monkeypatch.setattr(f"{module}.load_language_model", reached)


CASES = [(t, f) for t, target in TARGETS.items() for f in target.faults]


def test_the_table_covers_every_reading_verb() -> None:
    verbs = {name.split("-")[0] for name in TARGETS}
    assert verbs >= {
        "train",
        "cache",
        "sweep",
        "plot",
        "compare",
        "eval",
        "inspect",
        "push",
        "convert",
    }
    assert len(CASES) >= 150


@pytest.mark.parametrize(("target_name", "fault_name"), CASES)
@pytest.mark.usefixtures("no_model_loads")
def test_a_read_fault_exits_2_with_one_line_naming_the_file(
    target_name: str,
    fault_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sae_gated_plugin.cli import main

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a push must never get this far
    monkeypatch.chdir(tmp_path)
    argv, path = TARGETS[target_name].build(tmp_path)
    good = path.read_bytes()
    path.unlink()
    FAULTS[fault_name](path, good)
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    assert status == EXIT_INVALID, captured.err
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("sae-gated: error:")]
    assert len(errors) == 1, captured.err
    message = captured.err[captured.err.index("sae-gated: error:") :].strip()
    assert "\n" not in message, message
    assert path.name in message, message


def test_yaml_config_that_is_not_utf8_is_refused_for_sweep_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sae_gated_plugin.cli import main

    path = tmp_path / "sweep.yaml"
    path.write_bytes(yaml.safe_dump(sweep_config(tmp_path)).encode("utf-16"))
    assert main(["sweep", str(path)]) == EXIT_INVALID
    assert "not UTF-8 text" in capsys.readouterr().err
