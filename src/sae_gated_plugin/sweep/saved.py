"""The SAEs a sweep keeps (``save``): SAELens folders, as ``sae-gated train`` writes them, in
``<results stem>-saes/<point name>/`` beside the results file; each results line names its own as
``sae_path``. A folder is staged then moved in before its line is written; only folders named by
the results file's own lines are ever removed, and only once the new frontier SAE's line is in.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from sae_gated_plugin.arch.artifacts import EVAL_FILENAME, SPARSITY_FILENAME
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import write_report
from sae_gated_plugin.io import follow_umask, staging_folder, write_faults
from sae_gated_plugin.run.saelens_bridge import set_run_metadata
from sae_gated_plugin.sweep.config import GridPoint, SweepConfig
from sae_gated_plugin.sweep.points import Finished, coefficient_field
from sae_gated_plugin.sweep.results import (
    DEFAULT_VARIANTS,
    SAE_PATH_FIELD,
    compact_float,
    line_key,
    saes_folder,
)
from sae_gated_plugin.sweep.selection import on_frontier

STAGING_SUFFIX = ".partial"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _number(value: float) -> str:
    """``compact_float`` where it reads back exactly, else the full ``repr``."""
    short = compact_float(value)
    return short if float(short) == value else repr(float(value))


def point_folder_name(point: GridPoint) -> str:
    """A readable, filesystem-safe folder name, e.g. ``gated_paper_l1-2_lr-3e-4_seed-0``."""
    short = {"l1_coefficient": "l1", "l0_coefficient": "l0"}
    field = coefficient_field(point.architecture)
    parts = [point.architecture]
    if point.variant not in DEFAULT_VARIANTS:
        parts.append(point.variant)
    parts += [
        f"{short.get(field, field)}-{_number(point.coefficient)}",
        f"lr-{_number(point.lr)}",
        f"seed-{point.seed}",
    ]
    if point.resampling:
        parts.append("resampling")
    return "_".join(_UNSAFE.sub("-", part) for part in parts)


def write_sae_folder(finished: Finished, config: SweepConfig, folder: Path) -> None:
    """Write ``finished``'s SAE into ``folder`` as a ``sae-gated train`` output folder: cfg.json
    (with the run's model, hook and dataset metadata), weights, sparsity and evaluation."""
    trainer = finished.trainer
    if config.stream != "synthetic":  # the synthetic model has no language-model metadata
        set_run_metadata(trainer.sae, config.run)
    trainer.sae.save_inference_model(folder)
    sparsity = trainer.log_feature_sparsity.detach().cpu().contiguous()
    save_file({"sparsity": sparsity}, folder / SPARSITY_FILENAME)
    if finished.report is not None:
        write_report(finished.report, folder / EVAL_FILENAME)
    follow_umask(folder)


class SweepSaves:
    """Saves a sweep's finished SAEs as its ``save`` says, and prunes those off the frontier."""

    def __init__(self, results_path: Path, config: SweepConfig) -> None:
        self.config = config
        self.mode = config.save
        self.results_path = results_path
        self.folder = saes_folder(results_path)
        # The metric a line's frontier maximises at low L0, as ``sae-gated plot`` defaults.
        self.y = "mcc" if config.stream == "synthetic" else "loss_recovered"

    def clean_staging(self) -> None:
        """Remove staging folders a killed sweep left (the results lock keeps others out)."""
        for leftover in self.folder.glob(f".*{STAGING_SUFFIX}"):
            shutil.rmtree(leftover, ignore_errors=True)

    def save(self, finished: Finished, done: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``finished``'s result line, with ``sae_path`` when its SAE is kept (then written)."""
        record = finished.record
        if self.mode == "none":
            return record
        if self.mode == "frontier":
            others = [r for r in done if line_key(r) != line_key(record)]
            if not any(r is record for r in on_frontier([*others, record], self.y)):
                return record
        name = point_folder_name(finished.point)
        relative = f"{self.folder.name}/{name}"
        taken = [r for r in done if r.get(SAE_PATH_FIELD) == relative]
        if taken:
            raise GatedPluginError(
                f"{self.folder / name} already holds the SAE of results line {line_key(taken[0])}"
            )
        target = self.folder / name
        intact = (
            f"the result of {line_key(record)} and its SAE were not added; every results line "
            "and saved SAE before it is complete (run the sweep again to finish)"
        )
        with write_faults(target, intact):
            self._write_staged(finished, name, target)
        return {**record, SAE_PATH_FIELD: relative}

    def _write_staged(self, finished: Finished, name: str, target: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with staging_folder(self.folder / f".{name}{STAGING_SUFFIX}") as staging:
            staging.mkdir()
            write_sae_folder(finished, self.config, staging)
            # A folder no results line names: moved in by a sweep killed before its line.
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)

    def prune(self, records: Sequence[dict[str, Any]]) -> None:
        """With ``frontier``: remove the folders of lines no longer on their line's frontier."""
        if self.mode != "frontier":
            return
        kept = {line_key(r) for r in on_frontier(list(records), self.y)}
        for record in records:
            relative = record.get(SAE_PATH_FIELD)
            if not relative or line_key(record) in kept:
                continue
            folder = self.results_path.parent / str(relative)
            if folder.parent == self.folder:  # only folders this sweep writes
                shutil.rmtree(folder, ignore_errors=True)
