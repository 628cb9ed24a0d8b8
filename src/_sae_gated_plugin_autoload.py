"""Plugin discovery for SAELens, run from ``sae_gated_plugin_autoload.pth`` at start-up.

SAELens has no plugin discovery of its own. At interpreter start-up this module only installs
a tiny import watcher (stdlib ``os``/``sys`` only: no torch, no sae_lens). When ``sae_lens`` is
later imported, the watcher lets it load completely and then calls every entry point of the
``sae_lens.architectures`` group, so ``import sae_lens`` alone makes ``gated_paper`` (and any
other plugin's architectures) available. A failing plugin gives a warning, never an error.

When the plugin's own class modules are what imports ``sae_lens``, its ``register`` finds them
half-loaded and waits; the watcher also sees each class module finish loading and then lets the
registry complete (so the class modules never import the registry).

Opt out with ``SAE_GATED_PLUGIN_AUTOLOAD=0`` (also ``false``, ``no``, ``off``). An explicit
``import sae_gated_plugin`` still registers, through :func:`call_after_sae_lens_import`.

Start-up cost matters here (this runs in every interpreter of the environment): only modules
Python has already loaded at start-up are imported (not even ``typing`` or ``__future__``).
"""

import os
import sys

# Annotations naming these are quoted: no `from __future__ import annotations` (start-up cost).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ENV_VAR = "SAE_GATED_PLUGIN_AUTOLOAD"
ENTRY_POINT_GROUP = "sae_lens.architectures"
_WATCHED = "sae_lens"
_CLASS_MODULES = ("sae_gated_plugin.arch.config", "sae_gated_plugin.arch.sae")
_REGISTRY = "sae_gated_plugin.arch.registry"
_pending: "set[str]" = set()  # modules whose loading the watcher waits for
_callbacks: "list[Callable[[], None]]" = []
_load_plugins = False  # set by install(): call the entry points when sae_lens loads


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


class _LoadWatcher:
    """Meta-path finder that wraps the loaders of the modules in ``_pending``, once each."""

    def find_spec(self, fullname: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if fullname not in _pending:
            return None
        import importlib.util

        _pending.discard(fullname)  # the lookup below passes this finder by
        if not _pending:
            uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        had_own = "exec_module" in vars(loader)
        original_exec = loader.exec_module

        def exec_then_notify(module: "Any") -> None:
            # Undo the patch first: some loaders (zipimport's) serve many modules.
            if had_own:
                loader.exec_module = original_exec  # type: ignore[method-assign]  # undoing/patching one loader
            else:
                del loader.exec_module
            original_exec(module)
            _after_load(fullname)

        loader.exec_module = exec_then_notify  # type: ignore[method-assign]  # undoing/patching one loader
        return spec


_watcher = _LoadWatcher()


def _after_load(name: str) -> None:
    if name == _WATCHED:
        _after_sae_lens_import()
    elif _REGISTRY in sys.modules:  # a registration may be waiting for this class module
        sys.modules[_REGISTRY].finish_deferred_registration(name)


def _after_sae_lens_import() -> None:
    """What waits for sae_lens: the entry points (if autoloading), then the callbacks."""
    import warnings

    if _load_plugins:
        load_entry_points()
    while _callbacks:
        callback = _callbacks.pop(0)
        try:
            callback()
        except Exception as exc:
            warnings.warn(
                f"sae-gated-plugin: registering with SAELens failed: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )


def _watch() -> None:
    _pending.update(n for n in (_WATCHED, *_CLASS_MODULES) if n not in sys.modules)
    if _pending and _watcher not in sys.meta_path:
        sys.meta_path.insert(0, _watcher)


def install() -> None:
    """Start watching for ``import sae_lens`` (no-op if opted out or sae_lens is loaded)."""
    global _load_plugins
    if not autoload_enabled() or _watcher in sys.meta_path:
        return
    _load_plugins = True
    if _WATCHED in sys.modules:
        load_entry_points()
        return
    _watch()


def call_after_sae_lens_import(callback: "Callable[[], None]") -> None:
    """Call ``callback`` once sae_lens is imported: now if it already is, else right after
    ``import sae_lens`` completes (whether or not autoloading is enabled)."""
    if _WATCHED in sys.modules:
        callback()
        return
    _callbacks.append(callback)
    _watch()


def uninstall() -> None:
    """Stop watching."""
    if _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)


try:  # noqa: SIM105 - start-up must never break because of this plugin
    install()
except Exception:
    pass
