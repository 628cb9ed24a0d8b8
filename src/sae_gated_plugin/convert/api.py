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
from sae_gated_plugin.convert.saelens import (
    jumprelu_cfg,
    jumprelu_parameters,
    renamed_cfg,
)
from sae_gated_plugin.convert.verify import (
    N_PROBES,
    GatedReference,
    SAELensReference,
    VerifyReport,
    verify_conversion,
)
from sae_gated_plugin.errors import GatedPluginError


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion wrote and how it was checked."""

    source: Path
    destination: Path
    source_architecture: str
    """``gated_paper``, ``gated`` or ``dictionary_learning GatedAutoEncoder``."""
    target: str
    check: VerifyReport
    """The comparison of the written SAE with the source on probe activations."""
    negative_thresholds: int = 0
    """jumprelu only: latents whose gated threshold b_mag - exp(r_mag) b_gate was negative
    (written as 0, which is exact: see ``jumprelu_parameters``)."""

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


def _read_source(
    src: Path, source: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], GatedReference, Path | None]:
    """cfg, gated parameters, the source model and its weights file (None: not SAELens)."""
    if source == "dictionary_learning":
        cfg, state = dictionary_learning.read_checkpoint(src)
        reference: GatedReference = dictionary_learning.DictionaryLearningReference(state)
        return cfg, dictionary_learning.gated_parameters(state), reference, None
    cfg, weights = read_gated_folder(src)
    reference = SAELensReference(SAE.load_from_disk(src, device="cpu"))
    return cfg, weights, reference, src / WEIGHTS_FILENAME


def convert_sae(
    src: str | Path,
    dst: str | Path,
    to: str,
    *,
    source: str = "saelens",
    metadata: dict[str, Any] | None = None,
    n_probes: int = N_PROBES,
) -> ConversionReport:
    """Convert the gated SAE at ``src`` into a new SAELens folder ``dst`` of architecture ``to``.

    Args:
        src: a SAELens folder (``source="saelens"``: ``gated_paper`` or SAELens ``gated``) or a
            dictionary_learning folder with ``ae.pt`` and ``config.json``
            (``source="dictionary_learning"``).
        dst: the new folder; refused if anything exists there.
        to: ``gated_paper``, ``gated`` (SAELens's built-in, loads without the plugin) or
            ``jumprelu`` (SAELens's built-in JumpReLU).
        metadata: cfg.json metadata fields to set, e.g. ``{"hook_name": ...}``.
        n_probes: probe activations the written SAE is checked on against the source.

    Every other metadata field is kept. ``dst`` gets cfg.json, sae_weights.safetensors and the
    source's sparsity.safetensors if any; it is written to a staging folder, loaded back with
    ``SAE.load_from_disk`` and compared with the source model before it is moved into place.

    Raises:
        GatedPluginError: the source cannot be converted exactly (the message says why), the
            source is invalid, or ``dst`` exists. Nothing is written then.
    """
    if to not in TARGETS:
        raise GatedPluginError(f"unknown target {to!r}; choose one of {', '.join(TARGETS)}")
    if source not in SOURCES:
        raise GatedPluginError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    src, dst = Path(src), check_destination(dst)
    cfg, weights, reference, weights_file = _read_source(src, source)
    source_architecture = (
        dictionary_learning.TRAINED_AS if source == "dictionary_learning" else cfg["architecture"]
    )
    entry = provenance(cfg, to)
    negative = 0
    out_weights: dict[str, torch.Tensor] | Path
    if to == "jumprelu":
        out_weights, negative = jumprelu_parameters(weights)
        out_cfg = jumprelu_cfg(cfg)
        entry = {**(entry or {}), "latents_with_negative_gated_threshold": negative}
    else:
        if source == "dictionary_learning" and to == ARCHITECTURE:
            out_cfg = cfg
        else:
            out_cfg = renamed_cfg(cfg, to)
        out_weights = weights_file or weights  # a SAELens file is copied byte for byte
    out_cfg = with_metadata(out_cfg, entry, metadata)

    def check(folder: Path) -> VerifyReport:
        converted = SAE.load_from_disk(folder, device="cpu")
        return verify_conversion(converted, reference, weights, n_probes=n_probes)

    sparsity = src / SPARSITY_FILENAME if weights_file is not None else None
    report = write_sae_folder(dst, out_cfg, out_weights, check, sparsity)
    return ConversionReport(src, dst, source_architecture, to, report, negative)
