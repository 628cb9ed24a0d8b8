"""Evaluation windows from a text or pre-tokenized dataset, cut exactly as SAELens trains."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from sae_lens.pretokenize_runner import get_special_token_from_cfg
from sae_lens.tokenization_and_batching import concat_and_batch_sequences

from sae_gated_plugin.errors import GatedPluginError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def _column(row: Any, column: str | None) -> str | None:
    """The column to read from rows like ``row`` (None for plain strings)."""
    if not isinstance(row, Mapping):
        return None
    if column is not None:
        if column not in row:
            raise GatedPluginError(f"dataset rows have no column {column!r}: {sorted(row)}")
        return column
    for candidate in ("tokens", "input_ids", "text", "problem"):  # ActivationsStore's order
        if candidate in row:
            return candidate
    raise GatedPluginError(
        f"dataset rows need a 'tokens', 'input_ids', 'text' or 'problem' column: {sorted(row)}"
    )


def eval_tokens_from_dataset(
    model: HookedTransformer,
    dataset: Iterable[Any],
    *,
    context_size: int,
    n_sequences: int,
    prepend_bos: bool = True,
    sequence_separator_token: int | Literal["bos", "eos", "sep"] | None = "bos",
    disable_concat_sequences: bool = False,
    column: str | None = None,
) -> torch.Tensor:
    """The first ``n_sequences`` windows of ``context_size`` tokens (a CPU long tensor), cut as
    SAELens's ``ActivationsStore`` cuts them, with its options of the same names.

    Text documents (rows or plain strings, read lazily) are tokenized without BOS, joined with
    ``sequence_separator_token`` and cut by SAELens's ``concat_and_batch_sequences``; with
    ``prepend_bos`` every window starts with BOS. A pre-tokenized column (``tokens`` or
    ``input_ids``) gives one truncated window per row, no BOS added.
    """
    if context_size < 1 or n_sequences < 1:
        raise GatedPluginError(
            f"context_size and n_sequences must be positive, got {context_size}, {n_sequences}"
        )
    rows = iter(dataset)
    try:
        first = next(rows)
    except StopIteration:
        raise GatedPluginError("the dataset is empty") from None
    key = _column(first, column)
    values = (row if key is None else row[key] for row in itertools.chain([first], rows))
    if key in ("tokens", "input_ids"):
        windows = _pretokenized_windows(values, context_size)
    else:
        tokenizer = getattr(model, "tokenizer", None)
        bos_id = None if tokenizer is None else tokenizer.bos_token_id
        if prepend_bos and bos_id is None:
            raise GatedPluginError("prepend_bos=True but the model's tokenizer has no BOS token")
        windows = concat_and_batch_sequences(
            tokens_iterator=_document_tokens(model, values, key),
            context_size=context_size,
            begin_batch_token_id=bos_id if prepend_bos else None,
            begin_sequence_token_id=None,
            sequence_separator_token_id=(
                None
                if tokenizer is None
                else get_special_token_from_cfg(sequence_separator_token, tokenizer)
            ),
            disable_concat_sequences=disable_concat_sequences,
        )
    collected = [
        w.to(dtype=torch.long, device="cpu") for w in itertools.islice(windows, n_sequences)
    ]
    if len(collected) < n_sequences:
        raise GatedPluginError(
            f"the dataset gives only {len(collected)} windows of {context_size} tokens, "
            f"{n_sequences} requested"
        )
    return torch.stack(collected)


def _pretokenized_windows(values: Iterator[Any], context_size: int) -> Iterator[torch.Tensor]:
    """One window per pre-tokenized row, truncated to ``context_size`` (as SAELens)."""
    for value in values:
        row_tokens = torch.as_tensor(value, dtype=torch.long).reshape(-1)
        if row_tokens.shape[0] < context_size:
            raise GatedPluginError(
                f"a pre-tokenized row has {row_tokens.shape[0]} tokens, fewer than "
                f"context_size {context_size}"
            )
        yield row_tokens[:context_size]


def _document_tokens(
    model: HookedTransformer, values: Iterator[Any], key: str | None
) -> Iterator[torch.Tensor]:
    """Each text document's tokens without BOS, as ``ActivationsStore`` tokenizes them."""
    for value in values:
        if not isinstance(value, str):
            raise GatedPluginError(f"expected text in column {key!r}, got {type(value).__name__}")
        tokens = model.to_tokens(value, prepend_bos=False, truncate=False, move_to_device=False)
        yield tokens.squeeze(0).cpu()
