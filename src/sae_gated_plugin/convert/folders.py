"""The folders of a conversion: the source read and checked, the result written to a staging
folder, checked there and only then renamed into place (an existing destination is kept)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save

from sae_gated_plugin.arch.artifacts import (
    CFG_FILENAME,
    GATED_ARCHITECTURES,
    PLUGIN_METADATA_KEY,
    SPARSITY_FILENAME,
    WEIGHTS_FILENAME,
    read_safetensors,
    validate_sae_folder,
)
from sae_gated_plugin.arch.schema import ARCHITECTURE
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import atomic_write_bytes, staging_folder, write_faults

T = TypeVar("T")

PROVENANCE_KEY = PLUGIN_METADATA_KEY
"""cfg.json ``metadata`` key: what a converted (or portable) SAE was trained as, how it is saved."""

PORTABLE_NOTE = (
    "Trained with sae-gated-plugin's gated_paper (arXiv:2404.16014) and published as SAELens's "
    "built-in 'gated': same parameters, same encode/decode outputs, so plain SAELens loads it "
    "without the plugin."
)
"""The note of ``sae-gated push --portable`` and of a ``--to gated`` conversion."""

# The ``form`` recorded in the provenance for each target architecture.
FORM_OF_TARGET = {ARCHITECTURE: ARCHITECTURE, "gated": "portable", "jumprelu": "jumprelu"}


def check_destination(dst: str | Path) -> Path:
    """``dst`` as a Path, refused if anything exists there already."""
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        raise GatedPluginError(
            f"{dst}: already exists; a conversion never overwrites, pick a new path"
        )
    return dst


def read_gated_folder(src: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The validated cfg.json and weights of a SAELens ``gated`` or ``gated_paper`` folder."""
    src = Path(src)
    cfg = validate_sae_folder(src)
    if cfg["architecture"] not in GATED_ARCHITECTURES:
        raise GatedPluginError(
            f"{src / CFG_FILENAME}: architecture {cfg['architecture']!r} is not a gated SAE; "
            f"sae-gated convert reads {ARCHITECTURE!r} and SAELens 'gated' folders (and "
            "dictionary_learning GatedAutoEncoder checkpoints with --from dictionary_learning)"
        )
    return cfg, read_safetensors(src / WEIGHTS_FILENAME)


def provenance(cfg: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The provenance entry (trained as, saved as) for ``cfg`` saved as ``target``; None for an
    SAE back in the form it was trained in, so a round trip gives back the original cfg.json."""
    entry = dict((cfg.get("metadata") or {}).get(PROVENANCE_KEY) or {})
    trained = entry.get("trained_architecture") or cfg["architecture"]
    form = "gated" if target == "gated" and trained == "gated" else FORM_OF_TARGET[target]
    extra = set(entry) - {"trained_architecture", "form", "note"}
    if trained in GATED_ARCHITECTURES and form == trained and not extra:
        return None
    note = (
        f"Trained as {trained}; saved as SAELens's {target!r} by `sae-gated convert`, "
        "an exact conversion checked against the source model."
    )
    if trained == ARCHITECTURE and form == "portable":
        note = PORTABLE_NOTE
    entry.update(trained_architecture=trained, form=form, note=note)
    return entry


def with_metadata(
    cfg: dict[str, Any], entry: dict[str, Any] | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """A copy of ``cfg`` with its provenance entry set (or removed) and ``overrides`` applied."""
    out = json.loads(json.dumps(cfg))  # a deep copy
    metadata = dict(out.get("metadata") or {})
    metadata.pop(PROVENANCE_KEY, None)
    if entry is not None:
        metadata[PROVENANCE_KEY] = entry
    for key, value in (overrides or {}).items():
        try:
            metadata[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise GatedPluginError(
                f"metadata {key!r}: {type(value).__name__} is not JSON-serialisable"
            ) from None
    out["metadata"] = metadata
    return out


def write_sae_folder(
    dst: Path,
    cfg: dict[str, Any],
    weights: dict[str, torch.Tensor] | Path,
    check: Callable[[Path], T],
    sparsity: Path | None = None,
) -> T:
    """Write a SAELens folder at ``dst`` (``weights``: tensors, or a safetensors file to copy)
    through a staging folder that ``check`` may refuse by raising; return what it says."""
    dst = check_destination(dst)
    with write_faults(dst, "nothing was written; the source is unchanged"):
        return _write_staged(dst, cfg, weights, check, sparsity)


def _write_staged(
    dst: Path,
    cfg: dict[str, Any],
    weights: dict[str, torch.Tensor] | Path,
    check: Callable[[Path], T],
    sparsity: Path | None,
) -> T:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(dst.parent / f".{dst.name}.convert-partial") as staging:
        staging.mkdir()
        (staging / CFG_FILENAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if isinstance(weights, Path):
            shutil.copyfile(weights, staging / WEIGHTS_FILENAME)
        else:
            tensors = {name: t.detach().cpu().contiguous() for name, t in weights.items()}
            # safetensors' save_file makes a private (0600) file; every file follows the umask.
            atomic_write_bytes(staging / WEIGHTS_FILENAME, save(tensors))
        if sparsity is not None and sparsity.is_file():
            shutil.copyfile(sparsity, staging / SPARSITY_FILENAME)
        validate_sae_folder(staging)
        result = check(staging)
        check_destination(dst)  # still free after the check (another process may have written)
        os.replace(staging, dst)
    return result
