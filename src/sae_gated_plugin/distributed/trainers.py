"""SAELens's trainer across ranks, as ``GuardedTrainer`` subclasses (``adopt`` re-types it).

* ``DataParallelTrainer``: each rank trains a full replica on its part of the global batch;
  ``DistributedDataParallel`` averages the gradients during backward, before SAELens clips and
  steps, so every rank makes the same update. Statistics and losses are summed across ranks.
* ``LatentShardedTrainer``: each rank trains its slice of the latents (``latent_sharding``) on
  the whole gathered batch, clipped by the whole dictionary's norm; checkpoints are gathered.

Each step the ranks agree whether to stop (Ctrl-C / SIGTERM on any rank), to save one checkpoint
together. Rank 0 alone writes files and shows progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from torch.nn.parallel import DistributedDataParallel

from sae_gated_plugin.arch.sae import GatedPaperTrainingSAE
from sae_gated_plugin.distributed.context import DistributedContext, all_reduce_sum
from sae_gated_plugin.distributed.data_shards import ShardedActivationsStore
from sae_gated_plugin.distributed.latent_sharding import (
    GlobalGradClip,
    LatentShardedGatedSAE,
    gather_optimizer_state,
    gather_sae,
    gather_tensor,
    scatter_sae,
    slice_optimizer_state,
)
from sae_gated_plugin.run.saelens_bridge import GuardedTrainer


class DistributedTrainer(GuardedTrainer):
    """What both distributed trainers share: stop agreement, rank-0-only progress and files,
    an activation scale agreed by all ranks, collective checkpoints."""

    dist_ctx: DistributedContext
    data_store: ShardedActivationsStore | None = None
    _agreed_stop: bool = False
    _global_log: dict[str, float]
    """Log entries over the global batch and the whole dictionary, set by each step."""

    def attach(self, ctx: DistributedContext, data_store: ShardedActivationsStore | None) -> None:
        """Give the re-typed trainer its rank and (for checkpoints) its data store."""
        self.dist_ctx, self.data_store = ctx, data_store
        self._agreed_stop, self._global_log = False, {"metrics/l0": 0.0}

    def begin(self) -> None:
        """Set up the collective machinery, after any checkpoint has been loaded."""

    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        """One optimiser step on the global batch (this rank's part of it is ``batch``)."""
        output = SAETrainer.step(self, self.global_batch(batch))
        self.synchronise_step(output)
        self.raise_if_diverged(output)
        return output

    def global_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """What this rank's SAE trains on, given this rank's batch."""
        return batch

    def synchronise_step(self, output: TrainStepOutput) -> None:
        """Make the step's statistics global and agree on stopping (collective)."""
        raise NotImplementedError

    def should_stop(self) -> bool:
        """Whether any rank asked to stop, as agreed at the end of the last step."""
        return self._agreed_stop

    def mean_l0(self, step_output: TrainStepOutput) -> float:
        """Mean firing latents per token over the global batch and the whole dictionary."""
        return self._global_log["metrics/l0"]

    @torch.no_grad()
    def build_train_step_log_dict(
        self, output: TrainStepOutput, n_training_samples: int
    ) -> dict[str, Any]:
        """SAELens's log entries, with the global ones (the rest: rank 0's part of the batch)."""
        return super().build_train_step_log_dict(output, n_training_samples) | self._global_log

    def shows_progress(self) -> bool:
        """Rank 0 alone draws the progress bar."""
        return self.dist_ctx.is_main

    def fit(self) -> Any:
        """SAELens's training loop, after the ranks agree on the activation normalisation."""
        self.agree_on_activation_scaling()
        return super().fit()

    @torch.no_grad()
    def agree_on_activation_scaling(self) -> None:
        """Estimate the activation scale from every rank's data (the mean of the ranks' mean
        norms) or the whitening from rank 0's, so that every rank scales alike."""
        mode, d_in = self.sae.cfg.normalize_activations, self.sae.cfg.d_in
        scaler, n_batches = self.activation_scaler, self.cfg.n_batches_for_norm_estimate
        if mode == "expected_average_only_in" and scaler.scaling_factor is None:
            scaler.estimate_scaling_factor(d_in, self.data_provider, n_batches)
            assert scaler.scaling_factor is not None
            norm = torch.tensor([d_in**0.5 / scaler.scaling_factor], dtype=torch.float64)
            mean_norm = all_reduce_sum(norm.to(self.dist_ctx.device)).item() / dist.get_world_size()
            scaler.scaling_factor = d_in**0.5 / mean_norm
        elif mode == "covariance_whitening" and scaler.whitening is None:
            box: list[Any] = [None]
            if self.dist_ctx.is_main:
                scaler.estimate_whitening(d_in, self.data_provider, n_batches)
                assert scaler.whitening is not None
                box = [scaler.whitening.cpu()]
            dist.broadcast_object_list(box, src=0)
            scaler.whitening = box[0]

    def save_checkpoint(self, checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
        """One checkpoint for the whole run, written by rank 0 (collective)."""
        if self.data_store is not None:
            positions: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(positions, self.data_store.n_dataset_processed)
            self.data_store.rank_positions = positions
        with self.state_for_saving():
            if self.dist_ctx.is_main:
                super().save_checkpoint(checkpoint_name, *args, **kwargs)

    def state_for_saving(self) -> AbstractContextManager[None]:
        """Within it, rank 0's trainer holds what a checkpoint must contain; after it, every
        rank is back in line with what rank 0 saved (collective)."""
        return nullcontext()


class _TrainingPass(torch.nn.Module):
    """The SAE's training pass as a module, so that DistributedDataParallel can run it."""

    def __init__(self, sae: GatedPaperTrainingSAE | Any) -> None:
        super().__init__()
        self.sae = sae
        self.training_pass: Callable[..., TrainStepOutput] = sae.training_forward_pass

    def forward(self, step_input: TrainStepInput) -> TrainStepOutput:
        return self.training_pass(step_input=step_input)


class DataParallelTrainer(DistributedTrainer):
    """Every rank trains a replica on its own part of the batch; DDP averages the gradients."""

    def begin(self) -> None:
        """Run the SAE's training pass through DDP (which broadcasts rank 0's weights)."""
        # device_ids=None: the training pass already receives its inputs on the SAE's device.
        ddp = DistributedDataParallel(_TrainingPass(self.sae), device_ids=None)
        # On this instance only, and a bound method so the SAE's state_dict gets no DDP entry.
        self.sae.training_forward_pass = ddp.__call__

    @torch.no_grad()
    def synchronise_step(self, output: TrainStepOutput) -> None:
        """Sum firing counts, losses and tokens over ranks; agree on stopping."""
        counts = output.feature_acts.bool().float().sum(0).to(self.act_freq_scores.device)
        names, n_local, n_latents = list(output.losses), output.sae_in.shape[0], counts.numel()
        losses = torch.stack([output.losses[name].detach().float() for name in names])
        extras = torch.tensor([n_local, float(self.stop_requested)], device=counts.device)
        totals = all_reduce_sum(torch.cat([counts, losses.to(counts.device), extras]))
        global_counts, summed_losses = totals[:n_latents], totals[n_latents:-2]
        n_global, stop_votes = (int(v) for v in totals[-2:].tolist())
        # SAETrainer counted this rank's firings and tokens: make them the global batch's.
        self.act_freq_scores += global_counts - counts
        self.n_forward_passes_since_fired[global_counts > 0] = 0
        self.n_training_samples += n_global - n_local
        mean_losses = (summed_losses / dist.get_world_size()).to(output.loss.device)
        output.losses = dict(zip(names, mean_losses, strict=True))
        output.loss = mean_losses.sum()
        self._global_log = {"metrics/l0": global_counts.sum().item() / n_global}
        self._agreed_stop = stop_votes > 0

    @contextmanager
    def state_for_saving(self) -> Iterator[None]:
        """After the save, rank 0's weights to every rank, so all ranks hold what was saved."""
        yield
        with torch.no_grad():
            for parameter in self.sae.parameters():
                dist.broadcast(parameter.data, src=0)


class LatentShardedTrainer(DistributedTrainer):
    """Every rank trains its slice of the latents on the whole (gathered) global batch."""

    sae: LatentShardedGatedSAE
    grad_clip: GlobalGradClip
    full_sae: GatedPaperTrainingSAE | None = None
    """The whole SAE as last gathered on rank 0 (None before any gather, and elsewhere)."""

    def begin(self) -> None:
        """Clip gradients by the whole dictionary's norm as soon as backward ends."""
        self.grad_clip = GlobalGradClip(self.sae)
        self._steps_since_begin, self.full_sae = 0, None

    def global_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Every rank's batch, concatenated in rank order (collective)."""
        batch = batch.to(self.sae.device).contiguous()
        gathered = batch.new_empty((batch.shape[0] * dist.get_world_size(), *batch.shape[1:]))
        dist.all_gather_into_tensor(gathered, batch)
        return gathered

    @torch.no_grad()
    def synchronise_step(self, output: TrainStepOutput) -> None:
        """Sum firing latents and dead latents over ranks; agree on stopping."""
        self._steps_since_begin += 1
        if self.grad_clip.clips != self._steps_since_begin:
            raise RuntimeError("a parameter of the latent shard received no gradient")
        active = output.feature_acts.bool().float().sum()
        local = [active, self.dead_neurons.sum().float().to(active.device)]
        stop = torch.tensor(float(self.stop_requested), device=active.device)
        l0, dead, stop_votes = all_reduce_sum(torch.stack([*local, stop])).tolist()
        self._global_log = {
            "metrics/l0": l0 / output.sae_in.shape[0],
            "sparsity/dead_features": int(dead),
        }
        self._agreed_stop = stop_votes > 0

    def runs_saelens_evals(self) -> bool:
        """SAELens's evals run on rank 0 alone and need the whole SAE there: skipped."""
        return False

    @torch.no_grad()
    def set_final_sae_metadata(self) -> None:
        """SAELens's end-of-run L0 and dead-latent count, over the whole dictionary."""
        if self.n_frac_active_samples > 0:
            local = [self.feature_sparsity.sum().float(), self.dead_neurons.sum().float()]
            l0, dead = all_reduce_sum(torch.stack(local).to(self.dist_ctx.device)).tolist()
            self.sae.cfg.metadata.l0 = l0
            self.sae.cfg.metadata.num_dead_features = int(dead)

    def gather_sae(self) -> GatedPaperTrainingSAE | None:
        """The whole SAE on rank 0's host (made once, refilled on each call); None on other
        ranks. Collective."""
        if self.dist_ctx.is_main and self.full_sae is None:
            self.full_sae = GatedPaperTrainingSAE(self.sae.full_config("cpu"))
        gather_sae(self.sae, self.full_sae if self.dist_ctx.is_main else None)
        return self.full_sae if self.dist_ctx.is_main else None

    def _gather_latent_vector(self, local: torch.Tensor) -> torch.Tensor | None:
        is_main = self.dist_ctx.is_main
        out = torch.empty(self.sae.shard.d_sae, dtype=local.dtype) if is_main else None
        gather_tensor(local, 0, out)
        return out

    def gather_log_feature_sparsity(self) -> torch.Tensor | None:
        """``log_feature_sparsity`` of the whole dictionary on rank 0 (collective)."""
        freq = self._gather_latent_vector(self.act_freq_scores)
        # As SAETrainer.log_feature_sparsity, for the whole dictionary.
        return None if freq is None else torch.log10(freq / self.n_frac_active_samples + 1e-10)

    @contextmanager
    def state_for_saving(self) -> Iterator[None]:
        """Rank 0's trainer holds the gathered weights, optimiser state and firing statistics;
        then every rank's slice from the saved SAE, so all ranks hold what was saved."""
        full_sae = self.gather_sae()
        optimizer_state = gather_optimizer_state(self.sae, self.optimizer.state_dict())
        freq = self._gather_latent_vector(self.act_freq_scores)
        since_fired = self._gather_latent_vector(self.n_forward_passes_since_fired)
        swapped: dict[str, Any] = {}
        if full_sae is not None:
            swapped = {
                "sae": full_sae,
                "optimizer": SimpleNamespace(state_dict=lambda: optimizer_state),
                "act_freq_scores": freq,
                "n_forward_passes_since_fired": since_fired,
            }
        held = {name: self.__dict__[name] for name in swapped}
        self.__dict__.update(swapped)
        try:
            yield
        finally:
            self.__dict__.update(held)
        scatter_sae(full_sae, self.sae)

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        """SAELens's ``load_trainer_state`` for a full-width checkpoint, keeping this rank's
        slice of the optimiser state and firing statistics (the file is memory-mapped)."""
        path = Path(checkpoint_path)
        self.activation_scaler.load(path / ACTIVATION_SCALER_CFG_FILENAME)
        state = torch.load(path / TRAINER_STATE_FILENAME, map_location="cpu", mmap=True)
        self.optimizer.load_state_dict(slice_optimizer_state(self.sae, state["optimizer"]))
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        for name in ("n_training_samples", "n_training_steps", "n_frac_active_samples"):
            setattr(self, name, state[name])
        self.started_fine_tuning = state["started_fine_tuning"]
        for name in ("act_freq_scores", "n_forward_passes_since_fired"):
            latent_slice = self.sae.shard.take(state[name], "b_gate").clone()
            setattr(self, name, latent_slice.to(self.cfg.device))
        for name, scheduler_state in state["coefficient_schedulers"].items():
            self.coefficient_schedulers[name].load_state_dict(scheduler_state)
