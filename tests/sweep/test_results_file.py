"""The results file under faults: a file replaced mid-sweep gets the later lines, a full or
read-only disk leaves every line complete, and the side lock keeps out a second writer."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sae_gated_plugin.errors import GatedPluginError, WriteFaultError
from sae_gated_plugin.sweep.results import LOCK_SUFFIX, open_results, read_results


def record(seed: int, padding: int = 0) -> dict[str, Any]:
    return {
        "architecture": "gated_paper",
        "variant": "paper",
        "coefficient": 1.0,
        "lr": 1e-3,
        "seed": seed,
        "resampling": False,
        "note": "x" * padding,
    }


def test_a_results_file_replaced_between_two_lines_gets_the_second(tmp_path: Path) -> None:
    path = tmp_path / "sweep.jsonl"
    with open_results(path) as append:
        append(record(0))
        replacement = tmp_path / "checked-out.jsonl"  # as `git checkout` rewrites a file
        replacement.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        os.replace(replacement, path)
        append(record(1))
        path.unlink()  # even deleted: the next line starts a new file
        append(record(2))
    assert [r["seed"] for r in read_results(path)] == [2]
    assert not path.with_name(path.name + LOCK_SUFFIX).exists()


def test_the_side_lock_keeps_out_a_second_sweep_even_after_a_replace(tmp_path: Path) -> None:
    path = tmp_path / "sweep.jsonl"
    with open_results(path) as append:
        append(record(0))
        os.replace(tmp_path / path.name, tmp_path / "moved.jsonl")
        with (
            pytest.raises(GatedPluginError, match="being written by another sweep"),
            open_results(path),
        ):
            pass
    with open_results(path) as append:  # free again once the first one is done
        append(record(1))
    assert [r["seed"] for r in read_results(path)] == [1]


def test_a_full_disk_leaves_every_line_complete(small_disk: Callable[[int], Path]) -> None:
    path = small_disk(8) / "sweep.jsonl"
    written = []
    with pytest.raises(WriteFaultError) as raised, open_results(path) as append:
        for seed in range(20):  # 20 lines of ~1.1 KB cannot fit in 8 KiB
            append(record(seed, padding=1000))
            written.append(seed)
    message = str(raised.value)
    assert str(path) in message and os.strerror(errno.ENOSPC) in message
    assert f"the result of ('gated_paper', 'paper', 1.0, 0.001, {len(written)}" in message
    assert [r["seed"] for r in read_results(path)] == written
    assert path.read_bytes().endswith(b"\n")  # the cut line was taken back out


def test_a_read_only_disk_writes_nothing(
    small_disk: Callable[[int], Path], read_only: Callable[[Path], None]
) -> None:
    disk = small_disk(8)
    path = disk / "sweep.jsonl"
    with open_results(path) as append:
        append(record(0))
    before = path.read_bytes()
    read_only(disk)
    refused = r"Read-only file system.*results file is unchanged"
    with pytest.raises(WriteFaultError, match=refused), open_results(path):
        pass
    assert path.read_bytes() == before
