"""The ``synthetic:`` section of a sweep: a synthetic model with known features and its scoring.

Import-light (pydantic only): the CLI validates sweep configs without torch or SAELens."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A config section whose unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class FiringSettings(Strict):
    """How often each true feature fires (SAELens's firing-probability configs)."""

    distribution: Literal["zipfian", "linear", "random"] = Field(
        default="zipfian", description="Shape of the per-feature firing probabilities."
    )
    exponent: float = Field(default=1.0, gt=0, description="Zipf exponent (zipfian only).")
    max_prob: float = Field(default=0.3, gt=0, le=1, description="Most frequent feature's rate.")
    min_prob: float = Field(default=0.01, gt=0, le=1, description="Rarest feature's rate.")

    @model_validator(mode="after")
    def _check_range(self) -> FiringSettings:
        if self.min_prob > self.max_prob:
            raise ValueError("min_prob must not exceed max_prob")
        return self

    def to_saelens(self) -> dict[str, Any]:
        """SAELens's serialised form of the firing config."""
        fields = self.model_dump(exclude={"distribution"})
        if self.distribution != "zipfian":
            fields.pop("exponent")
        return {"generator_name": self.distribution, **fields}


class HierarchySettings(Strict):
    """A forest of parent/child features: a child fires only when its parent does."""

    total_root_nodes: int = Field(default=64, gt=0, description="Number of trees.")
    branching_factor: int = Field(default=3, gt=0, description="Children per parent.")
    max_depth: int = Field(default=1, gt=0, description="Depth of each tree (1: parent+leaves).")
    mutually_exclusive_portion: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of parents with exclusive children."
    )


class CorrelationSettings(Strict):
    """Low-rank correlations between the features' firing."""

    rank: int = Field(default=16, gt=0, description="Rank of the correlation structure.")
    correlation_scale: float = Field(default=0.1, ge=0, description="Strength of correlations.")


class SyntheticModelSettings(Strict):
    """A synthetic model with known features (mapped onto SAELens's ``SyntheticModelConfig``)."""

    num_features: int = Field(gt=0, description="Number of true features.")
    hidden_dim: int = Field(gt=0, description="Width of the activations the SAE sees.")
    firing: FiringSettings = Field(default_factory=FiringSettings, description="Firing rates.")
    hierarchy: HierarchySettings | None = Field(default=None, description="Feature hierarchy.")
    correlation: CorrelationSettings | None = Field(default=None, description="Correlations.")
    mean_firing_magnitude: float = Field(default=1.0, gt=0, description="Mean activation size.")
    std_firing_magnitude: float = Field(default=0.0, ge=0, description="Its spread.")
    bias: bool | float = Field(default=True, description="Bias added to every activation.")
    seed: int = Field(default=0, description="Seed of the feature directions and rates.")

    def to_saelens(self) -> dict[str, Any]:
        """The model as SAELens's ``SyntheticModelConfig.from_dict`` reads it."""
        return {
            **self.model_dump(include={"num_features", "hidden_dim", "bias", "seed"}),
            "firing_probability": self.firing.to_saelens(),
            "hierarchy": self.hierarchy.model_dump() if self.hierarchy else None,
            "correlation": (
                {**self.correlation.model_dump(), "seed": self.seed} if self.correlation else None
            ),
            "mean_firing_magnitudes": self.mean_firing_magnitude,
            "std_firing_magnitudes": self.std_firing_magnitude,
        }


class SyntheticSettings(Strict):
    """The ``synthetic:`` section of a sweep: the model (described or saved) and its evaluation."""

    model: SyntheticModelSettings | None = Field(default=None, description="A described model.")
    path: str | None = Field(default=None, description="Or one saved by SAELens.")
    eval_samples: int = Field(default=100_000, gt=0, description="Samples each SAE is scored on.")
    eval_seed: int = Field(default=12345, description="Seed of the evaluation samples.")

    @model_validator(mode="after")
    def _one_source(self) -> SyntheticSettings:
        if (self.model is None) == (self.path is None):
            raise ValueError("give exactly one of model (a description) or path (a saved model)")
        return self
