"""``sae-gated train``: a ``TrainRunConfig`` to a trained, evaluated SAE. The run is SAELens's
(through ``run.saelens_bridge``); this module owns the output folder, run config and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sae_lens import SAE

from sae_gated_plugin.arch.artifacts import EVAL_FILENAME, TRAIN_CONFIG_FILENAME
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import EvalReport, write_report
from sae_gated_plugin.eval.splice import evaluate_sae, excluded_token_ids
from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset
from sae_gated_plugin.io import atomic_write_text, write_faults
from sae_gated_plugin.run.config import TrainRunConfig
from sae_gated_plugin.run.output_folder import own_output_folder
from sae_gated_plugin.run.resume import check_resume
from sae_gated_plugin.run.saelens_bridge import GatedRunner, prepare_runner
from sae_gated_plugin.sources import load_text_dataset, resolve_device

if TYPE_CHECKING:
    import datasets
    import torch
    from sae_lens import TrainingSAE, TrainingSAEConfig
    from transformer_lens import HookedTransformer


@dataclass
class TrainResult:
    """What a finished run produced."""

    trained_sae: TrainingSAE[Any]  # as the trainer left it (activation scaling folded in)
    output_path: Path  # the saved inference SAE, its checkpoints and reports
    report: EvalReport | None  # the held-out evaluation, when enabled


def record_run_config(runner: GatedRunner, cfg: TrainRunConfig, write_file: bool = True) -> None:
    """Put the run config into every checkpoint of ``runner`` (a resume is checked against it)
    and, with ``write_file``, beside the SAE in the output folder."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    runner.checkpoint_files = {TRAIN_CONFIG_FILENAME: text}
    if write_file:
        atomic_write_text(Path(cfg.output_path) / TRAIN_CONFIG_FILENAME, text)


def train(
    cfg: TrainRunConfig,
    resume_from: Path | None = None,
    model: HookedTransformer | None = None,
    sae_config: TrainingSAEConfig | None = None,
) -> TrainResult:
    """Train a ``gated_paper`` SAE with SAELens's runner, then evaluate it on held-out text
    (under torchrun: ``distributed.launch.train_distributed``). ``sae_config`` trains another
    SAELens training-SAE config (a baseline) on the same data, optimiser and evaluation."""
    output = Path(cfg.output_path)
    device = resolve_device(cfg.device)
    if resume_from is not None:
        check_resume(cfg, resume_from)
    with own_output_folder(output) as folder:
        runner, model = prepare_runner(cfg, device, resume_from, model, sae_config)
        with write_faults(output / TRAIN_CONFIG_FILENAME, "nothing was trained"):
            record_run_config(runner, cfg)
        folder.keep = True  # from here on, checkpoints may exist: the folder stays
        trained = runner.run()
        report = None
        if cfg.eval.enabled:
            report = evaluate_run(cfg, SAE.load_from_disk(output, device=device), model)
    return TrainResult(trained_sae=trained, output_path=output, report=report)


def held_out_tokens(
    cfg: TrainRunConfig, model: HookedTransformer, eval_split: datasets.Dataset | None = None
) -> torch.Tensor:
    """``cfg.eval.n_sequences`` held-out windows (of ``eval_split`` if given), cut as trained."""
    if eval_split is None:
        eval_split = load_text_dataset(cfg.dataset, "eval")
    if eval_split is None:
        raise GatedPluginError(
            f"no held-out split is known for dataset {cfg.dataset!r}: use an embedded corpus, "
            "or evaluate with `sae-gated eval` on a dataset of your choice"
        )
    return eval_tokens_from_dataset(
        model,
        eval_split,
        context_size=cfg.context_size,
        n_sequences=cfg.eval.n_sequences,
        prepend_bos=cfg.prepend_bos,
    )


def evaluate_run(cfg: TrainRunConfig, sae: SAE[Any], model: HookedTransformer) -> EvalReport:
    """Evaluate on the held-out split with the training positions; write evaluation.json."""
    report = evaluate_sae(
        sae,
        model,
        held_out_tokens(cfg, model),
        hook_name=cfg.hook_name,
        seqpos_slice=cfg.training_positions,
        exclude_token_ids=excluded_token_ids(model, cfg.exclude_special_tokens),
        batch_size=cfg.eval.batch_size,
    )
    output = Path(cfg.output_path)
    intact = f"the trained SAE in {output} is complete; evaluate it with `sae-gated eval`"
    with write_faults(output / EVAL_FILENAME, intact):
        write_report(report, output / EVAL_FILENAME)
    return report
