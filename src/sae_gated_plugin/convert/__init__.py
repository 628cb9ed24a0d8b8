"""Exact, checked conversions of gated SAEs (``gated_paper`` <-> ``gated``, -> ``jumprelu``, and
from dictionary_learning); names are imported on first use, so importing this costs nothing."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = {
    "api": ("ConversionReport", "convert_sae"),
    "names": ("SOURCES", "TARGETS"),
    "saelens": ("jumprelu_parameters",),
    "dictionary_learning": ("gated_parameters",),
}
_EXPORTS = {name: f"{__name__}.{module}" for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
