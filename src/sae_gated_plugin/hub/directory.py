"""``sae-gated directory-entry REPO_ID``: a release's entry for SAELens's directory
(``pretrained_saes.yaml``), built from the release's config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError

from sae_gated_plugin.hub.card import INDEX_FILENAME, RELEASE_FORMAT, base_model_id
from sae_gated_plugin.hub.secrets import secret_token
from sae_gated_plugin.hub.steps import HubLoadError, check_repo_id, hub_step


def release_config(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The release config.json of a repo ``sae-gated push`` made; HubLoadError if it has none."""
    repo_id = check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_step(repo_id, f"downloading {INDEX_FILENAME}", secret_token(token), "", HubLoadError):
        try:
            path = api.hf_hub_download(
                repo_id, INDEX_FILENAME, revision=revision, cache_dir=cache_dir
            )
        except EntryNotFoundError:
            raise HubLoadError(
                f"Hub repo {repo_id!r} has no {INDEX_FILENAME}: not a release made by "
                "`sae-gated push`"
            ) from None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:
        config = None
    if not isinstance(config, dict) or config.get("format") != RELEASE_FORMAT:
        raise HubLoadError(f"Hub repo {repo_id!r}: {INDEX_FILENAME} is not a sae-gated release")
    return config


def directory_entry(repo_id: str, config: dict[str, Any], release: str | None = None) -> str:
    """The YAML of the release's ``pretrained_saes.yaml`` entry (keyed ``release``, default the
    repo's name): repo_id, model, conversion_func (null), saes and links."""
    saes = [s for s in config.get("saes", []) if isinstance(s, dict) and s.get("sae_id")]
    models = sorted({str(s["model_name"]) for s in saes if s.get("model_name")})
    links: dict[str, str] = {}
    hub_model = next((base_model_id(m) for m in models if base_model_id(m)), None)
    if hub_model:
        links["model"] = f"https://huggingface.co/{hub_model}"
    entry = {
        "repo_id": repo_id,
        "model": models[0] if len(models) == 1 else ", ".join(models) or None,
        "conversion_func": None,
        "links": links,
        "saes": [
            {
                "id": s["sae_id"],
                "path": s.get("path") or s["sae_id"],
                "l0": s.get("l0"),
                "variance_explained": s.get("explained_variance"),
                "neuronpedia": None,
            }
            for s in saes
        ],
    }
    name = release or repo_id.split("/")[-1]
    return yaml.safe_dump({name: entry}, sort_keys=False, allow_unicode=True)
