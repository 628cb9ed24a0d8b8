"""Where the embedded data packages and the plugin's cache live."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from sae_gated_plugin.errors import MissingOptionalPackageError


def cache_dir() -> Path:
    """Folder for the plugin's cached files (not created here): ``$SAE_GATED_PLUGIN_CACHE``,
    else ``$XDG_CACHE_HOME/sae-gated-plugin``, else ``~/.cache/sae-gated-plugin``."""
    explicit = os.environ.get("SAE_GATED_PLUGIN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sae-gated-plugin"


def package_file(package: str, parts: tuple[str, ...], pip_command: str, what: str) -> Path:
    """A data file of an installed package, found without importing (running) the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    name = package.replace("_", "-")
    if not locations:
        raise MissingOptionalPackageError(
            f"{what} needs the optional package '{name}', which is not installed. "
            f"Install it with: {pip_command}"
        )
    path = Path(locations[0]).joinpath(*parts)
    if not path.is_file():
        raise MissingOptionalPackageError(
            f"{what} needs {'/'.join(parts)} from the package '{name}', but {path} does not "
            f"exist (wrong version?). Reinstall it with: {pip_command}"
        )
    return path
