"""Publishing a Gated SAE folder to the Hub as one atomic commit: ``<sae_id>/`` files (secrets
stripped), plus the repo's model card and index, both regenerated to list every SAE in it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
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
from sae_gated_plugin.hub.figure import release_figure
from sae_gated_plugin.hub.release import ReleaseSAE, default_sae_id, unique_ids
from sae_gated_plugin.hub.secrets import secret_token, strip_secrets
from sae_gated_plugin.hub.steps import HubPublishError, check_repo_id, hub_step
from sae_gated_plugin.io import one_line, read_json, read_text

RUNNER_CFG_FILENAME = "runner_cfg.json"
README_FILENAME = "README.md"
NEURONPEDIA_FOLDER = "neuronpedia"
_SIDE_FILES = (RUNNER_CFG_FILENAME, TRAIN_CONFIG_FILENAME, EVAL_FILENAME)
_MODEL_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME)
SAE_FILES = (*_MODEL_FILES, *_SIDE_FILES)
"""Files a push manages inside ``<sae_id>/`` (stale ones from an earlier push are deleted)."""

_ROOT_FILES = (
    README_FILENAME,
    model_card.INDEX_FILENAME,
    model_card.LEGACY_INDEX_FILENAME,
    model_card.FIGURE_FILENAME,
    ".gitattributes",
)
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
    folder: Path,
    cfg: dict[str, Any],
    sae_id: str,
    portable: bool,
    line_metrics: dict[str, Any] | None = None,
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
    evaluation = {**(line_metrics or {}), **side.get(EVAL_FILENAME, {})}
    entry = model_card.entry_from_files(sae_id, cfg, evaluation, training)
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
    if model_card.LEGACY_INDEX_FILENAME in siblings:
        with contextlib.suppress(ValueError):  # unreadable: rebuilt from the SAE folders
            text = _download_text(api, repo_id, model_card.LEGACY_INDEX_FILENAME, commit, cache)
            index = model_card.parse_index(text)
    if model_card.INDEX_FILENAME in siblings:
        release = json_file(model_card.INDEX_FILENAME)
        if release is None or release.get("format") != model_card.RELEASE_FORMAT:
            raise _refused(  # another library's config.json: never overwrite it
                repo_id,
                f"its {model_card.INDEX_FILENAME} is not a sae-gated release config; "
                "push to another repo",
            )
        index.update(model_card.parse_index(json.dumps(release)))
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


def _prepare(
    saes: Sequence[ReleaseSAE], portable: bool, with_eval: bool
) -> tuple[dict[str, dict[str, bytes]], dict[str, model_card.SAEEntry], list[str]]:
    """Validate every folder and name every SAE before any request: (files per sae_id, card
    entries, secret keys removed)."""
    checked = [(sae, validate_sae_folder(sae.folder)) for sae in saes]
    names = []
    for sae, cfg in checked:
        sae_id = sae.sae_id
        if sae_id is None and (len(saes) > 1 or sae.metrics):
            sae_id = default_sae_id(cfg, {**sae.metrics, **_local_eval(sae.folder)})
        names.append((_sae_id_for(sae.folder, cfg, sae_id), str(cfg["architecture"])))
    ids = unique_ids(names)
    files: dict[str, dict[str, bytes]] = {}
    entries: dict[str, model_card.SAEEntry] = {}
    removed: list[str] = []
    for sae_id, (sae, cfg) in zip(ids, checked, strict=True):
        files[sae_id], entries[sae_id], dropped = _collect_files(
            sae.folder, cfg, sae_id, portable, sae.metrics
        )
        if with_eval:
            files[sae_id].update(_neuronpedia_files(sae.folder))
        removed += [f"{sae_id}/{key}" for key in dropped]
    return files, entries, removed


def _local_eval(folder: Path) -> dict[str, Any]:
    path = folder / EVAL_FILENAME
    if not path.is_file():
        return {}
    report = read_json(path, error=CorruptArtifactError, expect_object=False)
    return report if isinstance(report, dict) else {}


def _neuronpedia_files(folder: Path) -> dict[str, bytes]:
    """The ``neuronpedia/`` export beside the SAE, as ``neuronpedia/<relative path>``."""
    export = folder / NEURONPEDIA_FOLDER
    if not export.is_dir():
        return {}
    return {
        f"{NEURONPEDIA_FOLDER}/{path.relative_to(export).as_posix()}": path.read_bytes()
        for path in sorted(export.rglob("*"))
        if path.is_file()
    }


def _operations(
    uploads: dict[str, bytes],
    files: dict[str, dict[str, bytes]],
    siblings: set[str],
    has_figure: bool,
) -> list[CommitOperationAdd | CommitOperationDelete]:
    """The commit: every upload, and deletions of files this push makes stale (an earlier
    push's files of the same SAEs, the legacy index, a figure with nothing left to plot)."""
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
        for path, data in uploads.items()
    ]
    stale = [
        f"{sae_id}/{name}"
        for sae_id, sae_files in files.items()
        for name in SAE_FILES
        if name not in sae_files
    ]
    stale.append(model_card.LEGACY_INDEX_FILENAME)
    if not has_figure:
        stale.append(model_card.FIGURE_FILENAME)
    operations += [CommitOperationDelete(path_in_repo=p) for p in stale if p in siblings]
    return operations


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
    license: str | None = None,
) -> str:
    """Publish a trained SAE folder to ``repo_id`` in one commit; return the SAE's URL.

    ``sae_path`` holds cfg.json and sae_weights.safetensors, optionally sparsity.safetensors,
    runner_cfg.json, train_config.yaml and evaluation.json. ``sae_id`` defaults to the hook name
    in cfg.json's metadata; ``revision`` is a branch (created when missing; default main);
    ``private`` applies when the repo is created; ``portable`` publishes as SAELens's built-in
    ``gated``; ``token`` and ``endpoint`` default to huggingface_hub's (HF_TOKEN, HF_ENDPOINT);
    ``license`` as in :func:`push_release`.

    Raises:
        CorruptArtifactError: the folder is not a valid SAE (nothing is uploaded).
        HubPublishError: the Hub refused or could not be reached (the repo is as it was).
    """
    urls = push_release(
        [ReleaseSAE(Path(sae_path), sae_id)],
        repo_id,
        revision=revision,
        private=private,
        portable=portable,
        token=token,
        endpoint=endpoint,
        commit_message=commit_message,
        license=license,
    )
    return urls[0]


def push_release(
    saes: Sequence[ReleaseSAE],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    portable: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    with_eval: bool = False,
) -> list[str]:
    """Publish several SAE folders to ``repo_id`` as one release in one commit; return the URL
    of each SAE.

    An SAE without ``sae_id`` is named ``<hook_name>/width_<d_sae>/l0_<round(l0)>`` (a lone
    folder without results line: its hook name). Only the named ids are added or replaced; the
    release config.json, the card (``license``: a :data:`card.LICENSES` id; default: the card's,
    else mit) and the Pareto figure are rebuilt from every SAE in the repo. ``with_eval`` also
    uploads each folder's ``neuronpedia/`` export. Other arguments as in :func:`push_sae`.

    Raises:
        CorruptArtifactError: a folder is not a valid SAE (nothing is uploaded).
        HubPublishError: the Hub refused or could not be reached (the repo is as it was).
    """
    repo_id = check_repo_id(repo_id)
    if license is not None:
        model_card.check_license(license)
    if not saes:
        raise GatedPluginError("nothing to push: no SAE folders")
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        raise GatedPluginError(f"revision {revision!r} is a commit id: pass a branch name")
    branch = revision or "main"
    files, new_entries, removed = _prepare(saes, portable, with_eval)

    secret = secret_token(token)
    if len(new_entries) == 1:
        [(only_id, only)] = new_entries.items()
        default_summary = f"Add SAE {only_id} ({only.form}) with sae-gated-plugin"
    else:
        default_summary = f"Add {len(new_entries)} SAEs with sae-gated-plugin"
    summary = commit_message or default_summary
    api = HfApi(endpoint=endpoint, token=token)
    repo_id, head, siblings, entries, readme = _read_remote_state(
        api, repo_id, branch, private, secret
    )
    entries.update(new_entries)
    figure = release_figure(entries)
    try:
        card = model_card.render_card(
            repo_id, entries, readme, revision=branch, license=license, figure=figure is not None
        )
    except GatedPluginError as exc:
        raise _refused(repo_id, f"{exc}; fix or delete it") from None
    uploads = {
        f"{sae_id}/{name}": content
        for sae_id, sae_files in files.items()
        for name, content in sae_files.items()
    }
    uploads[README_FILENAME] = card.encode()
    uploads[model_card.INDEX_FILENAME] = model_card.render_index(entries).encode()
    if figure is not None:
        uploads[model_card.FIGURE_FILENAME] = figure
    where = "; ".join(f"{', '.join(f)} in {sae_id}/" for sae_id, f in files.items())
    description = f"Files: {where}; README.md, {model_card.INDEX_FILENAME}."
    if removed:
        description += f" Secret-looking keys left out: {', '.join(removed)}."
    blobs = [*uploads.values(), (summary + description).encode()]
    if secret and any(secret.encode() in blob for blob in blobs):
        raise _refused(repo_id, "a file to upload contains the Hub token; refusing to push")
    operations = _operations(uploads, files, siblings, figure is not None)
    unchanged = "The push is a single commit, so the repo is unchanged."
    names = ", ".join(repr(sae_id) for sae_id in files)
    with hub_step(repo_id, f"committing {names} to {branch!r}", secret, unchanged, HubPublishError):
        api.create_commit(
            repo_id,
            operations,
            commit_message=summary,
            commit_description=description,
            revision=branch,
            parent_commit=head,
        )
    base = f"{api.endpoint}/{repo_id}/tree/{quote(branch, safe='')}"
    return [f"{base}/{quote(sae_id)}" for sae_id in files]
