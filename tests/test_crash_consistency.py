"""Crash consistency: ``train``, ``sweep``, ``convert`` and ``push`` killed with SIGKILL anywhere.

Each verb runs once uninterrupted (the reference), then once per kill point, killed at an event
of its own progress (``crash_harness``). After each kill: no visible file is torn, no folder that
looks finished is not, and the recovery the docs give (``train --resume`` from the newest
checkpoint, or a rerun) finishes with the reference's result. CI runs a few points per verb;
``SAE_GATED_CRASH_POINTS=20 python -m pytest tests/test_crash_consistency.py -s`` runs the full
set and prints each point.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from crash_harness import Watch, check_untorn, crash_points, run_child, schedule, visible
from safetensors.torch import load_file

from sae_gated_plugin.arch.artifacts import validate_sae_folder
from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperTrainingSAE
from sae_gated_plugin.hub.publish import push_sae
from sae_gated_plugin.sweep.results import read_results, saved_sae_folder
from sae_gated_plugin.testing import LocalHub

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CI_POINTS = {"train": 3, "sweep": 3, "convert": 3, "push": 3}
TOKEN = "hf_crash_test_token"
HOOK = "blocks.0.hook_resid_post"


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment for a child: one thread, no Hub settings of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAE_GATED"))}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra})
    return env


def report(verb: str, stages: list[str]) -> None:
    """Print the points tried and the stage each kill landed in."""
    counts = collections.Counter(stages)
    print(f"\n{verb}: {len(stages)} points: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))


def relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest relative difference between two state dicts' tensors."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


def resumed_ratio(
    got: dict[str, torch.Tensor], start: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> float:
    """How far a resumed run ends from the reference (W_enc, W_dec), over how far the reference
    moved after the checkpoint the resume started from."""
    return max(
        relative_gap({k: got[k]}, {k: expected[k]}) / relative_gap({k: start[k]}, {k: expected[k]})
        for k in ("W_enc", "W_dec")
    )


# --------------------------------------------------------------------------- train

TRAIN: dict[str, Any] = {
    "hook_name": "blocks.2.hook_resid_post",
    "training_tokens": 8 * 512,
    "train_batch_size_tokens": 512,
    "store_batch_size_prompts": 4,
    "n_batches_for_norm_estimate": 2,
    "n_checkpoints": 3,
    "sae": {"d_sae": 256, "l1_coefficient": 5.0},
    "eval": {"enabled": False},
}
# A resumed run refills SAELens's shuffle buffer (docs/training.md, "Close, not equal"): its
# W_enc and W_dec end nearer the reference's than the checkpoint it resumed from was (the gap
# over the reference's own movement since that checkpoint).
RESUMED_RATIO = 1.0


def train_stage(out: Path) -> str:
    """Where a killed run stopped: before any checkpoint, after checkpoint N, or finished (its
    ``cfg.json`` is moved in last)."""
    if (out / "cfg.json").exists():
        return "after the final SAE"
    done = newest_checkpoint(out)
    return f"after checkpoint {done.name}" if done else "before any checkpoint"


def newest_checkpoint(out: Path) -> Path | None:
    """The newest complete-looking checkpoint folder (staging folders start with '.')."""
    root = out / "checkpoints"
    names = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(names, key=lambda p: int(p.name), default=None)


@pytest.mark.integration
@pytest.mark.embedded
def test_train_killed_anywhere_resumes_to_the_reference_sae(tmp_path: Path) -> None:
    def setup(name: str) -> tuple[Path, Path, Path]:
        work, side = tmp_path / name / "work", tmp_path / name / "side"
        work.mkdir(parents=True), side.mkdir()
        cfg = side / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({**TRAIN, "output_path": str(work / "out")}), "utf-8")
        return work, side, cfg

    work, side, cfg = setup("reference")
    reference = run_child(["train", str(cfg)], Watch([work]), side / "err", env=child_env())
    assert reference.returncode == 0, reference.stderr
    reference_out = work / "out"
    expected = load_file(reference_out / "sae_weights.safetensors")
    stages = []
    points = schedule(crash_points(CI_POINTS["train"]), reference, seed=1)
    for i, (event, delay) in enumerate(points):
        work, side, cfg = setup(f"point-{i}")
        out = work / "out"
        killed = run_child(
            ["train", str(cfg)], Watch([work]), side / "err", child_env(), event, delay
        )
        check_untorn(work)
        stage = train_stage(out) if killed.killed else "finished before the kill"
        stages.append(stage)
        checkpoint = newest_checkpoint(out)
        if not (out / "cfg.json").exists():
            args = ["train", str(cfg)] + (["--resume", str(checkpoint)] if checkpoint else [])
            rerun = run_child(args, Watch([]), side / "err2", child_env())
            assert rerun.returncode == 0, f"point {i} ({stage}): {rerun.stderr}"
        validate_sae_folder(out)
        got = load_file(out / "sae_weights.safetensors")
        if checkpoint is None or stage == "after the final SAE":
            assert relative_gap(got, expected) == 0.0, f"point {i} ({stage}): not bit-identical"
            print(f"train point {i}: event {event}+{delay:.2f}s, {stage}, bit-identical")
            continue
        # The killed run's checkpoint is the reference's, bit for bit: only the resume differs.
        kept = reference_out / "checkpoints" / checkpoint.name / "sae_weights.safetensors"
        assert (checkpoint / "sae_weights.safetensors").read_bytes() == kept.read_bytes()
        ratio = resumed_ratio(got, load_file(kept), expected)
        print(f"train point {i}: event {event}+{delay:.2f}s, {stage}, gap/move {ratio:.3f}")
        assert ratio < RESUMED_RATIO, f"point {i} ({stage}): resumed run off by {ratio:.3f}"
    report("train", stages)


# --------------------------------------------------------------------------- sweep

SWEEP: dict[str, Any] = {
    "stream": "synthetic",
    "save": "all",
    "synthetic": {
        "model": {"num_features": 48, "hidden_dim": 12, "seed": 3},
        "eval_samples": 1024,
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


def sweep_state(results: Path) -> dict[str, Any]:
    """Each result line (without timings) with the bytes of its saved SAE's weights."""
    state = {}
    for line in read_results(results):
        folder = saved_sae_folder(results, line)
        assert folder is not None, f"{results}: a line without its saved SAE"
        validate_sae_folder(folder)
        kept = {k: v for k, v in line.items() if "second" not in k and "time" not in k}
        weights = (folder / "sae_weights.safetensors").read_bytes()
        state[json.dumps(kept, sort_keys=True)] = weights
    return state


def test_sweep_killed_anywhere_reruns_to_the_reference_results(tmp_path: Path) -> None:
    def setup(name: str) -> tuple[Path, Path, Path]:
        work, side = tmp_path / name / "work", tmp_path / name / "side"
        work.mkdir(parents=True), side.mkdir()
        cfg = side / "sweep.yaml"
        cfg.write_text(yaml.safe_dump({**SWEEP, "output": str(work / "sweep.jsonl")}), "utf-8")
        return work, side, cfg

    work, side, cfg = setup("reference")
    reference = run_child(["sweep", str(cfg)], Watch([work]), side / "err", env=child_env())
    assert reference.returncode == 0, reference.stderr
    expected = sweep_state(work / "sweep.jsonl")
    assert len(expected) == 4
    stages = []
    points = schedule(crash_points(CI_POINTS["sweep"]), reference, seed=2)
    for i, (event, delay) in enumerate(points):
        work, side, cfg = setup(f"point-{i}")
        killed = run_child(
            ["sweep", str(cfg)], Watch([work]), side / "err", child_env(), event, delay
        )
        check_untorn(work)
        partial = sweep_state(work / "sweep.jsonl")
        assert partial.items() <= expected.items(), f"point {i}: a line unlike the reference's"
        stage = f"after {len(partial)} of 4 SAEs" if killed.killed else "finished before the kill"
        stages.append(stage)
        print(f"sweep point {i}: event {event}+{delay:.2f}s, {stage}")
        rerun = run_child(["sweep", str(cfg)], Watch([]), side / "err2", child_env())
        assert rerun.returncode == 0, f"point {i} ({stage}): {rerun.stderr}"
        assert sweep_state(work / "sweep.jsonl") == expected, f"point {i} ({stage})"
    report("sweep", stages)


# --------------------------------------------------------------------------- convert


def save_sae(folder: Path, seed: int) -> Path:
    """A small gated_paper SAE folder with random parameters."""
    torch.manual_seed(seed)
    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(d_in=16, d_sae=64))
    with torch.no_grad():
        for param in (sae.b_gate, sae.r_mag, sae.b_mag, sae.b_dec):
            param.copy_(0.1 * torch.randn_like(param))
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = "smollm2-135m"
    sae.save_inference_model(folder)
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every visible file of a folder, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in visible(folder)}


def test_convert_killed_anywhere_leaves_nothing_or_all(tmp_path: Path) -> None:
    source = save_sae(tmp_path / "source", seed=0)

    def convert(name: str, **kill: Any) -> tuple[Path, Any]:
        work, side = tmp_path / name / "work", tmp_path / name / "side"
        work.mkdir(parents=True, exist_ok=True), side.mkdir(exist_ok=True)
        args = ["convert", str(source), str(work / "gated"), "--to", "gated"]
        return work / "gated", run_child(args, Watch([work]), side / "err", child_env(), **kill)

    dst, reference = convert("reference")
    assert reference.returncode == 0, reference.stderr
    expected = folder_bytes(dst)
    stages = []
    points = schedule(crash_points(CI_POINTS["convert"]), reference, seed=3)
    for i, (event, delay) in enumerate(points):
        dst, killed = convert(f"point-{i}", kill_at=event, delay=delay)
        check_untorn(dst.parent)
        stage = ("destination complete" if dst.exists() else "no destination") + (
            "" if killed.killed else " (finished before the kill)"
        )
        stages.append(stage)
        print(f"convert point {i}: event {event}+{delay:.2f}s, {stage}")
        if dst.exists():
            assert folder_bytes(dst) == expected, f"point {i}: an incomplete destination"
        else:
            _, rerun = convert(f"point-{i}")
            assert rerun.returncode == 0, f"point {i}: {rerun.stderr}"
        assert folder_bytes(dst) == expected
    report("convert", stages)


# --------------------------------------------------------------------------- push


def test_push_killed_anywhere_is_old_or_new_and_a_rerun_completes(tmp_path: Path) -> None:
    first, second = save_sae(tmp_path / "first", seed=1), save_sae(tmp_path / "second", seed=2)
    with LocalHub() as hub:
        env = child_env(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"))
        env.update(HF_TOKEN=TOKEN)
        env.pop("HF_HUB_OFFLINE")

        def push(folder: Path, repo_id: str, **kill: Any) -> Any:
            start = len(hub.requests)
            watch = Watch([], requests=lambda: len(hub.requests) - start)
            log = tmp_path / f"{repo_id.replace('/', '_')}-{folder.name}.err"
            return run_child(["push", str(folder), repo_id], watch, log, env, **kill)

        def state(repo_id: str) -> dict[str, bytes]:
            if not hub.repo_exists(repo_id):
                return {}
            named = [repo_id.encode(), repo_id.split("/")[1].encode()]
            files = hub.files(repo_id)
            for name in named:  # the card names the repo
                files = {k: v.replace(name, b"REPO") for k, v in files.items()}
            return files

        # The old release goes up in this process (fast); the new one from the command.
        push_sae(first, "crash/reference", token=TOKEN, endpoint=hub.endpoint)
        old = state("crash/reference")
        reference = push(second, "crash/reference")
        assert reference.returncode == 0, reference.stderr
        new = state("crash/reference")
        assert old != new
        stages = []
        n = crash_points(CI_POINTS["push"])
        for i, (event, delay) in enumerate(schedule(n, reference, seed=4)):
            repo_id = f"crash/point-{i}"
            push_sae(first, repo_id, token=TOKEN, endpoint=hub.endpoint)
            killed = push(second, repo_id, kill_at=event, delay=delay)
            after = state(repo_id)
            assert after in (old, new), f"point {i}: the repo is neither the old nor the new"
            stage = "old release" if after == old else "new release"
            stages.append(stage + ("" if killed.killed else " (finished before the kill)"))
            print(f"push point {i}: request {event}+{delay:.2f}s, {stages[-1]}")
            rerun = push(second, repo_id)
            assert rerun.returncode == 0, f"point {i}: {rerun.stderr}"
            assert state(repo_id) == new, f"point {i}: the rerun did not complete the release"
        report("push", stages)
