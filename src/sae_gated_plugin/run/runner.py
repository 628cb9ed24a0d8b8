"""The two behaviours SAELens's trainer lacks, added at its smallest seams.

SAELens's ``LanguageModelSAETrainingRunner.run`` builds its ``SAETrainer`` itself, so there is
no argument through which to pass a subclass. The first place the runner hands the trainer
over is ``run_trainer_with_interruption_handling``; ``GatedRunner`` re-types the trainer there
(``GuardedTrainer`` only overrides methods, it adds no state SAELens must know about) instead
of copying ``run``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training._interruption import InterruptedException
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from sae_gated_plugin.errors import TrainingDivergedError, TrainingInterruptedError
from sae_gated_plugin.io import atomic_write_text, follow_umask, staging_folder

if TYPE_CHECKING:
    from sae_gated_plugin.run.resampling import DeadLatentResampler, ResamplingSettings

PROGRESS_POSTFIX_EVERY = 10
"""Steps between progress-bar postfix refreshes (each costs a device sync)."""


class GuardedTrainer(SAETrainer):
    """SAETrainer with a stop at the first non-finite loss, step-boundary interrupts, a
    progress bar showing tokens/s, loss and L0, the loss of every step, and optional dead-latent
    resampling."""

    stop_requested: bool = False
    _pbar: tqdm | None = None
    extra_checkpoint_files: dict[str, str] = {}  # noqa: RUF012  (replaced, never mutated)
    """Plugin files written into every checkpoint (the run config, to check a resume against)."""
    resampler: DeadLatentResampler | None = None
    """Set by ``enable_resampling``; None: no resampling (SAELens's behaviour)."""
    losses: list[float] | None = None
    """The training loss of each step taken by this trainer object (not across a resume)."""

    def enable_resampling(self, settings: ResamplingSettings) -> None:
        """Resample dead latents at ``settings.steps`` (Bricken et al.; see run/resampling.py)."""
        from sae_gated_plugin.run.resampling import DeadLatentResampler

        self.resampler = DeadLatentResampler(settings, self)

    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        """SAELens's checkpoint, written to a staging folder and renamed into place, so an
        interrupted save never leaves a half-written ``checkpoints/<tokens>`` behind."""
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is None:
            super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
            return
        staging_name = f".{checkpoint_name}.partial"
        final = Path(base) / checkpoint_name
        with staging_folder(Path(base) / staging_name) as staging:
            super().save_checkpoint(staging_name, base_path, wandb_aliases)
            for name, text in self.extra_checkpoint_files.items():
                atomic_write_text(staging / name, text)
            follow_umask(staging)
            if final.exists():  # the same token count saved twice: keep the newer one
                shutil.rmtree(final)
            os.replace(staging, final)

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint folder of this run, if any."""
        if self.cfg.checkpoint_path is None or not Path(self.cfg.checkpoint_path).is_dir():
            return None
        folders = [p for p in Path(self.cfg.checkpoint_path).iterdir() if p.name.isdigit()]
        return max(folders, key=lambda p: int(p.name), default=None)

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        """One optimiser step; raises ``TrainingDivergedError`` if the loss is not finite.

        Resampling happens here because ``step`` is the only SAETrainer method that sees the
        batch after the optimiser step and before ``fit`` moves on: SAELens has no hook, and
        the trainer is built inside SAELens's runner (and MultiSAETrainer), so overriding this
        one method of the class they already use is the smallest seam.
        """
        output = super().step(batch)
        loss = output.loss.detach().item()
        if self.losses is None:
            self.losses = []
        self.losses.append(loss)
        if self.resampler is not None and math.isfinite(loss):
            self.resampler.after_step(output.sae_in.detach())
        self.raise_if_diverged(output)
        return output

    def raise_if_diverged(self, output: TrainStepOutput) -> None:
        """Raise ``TrainingDivergedError`` naming the last good checkpoint if the loss is not
        finite (a seam: distributed trainers check the loss agreed across ranks)."""
        if not torch.isfinite(output.loss.detach()).item():
            if self._pbar is not None:
                self._pbar.close()
            last = self.last_checkpoint()
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in output.losses.items())
            raise TrainingDivergedError(
                f"training loss became {output.loss.item()} at step {self.n_training_steps} "
                f"({self.n_training_samples} tokens; {terms}); training stopped and nothing "
                f"after it was saved: {where}. Lower lr or l1_coefficient and resume or restart."
            )

    def mean_l0(self, step_output: TrainStepOutput) -> float:
        """Mean number of firing latents per token in this step (shown by the progress bar)."""
        with torch.no_grad():
            return (step_output.feature_acts > 0).float().sum(-1).mean().item()

    def should_stop(self) -> bool:
        """Whether to stop at this step boundary (a seam: ranks of a distributed run agree)."""
        return self.stop_requested

    def _update_pbar(
        self, step_output: TrainStepOutput, pbar: tqdm, update_interval: int = 100
    ) -> None:
        if pbar.unit != "tok":
            self._pbar = pbar
            # In a log file (no terminal) every refresh is a new line: refresh rarely there.
            interactive = getattr(pbar.fp, "isatty", lambda: False)()
            pbar.unit, pbar.unit_scale = "tok", True
            pbar.mininterval = 1.0 if interactive else 30.0
            pbar.set_description("Training SAE")
        pbar.update(self.cfg.train_batch_size_samples)
        final = self.n_training_samples >= self.cfg.total_training_samples
        if self.n_training_steps % PROGRESS_POSTFIX_EVERY == 0 or final:
            l0 = self.mean_l0(step_output)
            pbar.set_postfix(
                loss=f"{step_output.loss.item():.4g}",
                mse=f"{step_output.losses['mse_loss'].item():.4g}",
                l0=f"{l0:.1f}",
                refresh=False,
            )
        # The last call of each loop iteration of fit(): a step boundary, where stopping
        # leaves optimiser, schedulers and counters consistent for the checkpoint.
        if self.should_stop():
            pbar.close()  # end the bar's line before the interruption message is printed
            raise InterruptedException()


@contextmanager
def _stop_at_step_boundary(trainer: GuardedTrainer) -> Iterator[None]:
    """First Ctrl-C/SIGTERM asks for a stop after the current step; a second one is immediate."""

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class GatedRunner(LanguageModelSAETrainingRunner):
    """SAELens's runner, with ``GuardedTrainer`` and full checkpoints on interruption."""

    extra_checkpoint_files: dict[str, str] = {}  # noqa: RUF012  (replaced, never mutated)
    """Plugin files to write into every checkpoint (see ``GuardedTrainer``)."""
    metadata_overrides: dict[str, Any] = {}  # noqa: RUF012  (replaced, never mutated)
    """SAE metadata fields to set after SAELens's own (the run's real window, where SAELens
    was handed a cut one for cached activations)."""
    resampling: ResamplingSettings | None = None
    """Dead-latent resampling for the trainer (None: none, as in SAELens)."""
    trainer_class: type[GuardedTrainer] = GuardedTrainer
    """The class SAELens's trainer is re-typed to (distributed runs use a subclass)."""

    def prepare_trainer(self, trainer: GuardedTrainer) -> None:
        """Called once the trainer is re-typed, before training starts (a seam for
        distributed runs, which wrap the SAE and load a checkpoint shard by shard)."""

    def _set_sae_metadata(self) -> None:
        super()._set_sae_metadata()
        for name, value in self.metadata_overrides.items():
            setattr(self.sae.cfg.metadata, name, value)

    def save_final_sae(
        self,
        sae: Any,
        output_path: str,
        log_feature_sparsity: torch.Tensor | None = None,
    ) -> None:
        """SAELens's final save, staged beside the output and moved in with ``cfg.json`` last:
        a failed save leaves no half-written SAE that a later load would trust."""
        output = Path(output_path)
        with staging_folder(output / ".final.partial") as staging:
            super().save_final_sae(sae, str(staging), log_feature_sparsity)
            follow_umask(staging)
            files = sorted(staging.iterdir(), key=lambda f: f.name == "cfg.json")
            for file in files:
                os.replace(file, output / file.name)

    def run_trainer_with_interruption_handling(self, trainer: SAETrainer) -> Any:
        # SAELens's own handler saves only the activation store's state on interruption, not
        # the SAE or the optimiser; here the trainer saves a complete, resumable checkpoint.
        trainer.__class__ = self.trainer_class
        assert isinstance(trainer, GuardedTrainer)
        self.prepare_trainer(trainer)
        trainer.stop_requested = False
        trainer.extra_checkpoint_files = self.extra_checkpoint_files
        if self.resampling is not None:
            trainer.enable_resampling(self.resampling)
        # After a resume, thresholds already passed would each fire a checkpoint at once.
        trainer.checkpoint_thresholds = [
            t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples
        ]
        try:
            with _stop_at_step_boundary(trainer):
                return trainer.fit()
        except KeyboardInterrupt:
            # A second Ctrl-C lands anywhere, possibly inside the optimiser step: the state
            # may be inconsistent, so nothing is saved and the last good checkpoint stands.
            if trainer._pbar is not None:
                trainer._pbar.close()
            last = trainer.last_checkpoint()
            where = f"the last checkpoint is {last}" if last else "no checkpoint was saved"
            raise TrainingInterruptedError(
                f"training stopped at once after {trainer.n_training_samples} tokens, without "
                f"saving: {where}"
            ) from None
        except InterruptedException:
            if self.cfg.checkpoint_path is None:
                raise TrainingInterruptedError(
                    "training interrupted; no checkpoint_path is set, so nothing was saved"
                ) from None
            name = str(trainer.n_training_samples)
            trainer.save_checkpoint(checkpoint_name=name)
            raise TrainingInterruptedError(
                f"training interrupted after {trainer.n_training_samples} tokens; checkpoint "
                f"saved to {Path(self.cfg.checkpoint_path) / name}"
            ) from None
