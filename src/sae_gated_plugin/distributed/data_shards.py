"""Rank-disjoint data for distributed runs: each rank's SAELens ``ActivationsStore`` streams its
own shard of the corpus, and checkpoints record where every rank is.

Sharding. A map-style dataset (the embedded corpus, a non-streamed Hub dataset) is split
interleaved: rank r of W reads rows r, r + W, r + 2W, ... so that together the ranks read the
corpus front to back, as one process would. A streamed Hub dataset is split by
``datasets.distributed.split_dataset_by_node``: whole files per rank when their number divides
by W, else interleaved rows. Cached activations are split into W contiguous blocks.

Positions. SAELens's checkpoint file ``activations_store_state.safetensors`` holds one count,
``n_dataset_processed`` (rows read). A distributed checkpoint stores there the sum over ranks -
what one process resuming it should skip - and every rank's own count in ``data_shards.json``.
Resuming with the same number of ranks puts each rank back where it was. With another number
(1 included) each rank skips the rows of its new shard that come before that sum: for an
interleaved split that continues the corpus where the ranks had reached, up to the few rows
they were apart; for a split by files it is an approximation (some rows may be seen twice or
skipped). As in SAELens, the shuffle buffer's contents are not saved, and a run from cached
activations restarts the cache on resume.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import ACTIVATIONS_STORE_STATE_FILENAME
from sae_lens.training.activations_store import ActivationsStore
from safetensors.torch import save_file

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import read_json
from sae_gated_plugin.run.saelens_bridge import retype_store

SHARDS_FILENAME = "data_shards.json"
"""Per-rank data positions of a distributed checkpoint."""


def shard_dataset(dataset: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s share of a Hugging Face ``Dataset`` (interleaved rows) or
    ``IterableDataset`` (``split_dataset_by_node``)."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    if world_size == 1:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    if isinstance(dataset, datasets.Dataset):
        if len(dataset) < world_size:
            raise GatedPluginError(
                f"the training dataset has {len(dataset)} rows, fewer than the {world_size} "
                "ranks that would share it"
            )
        return dataset.shard(num_shards=world_size, index=rank, contiguous=False)
    raise GatedPluginError(f"cannot split a {type(dataset).__name__} across ranks")


def resume_position(positions: list[int], rank: int, world_size: int) -> int:
    """Rows rank ``rank`` of ``world_size`` skips to resume a checkpoint whose ranks had read
    ``positions`` rows each (one entry per rank of the run that saved it)."""
    if len(positions) == world_size:
        return positions[rank]
    total = sum(positions)
    # Rows r, r + W, ... of the corpus that come before row `total`.
    return max(0, (total - rank + world_size - 1) // world_size)


def read_positions(checkpoint: Path) -> list[int]:
    """Per-rank data positions saved in ``checkpoint`` (one entry for a one-process run)."""
    shards_file = checkpoint / SHARDS_FILENAME
    if shards_file.exists():
        positions = read_json(shards_file).get("n_dataset_processed")
        if not isinstance(positions, list) or not all(isinstance(p, int) for p in positions):
            raise GatedPluginError(f"{shards_file}: n_dataset_processed is not a list of ints")
        return positions
    from safetensors.torch import load_file

    state = load_file(checkpoint / ACTIVATIONS_STORE_STATE_FILENAME)
    return [int(state["n_dataset_processed"].item())]


class ShardedActivationsStore(ActivationsStore):
    """SAELens's ``ActivationsStore`` reading one rank's shard, whose checkpoints hold every
    rank's position. Made by re-typing a built store with ``distribute_store``."""

    shard_rank: int
    shard_count: int
    rank_positions: list[int] | None
    """Every rank's ``n_dataset_processed``, gathered just before a checkpoint is saved."""

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Write the summed position (SAELens's file) and every rank's (``data_shards.json``)."""
        checkpoint = Path(checkpoint_path)
        positions = self.rank_positions or [self.n_dataset_processed]
        save_file(
            {"n_dataset_processed": torch.tensor(sum(positions))},
            str(checkpoint / ACTIVATIONS_STORE_STATE_FILENAME),
        )
        state = {"world_size": self.shard_count, "n_dataset_processed": positions}
        (checkpoint / SHARDS_FILENAME).write_text(json.dumps(state), encoding="utf-8")

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Skip this rank's shard forward to where the checkpoint says it should resume."""
        target = resume_position(
            read_positions(Path(checkpoint_path)), self.shard_rank, self.shard_count
        )
        # SAELens's load() reads the target from a file and fast-forwards the token stream.
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / ACTIVATIONS_STORE_STATE_FILENAME)
            save_file({"n_dataset_processed": torch.tensor(target)}, path)
            self.load(path)


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
