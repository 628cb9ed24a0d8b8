"""Loading an SAE back from the Hub: only JSON and safetensors, checked before loading."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import EntryNotFoundError
from sae_lens import SAE

from sae_gated_plugin.arch.artifacts import (
    CFG_FILENAME,
    SPARSITY_FILENAME,
    WEIGHTS_FILENAME,
    validate_sae_folder,
)
from sae_gated_plugin.arch.registry import register
from sae_gated_plugin.errors import CorruptArtifactError
from sae_gated_plugin.hub.card import INDEX_FILENAME as RELEASE_CONFIG_FILENAME
from sae_gated_plugin.hub.secrets import secret_token
from sae_gated_plugin.hub.steps import HubLoadError, check_repo_id, hub_step


def load_sae(
    repo_id: str,
    sae_id: str,
    *,
    revision: str | None = None,
    device: str = "cpu",
    token: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
) -> SAE[Any]:
    """Download one SAELens-format SAE (cfg.json + safetensors only), validate it and load it;
    unlike ``SAE.from_pretrained`` it takes a ``revision`` and checks the files first.

    Raises:
        CorruptArtifactError: a downloaded file is corrupted or does not match cfg.json.
        HubLoadError: no such repo, revision or SAE, or the Hub could not be reached.
    """
    register()
    repo_id, sae_id = check_repo_id(repo_id), sae_id.strip("/")
    api = HfApi(endpoint=endpoint, token=token)
    secret = secret_token(token)

    def fetch(name: str, rev: str | None) -> Path:
        filename = f"{sae_id}/{name}"
        return Path(api.hf_hub_download(repo_id, filename, revision=rev, cache_dir=cache_dir))

    # The release config first: the Hub counts a repo's downloads by requests for it. Repos
    # not published by the plugin have none.
    step = f"downloading {RELEASE_CONFIG_FILENAME}"
    with hub_step(repo_id, step, secret, "", HubLoadError), contextlib.suppress(EntryNotFoundError):
        api.hf_hub_download(
            repo_id, RELEASE_CONFIG_FILENAME, revision=revision, cache_dir=cache_dir
        )
    with hub_step(repo_id, f"downloading {sae_id}/{CFG_FILENAME}", secret, "", HubLoadError):
        try:
            cfg_path = fetch(CFG_FILENAME, revision)
        except EntryNotFoundError:
            raise HubLoadError(
                f"Hub repo {repo_id!r} has no SAE {sae_id!r} (no {sae_id}/{CFG_FILENAME}"
                f"{' at ' + revision if revision else ''})"
            ) from None
    # Pin the other files to the commit cfg.json came from (the snapshot folder's name).
    commit = cfg_path.parents[len(sae_id.split("/"))].name
    pinned = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else revision
    with hub_step(repo_id, f"downloading {sae_id}/{WEIGHTS_FILENAME}", secret, "", HubLoadError):
        fetch(WEIGHTS_FILENAME, pinned)
        with contextlib.suppress(EntryNotFoundError):
            fetch(SPARSITY_FILENAME, pinned)
    try:
        validate_sae_folder(cfg_path.parent)
    except CorruptArtifactError as exc:
        where = f"{repo_id}/{sae_id}" + (f"@{revision}" if revision else "")
        raise CorruptArtifactError(f"{where}: {exc}") from None
    return SAE.load_from_disk(cfg_path.parent, device=device)
