"""The browser and export written onto a real full or read-only tmpfs: a one-line
``WriteFaultError`` naming the folder, and the earlier output left as it was."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sae_gated_plugin.errors import WriteFaultError
from sae_gated_plugin.inspect.api import _write
from sae_gated_plugin.inspect.data import InspectReport


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target", ["browser", "neuronpedia"])
def test_a_full_disk_keeps_the_earlier_output(
    report: InspectReport, small_disk: Callable[[int], Path], tmp_path: Path, target: str
) -> None:
    # Two copies of the output do not fit: the first write stands, the second one fails.
    roomy = tmp_path / "roomy"
    _write(report, roomy / "browser", roomy / "neuronpedia", {})
    pages = sum(-(-len(data) // 4096) for data in tree(roomy / target).values())
    disk = small_disk(4 * (pages * 3 // 2 + 1))  # tmpfs counts whole 4 KiB pages
    browser = disk / "browser" if target == "browser" else tmp_path / "browser"
    export = disk / "neuronpedia" if target == "neuronpedia" else None
    _write(report, browser, export, {})
    written = disk / target
    before = tree(written)
    with pytest.raises(WriteFaultError) as raised:
        _write(report, browser, export, {})
    message = str(raised.value)
    assert "\n" not in message and str(written) in message
    assert os.strerror(errno.ENOSPC) in message and "the earlier output is unchanged" in message
    assert tree(written) == before
    assert sorted(p.name for p in disk.iterdir()) == [target]


def test_a_read_only_disk_writes_nothing(
    report: InspectReport,
    small_disk: Callable[[int], Path],
    read_only: Callable[[Path], None],
) -> None:
    disk = small_disk(64)
    read_only(disk)
    with pytest.raises(WriteFaultError, match=r"Read-only file system.*nothing was written there"):
        _write(report, disk / "browser", None, {})
    assert list(disk.iterdir()) == []
