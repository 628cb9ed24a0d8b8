"""The one module that touches SAELens's internals: config mappings, runner and trainer
subclasses, every private SAELens name (checked on import, so an upgrade fails here), re-typing.

Re-typing: SAELens's runners build their trainer (and ``ActivationsStore``) with no argument for
a subclass, so where each hands the object over, ``adopt`` gives it the plugin's subclass, which
only overrides methods and sets its own state in ``guard``; the alternative is copying ``run``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from datasets import Array2D, Features, Sequence, Value
from sae_lens import cache_activations_runner as cache_module
from sae_lens.config import (
    CacheActivationsRunnerConfig,
    LanguageModelSAERunnerConfig,
    LoggingConfig,
    SAETrainerConfig,
)
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training import _interruption
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.registry import register
from sae_gated_plugin.errors import (
    GatedPluginError,
    TrainingDivergedError,
    TrainingInterruptedError,
    WriteFaultError,
)
from sae_gated_plugin.io import atomic_write_text, follow_umask, staging_folder, write_faults
from sae_gated_plugin.run.config import ResamplingSettings, TrainRunConfig, check_cache_matches
from sae_gated_plugin.run.resampling import DeadLatentResampler
from sae_gated_plugin.sources import (
    activation_width,
    announce,
    dataset_load_errors,
    load_language_model,
    load_text_dataset,
    model_from_pretrained_kwargs,
)

if TYPE_CHECKING:
    import datasets
    from sae_lens import SAE, TrainingSAE, TrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer

TESTED_SAELENS_VERSIONS = ("6.54.12",)
"""The sae-lens releases this bridge was tested with (any 6.x with the names below should do)."""

PRIVATE_NAMES: tuple[tuple[Any, str], ...] = (
    (LanguageModelSAETrainingRunner, "_set_sae_metadata"),
    (LanguageModelSAETrainingRunner, "run_trainer_with_interruption_handling"),
    (MultiSAETrainingRunner, "_run_with_interruption_handling"),
    (SAETrainer, "_update_pbar"),
    (SAETrainer, "_run_and_log_evals"),
    (cache_module, "_mk_activations_store"),
    (cache_module.CacheActivationsRunner, "_get_sliced_context_size"),
    (_interruption, "InterruptedException"),
)
"""The SAELens internals the plugin overrides or calls (owner, name)."""

PROGRESS_POSTFIX_EVERY = 10  # steps between progress-bar postfix refreshes (each syncs)
MAX_CACHE_SHARD_GB = 2.0  # SAELens's shard limit (its datasets writer fails on larger ones)


def check_saelens(required: tuple[tuple[Any, str], ...] = PRIVATE_NAMES) -> None:
    """Raise ``GatedPluginError`` naming the sae-lens version and the first missing name."""
    for owner, name in required:
        if not hasattr(owner, name):
            where = getattr(owner, "__qualname__", getattr(owner, "__name__", repr(owner)))
            raise GatedPluginError(
                f"sae-lens {version('sae-lens')} has no {where}.{name}, which sae-gated-plugin "
                f"trains through (tested with sae-lens {', '.join(TESTED_SAELENS_VERSIONS)}); "
                "install one of those releases"
            )


check_saelens()


# ---- the run config under SAELens's names ------------------------------------------------
def _optimiser_settings(cfg: TrainRunConfig, lr: float) -> dict[str, Any]:
    """Optimiser, schedule and latent-statistics settings: the same for every SAELens config."""
    return {
        "lr": lr,
        "lr_end": lr / 10,  # SAELens's own default, stated for its trainer config
        "lr_warm_up_steps": cfg.lr_warm_up_steps_in_force,
        "lr_scheduler_name": cfg.lr_scheduler_name,
        "lr_decay_steps": cfg.lr_decay_steps,
        "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2,
        "dead_feature_window": cfg.dead_feature_window,
        "feature_sampling_window": cfg.feature_sampling_window,
        "n_batches_for_norm_estimate": cfg.n_batches_for_norm_estimate,
    }


def _store_settings(cfg: TrainRunConfig, device: str) -> dict[str, Any]:
    """Model, data and batch settings shared by the single- and multi-SAE runner configs."""
    settings = {
        "model_name": cfg.model_name,
        "dataset_path": cfg.dataset,
        "dataset_trust_remote_code": False,
        "streaming": cfg.streaming,
        "context_size": cfg.context_size,
        "training_tokens": cfg.training_tokens,
        "train_batch_size_tokens": cfg.train_batch_size_tokens,
        "store_batch_size_prompts": cfg.store_batch_size_prompts,
        "n_batches_in_buffer": cfg.n_batches_in_buffer,
        "seqpos_slice": cfg.training_positions,
        "exclude_special_tokens": cfg.exclude_special_tokens,
        "prepend_bos": cfg.prepend_bos,
        "device": device,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "model_from_pretrained_kwargs": model_from_pretrained_kwargs(cfg.model_name),
        **_optimiser_settings(cfg, cfg.lr),
    }
    if cfg.uses_cached_activations:
        # SAELens caches activations cut to seqpos_slice but checks them against the uncut
        # context_size: give it the cut window (metadata_overrides restore the real one).
        settings["context_size"] = cfg.training_window
        settings["seqpos_slice"] = (None,)
    return settings


def sae_settings(cfg: TrainRunConfig, d_in: int, device: str) -> dict[str, Any]:
    """The SAE config fields every architecture of a run shares: width, dtype, normalisation."""
    return {
        "d_in": d_in,
        "d_sae": cfg.sae.d_sae or cfg.sae.expansion_factor * d_in,
        "dtype": cfg.dtype,
        "device": device,
        "normalize_activations": cfg.normalize_activations,
    }


def gated_paper_settings(cfg: TrainRunConfig) -> dict[str, Any]:
    """The ``gated_paper`` loss options of ``cfg.sae``, with the warm-up in force."""
    fields = cfg.sae.model_dump(exclude={"d_sae", "expansion_factor", "l1_warm_up_steps"})
    return {**fields, "l1_warm_up_steps": cfg.l1_warm_up_steps_in_force}


def runner_config(
    cfg: TrainRunConfig, d_in: int, device: str, resume_from: Path | None = None
) -> LanguageModelSAERunnerConfig[Any]:
    """SAELens's runner config for ``cfg`` (``gated_paper`` SAE, outputs under output_path)."""
    settings = {
        "sae": GatedPaperTrainingSAEConfig(
            **sae_settings(cfg, d_in, device), **gated_paper_settings(cfg)
        ),
        "logger": LoggingConfig(
            log_to_wandb=cfg.wandb.enabled,
            wandb_project=cfg.wandb.project,
            wandb_entity=cfg.wandb.entity,
            run_name=cfg.wandb.run_name,
            wandb_log_frequency=cfg.wandb.log_frequency,
            eval_every_n_wandb_logs=cfg.wandb.eval_every_n_logs,
        ),
        **cfg.saelens,
        # After the pass-through section: outputs go where the plugin's own settings say.
        **_store_settings(cfg, device),
        "hook_name": cfg.hook_name,
        "is_dataset_tokenized": cfg.is_dataset_tokenized,
        "n_checkpoints": cfg.n_checkpoints,
        "checkpoint_path": str(cfg.checkpoint_path),
        "output_path": cfg.output_path,
        "resume_from_checkpoint": str(resume_from) if resume_from else None,
        "verbose": False,
    }
    try:
        built = LanguageModelSAERunnerConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise GatedPluginError(f"SAELens rejected the run config: {exc}") from None
    # SAELens appends a random id to checkpoint_path; keep the documented location instead.
    built.checkpoint_path = str(cfg.checkpoint_path)
    return built


def trainer_config(cfg: TrainRunConfig, lr: float, device: str) -> SAETrainerConfig:
    """SAELens's trainer settings for one SAE of a sweep: the run's optimiser at ``lr``."""
    return SAETrainerConfig(
        total_training_samples=cfg.training_tokens,
        train_batch_size_samples=cfg.train_batch_size_tokens,
        device=device,
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        **_optimiser_settings(cfg, lr),
    )


def multi_runner_config(
    cfg: TrainRunConfig, lr: float, device: str, saes: dict[str, TrainingSAE[Any]]
) -> MultiSAETrainingRunnerConfig:
    """SAELens's multi-SAE runner config: ``saes`` trained in lockstep on ``cfg``'s data."""
    return MultiSAETrainingRunnerConfig(
        **{**_store_settings(cfg, device), **_optimiser_settings(cfg, lr)},
        saes={name: sae.cfg for name, sae in saes.items()},
        hook_names=cfg.hook_name,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
    )


def cache_config(
    cfg: TrainRunConfig, d_in: int, device: str, path: Path
) -> CacheActivationsRunnerConfig:
    """SAELens's cache config writing the run's activations to ``path`` (shards of <= 2 GB)."""
    bytes_per_token = d_in * getattr(torch, cfg.dtype).itemsize
    tokens_per_batch = cfg.store_batch_size_prompts * cfg.training_window
    batches = math.ceil(cfg.training_tokens / tokens_per_batch)
    wanted_gb = (batches * tokens_per_batch * bytes_per_token + bytes_per_token // 2) / 1e9
    try:
        return CacheActivationsRunnerConfig(
            dataset_path=cfg.dataset,
            model_name=cfg.model_name,
            model_batch_size=cfg.store_batch_size_prompts,
            hook_name=cfg.hook_name,
            d_in=d_in,
            training_tokens=cfg.training_tokens,
            context_size=cfg.context_size,
            new_cached_activations_path=str(path),
            shuffle=True,
            seed=cfg.seed,
            dtype=cfg.dtype,
            device=device,
            buffer_size_gb=min(MAX_CACHE_SHARD_GB, wanted_gb),
            prepend_bos=cfg.prepend_bos,
            seqpos_slice=cfg.training_positions,
            streaming=cfg.streaming,
            model_from_pretrained_kwargs=model_from_pretrained_kwargs(cfg.model_name),
        )
    except (TypeError, ValueError) as exc:
        raise GatedPluginError(f"SAELens rejected the cache config: {exc}") from None


# ---- the trainer ---------------------------------------------------------------------------
class GuardedTrainer(SAETrainer):
    """SAETrainer stopping at a non-finite loss or at a step boundary on interrupt, with a
    tokens/s, loss and L0 progress bar, every step's loss and optional dead-latent resampling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard()

    def guard(self, checkpoint_files: dict[str, str] | None = None) -> None:
        """Set the plugin's state (also on a trainer SAELens built, once re-typed)."""
        self.stop_requested = False
        self.progress_bar: tqdm | None = None
        self.checkpoint_files = checkpoint_files or {}  # plugin files for every checkpoint
        self.resampler: DeadLatentResampler | None = None
        self.losses: list[float] = []  # each step's loss (this trainer object's steps only)

    def enable_resampling(self, settings: ResamplingSettings) -> None:
        """Resample dead latents at ``settings.steps`` (Bricken et al.; see run/resampling.py)."""
        self.resampler = DeadLatentResampler(settings, self)

    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        """SAELens's checkpoint, staged and renamed into place (never left half-written)."""
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is None:
            super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
            return
        staging_name = f".{checkpoint_name}.partial"
        final = Path(base) / checkpoint_name
        intact = f"training stopped; {checkpoint_intact(self.last_checkpoint())}"
        try:
            with write_faults(final, intact), staging_folder(Path(base) / staging_name) as staging:
                super().save_checkpoint(staging_name, base_path, wandb_aliases)
                for name, text in self.checkpoint_files.items():
                    atomic_write_text(staging / name, text)
                follow_umask(staging)
                if final.exists():  # the same token count saved twice: keep the newer one
                    shutil.rmtree(final)
                os.replace(staging, final)
        except WriteFaultError:
            self.close_progress_bar()  # the message starts its own line
            raise

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint folder of this run, if any."""
        return last_checkpoint(self.cfg.checkpoint_path)

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        """One optimiser step, then resampling (only ``step`` sees the batch after the optimiser
        step); raises ``TrainingDivergedError`` if the loss is not finite."""
        output = super().step(batch)
        loss = output.loss.detach().item()
        self.losses.append(loss)
        if self.resampler is not None and math.isfinite(loss):
            self.resampler.after_step(output.sae_in.detach())
        self.raise_if_diverged(output)
        return output

    def raise_if_diverged(self, output: TrainStepOutput) -> None:
        """Raise ``TrainingDivergedError`` on a non-finite loss (a seam for distributed runs)."""
        if not torch.isfinite(output.loss.detach()).item():
            self.close_progress_bar()
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

    def shows_progress(self) -> bool:
        """Whether this trainer draws the progress bar (a seam: only rank 0 of a run does)."""
        return True

    def runs_saelens_evals(self) -> bool:
        """Whether SAELens's periodic wandb evals run (a seam: not on a latent shard)."""
        return True

    def close_progress_bar(self) -> None:
        """End the progress bar's line (before an error or interruption message)."""
        if self.progress_bar is not None:
            self.progress_bar.close()

    def _show_progress(self, step_output: TrainStepOutput, pbar: tqdm) -> None:
        if pbar.unit != "tok":
            self.progress_bar = pbar
            # In a log file (no terminal) every refresh is a new line: refresh rarely there.
            interactive = getattr(pbar.fp, "isatty", lambda: False)()
            pbar.unit, pbar.unit_scale = "tok", True
            pbar.mininterval = 1.0 if interactive else 30.0
            pbar.set_description("Training SAE")
        pbar.update(self.cfg.train_batch_size_samples)
        final = self.n_training_samples >= self.cfg.total_training_samples
        if self.n_training_steps % PROGRESS_POSTFIX_EVERY == 0 or final:
            pbar.set_postfix(
                loss=f"{step_output.loss.item():.4g}",
                mse=f"{step_output.losses['mse_loss'].item():.4g}",
                l0=f"{self.mean_l0(step_output):.1f}",
                refresh=False,
            )

    def _update_pbar(
        self, step_output: TrainStepOutput, pbar: tqdm, update_interval: int = 100
    ) -> None:
        if self.shows_progress():
            self._show_progress(step_output, pbar)
        # The last call of each fit() iteration: stopping here leaves a consistent checkpoint.
        if self.should_stop():
            if self.shows_progress():
                pbar.close()
            raise _interruption.InterruptedException()

    def _run_and_log_evals(self) -> None:
        if self.runs_saelens_evals():
            super()._run_and_log_evals()


Guarded = TypeVar("Guarded", bound=GuardedTrainer)


def last_checkpoint(checkpoint_path: Path | str | None) -> Path | None:
    """The newest complete checkpoint folder under ``checkpoint_path``, if any (staging
    folders, hidden, are never one)."""
    if checkpoint_path is None or not Path(checkpoint_path).is_dir():
        return None
    folders = [p for p in Path(checkpoint_path).iterdir() if p.name.isdigit()]
    return max(folders, key=lambda p: int(p.name), default=None)


def checkpoint_intact(last: Path | None) -> str:
    """What a failed save leaves to resume from, said in a message."""
    return f"the last complete checkpoint is {last}" if last else "no checkpoint was saved"


def adopt(trainer: SAETrainer, cls: type[Guarded], **guard_kwargs: Any) -> Guarded:
    """Re-type a trainer SAELens built as ``cls`` and set the plugin's state on it."""
    trainer.__class__ = cls
    assert isinstance(trainer, cls)
    trainer.guard(**guard_kwargs)
    return trainer


def retype_store(store: ActivationsStore, cls: type[Any]) -> Any:
    """Re-type an ``ActivationsStore`` SAELens built as ``cls`` (the caller sets its state)."""
    store.__class__ = cls
    return store


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


# ---- the runners ---------------------------------------------------------------------------
class GatedRunner(LanguageModelSAETrainingRunner):
    """SAELens's runner, with ``GuardedTrainer`` and full checkpoints on interruption."""

    def __init__(self, cfg: LanguageModelSAERunnerConfig[Any], **overrides: Any) -> None:
        super().__init__(cfg, **overrides)
        self.checkpoint_files: dict[str, str] = {}  # see GuardedTrainer
        self.metadata_overrides: dict[str, Any] = {}  # SAE metadata set after SAELens's own
        self.resampling: ResamplingSettings | None = None
        self.trainer_class: type[GuardedTrainer] = GuardedTrainer  # distributed: a subclass

    def prepare_trainer(self, trainer: GuardedTrainer) -> None:
        """Called once the trainer is re-typed, before training (a seam for distributed runs)."""

    def _set_sae_metadata(self) -> None:
        super()._set_sae_metadata()
        for name, value in self.metadata_overrides.items():
            setattr(self.sae.cfg.metadata, name, value)

    def save_final_sae(
        self, sae: Any, output_path: str, log_feature_sparsity: torch.Tensor | None = None
    ) -> None:
        """SAELens's final save, staged and moved in with ``cfg.json`` last (never half-written)."""
        output = Path(output_path)
        last = checkpoint_intact(last_checkpoint(self.cfg.checkpoint_path))
        intact = f"the trained SAE was not saved; {last}"
        with write_faults(output, intact), staging_folder(output / ".final.partial") as staging:
            super().save_final_sae(sae, str(staging), log_feature_sparsity)
            follow_umask(staging)
            files = sorted(staging.iterdir(), key=lambda f: f.name == "cfg.json")
            for file in files:
                os.replace(file, output / file.name)

    def run_trainer_with_interruption_handling(self, trainer: SAETrainer) -> Any:
        # SAELens's own handler saves only the activation store's state, not SAE or optimiser.
        guarded = adopt(trainer, self.trainer_class, checkpoint_files=self.checkpoint_files)
        self.prepare_trainer(guarded)
        if self.resampling is not None:
            guarded.enable_resampling(self.resampling)
        # After a resume, thresholds already passed would each fire a checkpoint at once.
        guarded.checkpoint_thresholds = [
            t for t in guarded.checkpoint_thresholds if t >= guarded.n_training_samples
        ]
        try:
            with _stop_at_step_boundary(guarded):
                return guarded.fit()
        except KeyboardInterrupt:
            # A second Ctrl-C may land mid-step: nothing is saved, the last checkpoint stands.
            guarded.close_progress_bar()
            last = guarded.last_checkpoint()
            where = f"the last checkpoint is {last}" if last else "no checkpoint was saved"
            raise TrainingInterruptedError(
                f"training stopped at once after {guarded.n_training_samples} tokens, without "
                f"saving: {where}"
            ) from None
        except _interruption.InterruptedException:
            if self.cfg.checkpoint_path is None:
                raise TrainingInterruptedError(
                    "training interrupted; no checkpoint_path is set, so nothing was saved"
                ) from None
            name = str(guarded.n_training_samples)
            guarded.save_checkpoint(checkpoint_name=name)
            raise TrainingInterruptedError(
                f"training interrupted after {guarded.n_training_samples} tokens; checkpoint "
                f"saved to {Path(self.cfg.checkpoint_path) / name}"
            ) from None


# Builds the runner from SAELens's config, the model and the training dataset.
RunnerFactory = Callable[[LanguageModelSAERunnerConfig[Any], "HookedTransformer", Any], GatedRunner]


def prepare_runner(
    cfg: TrainRunConfig,
    device: str,
    resume_from: Path | None = None,
    model: HookedTransformer | None = None,
    sae_config: TrainingSAEConfig | None = None,
    make_runner: RunnerFactory | None = None,
) -> tuple[GatedRunner, HookedTransformer]:
    """Load what a run needs and build its runner (``GatedRunner`` unless ``make_runner``),
    reusing ``model`` if given, training ``sae_config`` instead of ``cfg.sae``; writes nothing."""
    register()
    dataset = load_text_dataset(cfg.dataset, "train")
    if model is None:
        announce(f"loading {cfg.model_name}...")
        model = load_language_model(cfg.model_name, device)
    d_in = activation_width(model, cfg.hook_name, cfg.saelens.get("hook_head_index"))
    if cfg.uses_cached_activations:
        check_cache_matches(cfg, d_in)
    built = runner_config(cfg, d_in, device, resume_from)
    if sae_config is not None:
        if sae_config.d_in != d_in:
            raise GatedPluginError(
                f"sae_config.d_in is {sae_config.d_in}, but {cfg.hook_name} is {d_in} wide"
            )
        built.sae = sae_config
    # SAELens never applies the config's seed: seed SAE init and buffer shuffling here.
    torch.manual_seed(cfg.seed)
    with dataset_load_errors(cfg.dataset, dataset):
        if make_runner is None:
            runner = GatedRunner(built, override_model=model, override_dataset=dataset)
        else:
            runner = make_runner(built, model, dataset)
    runner.resampling = cfg.resampling
    runner.metadata_overrides = _metadata_overrides(cfg)
    return runner, model


def _metadata_overrides(cfg: TrainRunConfig) -> dict[str, Any]:
    """The SAE metadata a run sets after SAELens's own (the real window, uncut by a cache)."""
    return {"context_size": cfg.context_size, "seqpos_slice": cfg.training_positions}


def set_run_metadata(sae: SAE[Any], cfg: TrainRunConfig) -> None:
    """Fill ``sae.cfg.metadata`` (model, hook, dataset, window...) as a run of ``cfg`` does."""
    built = runner_config(cfg, sae.cfg.d_in, str(sae.cfg.device))
    # SAELens's own method, given the two attributes it reads.
    LanguageModelSAETrainingRunner._set_sae_metadata(cast(Any, SimpleNamespace(cfg=built, sae=sae)))
    for name, value in _metadata_overrides(cfg).items():
        setattr(sae.cfg.metadata, name, value)


class GuardedMultiRunner(MultiSAETrainingRunner):
    """SAELens's multi-SAE runner whose per-SAE trainers are ``GuardedTrainer``s."""

    def __init__(self, *args: Any, resampling: dict[str, ResamplingSettings], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.resampling = resampling  # per SAE name, for the SAEs that resample
        self.sae_trainers: dict[str, GuardedTrainer] = {}  # the last run's, by SAE name

    def _run_with_interruption_handling(self, trainer: Any) -> Any:
        for name, sae_trainer in trainer.trainers.items():
            self.sae_trainers[name] = adopt(sae_trainer, GuardedTrainer)
            if name in self.resampling:
                self.sae_trainers[name].enable_resampling(self.resampling[name])
        return super()._run_with_interruption_handling(trainer)


class ModelCacheActivationsRunner(cache_module.CacheActivationsRunner):
    """SAELens's ``CacheActivationsRunner`` over an already loaded model (its ``__init__`` loads
    the model by name, which no TransformerLens name reaches for the embedded SmolLM2)."""

    def __init__(
        self,
        cache_cfg: CacheActivationsRunnerConfig,
        model: HookedTransformer,
        dataset: datasets.Dataset | None,
    ) -> None:
        self.cfg = cache_cfg
        self.model = model
        self.activations_store = cache_module._mk_activations_store(
            model, cache_cfg, override_dataset=dataset
        )
        self.context_size = self._get_sliced_context_size(
            cache_cfg.context_size, cache_cfg.seqpos_slice
        )
        self.features = Features({
            cache_cfg.hook_name: Array2D(
                shape=(self.context_size, cache_cfg.d_in), dtype=cache_cfg.dtype
            ),
            "token_ids": Sequence(Value(dtype="int32"), length=self.context_size),
        })  # fmt: skip
