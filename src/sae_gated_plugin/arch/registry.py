"""Registration of ``gated_paper`` in SAELens's two registries (inference and training).

``register`` is the ``sae_lens.architectures`` entry point: zero arguments, idempotent, and it
never touches an id it does not own (SAELens's built-in ``gated`` stays).
"""

from __future__ import annotations

import sys
from typing import Any

# Nothing imported at module level may import sae_lens: the autoload hook runs this module's
# register() from inside `import sae_lens`, possibly while this package is still importing.
from sae_gated_plugin.arch.schema import ARCHITECTURE


def _register_once(registry: dict[str, Any], register_fn: Any, classes: tuple[type, type]) -> None:
    existing = registry.get(ARCHITECTURE)
    if existing is None:
        register_fn(ARCHITECTURE, *classes)
    elif tuple(existing) != classes:
        raise RuntimeError(
            f"SAELens architecture id {ARCHITECTURE!r} is already registered to "
            f"{existing[0].__module__}.{existing[0].__qualname__}; sae-gated-plugin will not "
            "replace it (is a second copy of the plugin installed?)"
        )


# The modules defining the classes (_sae_gated_plugin_autoload watches them load).
CLASS_MODULES = ("sae_gated_plugin.arch.config", "sae_gated_plugin.arch.sae")
_deferred = False


def _class_modules_initializing(finished: str | None = None) -> bool:
    """Whether a class module other than ``finished`` is half-imported (its ``import sae_lens``
    fired the autoload, which called :func:`register` before the classes exist)."""
    modules = (sys.modules.get(name) for name in CLASS_MODULES if name != finished)
    return any(getattr(m and m.__spec__, "_initializing", False) for m in modules)


def finish_deferred_registration(finished: str) -> None:
    """Finish a deferred registration (the import hook calls it when a class module loaded)."""
    global _deferred
    if _deferred and not _class_modules_initializing(finished):
        _deferred = False
        _register_classes()


def register() -> None:
    """Register ``gated_paper`` with SAELens, or defer it while a class module is importing
    (its own ``import sae_lens`` fired the autoload; the import hook then finishes it)."""
    global _deferred
    if _class_modules_initializing():
        _deferred = True
        return
    _register_classes()


def _register_classes() -> None:
    # Lazy: this function is the entry point, called while sae_lens finishes importing.
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    from sae_gated_plugin.arch.config import GatedPaperSAEConfig, GatedPaperTrainingSAEConfig
    from sae_gated_plugin.arch.sae import GatedPaperSAE, GatedPaperTrainingSAE

    _register_once(SAE_CLASS_REGISTRY, register_sae_class, (GatedPaperSAE, GatedPaperSAEConfig))
    _register_once(
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_training_class,
        (GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig),
    )


def is_registered() -> bool:
    """Whether ``gated_paper`` is present in both SAELens registries."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    return ARCHITECTURE in SAE_CLASS_REGISTRY and ARCHITECTURE in SAE_TRAINING_CLASS_REGISTRY
