"""The ``sae-gated sweep`` config: a base run and grids of SAEs to train from one activation stream.

A sweep is the union of its ``grids`` (cartesian products); a point in two grids is trained once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run.config import TrainRunConfig, apply_overrides, read_config_file, validated
from sae_gated_plugin.sweep.results import DEFAULT_VARIANTS, compact_float, line_key
from sae_gated_plugin.sweep.synthetic_config import Strict, SyntheticSettings

PAPER_ARCHITECTURE = "gated_paper"
Stream = Literal["cached", "multi", "synthetic"]
SaveMode = Literal["none", "frontier", "all"]


EARLIER_SAE_DEFAULTS: dict[str, Any] = {"encoder_init_scale": 1.0}
"""``run.sae`` fields whose default changed, with the earlier default: a results file made
before the change resumes only with that value set, and is refused under the new default."""


class GridSpec(Strict):
    """One cartesian block of the sweep."""

    name: str = Field(min_length=1, description="Name of the block (select it with --grid).")
    architectures: list[str] = Field(min_length=1, description="SAELens architectures.")
    coefficients: dict[str, list[float]] = Field(
        description="Sparsity coefficients per architecture (l1_coefficient, k or l0_coefficient)."
    )
    variants: list[str] = Field(
        default_factory=lambda: ["paper"], min_length=1, description="Names from `variants`."
    )
    lrs: list[float] | None = Field(default=None, min_length=1, description="Default: run.lr.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Seeds.")
    resampling: list[bool] = Field(
        default_factory=lambda: [False], min_length=1, description="Without/with run.resampling."
    )

    @model_validator(mode="after")
    def _check_coefficients(self) -> GridSpec:
        missing = [a for a in self.architectures if not self.coefficients.get(a)]
        if missing:
            raise ValueError(f"coefficients: no values for architecture(s) {missing}")
        extra = sorted(set(self.coefficients) - set(self.architectures))
        if extra:
            raise ValueError(f"coefficients: {extra} not among this grid's architectures")
        if any(lr <= 0 for lr in self.lrs or []):
            raise ValueError("lrs must be positive")
        return self


class SweepConfig(Strict):
    """Everything ``sae-gated sweep`` needs."""

    output: str = Field(description="JSON-lines file of results, one line per trained SAE.")
    stream: Stream = Field(
        default="cached",
        description="'cached': activations cached once and read in epochs; 'multi': SAELens's "
        "multi-SAE runner per lr; 'synthetic': SAELens's synthetic model with known features.",
    )
    cache_path: str | None = Field(
        default=None, description="Cached activations folder; default <output>.activations."
    )
    cache_tokens: int | None = Field(
        default=None, gt=0, description="Activations to cache; default run.training_tokens."
    )
    save: SaveMode = Field(
        default="frontier",
        description="Which trained SAEs to keep as SAELens folders in <output stem>-saes/: "
        "'frontier': each line's Pareto-optimal ones (the others' folders are removed), "
        "'all', or 'none'.",
    )
    run: TrainRunConfig = Field(description="The base run (`sae-gated train` fields).")
    synthetic: SyntheticSettings | None = Field(
        default=None, description="The synthetic model of stream 'synthetic'."
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named SAE-config overrides ('paper'/'default': none)."
    )
    grids: list[GridSpec] = Field(min_length=1, description="The blocks of the sweep.")

    @model_validator(mode="after")
    def _check_references(self) -> SweepConfig:
        names = [grid.name for grid in self.grids]
        if len(set(names)) != len(names):
            raise ValueError(f"grids: names must be unique, got {names}")
        clash = sorted(set(self.variants) & set(DEFAULT_VARIANTS))
        if clash:
            raise ValueError(f"variants: {clash} are reserved for the default recipe")
        for grid in self.grids:
            unknown = sorted(set(grid.variants) - set(self.variants) - set(DEFAULT_VARIANTS))
            if unknown:
                raise ValueError(f"grids.{grid.name}.variants: unknown variant(s) {unknown}")
            if True in grid.resampling and self.run.resampling is None:
                raise ValueError(
                    f"grids.{grid.name}.resampling: true needs run.resampling settings"
                )
        if self.stream != "cached" and self.cache_tokens is not None:
            raise ValueError("cache_tokens applies to stream 'cached' only")
        if (self.stream == "synthetic") != (self.synthetic is not None):
            raise ValueError("a synthetic: section goes with stream 'synthetic', and only with it")
        return self

    def settings_id(self) -> str:
        """Hash of the explicitly set run settings, stream and cache size; a results file only
        resumes runs with the same one (defaults are left out so upgrades don't orphan files)."""
        unused = {"output_path", "device", "wandb", "n_checkpoints"}
        shared = self.run.model_dump(mode="json", exclude=unused, exclude_unset=True)
        shared.get("eval", {}).pop("batch_size", None)
        sae = shared.pop("sae", {})
        for name, earlier in EARLIER_SAE_DEFAULTS.items():
            value = getattr(self.run.sae, name)
            sae.pop(name, None)
            if value != earlier:
                sae[name] = value
        if sae:
            shared["sae"] = sae
        shared["stream"] = self.stream
        shared["cache_tokens"] = self.cache_tokens if self.stream == "cached" else None
        if self.synthetic is not None:
            shared["synthetic"] = self.synthetic.model_dump(mode="json", exclude_unset=True)
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GridPoint:
    """One SAE of the sweep."""

    architecture: str
    variant: str
    coefficient: float
    lr: float
    seed: int
    resampling: bool
    grids: tuple[str, ...] = ()

    def key(self) -> tuple[Any, ...]:
        """What identifies the point in a results file (``results.line_key``)."""
        return line_key(dataclasses.asdict(self))

    def label(self, coefficient_name: str) -> str:
        """E.g. ``gated_paper l1=2 lr=3e-4 seed=0``."""
        short = {"l1_coefficient": "l1", "l0_coefficient": "l0"}.get(coefficient_name)
        variant = [] if self.variant in DEFAULT_VARIANTS else [f"[{self.variant}]"]
        parts = [self.architecture, *variant, f"{short or coefficient_name}={self.coefficient:g}"]
        parts += [f"lr={compact_float(self.lr)}", f"seed={self.seed}"]
        return " ".join(parts + (["+resampling"] if self.resampling else []))


def expand(config: SweepConfig, only: Sequence[str] = ()) -> list[GridPoint]:
    """The sweep's points in grid order, each once (``only``: just these grids)."""
    unknown = sorted(set(only) - {grid.name for grid in config.grids})
    if unknown:
        raise GatedPluginError(
            f"--grid {unknown}: no such grid (the config has {[g.name for g in config.grids]})"
        )
    points: dict[tuple[Any, ...], GridPoint] = {}
    for grid in config.grids:
        if only and grid.name not in only:
            continue
        for architecture, variant in itertools.product(grid.architectures, grid.variants):
            if variant in DEFAULT_VARIANTS:  # named after the architecture's own defaults
                variant = "paper" if architecture == PAPER_ARCHITECTURE else "default"
            axes = itertools.product(
                grid.coefficients[architecture],
                grid.lrs or [config.run.lr],
                grid.seeds,
                grid.resampling,
            )
            for coefficient, lr, seed, resampling in axes:
                point = GridPoint(architecture, variant, coefficient, lr, seed, resampling)
                known = points.get(point.key())
                grids = (known.grids if known else ()) + (grid.name,)
                points[point.key()] = dataclasses.replace(point, grids=grids)
    return list(points.values())


def parse_sweep_config(raw: dict[str, Any], source: str = "config") -> SweepConfig:
    """Validate a sweep config mapping; errors name the field and the source."""
    raw = dict(raw)
    if isinstance(raw.get("run"), dict):
        raw["run"] = {"output_path": str(Path(str(raw.get("output", "."))).parent), **raw["run"]}
    return validated(SweepConfig, raw, source, "sweep config")


def load_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read, override (``key=value``, dotted) and validate a sweep config file."""
    raw = apply_overrides(read_config_file(path), overrides)
    return parse_sweep_config(raw, source=str(path))
