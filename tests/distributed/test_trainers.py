"""Distributed training on CPU with gloo, two processes on this machine, at the trainer level.

Data parallelism ends with the weights (and statistics) of one process that trained on the
same global batches in the same order; the latent-sharded SAE's forward and backward equal the
unsharded one's, and so do a few steps of sharded training and its checkpoint; all ranks stop at
the same step when one is asked to; killing a rank ends the run within a bounded time and leaves
the last checkpoint loadable. Each test starts two fresh processes (about 10-20 s each here).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_helpers import (
    D_IN,
    D_SAE,
    GLOBAL_BATCH,
    STEPS,
    free_port,
    local_batches,
    rank_environment,
    reference_run,
    run_ranks,
    tiny_sae,
    trainer_config,
)
from sae_lens import TrainingSAE
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training._interruption import InterruptedException
from sae_lens.training.sae_trainer import SAETrainer

from sae_gated_plugin.arch.kernels import THRESHOLD_ENV
from sae_gated_plugin.arch.sae import GatedPaperTrainingSAE
from sae_gated_plugin.distributed.context import DistributedContext, process_group
from sae_gated_plugin.distributed.data_shards import (
    SHARDS_FILENAME,
    distribute_store,
    resume_position,
)
from sae_gated_plugin.distributed.latent_sharding import LatentShard, LatentShardedGatedSAE
from sae_gated_plugin.distributed.trainers import DataParallelTrainer, LatentShardedTrainer
from sae_gated_plugin.run.saelens_bridge import adopt

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WORLD = 2


def _retyped(trainer: SAETrainer[Any, Any], cls: type, ctx: DistributedContext) -> Any:
    adopted = adopt(trainer, cls)
    adopted.attach(ctx, None)
    adopted.begin()
    return adopted


# ---- data parallelism -------------------------------------------------------------------------
def _data_parallel_worker(ctx: DistributedContext, out: Path) -> None:
    trainer = SAETrainer(
        cfg=trainer_config(checkpoint_path=str(out / "checkpoints"), n_checkpoints=1),
        sae=tiny_sae(seed=ctx.rank),  # different seeds: DDP must start every rank from rank 0's
        data_provider=local_batches(ctx.rank, ctx.world_size),
    )
    trainer = _retyped(trainer, DataParallelTrainer, ctx)
    trainer.fit()
    state = {name: p.detach().clone() for name, p in trainer.sae.named_parameters()}
    torch.save(
        {
            "params": state,
            "act_freq_scores": trainer.act_freq_scores,
            "n_training_samples": trainer.n_training_samples,
            "scaling_factor": trainer.activation_scaler.scaling_factor,
        },
        out / f"rank{ctx.rank}.pt",
    )


def test_data_parallel_matches_one_process_on_the_global_batch(tmp_path: Path) -> None:
    run_ranks(_data_parallel_worker, WORLD, tmp_path)
    reference = reference_run(tiny_sae(seed=0))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for name, expected in reference.sae.named_parameters():
        for rank in ranks:
            torch.testing.assert_close(rank["params"][name], expected.detach(), atol=2e-5, rtol=0)
        # Identical updates on identical weights: the replicas stay bit-for-bit equal.
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
    for rank in ranks:
        assert rank["n_training_samples"] == STEPS * GLOBAL_BATCH
        assert torch.equal(rank["act_freq_scores"], reference.act_freq_scores)
        assert rank["scaling_factor"] is None  # folded into the weights, as in one process
    norms = ranks[0]["params"]["W_dec"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # Rank 0 alone wrote the one checkpoint, named by the global token count.
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == [str(4 * GLOBAL_BATCH)]


def _stop_worker(ctx: DistributedContext, out: Path) -> None:
    trainer: Any = None

    def batches() -> Any:
        for index, batch in enumerate(local_batches(ctx.rank, ctx.world_size)):
            if ctx.rank == 1 and index == 4:  # a signal reaches rank 1 only, mid-run
                trainer.stop_requested = True
            yield batch

    trainer = SAETrainer(cfg=trainer_config(), sae=tiny_sae(), data_provider=batches())
    trainer = _retyped(trainer, DataParallelTrainer, ctx)
    with pytest.raises(InterruptedException):
        trainer.fit()
    (out / f"stopped{ctx.rank}").write_text(str(trainer.n_training_steps))


def test_every_rank_stops_at_the_step_where_one_was_asked_to(tmp_path: Path) -> None:
    run_ranks(_stop_worker, WORLD, tmp_path)
    steps = {(tmp_path / f"stopped{r}").read_text() for r in range(WORLD)}
    assert steps == {"3"}  # batches 0-1 estimate the norm; the stop comes with step 3


# ---- latent sharding ------------------------------------------------------------------------
VARIANTS: list[dict[str, Any]] = [
    {},
    {"sparsity_penalty": "decoder_norm_weighted", "aux_decoder": "trainable"},
    {"decoder_norm": "free", "sparsity_penalty": "decoder_norm_weighted"},
    {"apply_b_dec_to_input": False},
]
FEW_OPEN = -4.0
"""A gate bias shift that leaves few latents open, so the unsharded SAE takes the sparse step."""
FIRST_HALF_FEW_OPEN = "first half"
"""Only the first half of the latents (rank 0's) shifted by FEW_OPEN: rank 0 alone would take
the sparse step, the batch as a whole the dense one, which every rank must then agree on."""


def _shard_of(full: GatedPaperTrainingSAE, ctx: DistributedContext) -> LatentShardedGatedSAE:
    shard = LatentShardedGatedSAE.for_rank(full.cfg, LatentShard(ctx.rank, ctx.world_size, D_SAE))
    with torch.no_grad():
        for name, parameter in shard.named_parameters():
            parameter.copy_(shard.shard.take(getattr(full, name), name))
    return shard


def _randomise(sae: GatedPaperTrainingSAE) -> None:
    # Non-zero biases and varied r_mag, so every path of the loss carries gradient.
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in ("b_gate", "r_mag", "b_mag", "b_dec"):
            parameter = getattr(sae, name)
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=gen))


def _forward_backward_worker(ctx: DistributedContext) -> None:
    x = 2.0 * torch.randn(64, D_IN, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    shifts: list[float | str] = [0.0, FEW_OPEN, FIRST_HALF_FEW_OPEN]
    for variant, gate_shift in [(v, shift) for v in VARIANTS for shift in shifts]:
        full = tiny_sae(dtype="float64", **variant)
        _randomise(full)
        with torch.no_grad():
            if gate_shift == FIRST_HALF_FEW_OPEN:
                full.b_gate[: D_SAE // 2] += FEW_OPEN
            else:
                full.b_gate += gate_shift
        shard = _shard_of(full, ctx)
        step_input = TrainStepInput(
            sae_in=x,
            coefficients={"l1": 0.7},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        expected = full.training_forward_pass(step_input)
        got = shard.training_forward_pass(step_input)
        # The sparse step's feature_acts carry no graph: it ran exactly in the few-open case,
        # on every shard alike.
        assert (expected.feature_acts.grad_fn is None) == (gate_shift == FEW_OPEN)
        assert (got.feature_acts.grad_fn is None) == (gate_shift == FEW_OPEN)
        for name, value in expected.losses.items():
            torch.testing.assert_close(
                got.losses[name], value, msg=f"{variant} {gate_shift} {name}"
            )
        torch.testing.assert_close(got.sae_out, expected.sae_out)
        mine = shard.shard.take(expected.feature_acts, "W_enc")  # latents are its last dim
        torch.testing.assert_close(got.feature_acts, mine)
        expected.loss.backward()
        got.loss.backward()
        for name, parameter in shard.named_parameters():
            full_grad = getattr(full, name).grad
            assert parameter.grad is not None and full_grad is not None
            torch.testing.assert_close(
                parameter.grad,
                shard.shard.take(full_grad, name),
                msg=f"{variant} {gate_shift} d{name}",
            )


def test_latent_sharded_forward_and_backward_equal_the_unsharded_ones() -> None:
    run_ranks(_forward_backward_worker, WORLD)


def _sharded_training_worker(ctx: DistributedContext, out: Path) -> None:
    full = tiny_sae(dtype="float64")
    trainer = SAETrainer(
        cfg=trainer_config(checkpoint_path=str(out / "sharded"), n_checkpoints=1),
        sae=_shard_of(full, ctx),
        data_provider=local_batches(ctx.rank, ctx.world_size),
    )
    trainer = _retyped(trainer, LatentShardedTrainer, ctx)
    trainer.fit()
    # The path the steps took: sparse exactly where the test's threshold asks for it.
    x = torch.randn(8, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    probe = trainer.sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": 1.0},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    )
    assert (probe.feature_acts.grad_fn is None) == (os.environ[THRESHOLD_ENV] == "inf")
    gathered = trainer.gather_sae()
    if ctx.is_main:
        assert gathered is not None
        state = {name: p.detach().clone() for name, p in gathered.named_parameters()}
        torch.save(state, out / "gathered.pt")
    # The checkpoint resumes into a latent-sharded trainer: every rank gets its slice back.
    checkpoint = next(p for p in (out / "sharded").iterdir() if p.name.isdigit())
    resumed = SAETrainer(
        cfg=trainer_config(),
        sae=_shard_of(tiny_sae(dtype="float64", seed=9), ctx),
        data_provider=iter([]),
    )
    resumed = _retyped(resumed, LatentShardedTrainer, ctx)
    resumed.load_trainer_state(checkpoint)
    resumed.sae.load_weights_from_checkpoint(checkpoint)
    torch.save(
        {
            "params": {n: p.detach().clone() for n, p in resumed.sae.named_parameters()},
            "optimizer": resumed.optimizer.state_dict(),
            "act_freq_scores": resumed.act_freq_scores,
            "n_training_steps": resumed.n_training_steps,
        },
        out / f"resumed{ctx.rank}.pt",
    )


@pytest.mark.parametrize("sparse_threshold", ["0", "inf"], ids=["dense", "sparse"])
def test_latent_sharded_training_and_checkpoints_equal_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sparse_threshold: str
) -> None:
    # Every step dense, or every step sparse (in the ranks and the one-process reference alike).
    monkeypatch.setenv(THRESHOLD_ENV, sparse_threshold)
    run_ranks(_sharded_training_worker, WORLD, tmp_path)
    reference = reference_run(
        tiny_sae(dtype="float64"), checkpoint_path=str(tmp_path / "single"), n_checkpoints=1
    )
    gathered = torch.load(tmp_path / "gathered.pt")
    for name, expected in reference.sae.named_parameters():
        torch.testing.assert_close(gathered[name], expected.detach(), atol=1e-7, rtol=1e-5)

    # The sharded run's checkpoint is the one-process run's, file by file.
    (single,) = [p for p in (tmp_path / "single").iterdir() if p.name.isdigit()]
    sharded = tmp_path / "sharded" / single.name
    one = TrainingSAE.load_from_disk(single)
    two = TrainingSAE.load_from_disk(sharded)
    assert two.cfg.d_sae == D_SAE
    for name, expected in one.named_parameters():
        torch.testing.assert_close(getattr(two, name), expected, atol=1e-7, rtol=1e-5)
    state_one = torch.load(single / "trainer_state.pt")
    state_two = torch.load(sharded / "trainer_state.pt")
    assert state_two["n_training_samples"] == state_one["n_training_samples"]
    assert torch.equal(state_two["act_freq_scores"], state_one["act_freq_scores"])
    for index, entry in state_one["optimizer"]["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(state_two["optimizer"]["state"][index][key], value)

    # Loaded back into two shards, each holds its slice of that checkpoint.
    for rank in range(WORLD):
        resumed = torch.load(tmp_path / f"resumed{rank}.pt")
        shard = LatentShard(rank, WORLD, D_SAE)
        assert resumed["n_training_steps"] == state_one["n_training_steps"]
        for name, expected in two.named_parameters():
            assert torch.equal(resumed["params"][name], shard.take(expected.detach(), name))
        assert torch.equal(
            resumed["act_freq_scores"], shard.take(state_two["act_freq_scores"], "b_gate")
        )
        names = [n for n, _ in two.named_parameters()]
        for index, entry in resumed["optimizer"]["state"].items():
            full_entry = state_two["optimizer"]["state"][index]
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(entry[key], shard.take(full_entry[key], names[index]))


def test_latent_shard_needs_a_divisible_width() -> None:
    from sae_gated_plugin.errors import GatedPluginError

    with pytest.raises(GatedPluginError, match="divisible"):
        LatentShard(0, 3, D_SAE)


# ---- data positions ---------------------------------------------------------------------------
def test_resume_positions_continue_the_corpus_where_the_ranks_were() -> None:
    # Same number of ranks: each rank back where it was.
    assert [resume_position([40, 37], r, 2) for r in range(2)] == [40, 37]
    # One process from two ranks (interleaved rows): skip everything they read.
    assert resume_position([40, 37], 0, 1) == 77
    # Two ranks from one process that read 77 rows: rows 0, 2, ..., 76 and 1, 3, ..., 75.
    assert [resume_position([77], r, 2) for r in range(2)] == [39, 38]
    # Three ranks from two: rows before 77 of rows r, r + 3, ...
    assert [resume_position([40, 37], r, 3) for r in range(3)] == [26, 26, 25]
    assert resume_position([0], 1, 2) == 0


def _row_store(rank: int, world_size: int) -> Any:
    """A SAELens store over 40 pre-tokenised rows (row i is all token i + 1), made rank
    ``rank``'s of ``world_size``."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    context = 8
    torch.manual_seed(0)
    model = HookedTransformer(
        HookedTransformerConfig(n_layers=1, d_model=D_IN, n_ctx=context, d_head=4, d_vocab=64)
    )
    rows = Dataset.from_dict({"input_ids": [[i + 1] * context for i in range(40)]})
    cfg = LanguageModelSAERunnerConfig.from_dict(
        {
            "sae": {"architecture": "gated_paper", "d_in": D_IN, "d_sae": D_SAE},
            "hook_name": "blocks.0.hook_resid_post",
            "dataset_path": "in-memory",
            "is_dataset_tokenized": True,
            "context_size": context,
            "prepend_bos": False,
            "train_batch_size_tokens": 16,
            "n_batches_in_buffer": 4,
            "device": "cpu",
            "logger": {"log_to_wandb": False},
        }
    )
    store = ActivationsStore.from_config(model, cfg, override_dataset=rows)
    return distribute_store(store, rank, world_size, 16 // world_size)


def _next_rows(store: Any, n: int) -> list[int]:
    return [int(t) - 1 for t in store.get_batch_tokens(n)[:, 0]]


def test_each_rank_reads_its_own_rows_and_resumes_after_the_rows_all_ranks_read(
    tmp_path: Path,
) -> None:
    stores = [_row_store(rank, 2) for rank in range(2)]
    assert _next_rows(stores[0], 5) == [0, 2, 4, 6, 8]
    assert _next_rows(stores[1], 5) == [1, 3, 5, 7, 9]

    # A two-rank checkpoint after 5 rows each, resumed in one process: rows 10, 11, ...
    stores[0].rank_positions = [5, 5]
    stores[0].save_to_checkpoint(tmp_path)
    assert json.loads((tmp_path / SHARDS_FILENAME).read_text()) == {
        "world_size": 2,
        "n_dataset_processed": [5, 5],
    }
    single = _row_store(0, 1)
    single.load_from_checkpoint(tmp_path)
    assert single.n_dataset_processed == 10
    assert min(_next_rows(single, 4)) >= 10
    # Resumed on two ranks from a one-process checkpoint of 10 rows: each skips its 5.
    (tmp_path / SHARDS_FILENAME).unlink()
    for rank in range(2):
        resumed = _row_store(rank, 2)
        resumed.load_from_checkpoint(tmp_path)
        assert resumed.n_dataset_processed == 5
        assert [row % 2 for row in _next_rows(resumed, 3)] == [rank] * 3
        assert min(_next_rows(resumed, 3)) >= 10


# ---- a rank that dies -----------------------------------------------------------------------
def _doomed_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(rank_environment(rank, WORLD, port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    def slow_batches() -> Any:
        while True:  # endless data, a little slow so the test can kill a rank mid-run
            yield from local_batches(rank, WORLD)
            time.sleep(0.05)

    ctx = DistributedContext(rank, WORLD, rank, "cpu")
    try:
        with process_group(ctx, timeout_s=60):
            trainer = SAETrainer(
                cfg=trainer_config(
                    total_training_samples=10_000 * GLOBAL_BATCH,
                    checkpoint_path=str(Path(out) / "checkpoints"),
                    n_checkpoints=2000,
                ),
                sae=tiny_sae(),
                data_provider=slow_batches(),
            )
            _retyped(trainer, DataParallelTrainer, ctx).fit()
    except Exception as exc:
        (Path(out) / f"error{rank}").write_text(f"{type(exc).__name__}: {exc}")
        raise SystemExit(3) from None


def test_killing_a_rank_stops_the_other_with_the_last_checkpoint_intact(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [
        context.Process(target=_doomed_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)
    ]
    for process in ranks:
        process.start()
    try:
        checkpoints = tmp_path / "checkpoints"
        deadline = time.monotonic() + 120
        while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            assert time.monotonic() < deadline, "no checkpoint was written"
            assert all(p.is_alive() for p in ranks)
            time.sleep(0.2)
        time.sleep(0.5)  # into the next steps
        assert ranks[1].pid is not None
        os.kill(ranks[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        ranks[0].join(timeout=60)
        assert not ranks[0].is_alive(), "rank 0 still runs 60 s after its peer died"
        assert time.monotonic() - killed_at < 60
        assert ranks[0].exitcode == 3
        assert "Error" in (tmp_path / "error0").read_text()
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()
            process.join()
    last = max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    sae = TrainingSAE.load_from_disk(last)
    assert isinstance(sae, GatedPaperTrainingSAE)
    assert all(torch.isfinite(p).all() for p in sae.parameters())
    state = torch.load(last / "trainer_state.pt")
    assert state["n_training_samples"] == int(last.name)


def test_resampling_is_refused_under_torchrun_before_any_rank_waits() -> None:
    from sae_gated_plugin.distributed.context import DistributedContext
    from sae_gated_plugin.distributed.launch import check_distributed_run
    from sae_gated_plugin.errors import GatedPluginError
    from sae_gated_plugin.run.config import parse_config

    ctx = DistributedContext(rank=0, world_size=2, local_rank=0, device="cpu")
    plain = parse_config({"output_path": "out", "train_batch_size_tokens": 512}, source="test")
    check_distributed_run(plain, ctx, None)
    resampled = parse_config(
        {"output_path": "out", "train_batch_size_tokens": 512, "resampling": {"steps": [10]}},
        source="test",
    )
    with pytest.raises(GatedPluginError, match=r"resampling: .* not supported under torchrun"):
        check_distributed_run(resampled, ctx, None)


def test_a_dead_peer_is_told_apart_from_a_local_error() -> None:
    from sae_gated_plugin.distributed.launch import is_collective_failure
    from sae_gated_plugin.errors import TrainingDivergedError

    # What gloo raised in the survivor when its peer died (a plain RuntimeError).
    peer_died = RuntimeError(
        "[third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[127.0.0.1]:9418. This is typically caused by a remote worker crashing."
    )
    assert is_collective_failure(peer_died)
    assert is_collective_failure(torch.distributed.DistBackendError("NCCL error"))
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_collective_failure(TrainingDivergedError("training loss became nan"))
