"""``convert_sae``: one exact, checked conversion from a folder to a new SAELens folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

from sae_gated_plugin.arch.artifacts import SPARSITY_FILENAME, WEIGHTS_FILENAME
from sae_gated_plugin.arch.schema import ARCHITECTURE
from sae_gated_plugin.convert import dictionary_learning
from sae_gated_plugin.convert.folders import (
    check_destination,
    provenance,
    read_gated_folder,
    with_metadata,
    write_sae_folder,
)
from sae_gated_plugin.convert.names import SOURCES, TARGETS
from sae_gated_plugin.convert.saelens import jumprelu_cfg, jumprelu_parameters, renamed_cfg
from sae_gated_plugin.convert.verify import N_PROBES, VerifyReport, verify_conversion
from sae_gated_plugin.errors import GatedPluginError


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion wrote and how it was checked against the source."""

    source: Path
    destination: Path
    source_architecture: str  # gated_paper, gated or dictionary_learning GatedAutoEncoder
    target: str
    check: VerifyReport
    negative_thresholds: int = 0
    """jumprelu only: latents whose gated threshold was negative (written as 0, exactly)."""

    def summary(self) -> str:
        """A few lines for the command line."""
        check = self.check
        lines = [
            f"Converted {self.source} ({self.source_architecture}) to {self.destination} "
            f"({self.target}).",
            f"Checked on {check.n_probes} probe activations ({check.n_entries} feature values): "
            f"largest difference {check.max_feature_error:.3g} x the allowed rounding, "
            f"{check.gate_boundary_flips} gate(s) flipped within rounding of their threshold.",
        ]
        if self.target == "jumprelu":
            lines.append(
                f"{self.negative_thresholds} latent(s) had a negative gated threshold; "
                "their JumpReLU threshold is 0 (exact: the magnitude ReLU)."
            )
        return "\n".join(lines)


def _load(folder: Path) -> Any:
    """A SAELens SAE on the CPU as the check runs it (flat probes: no hook_z reshaping)."""
    sae = SAE.load_from_disk(folder, device="cpu")
    sae.turn_off_forward_pass_hook_z_reshaping()
    return sae


def convert_sae(
    src: str | Path,
    dst: str | Path,
    to: str,
    *,
    source: str = "saelens",
    metadata: dict[str, Any] | None = None,
    n_probes: int = N_PROBES,
) -> ConversionReport:
    """Convert the gated SAE at ``src`` (a SAELens folder, or with ``source="dictionary_learning"``
    an ``ae.pt`` + ``config.json`` folder) into a new SAELens folder ``dst`` of architecture
    ``to``, with ``metadata`` fields set, checked against the source on ``n_probes`` probes.

    Raises GatedPluginError, writing nothing, if the source is invalid or cannot be converted
    exactly, or ``dst`` exists.
    """
    if to not in TARGETS:
        raise GatedPluginError(f"unknown target {to!r}; choose one of {', '.join(TARGETS)}")
    if source not in SOURCES:
        raise GatedPluginError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    src, dst = Path(src), check_destination(dst)
    weights_file: Path | None = None  # a SAELens folder's files are copied byte for byte
    sparsity: Path | None = None
    if source == "dictionary_learning":
        cfg, state = dictionary_learning.read_checkpoint(src)
        weights = dictionary_learning.gated_parameters(state)
        reference = dictionary_learning.DictionaryLearningReference(state)
        source_architecture = dictionary_learning.TRAINED_AS
    else:
        cfg, weights = read_gated_folder(src)
        reference, source_architecture = _load(src), cfg["architecture"]
        weights_file, sparsity = src / WEIGHTS_FILENAME, src / SPARSITY_FILENAME
    entry = provenance(cfg, to)
    negative = 0
    out_weights: dict[str, torch.Tensor] | Path
    if to == "jumprelu":
        out_weights, negative = jumprelu_parameters(weights)
        out_cfg = jumprelu_cfg(cfg)
        entry = {**(entry or {}), "latents_with_negative_gated_threshold": negative}
    else:  # a dictionary_learning checkpoint reads as gated_paper already
        keep = source == "dictionary_learning" and to == ARCHITECTURE
        out_cfg = cfg if keep else renamed_cfg(cfg, to)
        out_weights = weights_file or weights
    out_cfg = with_metadata(out_cfg, entry, metadata)

    def check(folder: Path) -> VerifyReport:
        return verify_conversion(_load(folder), reference, weights, n_probes=n_probes)

    report = write_sae_folder(dst, out_cfg, out_weights, check, sparsity)
    return ConversionReport(src, dst, source_architecture, to, report, negative)
