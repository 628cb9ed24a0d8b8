"""``run.train.train`` as the two ranks of a torchrun launch (gloo, CPU), end to end.

Each rank runs the real pipeline - SAELens's runner and ActivationsStore on its shard of the
embedded corpus, checkpoints, the final save and evaluation - with a tiny random language
model that uses SmolLM2's tokenizer (the embedded checkpoint's), so that a run takes seconds.
Checks: rank 0 alone writes the output, whose metadata records world_size; checkpoints hold
every rank's data position; a two-rank checkpoint resumes in one process and the other way
round; a latent-sharded run saves an ordinary full-width SAE that loads and evaluates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_helpers import run_ranks, tiny_language_model
from sae_lens import SAE
from safetensors.torch import load_file

from sae_gated_plugin.arch.artifacts import EVAL_FILENAME
from sae_gated_plugin.distributed.context import DistributedContext
from sae_gated_plugin.distributed.data_shards import SHARDS_FILENAME
from sae_gated_plugin.distributed.launch import train_distributed
from sae_gated_plugin.run.config import parse_config
from sae_gated_plugin.run.train import TrainResult, train

pytestmark = [
    pytest.mark.integration,
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

BATCH, STEPS, D_SAE = 64, 8, 64


def settings(output: Path, **overrides: Any) -> dict[str, Any]:
    """A run of 8 steps of 64 tokens at the tiny model's residual stream, 3 checkpoints."""
    return {
        "output_path": str(output),
        "hook_name": "blocks.0.hook_resid_post",
        "context_size": 32,
        "training_tokens": STEPS * BATCH,
        "train_batch_size_tokens": BATCH,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 4,
        "n_batches_for_norm_estimate": 2,
        "n_checkpoints": 3,
        "device": "cpu",
        "lr": 1e-3,
        "sae": {"d_sae": D_SAE, "l1_coefficient": 1.0},
        "eval": {"enabled": True, "n_sequences": 4, "batch_size": 2},
        **overrides,
    }


def _train_worker(
    ctx: DistributedContext, config: dict[str, Any], resume: str | None, out: Path
) -> None:
    result = train_distributed(
        parse_config(config),
        resume_from=Path(resume) if resume else None,
        model=tiny_language_model(),
    )
    torch.save(
        {
            "report": result.report is not None,
            "d_sae": result.trained_sae.cfg.d_sae,
            "n_params": sum(p.numel() for p in result.trained_sae.parameters()),
        },
        out / f"result{ctx.rank}.pt",
    )


def checkpoints(output: Path) -> list[Path]:
    folder = output / "checkpoints"
    return sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def unfinish(output: Path) -> None:
    """Remove a finished run's final SAE, as if it had stopped after its last checkpoint: a
    finished output folder is never resumed into."""
    for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
        (output / name).unlink()


def train_here(config: dict[str, Any], resume: Path | None = None) -> TrainResult:
    """One process, no torchrun variables: the unchanged single-process path."""
    assert "WORLD_SIZE" not in os.environ
    return train(parse_config(config), resume_from=resume, model=tiny_language_model())


def test_data_parallel_run_writes_once_and_resumes_with_any_number_of_ranks(
    tmp_path: Path,
) -> None:
    output = tmp_path / "two"
    run_ranks(_train_worker, 2, settings(output), None, tmp_path, with_group=False)

    results = [torch.load(tmp_path / f"result{r}.pt") for r in range(2)]
    assert [r["report"] for r in results] == [True, False]  # rank 0 alone evaluates
    cfg = json.loads((output / "cfg.json").read_text())
    assert cfg["d_sae"] == D_SAE
    assert cfg["metadata"]["world_size"] == 2
    assert cfg["metadata"]["latent_sharding"] is False
    assert (output / EVAL_FILENAME).is_file()
    saved = checkpoints(output)
    assert [int(p.name) for p in saved] == [3 * BATCH, 5 * BATCH, 7 * BATCH]
    assert not [p for p in (output / "checkpoints").iterdir() if p.name.startswith(".")]
    for folder in saved:
        shards = json.loads((folder / SHARDS_FILENAME).read_text())
        positions = shards["n_dataset_processed"]
        assert shards["world_size"] == 2 and len(positions) == 2 and min(positions) > 0
        state = load_file(folder / "activations_store_state.safetensors")
        assert int(state["n_dataset_processed"]) == sum(positions)

    # The middle checkpoint resumes in one process, which skips the rows both ranks read.
    unfinish(output)
    single = settings(output)
    result = train_here(single, resume=saved[1])
    assert isinstance(SAE.load_from_disk(output), SAE)
    assert result.report is not None
    latest = checkpoints(output)[-1]
    assert int(latest.name) > int(saved[1].name)
    assert not (latest / SHARDS_FILENAME).exists()  # written by SAELens's own store

    # A one-process checkpoint resumes on two ranks: each skips its share of the rows read.
    read = int(load_file(latest / "activations_store_state.safetensors")["n_dataset_processed"])
    unfinish(output)
    more = settings(output, training_tokens=(STEPS + 4) * BATCH, n_checkpoints=5)
    run_ranks(_train_worker, 2, more, str(latest), tmp_path, with_group=False)
    after = checkpoints(output)[-1]
    positions = json.loads((after / SHARDS_FILENAME).read_text())["n_dataset_processed"]
    assert positions[0] >= (read + 1) // 2 and positions[1] >= read // 2


def test_latent_sharded_run_saves_a_full_width_sae_that_resumes_anywhere(
    tmp_path: Path,
) -> None:
    output = tmp_path / "sharded"
    config = settings(output, distributed={"latent_sharding": True})
    run_ranks(_train_worker, 2, config, None, tmp_path, with_group=False)

    results = [torch.load(tmp_path / f"result{r}.pt") for r in range(2)]
    assert results[0]["report"] and not results[1]["report"]
    # Rank 0 returns the gathered SAE, rank 1 its half of the latents.
    assert [r["d_sae"] for r in results] == [D_SAE, D_SAE // 2]
    cfg = json.loads((output / "cfg.json").read_text())
    assert cfg["d_sae"] == D_SAE and cfg["metadata"]["latent_sharding"] is True
    sae = SAE.load_from_disk(output)
    norms = sae.W_dec.detach().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert sae.W_enc.shape == (16, D_SAE)
    report = json.loads((output / EVAL_FILENAME).read_text())
    assert report  # evaluated on rank 0 with the gathered SAE

    # The full-width checkpoint resumes in one process ...
    middle = checkpoints(output)[1]
    unfinish(output)
    result = train_here(config, resume=middle)
    assert result.trained_sae.cfg.d_sae == D_SAE
    # ... and latent-sharded again on two ranks.
    unfinish(output)
    run_ranks(_train_worker, 2, config, str(middle), tmp_path, with_group=False)
    assert torch.load(tmp_path / "result0.pt")["d_sae"] == D_SAE
