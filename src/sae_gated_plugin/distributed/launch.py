"""``sae-gated train`` as one rank of a torchrun launch. The run config means what it does in
one process: ``train_batch_size_tokens`` is the global batch (each rank's store supplies
1/world_size of it), and token counts are global, so a checkpoint resumes on any number of ranks.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import SAE
from sae_lens.config import LanguageModelSAERunnerConfig

from sae_gated_plugin.distributed.context import (
    DistributedContext,
    context_from_environment,
    process_group,
    quiet_unless_main,
)
from sae_gated_plugin.distributed.data_shards import distribute_store
from sae_gated_plugin.distributed.latent_sharding import LatentShard, LatentShardedGatedSAE
from sae_gated_plugin.distributed.trainers import (
    DataParallelTrainer,
    DistributedTrainer,
    LatentShardedTrainer,
)
from sae_gated_plugin.errors import (
    DistributedTrainingError,
    GatedPluginError,
    TrainingDivergedError,
    TrainingInterruptedError,
)
from sae_gated_plugin.run.config import TrainRunConfig
from sae_gated_plugin.run.output_folder import (
    OutputFolder,
    check_no_finished_sae,
    own_output_folder,
)
from sae_gated_plugin.run.resume import check_resume
from sae_gated_plugin.run.saelens_bridge import GatedRunner, GuardedTrainer, prepare_runner
from sae_gated_plugin.run.train import TrainResult, evaluate_run, record_run_config
from sae_gated_plugin.sources import announce

if TYPE_CHECKING:
    from sae_lens import TrainingSAEConfig
    from transformer_lens import HookedTransformer


class DistributedRunner(GatedRunner):
    """``GatedRunner`` for one rank: a sharded data store, a distributed trainer that loads
    checkpoints, and the final SAE written by rank 0 alone."""

    dist_ctx: DistributedContext
    trainer: DistributedTrainer | None = None

    def __init__(
        self, cfg: LanguageModelSAERunnerConfig[Any], ctx: DistributedContext, **overrides: Any
    ) -> None:
        super().__init__(cfg, **overrides)
        self.dist_ctx = ctx
        sharded = isinstance(self.sae, LatentShardedGatedSAE)
        self.trainer_class = LatentShardedTrainer if sharded else DataParallelTrainer
        # SAELens's run() would load a checkpoint into its plain trainer, which cannot take a
        # full-width state into a latent shard: prepare_trainer loads it instead.
        self.resume_from, cfg.resume_from_checkpoint = cfg.resume_from_checkpoint, None
        batch_size = cfg.train_batch_size_tokens // ctx.world_size
        distribute_store(self.activations_store, ctx.rank, ctx.world_size, batch_size)

    def prepare_trainer(self, trainer: GuardedTrainer) -> None:
        """Attach the rank, load the checkpoint to resume (if any), start the collectives."""
        assert isinstance(trainer, DistributedTrainer)
        self.trainer = trainer
        trainer.attach(self.dist_ctx, self.activations_store)
        if self.resume_from is not None:
            trainer.load_trainer_state(self.resume_from)
            self.sae.load_weights_from_checkpoint(self.resume_from)
            self.activations_store.load_from_checkpoint(self.resume_from)
            self.cfg.resume_from_checkpoint = self.resume_from  # recorded in runner_cfg.json
        trainer.begin()

    def save_final_sae(
        self, sae: Any, output_path: str, log_feature_sparsity: torch.Tensor | None = None
    ) -> None:
        """Rank 0 writes the final SAE; a latent-sharded one is gathered first (collective)."""
        if isinstance(self.trainer, LatentShardedTrainer):
            sae = self.trainer.gather_sae()
            log_feature_sparsity = self.trainer.gather_log_feature_sparsity()
        if self.dist_ctx.is_main:
            super().save_final_sae(sae, output_path, log_feature_sparsity)


def check_distributed_run(
    cfg: TrainRunConfig, ctx: DistributedContext, sae_config: TrainingSAEConfig | None
) -> None:
    """Refuse, before any rank waits for another, what cannot be split across the ranks."""
    if cfg.train_batch_size_tokens % ctx.world_size:
        raise GatedPluginError(
            f"train_batch_size_tokens ({cfg.train_batch_size_tokens}) must be divisible by the "
            f"number of ranks ({ctx.world_size}): each rank supplies an equal part of each batch"
        )
    if cfg.distributed.latent_sharding and sae_config is not None:
        raise GatedPluginError("latent sharding trains gated_paper SAEs only (no sae_config)")
    if cfg.resampling is not None:
        raise GatedPluginError(
            "resampling: dead-latent resampling is not supported under torchrun (each rank would "
            "draw its own inputs); train in one process, or leave the resampling: section out"
        )


COLLECTIVE_FAILURE_MARKERS = (
    "gloo", "nccl", "connection closed by peer", "timed out", "processgroup"
)  # fmt: skip
"""Words of the errors torch's process groups raise when a peer dies or does not answer."""


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because a peer died or timed out, not an
    error of this rank's own. Gloo raises plain RuntimeErrors: the message tells."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    if isinstance(exc, (TrainingDivergedError, TrainingInterruptedError, GatedPluginError)):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in COLLECTIVE_FAILURE_MARKERS)


def train_distributed(
    cfg: TrainRunConfig,
    resume_from: Path | None = None,
    model: HookedTransformer | None = None,
    sae_config: TrainingSAEConfig | None = None,
) -> TrainResult:
    """``run.train.train`` for one torchrun rank. The result's SAE is, on rank 0, the whole
    trained SAE (rank 0 alone evaluates), elsewhere the rank's replica or slice."""
    ctx = context_from_environment(cfg.device)
    check_distributed_run(cfg, ctx, sae_config)
    if resume_from is not None:
        check_resume(cfg, resume_from)
    output = Path(cfg.output_path)
    if not ctx.is_main:  # rank 0 owns (creates and locks) the output folder, as one process
        check_no_finished_sae(output)
    owned = own_output_folder(output) if ctx.is_main else nullcontext(OutputFolder(output, False))
    with owned as folder:
        with process_group(ctx, cfg.distributed.timeout_s), quiet_unless_main(ctx):
            runner, model = _prepare_runner(cfg, ctx, resume_from, model, sae_config)
            record_run_config(runner, cfg, write_file=ctx.is_main)
            folder.keep = True  # from here on, checkpoints may exist: the folder stays
            trained = _run(runner, ctx, cfg)
        report = None
        if ctx.is_main and cfg.eval.enabled:
            report = evaluate_run(cfg, SAE.load_from_disk(output, device=ctx.device), model)
    return TrainResult(trained_sae=trained, output_path=output, report=report)


def _prepare_runner(
    cfg: TrainRunConfig,
    ctx: DistributedContext,
    resume_from: Path | None,
    model: HookedTransformer | None,
    sae_config: TrainingSAEConfig | None,
) -> tuple[DistributedRunner, HookedTransformer]:
    """``prepare_runner`` with a ``DistributedRunner`` (holding this rank's latents if sharded)."""

    def make_runner(
        runner_cfg: LanguageModelSAERunnerConfig[Any], model: HookedTransformer, dataset: Any
    ) -> DistributedRunner:
        if not ctx.is_main:
            runner_cfg.logger.log_to_wandb = False
        overrides: dict[str, Any] = {"override_model": model, "override_dataset": dataset}
        if cfg.distributed.latent_sharding:
            # Each rank draws its own latents: the initial dictionary depends on world_size.
            torch.manual_seed(cfg.seed + ctx.rank)
            shard = LatentShard(ctx.rank, ctx.world_size, runner_cfg.sae.d_sae)
            sae = LatentShardedGatedSAE.for_rank(runner_cfg.sae, shard)
            overrides["override_sae"] = sae.to(ctx.device)
            torch.manual_seed(cfg.seed)  # as one process: repeatable shuffling
        return DistributedRunner(runner_cfg, ctx, **overrides)

    if ctx.is_main:
        announce(f"training on {ctx.world_size} ranks ({ctx.backend})")
    runner, model = prepare_runner(cfg, ctx.device, resume_from, model, sae_config, make_runner)
    assert isinstance(runner, DistributedRunner)
    sharding = cfg.distributed.latent_sharding
    runner.metadata_overrides |= {"world_size": ctx.world_size, "latent_sharding": sharding}
    return runner, model


def _run(runner: DistributedRunner, ctx: DistributedContext, cfg: TrainRunConfig) -> Any:
    """``runner.run()``; a failed collective becomes an error naming the last checkpoint."""
    try:
        trained = runner.run()
    except RuntimeError as exc:
        if not is_collective_failure(exc):
            raise  # a local error of this rank: reported as it is
        folder = cfg.checkpoint_path
        found = [p for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        last = max(found, key=lambda p: int(p.name), default=None)
        where = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved"
        raise DistributedTrainingError(
            f"rank {ctx.rank} of {ctx.world_size} stopped training ({type(exc).__name__}: "
            f"{str(exc).strip()[:500]}); if another rank failed first, its log has the cause; "
            f"{where}"
        ) from exc
    if isinstance(runner.trainer, LatentShardedTrainer) and ctx.is_main:
        return runner.trainer.full_sae  # the whole SAE, as saved
    return trained
