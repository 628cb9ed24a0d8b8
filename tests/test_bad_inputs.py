"""Bad input of every kind: exit 2, a message naming the problem, no traceback, nothing touched.

One table of scenarios across train, resume, cache, eval, push, demo, schema and the command
line itself. Each scenario builds its files under a fresh folder, the command runs in-process
(``cli.main``), and the test requires exit status 2, every expected fragment in the message, no
"Traceback", and every file that existed before byte-identical afterwards, with nothing added.
None of them loads a language model: each is refused before that.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperTrainingSAE
from sae_gated_plugin.cli import main
from sae_gated_plugin.run.config import parse_config

EXIT_INVALID = 2


def base_config(output: Path) -> dict[str, Any]:
    return {
        "output_path": str(output),
        "hook_name": "blocks.2.hook_resid_post",
        "training_tokens": 8192,
        "train_batch_size_tokens": 256,
        "sae": {"d_sae": 64, "l1_coefficient": 5.0},
        "eval": {"n_sequences": 2},
    }


def write_yaml(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def write_sae(folder: Path, architecture: str = "gated_paper") -> Path:
    """A small valid gated_paper SAE folder (cfg.json + weights)."""
    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(d_in=16, d_sae=32))
    sae.save_inference_model(folder)
    if architecture != "gated_paper":
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg["architecture"] = architecture
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_checkpoint(tmp: Path, config: dict[str, Any], tokens: int = 1024) -> Path:
    """A run's output folder with one checkpoint, as ``sae-gated train`` leaves it."""
    output = Path(config["output_path"])
    checkpoint = output / "checkpoints" / str(tokens)
    checkpoint.mkdir(parents=True)
    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(d_in=576, d_sae=64))
    sae.save_model(checkpoint)
    optimizer = torch.optim.Adam(sae.parameters())
    torch.save({"optimizer": optimizer.state_dict()}, checkpoint / "trainer_state.pt")
    save_file(
        {"n_dataset_processed": torch.tensor(3)}, checkpoint / "activations_store_state.safetensors"
    )
    saved = parse_config(config).model_dump(mode="json")
    write_yaml(output / "train_config.yaml", saved)
    write_yaml(checkpoint / "train_config.yaml", saved)
    return checkpoint


@dataclass
class Case:
    build: Callable[[Path], list[str]]
    """Makes the scenario's files under the folder; returns the command line."""
    expected: tuple[str, ...]
    """Fragments the error message must contain."""


def train_with(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return ["train", str(write_yaml(tmp / "cfg.yaml", edit(base_config(tmp / "out"))))]

    return build


def train_with_set(*overrides: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        config = write_yaml(tmp / "cfg.yaml", base_config(tmp / "out"))
        return ["train", str(config), *[a for o in overrides for a in ("--set", o)]]

    return build


def resume_with(
    edit: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: c,
    damage: Callable[[Path], None] = lambda p: None,
) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        config = base_config(tmp / "out")
        checkpoint = write_checkpoint(tmp, config)
        damage(checkpoint)
        cfg_path = write_yaml(tmp / "cfg.yaml", edit(config))
        return ["train", str(cfg_path), "--resume", str(checkpoint)]

    return build


def truncate(name: str, keep: int = 40) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        data = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(data[:keep])

    return damage


def garbage(name: str) -> Callable[[Path], None]:
    return lambda checkpoint: (checkpoint / name).write_bytes(b"\x80\x04garbage" * 10)


def finished_sae_in_output(checkpoint: Path) -> None:
    write_sae(checkpoint.parent.parent)


def eval_of(setup: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["eval", str(setup(tmp)), *extra]


def output_is(kind: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        target = tmp / "out"
        if kind == "file":
            target.write_text("a file the user owns")
        config = write_yaml(tmp / "cfg.yaml", base_config(target))
        return ["train", str(config)]

    return build


CASES: dict[str, Case] = {
    # --- config contents
    "unknown-field": Case(train_with(lambda c: {**c, "bogus": 1}), ("bogus", "Extra inputs")),
    "unknown-sae-field": Case(
        train_with(lambda c: {**c, "sae": {**c["sae"], "bogus": 1}}), ("sae.bogus",)
    ),
    "wrong-type": Case(
        train_with(lambda c: {**c, "training_tokens": "lots"}), ("training_tokens", "integer")
    ),
    "negative-l1": Case(
        train_with(lambda c: {**c, "sae": {**c["sae"], "l1_coefficient": -1}}),
        ("sae.l1_coefficient",),
    ),
    "zero-d-sae": Case(
        train_with(lambda c: {**c, "sae": {**c["sae"], "d_sae": 0}}), ("sae.d_sae",)
    ),
    "bad-aux-decoder": Case(
        train_with(lambda c: {**c, "sae": {**c["sae"], "aux_decoder": "melted"}}),
        ("sae.aux_decoder", "frozen"),
    ),
    "unit-rows-with-init-norm": Case(
        train_with(lambda c: {**c, "sae": {**c["sae"], "decoder_init_norm": 0.1}}),
        ("decoder_init_norm", "decoder_norm"),
    ),
    "missing-output-path": Case(
        train_with(lambda c: {k: v for k, v in c.items() if k != "output_path"}),
        ("output_path", "Field required"),
    ),
    "unknown-passthrough": Case(
        train_with(lambda c: {**c, "saelens": {"not_a_field": 1}}), ("saelens", "not_a_field")
    ),
    "passthrough-redirects-output": Case(
        train_with(lambda c: {**c, "saelens": {"output_path": "elsewhere"}}),
        ("saelens", "output_path", "set them there"),
    ),
    "passthrough-redirects-checkpoints": Case(
        train_with(lambda c: {**c, "saelens": {"checkpoint_path": "elsewhere"}}),
        ("checkpoint_path",),
    ),
    "buffer-smaller-than-batch": Case(
        train_with(lambda c: {**c, "n_batches_in_buffer": 8, "context_size": 32}),
        ("n_batches_in_buffer", "training positions per window", "train_batch_size_tokens"),
    ),
    "seqpos-slice-too-long": Case(
        train_with(lambda c: {**c, "seqpos_slice": [1, 2, 3, 4]}), ("seqpos_slice", "1 to 3")
    ),
    "seqpos-slice-zero-step": Case(
        train_with(lambda c: {**c, "seqpos_slice": [1, None, 0]}), ("seqpos_slice", "step")
    ),
    "context-size-one": Case(train_with(lambda c: {**c, "context_size": 1}), ("context_size",)),
    "beta1-one": Case(train_with(lambda c: {**c, "adam_beta1": 1.0}), ("adam_beta1",)),
    # --- config files
    "yaml-syntax": Case(train_with(lambda c: "output_path: [unclosed\n"), ("not valid YAML",)),
    "yaml-list": Case(train_with(lambda c: "- a\n- b\n"), ("must be a mapping",)),
    "json-syntax": Case(
        lambda tmp: ["train", str(write_yaml(tmp / "cfg.json", '{"output_path": "x",'))],
        ("not valid json",),
    ),
    "config-missing": Case(
        lambda tmp: ["train", str(tmp / "nope.yaml")], ("nope.yaml", "not found")
    ),
    "config-is-a-folder": Case(
        lambda tmp: ["train", str((tmp / "folder.yaml").mkdir() or tmp / "folder.yaml")],
        ("folder.yaml",),
    ),
    # --- --set
    "set-without-equals": Case(train_with_set("sae.l1_coefficient"), ("--set expects key=value",)),
    "set-without-key": Case(train_with_set("=5"), ("--set expects key=value",)),
    "set-into-a-value": Case(train_with_set("output_path.x=1"), ("is not a section",)),
    "set-invalid-value": Case(train_with_set("sae.l1_coefficient=-3"), ("sae.l1_coefficient",)),
    "set-unparsable-yaml": Case(train_with_set("lr=[1"), ("--set lr=[1", "not valid YAML")),
    "set-unknown-field": Case(train_with_set("sae.bogus=1"), ("sae.bogus",)),
    # --- the output folder
    "output-is-a-file": Case(output_is("file"), ("is a file",)),
    "output-holds-finished-sae": Case(
        lambda tmp: [
            "train",
            str(write_yaml(tmp / "cfg.yaml", base_config(write_sae(tmp / "out")))),
        ],
        ("already holds a trained SAE",),
    ),
    # --- resume
    "resume-missing": Case(
        lambda tmp: [
            "train",
            str(write_yaml(tmp / "cfg.yaml", base_config(tmp / "out"))),
            "--resume",
            str(tmp / "out" / "checkpoints" / "1024"),
        ],
        ("--resume", "no such checkpoint"),
    ),
    "resume-incomplete": Case(
        resume_with(damage=lambda ckpt: (ckpt / "trainer_state.pt").unlink()),
        ("not a complete SAELens checkpoint", "trainer_state.pt"),
    ),
    "resume-truncated-weights": Case(
        resume_with(damage=truncate("sae_weights.safetensors")),
        ("sae_weights.safetensors", "not a readable safetensors file"),
    ),
    "resume-garbage-trainer-state": Case(
        resume_with(damage=garbage("trainer_state.pt")),
        ("trainer_state.pt", "not a readable trainer state"),
    ),
    "resume-truncated-trainer-state": Case(
        resume_with(damage=truncate("trainer_state.pt", 100)),
        ("trainer_state.pt", "not a readable trainer state"),
    ),
    "resume-garbage-store-state": Case(
        resume_with(damage=garbage("activations_store_state.safetensors")),
        ("activations_store_state.safetensors",),
    ),
    "resume-changed-lr": Case(
        resume_with(edit=lambda c: {**c, "lr": 1e-3}), ("--resume", "lr", "0.0003 -> 0.001")
    ),
    "resume-changed-warm-up": Case(
        resume_with(edit=lambda c: {**c, "lr_warm_up_steps": 7}), ("lr_warm_up_steps",)
    ),
    "resume-changed-dictionary": Case(
        resume_with(edit=lambda c: {**c, "sae": {**c["sae"], "d_sae": 128}}), ("sae",)
    ),
    "resume-longer-run-changes-schedule": Case(
        resume_with(edit=lambda c: {**c, "training_tokens": 16384}),
        ("training_tokens", "schedules", "lr_warm_up_steps"),
    ),
    "resume-nothing-left": Case(
        resume_with(edit=lambda c: {**c, "training_tokens": 1024, "lr_warm_up_steps": 1}),
        ("config differs",),
    ),
    "resume-over-finished-sae": Case(
        resume_with(damage=finished_sae_in_output), ("already holds a trained SAE",)
    ),
    "resume-without-run-config": Case(
        resume_with(
            damage=lambda ckpt: [
                (ckpt / "train_config.yaml").unlink(),
                (ckpt.parent.parent / "train_config.yaml").unlink(),
            ]
        ),
        ("train_config.yaml", "cannot be checked"),
    ),
    # --- eval
    "eval-missing-folder": Case(lambda tmp: ["eval", str(tmp / "nope")], ("no such SAE folder",)),
    "eval-folder-without-cfg": Case(
        lambda tmp: ["eval", str((tmp / "empty").mkdir() or tmp / "empty")], ("cfg.json",)
    ),
    "eval-unknown-architecture": Case(
        eval_of(lambda tmp: write_sae(tmp / "sae", architecture="martian")),
        ("martian", "not known to SAELens"),
    ),
    "eval-output-is-a-folder": Case(
        lambda tmp: [
            "eval",
            str(write_sae(tmp / "sae")),
            "--output",
            str((tmp / "reports").mkdir() or tmp / "reports"),
        ],
        ("is a folder",),
    ),
    "eval-keeps-earlier-report": Case(
        lambda tmp: [
            "eval",
            str(write_sae(tmp / "sae")),
            "--output",
            str(write_yaml(tmp / "sae" / "evaluation.json", '{"l0": 3}')),
        ],
        ("already exists", "--overwrite"),
    ),
    "eval-zero-sequences": Case(
        eval_of(lambda tmp: write_sae(tmp / "sae"), "--n-sequences", "0"), ("positive",)
    ),
    "eval-corrupted-weights": Case(
        eval_of(
            lambda tmp: (
                write_sae(tmp / "sae"),
                (tmp / "sae" / "sae_weights.safetensors").write_bytes(b"junk"),
            )[0]
        ),
        ("sae_weights.safetensors",),
    ),
    # --- push
    "push-invalid-repo-id": Case(
        lambda tmp: ["push", str(write_sae(tmp / "sae")), "not a/valid/repo id"],
        ("not a valid Hub repo id",),
    ),
    "push-not-an-sae": Case(
        lambda tmp: ["push", str((tmp / "empty").mkdir() or tmp / "empty"), "me/repo"],
        ("cfg.json",),
    ),
    # --- cache
    "cache-without-path": Case(
        lambda tmp: ["cache", str(write_yaml(tmp / "cfg.yaml", base_config(tmp / "out")))],
        ("cached_activations_path",),
    ),
    # --- demo
    "demo-output-is-a-file": Case(
        lambda tmp: ["demo", "--output", str(write_yaml(tmp / "notes.txt", "mine"))],
        ("is a file",),
    ),
    "demo-output-holds-foreign-sae": Case(
        lambda tmp: ["demo", "--output", str(write_sae(tmp / "work" / "sae").parent)],
        ("did not write",),
    ),
    # --- the command line
    "unknown-verb": Case(lambda tmp: ["frobnicate"], ("invalid choice",)),
    "no-verb": Case(lambda tmp: [], ("verb",)),
    "unknown-option": Case(lambda tmp: ["train", "cfg.yaml", "--bogus"], ("--bogus",)),
    "bad-int-option": Case(lambda tmp: ["eval", "x", "--n-sequences", "many"], ("--n-sequences",)),
}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (content) and folder (None) under ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_names_it_and_touches_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = case.build(work)
    before = snapshot(work)
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    assert status == EXIT_INVALID, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "sae-gated: error: " in captured.err or "usage: sae-gated" in captured.err
    for fragment in case.expected:
        assert fragment.lower() in captured.err.lower(), (fragment, captured.err)
    assert snapshot(work) == before


def test_a_second_run_into_a_locked_output_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one run holds the output folder, another is refused naming folder and holder."""
    output = tmp_path / "out"
    output.mkdir()
    config = write_yaml(tmp_path / "cfg.yaml", base_config(output))
    lock_path = output / ".sae-gated.lock"
    with open(lock_path, "a+", encoding="utf-8") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        holder.write(f"{os.getpid()}\n")
        holder.flush()
        before = snapshot(tmp_path)
        assert main(["train", str(config)]) == EXIT_INVALID
        err = capsys.readouterr().err
        assert str(output) in err and "in use by another sae-gated run" in err
        assert f"process {os.getpid()}" in err
        assert snapshot(tmp_path) == before
