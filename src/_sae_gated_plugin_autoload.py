"""Plugin discovery for SAELens, run from ``sae_gated_plugin_autoload.pth`` at start-up.

SAELens has no plugin discovery of its own. At interpreter start-up this module only installs
a tiny import watcher (stdlib ``os``/``sys`` only: no torch, no sae_lens). When ``sae_lens`` is
later imported, the watcher lets it load completely and then calls every entry point of the
``sae_lens.architectures`` group, so ``import sae_lens`` alone makes ``gated_paper`` (and any
other plugin's architectures) available. A failing plugin gives a warning, never an error.

Opt out with ``SAE_GATED_PLUGIN_AUTOLOAD=0`` (also ``false``, ``no``, ``off``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV_VAR = "SAE_GATED_PLUGIN_AUTOLOAD"
ENTRY_POINT_GROUP = "sae_lens.architectures"
_WATCHED = "sae_lens"


def autoload_enabled() -> bool:
    """Whether the environment allows autoloading (``SAE_GATED_PLUGIN_AUTOLOAD`` not off)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in {"0", "false", "no", "off"}


def load_entry_points() -> None:
    """Call every ``sae_lens.architectures`` entry point; warn about (never raise) failures."""
    import warnings
    from importlib.metadata import entry_points

    try:
        found = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a broken distribution's metadata must not break sae_lens
        warnings.warn(
            f"sae-gated-plugin autoload: reading entry points failed: {exc!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    for entry_point in found:
        try:
            entry_point.load()()
        except Exception as exc:
            warnings.warn(
                f"sae-gated-plugin autoload: entry point {entry_point.name!r} "
                f"({entry_point.value}) of group {ENTRY_POINT_GROUP!r} failed: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )


class _SaeLensWatcher:
    """Meta-path finder that only wraps sae_lens's loader, then steps aside."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _WATCHED:
            return None
        import importlib.util

        uninstall()  # fires once; the lookup below goes to the finders after this one
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        had_own = "exec_module" in vars(loader)
        original_exec = loader.exec_module

        def exec_then_register(module: Any) -> None:
            # Undo the patch first: some loaders (zipimport's) serve many modules.
            if had_own:
                loader.exec_module = original_exec  # type: ignore[method-assign]
            else:
                del loader.exec_module
            original_exec(module)
            load_entry_points()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_watcher = _SaeLensWatcher()


def install() -> None:
    """Start watching for ``import sae_lens`` (no-op if opted out or sae_lens is loaded)."""
    if not autoload_enabled() or _watcher in sys.meta_path:
        return
    if _WATCHED in sys.modules:
        load_entry_points()
        return
    sys.meta_path.insert(0, _watcher)


def uninstall() -> None:
    """Stop watching (the watcher fires once)."""
    if _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)


try:  # noqa: SIM105 - start-up must never break because of this plugin
    install()
except Exception:
    pass
