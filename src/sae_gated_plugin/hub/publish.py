"""Publishing a Gated SAE folder to the Hub as one atomic commit: ``<sae_id>/`` files (secrets
stripped), plus the repo's model card and index, both regenerated to list every SAE in it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from sae_gated_plugin.arch.artifacts import (
    CFG_FILENAME,
    EVAL_FILENAME,
    GATED_ARCHITECTURES,
    SPARSITY_FILENAME,
    TRAIN_CONFIG_FILENAME,
    WEIGHTS_FILENAME,
    validate_sae_folder,
)
from sae_gated_plugin.arch.schema import ARCHITECTURE
from sae_gated_plugin.convert.folders import provenance, with_metadata
from sae_gated_plugin.convert.saelens import renamed_cfg
from sae_gated_plugin.errors import CorruptArtifactError, GatedPluginError
from sae_gated_plugin.hub import card as model_card
from sae_gated_plugin.hub.secrets import secret_token, strip_secrets
from sae_gated_plugin.hub.steps import HubPublishError, check_repo_id, hub_step
from sae_gated_plugin.io import one_line, read_json, read_text

RUNNER_CFG_FILENAME = "runner_cfg.json"
README_FILENAME = "README.md"
_SIDE_FILES = (RUNNER_CFG_FILENAME, TRAIN_CONFIG_FILENAME, EVAL_FILENAME)
_MODEL_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME)
SAE_FILES = (*_MODEL_FILES, *_SIDE_FILES)
"""Files a push manages inside ``<sae_id>/`` (stale ones from an earlier push are deleted)."""

_ROOT_FILES = (README_FILENAME, model_card.INDEX_FILENAME, ".gitattributes")
_NOTHING_SENT = "Nothing was committed."


def portable_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A gated_paper cfg.json as SAELens's built-in ``gated`` (as ``convert --to gated`` writes)."""
    return with_metadata(renamed_cfg(cfg, "gated"), provenance(cfg, "gated"), None)


def _read_side_file(path: Path) -> Any:
    if path.suffix == ".json":
        return read_json(path, error=CorruptArtifactError, expect_object=False)
    text = read_text(path, what="YAML file", error=CorruptArtifactError)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CorruptArtifactError(f"{path}: not valid YAML ({one_line(exc)})") from None


def _dump(value: Any, filename: str) -> bytes:
    if filename.endswith(".json"):
        return (json.dumps(value, indent=2) + "\n").encode()
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).encode()


def _collect_files(
    folder: Path, cfg: dict[str, Any], sae_id: str, portable: bool
) -> tuple[dict[str, bytes], model_card.SAEEntry, list[str]]:
    """The files to upload (name -> bytes), the SAE's card entry, and the secret keys removed."""
    files = {n: (folder / n).read_bytes() for n in _MODEL_FILES if (folder / n).is_file()}
    if portable and cfg["architecture"] == ARCHITECTURE:
        cfg = portable_cfg(cfg)
        files[CFG_FILENAME] = _dump(cfg, CFG_FILENAME)
    removed: list[str] = []
    side: dict[str, dict[str, Any]] = {}
    for name in _SIDE_FILES:
        path = folder / name
        if not os.path.lexists(path):  # present but unreadable (a folder, a broken link) is refused
            continue
        cleaned, dropped = strip_secrets(_read_side_file(path))
        removed += [f"{name}:{key}" for key in dropped]
        if isinstance(cleaned, dict):
            side[name] = cleaned
        files[name] = _dump(cleaned, name) if dropped else path.read_bytes()
    # The runner's values win over the training config's.
    training = {**side.get(TRAIN_CONFIG_FILENAME, {}), **side.get(RUNNER_CFG_FILENAME, {})}
    entry = model_card.entry_from_files(sae_id, cfg, side.get(EVAL_FILENAME), training)
    return files, entry, removed


def _sae_id_for(folder: Path, cfg: dict[str, Any], sae_id: str | None) -> str:
    """The folder in the repo: ``sae_id`` if given, else the hook name in the metadata."""
    if cfg["architecture"] not in GATED_ARCHITECTURES:
        raise GatedPluginError(
            f"{folder / CFG_FILENAME}: architecture {cfg['architecture']!r} is not a gated SAE "
            f"(sae-gated push publishes {ARCHITECTURE!r} or 'gated' SAEs)"
        )
    if sae_id is None:
        sae_id = (cfg.get("metadata") or {}).get("hook_name")
        if not isinstance(sae_id, str) or not sae_id:
            raise GatedPluginError(
                f"{folder / CFG_FILENAME}: no metadata.hook_name to name the SAE by; "
                "pass sae_id (--sae-id)"
            )
    sae_id = sae_id.strip().strip("/")
    parts = sae_id.split("/")
    if any(not part or part.startswith(".") for part in parts):
        raise GatedPluginError(f"sae_id {sae_id!r} is not a valid folder name in a Hub repo")
    if parts[0] in _ROOT_FILES:
        raise GatedPluginError(f"sae_id {sae_id!r} clashes with the repo's {parts[0]} file")
    return sae_id


def _refused(repo_id: str, why: str) -> HubPublishError:
    return HubPublishError(f"Hub repo {repo_id!r}: {why}. {_NOTHING_SENT}")


def _download_text(api: HfApi, repo_id: str, filename: str, commit: str, cache: Path) -> str:
    path = api.hf_hub_download(repo_id, filename, revision=commit, cache_dir=cache)
    return Path(path).read_text(encoding="utf-8")  # UnicodeDecodeError is a ValueError


def _remote_entries(
    api: HfApi, repo_id: str, commit: str, siblings: set[str], cache: Path
) -> dict[str, model_card.SAEEntry]:
    """Every SAE folder in the repo at ``commit``: from the index, else from its files."""

    def json_file(filename: str) -> dict[str, Any] | None:
        if filename not in siblings:
            return None
        try:
            data = json.loads(_download_text(api, repo_id, filename, commit, cache))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    index: dict[str, model_card.SAEEntry] = {}
    if model_card.INDEX_FILENAME in siblings:
        with contextlib.suppress(ValueError):  # unreadable: rebuilt from the SAE folders
            text = _download_text(api, repo_id, model_card.INDEX_FILENAME, commit, cache)
            index = model_card.parse_index(text)
    suffix = "/" + CFG_FILENAME
    entries = {}
    for path in sorted(p for p in siblings if p.endswith(suffix)):
        sae_id = path[: -len(suffix)]
        if sae_id not in index:  # pushed by other tools, or the index was lost: read its files
            evaluation, training, cfg = (
                json_file(f"{sae_id}/{name}")
                for name in (EVAL_FILENAME, RUNNER_CFG_FILENAME, CFG_FILENAME)
            )
            index[sae_id] = model_card.entry_from_files(sae_id, cfg or {}, evaluation, training)
        entries[sae_id] = index[sae_id]
    return entries


def _read_remote_state(
    api: HfApi, repo_id: str, branch: str, private: bool, secret: str | None
) -> tuple[str, str, set[str], dict[str, model_card.SAEEntry], str | None]:
    """Create repo and branch if missing; return the full repo id, head, files, SAEs and README."""

    def step(action: str) -> Any:
        return hub_step(repo_id, action, secret, _NOTHING_SENT, HubPublishError)

    with step("creating the repo"):
        # The Hub completes a name without namespace with the user's: use the full id.
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if branch != "main":
        with step(f"creating branch {branch!r}"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
    with step(f"reading the repo at {branch!r}"):
        info = api.model_info(repo_id, revision=branch)
        if info.sha is None:  # the Hub always sends it; a commit needs it as the parent
            raise HubPublishError(f"Hub repo {repo_id!r}: no commit id for {branch!r}")
        siblings = {s.rfilename for s in (info.siblings or [])}
        if private and info.private is False:
            public = f"Hub repo {repo_id!r} already exists and is public: private=True only"
            warnings.warn(f"{public} applies when the repo is created", UserWarning, stacklevel=3)
        with tempfile.TemporaryDirectory(prefix="sae-gated-push-") as tmp:
            entries = _remote_entries(api, repo_id, info.sha, siblings, Path(tmp))
            readme = None
            if README_FILENAME in siblings:
                try:
                    readme = _download_text(api, repo_id, README_FILENAME, info.sha, Path(tmp))
                except UnicodeDecodeError:
                    raise _refused(
                        repo_id, "README.md is not UTF-8 text; fix or delete it"
                    ) from None
    return repo_id, info.sha, siblings, entries, readme


def push_sae(
    sae_path: str | Path,
    repo_id: str,
    *,
    sae_id: str | None = None,
    revision: str | None = None,
    private: bool = False,
    portable: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Publish a trained SAE folder to ``repo_id`` in one commit; return the SAE's URL.

    ``sae_path`` holds cfg.json and sae_weights.safetensors, optionally sparsity.safetensors,
    runner_cfg.json, train_config.yaml and evaluation.json. ``sae_id`` defaults to the hook name
    in cfg.json's metadata; ``revision`` is a branch (created when missing; default main);
    ``private`` applies when the repo is created; ``portable`` publishes as SAELens's built-in
    ``gated``; ``token`` and ``endpoint`` default to huggingface_hub's (HF_TOKEN, HF_ENDPOINT).

    Raises:
        CorruptArtifactError: the folder is not a valid SAE (nothing is uploaded).
        HubPublishError: the Hub refused or could not be reached (the repo is as it was).
    """
    repo_id = check_repo_id(repo_id)
    folder = Path(sae_path)
    cfg = validate_sae_folder(folder)
    sae_id = _sae_id_for(folder, cfg, sae_id)
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        raise GatedPluginError(f"revision {revision!r} is a commit id: pass a branch name")
    branch = revision or "main"
    files, entry, removed = _collect_files(folder, cfg, sae_id, portable)

    secret = secret_token(token)
    summary = commit_message or f"Add SAE {sae_id} ({entry.form}) with sae-gated-plugin"
    api = HfApi(endpoint=endpoint, token=token)
    repo_id, head, siblings, entries, readme = _read_remote_state(
        api, repo_id, branch, private, secret
    )
    entries[sae_id] = entry
    try:
        card = model_card.render_card(repo_id, entries, readme, revision=branch)
    except GatedPluginError as exc:
        raise _refused(repo_id, f"{exc}; fix or delete it") from None
    uploads = {f"{sae_id}/{name}": content for name, content in files.items()}
    uploads[README_FILENAME] = card.encode()
    uploads[model_card.INDEX_FILENAME] = model_card.render_index(entries).encode()
    description = f"Files: {', '.join(files)} in {sae_id}/, README.md, {model_card.INDEX_FILENAME}."
    if removed:
        description += f" Secret-looking keys left out: {', '.join(removed)}."
    blobs = [*uploads.values(), (summary + description).encode()]
    if secret and any(secret.encode() in blob for blob in blobs):
        raise _refused(repo_id, "a file to upload contains the Hub token; refusing to push")
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
        for path, data in uploads.items()
    ]
    operations += [  # stale files of an earlier push of this SAE
        CommitOperationDelete(path_in_repo=f"{sae_id}/{name}")
        for name in SAE_FILES
        if name not in files and f"{sae_id}/{name}" in siblings
    ]
    unchanged = "The push is a single commit, so the repo is unchanged."
    with hub_step(
        repo_id, f"committing {sae_id!r} to {branch!r}", secret, unchanged, HubPublishError
    ):
        api.create_commit(
            repo_id,
            operations,
            commit_message=summary,
            commit_description=description,
            revision=branch,
            parent_commit=head,
        )
    return f"{api.endpoint}/{repo_id}/tree/{quote(branch, safe='')}/{quote(sae_id)}"
