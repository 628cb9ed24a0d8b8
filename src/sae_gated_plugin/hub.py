"""Publishing Gated SAEs to the Hugging Face Hub, and loading them back with checks.

:func:`push_sae` uploads one trained SAE folder as ONE commit (atomic: a failed push leaves the
repo as it was): ``<sae_id>/cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``,
the training config with secret-looking keys removed, ``evaluation.json``, plus the repo's
README.md (model card) and ``sae_gated_plugin_index.json``, both regenerated to list every SAE
in the repo. With ``portable=True`` the cfg.json says SAELens's built-in ``gated``, so plain
SAELens loads the SAE without this plugin.

:func:`load_sae` downloads only cfg.json and the safetensors files of one SAE, validates them
and loads the SAE; ``SAE.from_pretrained`` works too (with the plugin installed for
``gated_paper`` SAEs) and checks the weights of a ``gated_paper`` SAE as it loads them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from sae_gated_plugin import model_card
from sae_gated_plugin.errors import CorruptArtifactError, GatedPluginError
from sae_gated_plugin.registry import ARCHITECTURE
from sae_gated_plugin.training import EVAL_FILENAME, TRAIN_CONFIG_FILENAME
from sae_gated_plugin.validation import (
    CFG_FILENAME,
    GATED_ARCHITECTURES,
    SPARSITY_FILENAME,
    WEIGHTS_FILENAME,
    validate_sae_folder,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from sae_lens import SAE

__all__ = [
    "RUNNER_CFG_FILENAME",
    "HubLoadError",
    "HubPublishError",
    "is_secret_key",
    "load_sae",
    "portable_cfg",
    "push_sae",
    "strip_secrets",
]

RUNNER_CFG_FILENAME = "runner_cfg.json"
README_FILENAME = "README.md"
SAE_FILES = (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    RUNNER_CFG_FILENAME,
    TRAIN_CONFIG_FILENAME,
    EVAL_FILENAME,
)
"""Files a push manages inside ``<sae_id>/`` (stale ones from an earlier push are deleted)."""

_ROOT_FILES = (README_FILENAME, model_card.INDEX_FILENAME, ".gitattributes")


class HubPublishError(GatedPluginError):
    """Publishing to the Hub failed (HTTP or connection error); the message names repo and step."""


class HubLoadError(GatedPluginError):
    """Downloading an SAE from the Hub failed (no such repo, SAE or revision, or no connection)."""


# --------------------------------------------------------------------------- secrets

_SECRET_WORDS = frozenset({
    "token", "key", "apikey", "password", "passwd", "pwd", "secret", "secrets",
    "credential", "credentials", "auth", "authorization",
})  # fmt: skip
# Fields of SAELens's runner config whose names contain a secret word but hold no secret.
_NOT_SECRET_KEYS = frozenset({"sequence_separator_token"})
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def is_secret_key(key: str) -> bool:
    """Whether a config key looks like it holds a secret (token, key, password, secret...).

    Matched on whole words so that ``training_tokens`` or ``is_dataset_tokenized`` survive
    while ``hf_token``, ``wandb_api_key``, ``apiKey`` or ``db_password`` do not.
    """
    lowered = key.lower()
    if lowered in _NOT_SECRET_KEYS:
        return False
    if "password" in lowered or "secret" in lowered:
        return True
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key).lower()
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", spaced))


def strip_secrets(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of a JSON/YAML value without secret-looking keys or Hub-token-looking strings.

    Returns the cleaned value and the dotted paths of what was removed (names only).
    """
    removed: list[str] = []
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if (isinstance(key, str) and is_secret_key(key)) or (
                isinstance(item, str) and _HF_TOKEN_RE.search(item)
            ):
                removed.append(where)
                continue
            out[key], inner = strip_secrets(item, where)
            removed += inner
        return out, removed
    if isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            if isinstance(item, str) and _HF_TOKEN_RE.search(item):
                removed.append(f"{path}[{i}]")
                continue
            cleaned, inner = strip_secrets(item, f"{path}[{i}]")
            items.append(cleaned)
            removed += inner
        return items, removed
    return value, removed


def _secret_token(token: str | None) -> str | None:
    """The token huggingface_hub will send (the argument, else HF_TOKEN, else the stored login),
    to keep out of uploads and messages; None when there is none or it is too short to search."""
    if not token:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:  # e.g. a failing OIDC exchange: then the client fails with a message
            return None
    return token if token and len(token) >= 8 else None


def _scrub(text: str, secret: str | None) -> str:
    """``text`` without the token (or anything shaped like a Hub token)."""
    if secret:
        text = text.replace(secret, "***")
    return _HF_TOKEN_RE.sub("hf_***", text)


# --------------------------------------------------------------------------- errors


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub said no or could not be reached", across client versions."""
    from huggingface_hub import errors

    # huggingface_hub's errors module re-exports its HTTP library's HTTPError (requests, httpx
    # or httpx2 depending on the version); connection errors derive from it or from OSError.
    http_error = getattr(errors, "HTTPError", None)
    found: tuple[type[BaseException], ...] = (errors.HfHubHTTPError, OSError)
    return (*found, http_error) if isinstance(http_error, type) else found


def _status_hint(exc: BaseException, repo_id: str) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return (
            f" Check the token: pass --token/token=, set HF_TOKEN or run `hf auth login`, with "
            f"write access to {repo_id.split('/')[0]!r}."
        )
    if status == 412:
        return " Someone else committed to the branch during this push: push again."
    return ""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def _hub_step(
    repo_id: str, action: str, secret: str | None, aftermath: str, error: type[GatedPluginError]
) -> Iterator[None]:
    """Turn client errors of one step into ``error`` (message names repo and step, no token)."""
    try:
        yield
    except GatedPluginError:
        raise
    except _transport_errors() as exc:
        message = (
            f"Hub repo {repo_id!r}: {action} failed ({_describe(exc)}).{_status_hint(exc, repo_id)}"
            f" {aftermath}"
        )
        raise error(_scrub(message, secret).strip()) from None


# --------------------------------------------------------------------------- local files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptArtifactError(f"{path}: not valid JSON ({exc})") from None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorruptArtifactError(f"{path}: not valid YAML ({exc})") from None


def portable_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A gated_paper cfg.json rewritten as SAELens's built-in ``gated`` (same parameters)."""
    out = copy.deepcopy(cfg)
    out["architecture"] = "gated"
    metadata = dict(out.get("metadata") or {})
    metadata[model_card.PORTABLE_METADATA_KEY] = {
        "trained_architecture": ARCHITECTURE,
        "form": "portable",
        "note": "Trained with sae-gated-plugin's gated_paper (arXiv:2404.16014) and published "
        "as SAELens's built-in 'gated': same parameters, same encode/decode outputs, so plain "
        "SAELens loads it without the plugin.",
    }
    out["metadata"] = metadata
    return out


def _dump(value: Any, filename: str) -> bytes:
    if filename.endswith(".json"):
        return (json.dumps(value, indent=2) + "\n").encode()
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).encode()


def _collect_files(
    folder: Path, cfg: dict[str, Any], portable: bool
) -> tuple[dict[str, bytes], model_card.SAEEntry, list[str]]:
    """The files to upload (name -> bytes), the SAE's card entry, and the secret keys removed."""
    files: dict[str, bytes] = {}
    if portable and cfg["architecture"] == ARCHITECTURE:
        cfg = portable_cfg(cfg)
        files[CFG_FILENAME] = _dump(cfg, CFG_FILENAME)
    else:
        files[CFG_FILENAME] = (folder / CFG_FILENAME).read_bytes()
    files[WEIGHTS_FILENAME] = (folder / WEIGHTS_FILENAME).read_bytes()
    if (folder / SPARSITY_FILENAME).is_file():
        files[SPARSITY_FILENAME] = (folder / SPARSITY_FILENAME).read_bytes()
    removed: list[str] = []
    side: dict[str, Any] = {}
    for name in (RUNNER_CFG_FILENAME, TRAIN_CONFIG_FILENAME, EVAL_FILENAME):
        path = folder / name
        if not path.is_file():
            continue
        data = _read_json(path) if name.endswith(".json") else _read_yaml(path)
        cleaned, dropped = strip_secrets(data)
        removed += [f"{name}:{key}" for key in dropped]
        side[name] = cleaned
        files[name] = _dump(cleaned, name) if dropped else path.read_bytes()
    training = {}
    for name in (TRAIN_CONFIG_FILENAME, RUNNER_CFG_FILENAME):  # the runner's values win
        if isinstance(side.get(name), dict):
            training.update(side[name])
    evaluation = side.get(EVAL_FILENAME)
    entry = model_card.entry_from_files(
        "", cfg, evaluation if isinstance(evaluation, dict) else None, training
    )
    return files, entry, removed


def _check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub accepts it as ``name`` or ``namespace/name``, else a clear error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise GatedPluginError(f"repo_id {repo_id!r} is not a valid Hub repo id: {exc}") from None
    return repo_id


def _check_sae_id(sae_id: str) -> str:
    sae_id = sae_id.strip().strip("/")
    parts = sae_id.split("/")
    if not sae_id or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise GatedPluginError(f"sae_id {sae_id!r} is not a valid folder name in a Hub repo")
    if parts[0] in _ROOT_FILES:
        raise GatedPluginError(f"sae_id {sae_id!r} clashes with the repo's {parts[0]} file")
    return sae_id


# --------------------------------------------------------------------------- remote state


def _download_text(api: HfApi, repo_id: str, filename: str, commit: str, cache: Path) -> str:
    path = api.hf_hub_download(repo_id, filename, revision=commit, cache_dir=cache)
    return Path(path).read_text(encoding="utf-8")  # UnicodeDecodeError is a ValueError


def _remote_json(
    api: HfApi, repo_id: str, filename: str, commit: str, cache: Path
) -> dict[str, Any] | None:
    try:
        data = json.loads(_download_text(api, repo_id, filename, commit, cache))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _remote_entries(
    api: HfApi, repo_id: str, commit: str, siblings: set[str], cache: Path
) -> dict[str, model_card.SAEEntry]:
    """Every SAE folder in the repo at ``commit``: from the index, else from its files."""
    index: dict[str, model_card.SAEEntry] = {}
    if model_card.INDEX_FILENAME in siblings:
        with contextlib.suppress(ValueError):  # unreadable: rebuilt from the SAE folders
            text = _download_text(api, repo_id, model_card.INDEX_FILENAME, commit, cache)
            index = model_card.parse_index(text)
    suffix = "/" + CFG_FILENAME
    entries = {}
    for path in sorted(siblings):
        if not path.endswith(suffix):
            continue
        sae_id = path[: -len(suffix)]
        if sae_id in index:
            entries[sae_id] = index[sae_id]
            continue
        # Not in the index (pushed by other tools, or the index was lost): read its files.
        cfg = _remote_json(api, repo_id, path, commit, cache) or {}
        evaluation = None
        if f"{sae_id}/{EVAL_FILENAME}" in siblings:
            evaluation = _remote_json(api, repo_id, f"{sae_id}/{EVAL_FILENAME}", commit, cache)
        training = None
        if f"{sae_id}/{RUNNER_CFG_FILENAME}" in siblings:
            training = _remote_json(api, repo_id, f"{sae_id}/{RUNNER_CFG_FILENAME}", commit, cache)
        entries[sae_id] = model_card.entry_from_files(sae_id, cfg, evaluation, training)
    return entries


# --------------------------------------------------------------------------- push


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

    Args:
        sae_path: folder with cfg.json and sae_weights.safetensors (and optionally
            sparsity.safetensors, runner_cfg.json, train_config.yaml, evaluation.json).
        repo_id: ``namespace/name``; created (``private`` if asked) when missing.
        sae_id: folder in the repo (default: the hook name in cfg.json's metadata).
        revision: branch to commit to (created from main when missing; default main).
        private: create the repo private (an existing repo keeps its visibility).
        portable: publish as SAELens's built-in ``gated`` (loads without the plugin).
        token: Hub token (default: HF_TOKEN, else the stored ``hf auth login`` token).
        endpoint: Hub URL (default: HF_ENDPOINT, else huggingface.co).
        commit_message: summary of the commit (default says what was pushed).

    Raises:
        CorruptArtifactError: the folder is not a valid SAE (nothing is uploaded).
        HubPublishError: the Hub refused or could not be reached (the repo is as it was).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    repo_id = _check_repo_id(repo_id)
    folder = Path(sae_path)
    cfg = validate_sae_folder(folder)
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
    sae_id = _check_sae_id(sae_id)
    if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
        raise GatedPluginError(f"revision {revision!r} is a commit id: pass a branch name")
    branch = revision or "main"
    files, entry, removed = _collect_files(folder, cfg, portable)
    entry.sae_id = sae_id

    secret = _secret_token(token)
    summary = commit_message or f"Add SAE {sae_id} ({entry.form}) with sae-gated-plugin"
    api = HfApi(endpoint=endpoint, token=token)
    nothing_sent = "Nothing was committed."

    def step(action: str, aftermath: str = nothing_sent) -> Any:
        return _hub_step(repo_id, action, secret, aftermath, HubPublishError)

    with step("creating the repo"):
        # The Hub completes a name without namespace with the user's: use the full id.
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if branch != "main":
        with step(f"creating branch {branch!r}"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
    with step(f"reading the repo at {branch!r}"):
        info = api.model_info(repo_id, revision=branch)
        siblings = {s.rfilename for s in (info.siblings or [])}
        head = info.sha
        if private and info.private is False:
            warnings.warn(
                f"Hub repo {repo_id!r} already exists and is public: private=True only applies "
                "when the repo is created",
                UserWarning,
                stacklevel=2,
            )
        with tempfile.TemporaryDirectory(prefix="sae-gated-push-") as tmp:
            entries = _remote_entries(api, repo_id, head, siblings, Path(tmp))
            readme = None
            if README_FILENAME in siblings:
                try:
                    readme = _download_text(api, repo_id, README_FILENAME, head, Path(tmp))
                except UnicodeDecodeError:
                    raise HubPublishError(
                        f"Hub repo {repo_id!r}: README.md is not UTF-8 text; fix or delete it. "
                        f"{nothing_sent}"
                    ) from None
    entries[sae_id] = entry
    try:
        card = model_card.render_card(repo_id, entries, readme, revision=branch)
    except GatedPluginError as exc:
        raise HubPublishError(
            f"Hub repo {repo_id!r}: {exc}; fix or delete it. {nothing_sent}"
        ) from None

    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=f"{sae_id}/{name}", path_or_fileobj=content)
        for name, content in files.items()
    ]
    operations += [
        CommitOperationDelete(path_in_repo=f"{sae_id}/{name}")
        for name in SAE_FILES
        if name not in files and f"{sae_id}/{name}" in siblings
    ]
    readme_bytes = card.encode()
    index_bytes = model_card.render_index(entries).encode()
    operations += [
        CommitOperationAdd(path_in_repo=README_FILENAME, path_or_fileobj=readme_bytes),
        CommitOperationAdd(path_in_repo=model_card.INDEX_FILENAME, path_or_fileobj=index_bytes),
    ]
    description = f"Files: {', '.join(files)} in {sae_id}/, README.md, {model_card.INDEX_FILENAME}."
    if removed:
        description += f" Secret-looking keys left out: {', '.join(removed)}."
    if secret and any(
        secret.encode() in blob
        for blob in [*files.values(), readme_bytes, index_bytes, (summary + description).encode()]
    ):
        raise HubPublishError(
            f"Hub repo {repo_id!r}: a file to upload contains the Hub token; refusing to push. "
            f"{nothing_sent}"
        )
    with step(
        f"committing {sae_id!r} to {branch!r}",
        "The push is a single commit, so the repo is unchanged.",
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


# --------------------------------------------------------------------------- load


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
    """Download one SAE (cfg.json + safetensors only), validate it and load it.

    Works for gated_paper and portable SAEs (and any SAELens-format SAE). Unlike
    ``SAE.from_pretrained`` it takes a ``revision`` and checks the files before loading.

    Raises:
        CorruptArtifactError: a downloaded file is corrupted or does not match cfg.json.
        HubLoadError: no such repo, revision or SAE, or the Hub could not be reached.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError
    from sae_lens import SAE

    import sae_gated_plugin  # noqa: F401  (registers gated_paper)

    repo_id = _check_repo_id(repo_id)
    sae_id = sae_id.strip("/")
    api = HfApi(endpoint=endpoint, token=token)
    secret = _secret_token(token)
    where = f"{repo_id}/{sae_id}" + (f"@{revision}" if revision else "")

    def step(action: str) -> Any:
        return _hub_step(repo_id, action, secret, "", HubLoadError)

    def fetch(name: str, rev: str | None) -> Path:
        return Path(
            api.hf_hub_download(repo_id, f"{sae_id}/{name}", revision=rev, cache_dir=cache_dir)
        )

    with step(f"downloading {sae_id}/{CFG_FILENAME}"):
        try:
            cfg_path = fetch(CFG_FILENAME, revision)
        except EntryNotFoundError:
            raise HubLoadError(
                f"Hub repo {repo_id!r} has no SAE {sae_id!r} (no {sae_id}/{CFG_FILENAME}"
                f"{' at ' + revision if revision else ''})"
            ) from None
    # Pin the other files to the commit cfg.json came from (the snapshot folder's name).
    folder = cfg_path.parent
    commit = cfg_path.parents[len(sae_id.split("/"))].name
    pinned = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else revision
    with step(f"downloading {sae_id}/{WEIGHTS_FILENAME}"):
        fetch(WEIGHTS_FILENAME, pinned)
        with contextlib.suppress(EntryNotFoundError):
            fetch(SPARSITY_FILENAME, pinned)
    try:
        validate_sae_folder(folder)
    except CorruptArtifactError as exc:
        raise CorruptArtifactError(f"{where}: {exc}") from None
    return SAE.load_from_disk(folder, device=device)
