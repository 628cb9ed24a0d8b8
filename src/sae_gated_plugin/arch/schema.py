"""The pydantic schema of the ``gated_paper`` architecture: every field, its default, its check.

Import-light on purpose (pydantic only): the CLI validates configs and prints the schema without
torch or SAELens. The SAELens config classes (:mod:`.config`) take their defaults from here.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sae_gated_plugin.arch.names import ARCHITECTURE as ARCHITECTURE  # re-exported

AuxDecoder = Literal["frozen", "trainable"]
SparsityPenalty = Literal["l1", "decoder_norm_weighted"]
DecoderNorm = Literal["unit", "free"]
NormalizeActivations = Literal[
    "none",
    "expected_average_only_in",
    "constant_norm_rescale",
    "layer_norm",
    "covariance_whitening",
]


class InputCentring(BaseModel):
    """Whether the encoder centres its input by the decoder bias."""

    apply_b_dec_to_input: bool = Field(
        default=True, description="Centre inputs by the decoder bias, x - b_dec (the paper: yes)."
    )


class GatedPaperSAESchema(InputCentring):
    """Validated fields of an inference ``gated_paper`` SAE config (cfg.json)."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    d_in: int = Field(gt=0, description="Width of the activations the SAE reads (d_model).")
    d_sae: int = Field(gt=0, description="Number of latents in the dictionary (M in the paper).")
    dtype: str = Field(default="float32", description="Parameter dtype, e.g. float32, bfloat16.")
    device: str = Field(default="cpu", description="Device of the parameters, e.g. cpu, cuda.")
    normalize_activations: NormalizeActivations = Field(
        default="none", description="SAELens activation normalisation applied before encoding."
    )
    reshape_activations: Literal["none", "hook_z"] = Field(
        default="none", description="Flatten attention heads for hook_z SAEs."
    )


class GatedPaperTrainingFields(BaseModel):
    """The training-only fields of ``gated_paper``: the paper's recipe and its ablation switches."""

    decoder_init_norm: float | None = Field(
        default=1.0,
        gt=0,
        description="Norm of each decoder row at initialisation (the paper: unit norm). "
        "null keeps SAELens's kaiming-uniform rows.",
    )
    encoder_init_scale: float = Field(
        default=0.1,
        gt=0,
        description="W_gate at initialisation is this times W_dec^T (with unit decoder rows). "
        "1 is dictionary_learning's and SAELens's init; the default 0.1 starts with smaller gate "
        "pre-activations, so the first steps' L1 kills fewer latents (docs/synthetic.md).",
    )
    l1_coefficient: float = Field(
        default=1.0,
        ge=0,
        description="Sparsity coefficient lambda on ||ReLU(pi_gate)||_1. SAELens sums the MSE "
        "over d_in, so the paper's lambda corresponds to about lambda * d_in here.",
    )
    l1_warm_up_steps: int = Field(
        default=0, ge=0, description="Steps over which lambda rises linearly from 0."
    )
    aux_decoder: AuxDecoder = Field(
        default="frozen",
        description="Decoder used by the auxiliary reconstruction of ReLU(pi_gate): 'frozen' "
        "(the paper: stop-gradient W_dec and b_dec, so the term trains the gate encoder only) or "
        "'trainable' (SAELens's built-in gated).",
    )
    sparsity_penalty: SparsityPenalty = Field(
        default="l1",
        description="'l1' (the paper: plain L1 of ReLU(pi_gate)) or 'decoder_norm_weighted' "
        "(each latent's L1 scaled by its decoder row norm, as SAELens's built-in gated).",
    )
    decoder_norm: DecoderNorm = Field(
        default="unit",
        description="'unit' (the paper: decoder rows held at norm 1, the gradient parallel to "
        "each row removed) or 'free' (no constraint, as SAELens's built-in gated).",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> GatedPaperTrainingFields:
        if self.decoder_norm == "unit" and self.decoder_init_norm not in (None, 1.0):
            raise ValueError(
                f"decoder_init_norm={self.decoder_init_norm} contradicts decoder_norm='unit' "
                "(rows are held at norm 1): set decoder_init_norm to 1.0 or decoder_norm to 'free'"
            )
        if self.decoder_norm == "free" and self.sparsity_penalty == "l1":
            warnings.warn(
                "gated_paper: sparsity_penalty='l1' with decoder_norm='free' lets the SAE shrink "
                "the L1 by growing decoder rows; use decoder_norm='unit' or "
                "sparsity_penalty='decoder_norm_weighted'",
                UserWarning,
                stacklevel=2,
            )
        if self.sparsity_penalty == "decoder_norm_weighted" and self.aux_decoder == "frozen":
            warnings.warn(
                "gated_paper: the paper's authors report that a decoder-norm-weighted L1 works "
                "with a trainable auxiliary decoder, and worse with aux_decoder='frozen'",
                UserWarning,
                stacklevel=2,
            )
        return self


class GatedPaperTrainingSAESchema(GatedPaperSAESchema, GatedPaperTrainingFields):
    """Validated fields of a ``gated_paper`` training SAE config."""


def schema_default(schema: type[BaseModel], name: str) -> Any:
    """The default the schema declares for field ``name`` (one source of truth for defaults)."""
    return schema.model_fields[name].get_default(call_default_factory=True)
