"""The architecture's id, importable without pydantic, torch or SAELens."""

from __future__ import annotations

ARCHITECTURE = "gated_paper"
"""The SAELens architecture id this plugin registers (SAELens's own ``gated`` is left alone)."""
