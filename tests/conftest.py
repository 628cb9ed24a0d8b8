"""Fixtures shared by the test modules that use the real embedded SmolLM2-135M."""

from __future__ import annotations

from typing import Any

import pytest

from sae_gated_plugin import embedded


@pytest.fixture(scope="session")
def smollm2() -> Any:
    """The embedded SmolLM2-135M, loaded once for every test in the session that needs it."""
    return embedded.load_smollm2()
