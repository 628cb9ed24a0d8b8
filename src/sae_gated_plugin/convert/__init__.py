"""Exact, checked conversions of gated SAEs: ``gated_paper`` <-> SAELens ``gated``, into SAELens
``jumprelu``, and from dictionary_learning ``GatedAutoEncoder`` checkpoints.

Names are imported on first use, so importing this package costs nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ConversionReport": "sae_gated_plugin.convert.api",
    "SOURCES": "sae_gated_plugin.convert.names",
    "convert_sae": "sae_gated_plugin.convert.api",
    "TARGETS": "sae_gated_plugin.convert.names",
    "jumprelu_parameters": "sae_gated_plugin.convert.saelens",
    "gated_parameters": "sae_gated_plugin.convert.dictionary_learning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
