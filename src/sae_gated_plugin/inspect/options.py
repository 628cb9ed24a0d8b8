"""What ``sae-gated inspect`` checks before any work: which latents, and which folders it may
write (import-light)."""

from __future__ import annotations

import re
from pathlib import Path

from sae_gated_plugin.errors import GatedPluginError

INSPECT_FILENAME = "inspect.json"
"""The summary every browser folder holds; it also marks the folder as an inspect output."""
EXPORT_MARKER = ".sae-gated-neuronpedia-export"
"""An empty file marking a folder as a Neuronpedia export of ``sae-gated inspect``."""


def parse_latents(spec: str | None, d_sae: int) -> list[int] | None:
    """``"0-99,512"`` as a sorted list of latent indices, each checked against ``d_sae``;
    None (all latents) for no spec."""
    if spec is None:
        return None
    chosen: set[int] = set()
    for part in spec.split(","):
        found = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not found:
            raise GatedPluginError(f"--latents {spec!r}: expected indices and ranges like 0-99,512")
        low = int(found.group(1))
        high = int(found.group(2)) if found.group(2) is not None else low
        if high < low:
            raise GatedPluginError(f"--latents {spec!r}: range {low}-{high} is empty")
        if high >= d_sae:
            raise GatedPluginError(
                f"--latents {spec!r}: latent {high} is out of range (the SAE has {d_sae} latents, "
                f"0-{d_sae - 1})"
            )
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def check_output_folder(folder: Path, marker: str, option: str, overwrite: bool) -> None:
    """A folder inspect may write: absent or empty, or an earlier output (holding ``marker``)
    with ``overwrite``; anything else is refused before any work."""
    if folder.exists() and not folder.is_dir():
        raise GatedPluginError(f"{option} {folder} is a file, not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / marker).is_file():
        raise GatedPluginError(
            f"{option} {folder} is not empty and is not an earlier sae-gated inspect output; "
            "choose another folder (nothing was written)"
        )
    if not overwrite:
        raise GatedPluginError(
            f"{option} {folder} holds an earlier inspect output; pass --overwrite to replace it "
            "(nothing was written)"
        )
