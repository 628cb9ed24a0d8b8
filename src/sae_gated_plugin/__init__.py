"""sae-gated-plugin: the Gated SAE of arXiv:2404.16014 as the SAELens architecture ``gated_paper``.

Importing this package registers ``gated_paper`` with SAELens (so does ``import sae_lens`` alone
once the plugin is installed, through the ``sae_lens.architectures`` entry point).
"""

from __future__ import annotations

from sae_gated_plugin.registry import register

register()

from sae_gated_plugin.config import (  # noqa: E402
    ARCHITECTURE,
    GatedPaperSAEConfig,
    GatedPaperTrainingSAEConfig,
)
from sae_gated_plugin.sae import GatedPaperSAE, GatedPaperTrainingSAE  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURE",
    "GatedPaperSAE",
    "GatedPaperSAEConfig",
    "GatedPaperTrainingSAE",
    "GatedPaperTrainingSAEConfig",
    "__version__",
    "register",
]
