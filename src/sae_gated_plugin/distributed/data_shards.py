"""Rank-disjoint data: each rank's ``ActivationsStore`` streams its own shard of the corpus.

Checkpoints hold the sum of the ranks' positions in SAELens's file (what one process resuming
skips) and each rank's in ``data_shards.json``. Resumed on another number of ranks, each skips
the rows of its new shard before that sum: exact, up to the rows the ranks were apart, for an
interleaved split; approximate for a streamed dataset split by files.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import ACTIVATIONS_STORE_STATE_FILENAME
from sae_lens.training.activations_store import ActivationsStore
from safetensors.torch import load_file, save_file

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import read_json
from sae_gated_plugin.run.saelens_bridge import retype_store

SHARDS_FILENAME = "data_shards.json"  # per-rank data positions of a distributed checkpoint


def shard_dataset(dataset: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s share of a Hugging Face ``Dataset`` (interleaved rows) or
    ``IterableDataset`` (``split_dataset_by_node``)."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    if world_size == 1:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    if not isinstance(dataset, datasets.Dataset):
        raise GatedPluginError(f"cannot split a {type(dataset).__name__} across ranks")
    if len(dataset) < world_size:
        raise GatedPluginError(
            f"the training dataset has {len(dataset)} rows, fewer than the {world_size} "
            "ranks that would share it"
        )
    return dataset.shard(num_shards=world_size, index=rank, contiguous=False)


def resume_position(positions: list[int], rank: int, world_size: int) -> int:
    """Rows rank ``rank`` of ``world_size`` skips to resume a checkpoint whose ranks had read
    ``positions`` rows each."""
    if len(positions) == world_size:
        return positions[rank]
    # Rows r, r + W, ... of the corpus that come before row sum(positions).
    return max(0, (sum(positions) - rank + world_size - 1) // world_size)


def read_positions(checkpoint: Path) -> list[int]:
    """Per-rank data positions saved in ``checkpoint`` (one entry for a one-process run)."""
    shards_file = checkpoint / SHARDS_FILENAME
    if not shards_file.exists():
        state = load_file(checkpoint / ACTIVATIONS_STORE_STATE_FILENAME)
        return [int(state["n_dataset_processed"].item())]
    positions = read_json(shards_file).get("n_dataset_processed")
    if not isinstance(positions, list) or not all(isinstance(p, int) for p in positions):
        raise GatedPluginError(f"{shards_file}: n_dataset_processed is not a list of ints")
    return positions


def _save_position(path: Path, position: int) -> None:
    save_file({"n_dataset_processed": torch.tensor(position)}, str(path))


class ShardedActivationsStore(ActivationsStore):
    """SAELens's ``ActivationsStore`` reading one rank's shard (made by ``distribute_store``)."""

    shard_rank: int
    shard_count: int
    rank_positions: list[int] | None
    """Every rank's ``n_dataset_processed``, gathered just before a checkpoint is saved."""

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Write the summed position (SAELens's file) and every rank's (``data_shards.json``)."""
        positions = self.rank_positions or [self.n_dataset_processed]
        _save_position(Path(checkpoint_path) / ACTIVATIONS_STORE_STATE_FILENAME, sum(positions))
        state = {"world_size": self.shard_count, "n_dataset_processed": positions}
        (Path(checkpoint_path) / SHARDS_FILENAME).write_text(json.dumps(state), encoding="utf-8")

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Skip this rank's shard forward to where the checkpoint says it should resume."""
        positions = read_positions(Path(checkpoint_path))
        # SAELens's load() reads the target from a file and fast-forwards the token stream.
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / ACTIVATIONS_STORE_STATE_FILENAME
            _save_position(path, resume_position(positions, self.shard_rank, self.shard_count))
            self.load(str(path))


def distribute_store(
    store: ActivationsStore, rank: int, world_size: int, batch_size_tokens: int
) -> ShardedActivationsStore:
    """Make a freshly built store read rank ``rank``'s shard in batches of
    ``batch_size_tokens`` (the global batch divided by the number of ranks)."""
    if store.cached_activation_dataset is not None:
        store.cached_activation_dataset = store.cached_activation_dataset.shard(
            num_shards=world_size, index=rank, contiguous=True
        )
    elif store.dataset is not None:
        # The store's token stream is a generator not yet started: it reads the new dataset.
        store.dataset = shard_dataset(store.dataset, rank, world_size)
    store.train_batch_size_tokens = batch_size_tokens
    sharded: ShardedActivationsStore = retype_store(store, ShardedActivationsStore)
    sharded.shard_rank, sharded.shard_count, sharded.rank_positions = rank, world_size, None
    return sharded
