"""Signals from the first second, repeatable runs, and file permissions.

The SIGTERM test runs the real console script on the embedded SmolLM2 and stops it while it is
still loading; the repeatability test trains the same tiny config twice and compares the saved
weights byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sae_gated_plugin.io import atomic_write_bytes
from sae_gated_plugin.run import train as training
from sae_gated_plugin.run.config import parse_config

SCRIPT = Path(sys.executable).with_name("sae-gated")


def tiny_run(output: Path) -> dict[str, Any]:
    return {
        "output_path": str(output),
        "hook_name": "blocks.2.hook_resid_post",
        "training_tokens": 8 * 512,
        "train_batch_size_tokens": 512,
        "store_batch_size_prompts": 4,
        "n_batches_for_norm_estimate": 2,
        "n_checkpoints": 0,
        "sae": {"d_sae": 256, "l1_coefficient": 5.0},
        "eval": {"enabled": False},
    }


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "report.json", b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.integration
@pytest.mark.embedded
def test_sigterm_while_loading_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tmp_path / "out")), encoding="utf-8")
    process = subprocess.Popen(
        [str(SCRIPT), "train", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in process.stderr:  # wait until it says it is loading, then stop it
        seen.append(line)
        if "loading" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    err = "".join(seen) + rest
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
@pytest.mark.embedded
def test_same_config_and_seed_give_a_bit_identical_sae(smollm2: Any, tmp_path: Path) -> None:
    saved = []
    previous = os.umask(0o027)
    try:
        for name in ("first", "second"):
            run = {**tiny_run(tmp_path / name), "n_checkpoints": 1}
            training.train(parse_config(run, source="test"), model=smollm2)
            saved.append((tmp_path / name / "sae_weights.safetensors").read_bytes())
    finally:
        os.umask(previous)
    assert saved[0] == saved[1]
    # Every file of the run, the final SAE's and the checkpoint's included, follows the umask.
    files = [f for f in (tmp_path / "first").rglob("*") if f.is_file() and f.name[0] != "."]
    assert any(f.name == "sparsity.safetensors" for f in files)
    assert any("checkpoints" in f.parts and f.suffix == ".safetensors" for f in files)
    assert {f.relative_to(tmp_path): f.stat().st_mode & 0o777 for f in files} == {
        f.relative_to(tmp_path): 0o640 for f in files
    }
