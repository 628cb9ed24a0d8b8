"""SAELens config classes of ``gated_paper``, checked against the pydantic schema (:mod:`.schema`)
however they are made (cfg.json, runner dicts); training defaults come from the schema too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel
from sae_lens.saes.gated_sae import GatedSAEConfig, GatedTrainingSAEConfig
from typing_extensions import override

from sae_gated_plugin.arch.schema import (
    ARCHITECTURE,
    AuxDecoder,
    DecoderNorm,
    GatedPaperSAESchema,
    GatedPaperTrainingFields,
    GatedPaperTrainingSAESchema,
    SparsityPenalty,
    schema_default,
)


def _default(name: str) -> Any:
    # Called once, at class creation; every default is an immutable value (RUF009 is moot).
    return schema_default(GatedPaperTrainingFields, name)


def validate_config_fields(config: Any, schema: type[BaseModel]) -> None:
    """Check a config dataclass against ``schema`` (``ValidationError`` names each bad field)
    and write back pydantic's coerced values."""
    names = [f.name for f in fields(config) if f.name in schema.model_fields]
    validated = schema.model_validate({name: getattr(config, name) for name in names})
    for name in names:
        object.__setattr__(config, name, getattr(validated, name))


@dataclass
class GatedPaperSAEConfig(GatedSAEConfig):
    """Inference config of a ``gated_paper`` SAE (the parameters are SAELens's gated ones)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        validate_config_fields(self, GatedPaperSAESchema)
        super().__post_init__()


@dataclass(kw_only=True)
class GatedPaperTrainingSAEConfig(GatedTrainingSAEConfig):
    """Training config of a ``gated_paper`` SAE (fields: ``GatedPaperTrainingSAESchema``)."""

    decoder_init_norm: float | None = _default("decoder_init_norm")
    encoder_init_scale: float = _default("encoder_init_scale")
    l1_coefficient: float = _default("l1_coefficient")
    l1_warm_up_steps: int = _default("l1_warm_up_steps")
    aux_decoder: AuxDecoder = _default("aux_decoder")  # noqa: RUF009
    sparsity_penalty: SparsityPenalty = _default("sparsity_penalty")  # noqa: RUF009
    decoder_norm: DecoderNorm = _default("decoder_norm")  # noqa: RUF009

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[GatedPaperSAEConfig]:
        # Not looked up through the registry: the training config must build even before (or
        # without) the inference class being registered.
        return GatedPaperSAEConfig

    def __post_init__(self) -> None:
        validate_config_fields(self, GatedPaperTrainingSAESchema)
        super().__post_init__()
