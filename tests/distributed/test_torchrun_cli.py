"""``torchrun --nproc-per-node 2 --no-python sae-gated train CONFIG`` on the real SmolLM2-135M.

The documented launch, end to end on two CPU ranks (gloo): one output written once, with
world_size in its metadata and one report printed. Then a rank is killed mid-run: torchrun's
elastic agent and the process group's error stop the other rank within a bounded time, the
last checkpoint is complete, and one process resumes from it to the end. Linux only (finds the
worker to kill through /proc). About two to three minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed_helpers import free_port
from sae_lens import SAE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.embedded,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]

SAE_GATED = str(Path(sys.executable).parent / "sae-gated")


def write_config(folder: Path, **overrides: Any) -> Path:
    """A small run at SmolLM2's blocks.2 residual stream (256-token global batches)."""
    settings: dict[str, Any] = {
        "output_path": str(folder / "out"),
        "hook_name": "blocks.2.hook_resid_post",
        "context_size": 64,
        "training_tokens": 8 * 256,
        "train_batch_size_tokens": 256,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 8,
        "n_batches_for_norm_estimate": 2,
        "n_checkpoints": 2,
        "device": "cpu",
        "lr_warm_up_steps": 0,  # schedules that do not depend on training_tokens, so that
        "sae": {"d_sae": 1152, "l1_warm_up_steps": 2},  # a resume may stop sooner
        "eval": {"enabled": False},
        **overrides,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def torchrun(config: Path, *extra: str) -> list[str]:
    """The documented launch command, on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "--no-python",
        SAE_GATED,
        "train",
        str(config),
        *extra,
    ]


def test_torchrun_trains_with_two_ranks_and_rank_zero_reports_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = subprocess.run(torchrun(config), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Saved the SAE to") == 1
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["metadata"]["world_size"] == 2
    assert isinstance(SAE.load_from_disk(tmp_path / "out"), SAE)
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "1536",
        "768",
    ]


def _workers(parent: int) -> dict[int, int]:
    """RANK -> pid of the processes ``parent`` started."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def test_a_killed_rank_ends_the_run_and_the_last_checkpoint_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, training_tokens=400 * 256, n_checkpoints=100)
    checkpoints = tmp_path / "out" / "checkpoints"
    launch = subprocess.Popen(
        torchrun(config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert launch.poll() is None, launch.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.5)
        workers = _workers(launch.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = launch.communicate(timeout=120)
        stopped_after = time.monotonic() - killed_at
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.communicate()
    assert launch.returncode != 0
    assert stopped_after < 90, f"the run took {stopped_after:.0f} s to stop"
    assert "rank      : 1" in output  # torchrun's failure summary names the killed rank
    assert "rank 0 of 2 stopped training" in output  # the survivor says why it stopped

    print(f"the run stopped {stopped_after:.1f} s after rank 1 was killed")
    last = max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert isinstance(SAE.load_from_disk(last), SAE)
    short = write_config(tmp_path, training_tokens=int(last.name) + 2 * 256, n_checkpoints=0)
    resumed = subprocess.run(
        [SAE_GATED, "train", str(short), "--resume", str(last)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "out" / "cfg.json").is_file()
