"""sae-gated-plugin: the Gated SAE of arXiv:2404.16014 as the SAELens architecture ``gated_paper``.

Importing this package is cheap (no torch, no SAELens) and makes ``gated_paper`` available in
SAELens: registered at once if SAELens is already imported, else as soon as it is. Once the
plugin is installed, ``import sae_lens`` alone does the same (entry point group
``sae_lens.architectures``), unless ``SAE_GATED_PLUGIN_AUTOLOAD=0``.

The SAE and config classes are importable from here; they load SAELens on first access.

Layout (imports point one way, top to bottom): ``cli``/``demo`` -> ``hub``, ``convert`` ->
``run`` -> ``eval`` -> ``sources``, ``embedded`` -> ``arch`` -> ``errors``, ``io``.
See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sae_gated_plugin.arch.config import GatedPaperSAEConfig, GatedPaperTrainingSAEConfig
    from sae_gated_plugin.arch.sae import GatedPaperSAE, GatedPaperTrainingSAE
    from sae_gated_plugin.arch.schema import ARCHITECTURE

_LAZY = {
    "ARCHITECTURE": "sae_gated_plugin.arch.schema",
    "GatedPaperSAEConfig": "sae_gated_plugin.arch.config",
    "GatedPaperTrainingSAEConfig": "sae_gated_plugin.arch.config",
    "GatedPaperSAE": "sae_gated_plugin.arch.sae",
    "GatedPaperTrainingSAE": "sae_gated_plugin.arch.sae",
}

__all__ = [
    "ARCHITECTURE",
    "GatedPaperSAE",
    "GatedPaperSAEConfig",
    "GatedPaperTrainingSAE",
    "GatedPaperTrainingSAEConfig",
    "__version__",
    "register",
]


def register() -> None:
    """Register ``gated_paper`` in both SAELens registries (idempotent; imports SAELens)."""
    from sae_gated_plugin.arch.registry import register as register_architecture

    register_architecture()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    from _sae_gated_plugin_autoload import call_after_sae_lens_import
except ImportError:  # the start-up hook is not installed (e.g. sources on sys.path only)
    if "sae_lens" in sys.modules:
        register()
else:
    call_after_sae_lens_import(register)
