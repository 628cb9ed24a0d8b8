"""An in-memory Hugging Face Hub stand-in, for testing publishing code offline.

:class:`LocalHub` is a small HTTP server (standard library only) that speaks enough of the Hub's
HTTP API for the real ``huggingface_hub`` client to create repos, commit files, create branches,
list and download files against it. Nothing leaves the machine: it binds to ``127.0.0.1`` on a
free port and keeps every repo in memory.

Example::

    from huggingface_hub import HfApi, hf_hub_download
    from sae_gated_plugin.testing import LocalHub

    with LocalHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test_token")
        api.create_repo("local-user/my-sae", private=True)
        api.upload_folder(repo_id="local-user/my-sae", folder_path="out/")
        assert "cfg.json" in hub.files("local-user/my-sae")
        path = hf_hub_download(
            "local-user/my-sae", "cfg.json", endpoint=hub.endpoint, token="hf_test_token"
        )

Notes for test writers:

* ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import. Offline mode blocks requests to
  ``127.0.0.1`` too, so unset it *and* set ``huggingface_hub.constants.HF_HUB_OFFLINE = False``.
* Every token is accepted; the user is always ``local-user``. Write requests without a token are
  answered 401, and private repos are invisible (404) to requests without a token, as on the Hub.
* Files are always stored as regular git blobs (no LFS, no Xet), whatever their size.
* ``HfApi.upload_folder`` with ``hf_xet`` installed (the default) retries a commit answered
  429/500/502/503/504 up to 5 times, sleeping 1+2+4+8+8 s, so ``fail_next_commits = 1`` is
  absorbed after a 1 s retry. To make one injected failure surface at once, set
  :attr:`LocalHub.fail_status` to a status it does not retry, such as 507.
  ``create_commit`` and ``upload_file`` do not retry commits.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub"]

USER_NAME = "local-user"
"""The user every token authenticates as (``whoami`` answers this name)."""

_LFS_EXTENSIONS = ("bin", "ckpt", "h5", "npy", "npz", "onnx", "pt", "pth", "safetensors", "zip")
_DEFAULT_GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in _LFS_EXTENSIONS
).encode()

# URL segment after /api/ -> repo type, and repo type -> prefix of its web/resolve URLs.
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_SHA_RE = re.compile(r"[0-9a-f]{40}")


_Operation = tuple[str, str, bytes]
"""A parsed commit operation: kind (file, deletedFile, deletedFolder), path, content."""


def _git_blob_sha(content: bytes) -> str:
    """The git object id of a blob, which the Hub uses as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now_iso() -> str:
    """Current UTC time in the Hub's date format (``2024-01-31T12:00:00.000Z``)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


@dataclass
class _Commit:
    sha: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)


class _HubError(Exception):
    """An error answered to the client as JSON ``{"error": message}``."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.extra = extra or {}


def _history(repo: _Repo, commit: _Commit) -> Iterator[_Commit]:
    """``commit`` and its ancestors, newest first."""
    yield commit
    while commit.parent is not None:
        commit = repo.commits[commit.parent]
        yield commit


def _repo_not_found(repo_id: str) -> _HubError:
    return _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


def _check_path(path: Any) -> str:
    """Validate a file path inside a repo; raise 400 for anything git would not store."""
    if not isinstance(path, str) or not path:
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..", ".git") for part in parts):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return path


class LocalHub:
    """In-memory Hugging Face Hub stand-in on 127.0.0.1 (free port).

    Start it (``start()`` or ``with LocalHub() as hub:``), point the client at
    :attr:`endpoint`, then inspect what arrived with :meth:`files`, :meth:`commits`,
    :meth:`is_private`, :attr:`requests` and :meth:`all_uploaded_bytes`.

    Repo ids must be ``namespace/name``. The inspection helpers take ``repo_type="model"`` by
    default; dataset and space repos are stored the same way.

    Attributes:
        requests: ``(method, path)`` of every request received, in order. The path is
            percent-decoded and has no query string, e.g.
            ``("POST", "/api/models/local-user/x/commit/main")``.
        fail_next_commits: While > 0, each commit request is answered with HTTP
            :attr:`fail_status`, changes nothing and decrements this counter.
        fail_status: HTTP status of injected commit failures (default 500).
    """

    def __init__(self) -> None:
        """Create a stopped hub with no repos."""
        self.requests: list[tuple[str, str]] = []
        self.fail_next_commits: int = 0
        self.fail_status: int = 500
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._uploaded: list[bytes] = []
        self._counter = itertools.count()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """Base URL to pass as ``endpoint=`` to ``huggingface_hub``, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("LocalHub is not running: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalHub:
        """Bind to a free port on 127.0.0.1 and serve in a daemon thread; return ``self``."""
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="LocalHub",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> LocalHub:
        """Start the hub."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the hub."""
        self.stop()

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether the repo exists (created and not deleted)."""
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def files(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> dict[str, bytes]:
        """Snapshot of the repo at ``revision`` (branch or commit sha): path -> content.
        KeyError if the repo or the revision does not exist."""
        with self._lock:
            repo = self._inspect_repo(repo_id, repo_type)
            return dict(self._inspect_commit(repo, revision).files)

    def commits(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> list[str]:
        """Commit shas in the history of ``revision``, oldest (the repo's initial commit) first.
        KeyError if the repo or the revision does not exist."""
        with self._lock:
            repo = self._inspect_repo(repo_id, repo_type)
            return [c.sha for c in _history(repo, self._inspect_commit(repo, revision))][::-1]

    def is_private(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether the repo was created private (or later made private); KeyError if no repo."""
        with self._lock:
            return self._inspect_repo(repo_id, repo_type).private

    def all_uploaded_bytes(self) -> bytes:
        """Everything clients sent as content, concatenated (newline-separated), in order.

        Covers the decoded content of every file in every commit request (including commits
        that failed or were rejected), the samples sent to the pre-upload endpoint, README
        content sent for YAML validation, and commit summaries and descriptions. Use it to
        assert that a secret was never published. Authorization headers are not included.
        """
        with self._lock:
            return b"\n".join(self._uploaded)

    def _inspect_repo(self, repo_id: str, repo_type: str) -> _Repo:
        try:
            return self._get_repo(repo_type, repo_id, authed=True)
        except _HubError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on this LocalHub") from None

    def _inspect_commit(self, repo: _Repo, revision: str) -> _Commit:
        try:
            return self._get_commit(repo, revision)
        except _HubError:
            raise KeyError(f"no revision {revision!r} in {repo.repo_id!r}") from None

    def _record(self, data: bytes | str) -> None:
        with self._lock:
            self._uploaded.append(data.encode() if isinstance(data, str) else data)

    def _new_sha(self, *parts: str) -> str:
        seed = "\0".join((str(next(self._counter)), repr(time.time()), *parts))
        return hashlib.sha1(seed.encode()).hexdigest()

    @staticmethod
    def _resolve_sha(repo: _Repo, revision: str) -> str | None:
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision in repo.branches:
            return repo.branches[revision]
        if _SHA_RE.fullmatch(revision) and revision in repo.commits:
            return revision
        return None

    def _get_repo(self, repo_type: str, repo_id: str, *, authed: bool) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise _repo_not_found(repo_id)
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> _Commit:
        sha = self._resolve_sha(repo, revision)
        if sha is None:
            raise _HubError(
                404,
                f"Invalid rev id: {revision} (revision not found in {repo.repo_id})",
                "RevisionNotFound",
            )
        return repo.commits[sha]

    def _add_commit(
        self,
        repo: _Repo,
        parent: str | None,
        summary: str,
        description: str,
        files: dict[str, bytes],
    ) -> _Commit:
        sha = self._new_sha(repo.repo_type, repo.repo_id, parent or "", summary)
        commit = _Commit(sha, parent, summary, description, files, _now_iso())
        repo.commits[sha] = commit
        return commit

    def _url(self, repo: _Repo, base: str) -> str:
        return f"{base}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _api_whoami(self, req: _Request) -> Any:
        if not req.authed:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return {
            "type": "user",
            "id": hashlib.sha1(USER_NAME.encode()).hexdigest()[:24],
            "name": USER_NAME,
            "fullname": "Local User",
            "isPro": False,
            "orgs": [],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "local-hub-token", "role": "write"},
            },
        }

    def _api_validate_yaml(self, req: _Request) -> Any:
        body = req.json()
        content = body.get("content", "") if isinstance(body, dict) else ""
        self._record(content if isinstance(content, str) else json.dumps(content))
        return {"errors": [], "warnings": []}

    def _repo_from_body(self, req: _Request) -> tuple[str, str, dict[str, Any]]:
        body = req.json()
        if not isinstance(body, dict):
            raise _HubError(400, "Expected a JSON object")
        name, org = body.get("name"), body.get("organization") or USER_NAME
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Invalid repo type: {repo_type!r}")
        for part in (org, name):
            if not isinstance(part, str) or not _NAME_RE.fullmatch(part):
                raise _HubError(400, f"Invalid repo name: {org}/{name}")
        return repo_type, f"{org}/{name}", body

    def _api_create_repo(self, req: _Request) -> Any:
        req.require_auth()
        repo_type, repo_id, body = self._repo_from_body(req)
        visibility = body.get("visibility")
        if visibility:
            private = visibility in ("private", "protected")
        else:
            private = bool(body.get("private"))
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                # The client reads "url" from the 409 body when exist_ok=True.
                url = self._url(self._repos[(repo_type, repo_id)], req.base_url)
                message = f"You already created this {repo_type} repo"
                raise _HubError(409, message, None, {"url": url})
            repo = _Repo(repo_type, repo_id, private, _now_iso())
            first = self._add_commit(
                repo, None, "initial commit", "", {".gitattributes": _DEFAULT_GITATTRIBUTES}
            )
            repo.branches["main"] = first.sha
            self._repos[(repo_type, repo_id)] = repo
            url = self._url(repo, req.base_url)
        return {"url": url, "name": repo_id, "id": repo_id}

    def _api_delete_repo(self, req: _Request) -> Any:
        req.require_auth()
        repo_type, repo_id, _ = self._repo_from_body(req)
        with self._lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_id)
        return {}

    def _api_settings(self, req: _Request, repo_type: str, repo_id: str) -> Any:
        req.require_auth()
        body = req.json()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=True)
            if isinstance(body, dict):
                if body.get("visibility"):
                    repo.private = body["visibility"] in ("private", "protected")
                elif "private" in body:
                    repo.private = bool(body["private"])
        return {}

    def _api_repo_info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> Any:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=req.authed)
            commit = self._get_commit(repo, revision)
            blobs = req.flag("blobs")
            siblings = []
            for path in sorted(commit.files):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling["size"] = len(commit.files[path])
                    sibling["blobId"] = _git_blob_sha(commit.files[path])
                siblings.append(sibling)
            org = repo_id.split("/")[0]
            return {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": org,
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(v) for v in commit.files.values()),
            }

    @staticmethod
    def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[Any]:
        folder = f"{prefix}/" if prefix else ""
        entries: dict[str, Any] = {}
        for path in sorted(files):
            if not path.startswith(folder):
                continue
            rest = path[len(folder) :].split("/")
            depth = len(rest) if recursive else 1
            for i in range(1, min(depth, len(rest) - 1) + 1):
                dir_path = folder + "/".join(rest[:i])
                entries.setdefault(
                    dir_path,
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(f"tree {dir_path}".encode()).hexdigest(),
                        "size": 0,
                        "path": dir_path,
                    },
                )
            if len(rest) == 1 or recursive:
                content = files[path]
                entries[path] = {
                    "type": "file",
                    "oid": _git_blob_sha(content),
                    "size": len(content),
                    "path": path,
                }
        return [entries[key] for key in sorted(entries)]

    def _api_tree(
        self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> Any:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=req.authed)
            files = self._get_commit(repo, revision).files
            path = path.strip("/")
            if path and not any(p.startswith(path + "/") for p in files):
                raise _HubError(
                    404,
                    f"Entry not found: {path} is not a folder in {repo_id}@{revision}",
                    "EntryNotFound",
                )
            return self._tree_entries(files, path, req.flag("recursive"))

    def _api_paths_info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> Any:
        form = parse_qs(req.body.decode())
        wanted = [p.strip("/") for p in form.get("paths", [])]
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=req.authed)
            files = self._get_commit(repo, revision).files
            everything = {e["path"]: e for e in self._tree_entries(files, "", recursive=True)}
            return [everything[p] for p in wanted if p in everything]

    def _api_refs(self, req: _Request, repo_type: str, repo_id: str) -> Any:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=req.authed)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                for name, sha in sorted(repo.branches.items())
            ]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def _api_list_commits(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> Any:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=req.authed)
            history = list(_history(repo, self._get_commit(repo, revision)))
        return [
            {
                "id": commit.sha,
                "title": commit.summary,
                "message": "\n\n".join(filter(None, (commit.summary, commit.description))),
                "authors": [{"user": USER_NAME}],
                "date": commit.date,
            }
            for commit in history
        ]

    def _api_branch(self, req: _Request, repo_type: str, repo_id: str, branch: str) -> Any:
        req.require_auth()
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=True)
            if req.method == "DELETE":
                if branch not in repo.branches:
                    raise _HubError(404, f"Branch not found: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise _HubError(403, "Cannot delete the default branch")
                del repo.branches[branch]
                return {}
            if not _NAME_RE.fullmatch(branch) or _SHA_RE.fullmatch(branch):
                raise _HubError(400, f"Invalid branch name: {branch!r}")
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
            body = req.json() if req.body else {}
            start = body.get("startingPoint") if isinstance(body, dict) else None
            repo.branches[branch] = self._get_commit(repo, start or "main").sha
        return {}

    def _api_preupload(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> Any:
        req.require_auth()
        if req.flag("create_pr"):
            raise _HubError(400, "LocalHub does not support pull requests (create_pr)")
        body = req.json()
        entries = body.get("files") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise _HubError(400, "Expected {'files': [...]}")
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("sample"), str):
                self._record(base64.b64decode(entry["sample"]))
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=True)
            files = self._get_commit(repo, revision).files
            out = []
            for entry in entries:
                path = _check_path(entry.get("path") if isinstance(entry, dict) else None)
                oid = _git_blob_sha(files[path]) if path in files else None
                out.append(
                    {
                        "path": path,
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
        return {"files": out}

    def _parse_commit(self, body: bytes) -> tuple[dict[str, Any] | None, list[_Operation]]:
        """The ndjson commit payload as its header and ``(kind, path, content)`` operations."""
        header: dict[str, Any] | None = None
        operations: list[_Operation] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError) as err:
                raise _HubError(400, f"Invalid ndjson commit payload: {err}") from err
            if key == "header":
                header = value
                self._record(str(value.get("summary", "")))
                self._record(str(value.get("description", "")))
            elif key == "file":
                raw = value.get("content", "")
                content = (
                    base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                )
                self._record(content)
                operations.append(("file", value.get("path"), content))
            elif key in ("deletedFile", "deletedFolder"):
                operations.append((key, value.get("path"), b""))
            elif key == "lfsFile":
                raise _HubError(400, "LocalHub stores regular files only: no LFS uploads")
            else:
                raise _HubError(400, f"Unknown commit operation: {key!r}")
        return header, operations

    @staticmethod
    def _apply_operations(files: dict[str, bytes], operations: list[_Operation]) -> None:
        """Apply commit operations to a file tree in place, as the Hub would (or refuse)."""
        for kind, path, content in operations:
            path = _check_path(path.rstrip("/") if isinstance(path, str) else path)
            if kind == "file":
                if any(p.startswith(path + "/") for p in files):
                    raise _HubError(400, f"Cannot add file {path}: it is a folder")
                parents = path.split("/")[:-1]
                for i in range(1, len(parents) + 1):
                    if "/".join(parents[:i]) in files:
                        raise _HubError(400, f"Cannot add file {path}: parent is a file")
                files[path] = content
            elif kind == "deletedFile":
                if path not in files:
                    raise _HubError(
                        404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                    )
                del files[path]
            else:
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise _HubError(
                        404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                    )
                for p in doomed:
                    del files[p]

    def _api_commit(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> Any:
        req.require_auth()
        header, operations = self._parse_commit(req.body)
        with self._lock:
            if self.fail_next_commits > 0:
                self.fail_next_commits -= 1
                raise _HubError(self.fail_status, "Injected failure (LocalHub.fail_next_commits)")
        if req.flag("create_pr"):
            raise _HubError(400, "LocalHub does not support pull requests (create_pr)")
        if not isinstance(header, dict) or not header.get("summary"):
            raise _HubError(400, "Commit header with a non-empty summary is required")
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=True)
            head = self._get_commit(repo, revision)
            if revision not in repo.branches:
                raise _HubError(400, f"Can only commit to a branch, not {revision!r}")
            parent = header.get("parentCommit")
            if parent is not None and parent != head.sha:
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            self._apply_operations(files, operations)
            commit = self._add_commit(
                repo,
                head.sha,
                str(header["summary"]),
                str(header.get("description") or ""),
                files,
            )
            repo.branches[revision] = commit.sha
            url = f"{self._url(repo, req.base_url)}/commit/{commit.sha}"
        return {"commitUrl": url, "commitOid": commit.sha, "pullRequestUrl": None}

    def _resolve_file(
        self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str
    ) -> None:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id, authed=req.authed)
            commit = self._get_commit(repo, revision)
            if path not in commit.files:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
            content = commit.files[path]
        status, headers, start, end = 200, {}, 0, len(content)
        range_header = req.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match is None or match.groups() == ("", ""):
                raise _HubError(416, f"Unsupported Range: {range_header}")
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last) + 1, len(content)) if last else len(content)
            else:
                start = max(0, len(content) - int(last))
            if (start >= len(content) and len(content) > 0) or start > end:
                raise _HubError(416, f"Range not satisfiable: {range_header}")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{max(start, end - 1)}/{len(content)}"
        headers.update(
            {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": f'"{_git_blob_sha(content)}"',
                "X-Repo-Commit": commit.sha,
                "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
            }
        )
        req.send(status, content[start:end], headers)

    def _dispatch(self, req: _Request) -> None:
        segs = req.segments
        method = req.method
        if segs[:1] == ["api"]:
            result = self._dispatch_api(req, segs[1:])
            if result is _NO_ROUTE:
                raise _HubError(404, f"LocalHub has no route for {method} {req.path}")
            req.send_json(200, result)
            return
        if method in ("GET", "HEAD"):
            repo_type = "model"
            if segs and segs[0] in _API_TYPES and len(segs) > 1 and segs[1] != "resolve":
                repo_type, segs = _API_TYPES[segs[0]], segs[1:]
            if len(segs) >= 5 and segs[2] == "resolve":
                self._resolve_file(
                    req, repo_type, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:])
                )
                return
        raise _HubError(404, f"LocalHub has no route for {method} {req.path}")

    def _dispatch_api(self, req: _Request, segs: list[str]) -> Any:
        method = req.method
        simple = {
            ("GET", "whoami-v2"): self._api_whoami,
            ("POST", "validate-yaml"): self._api_validate_yaml,
            ("POST", "repos/create"): self._api_create_repo,
            ("DELETE", "repos/delete"): self._api_delete_repo,
        }
        handler = simple.get((method, "/".join(segs)))
        if handler is not None:
            return handler(req)
        if len(segs) < 3 or segs[0] not in _API_TYPES:
            return _NO_ROUTE
        repo_type, repo_id, rest = _API_TYPES[segs[0]], f"{segs[1]}/{segs[2]}", segs[3:]
        action = rest[0] if rest else ""
        if method == "GET" and not rest:
            return self._api_repo_info(req, repo_type, repo_id, "main")
        if method == "GET" and action == "tree" and len(rest) >= 2:
            return self._api_tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        by_revision = {
            ("GET", "revision"): self._api_repo_info,
            ("GET", "commits"): self._api_list_commits,
            ("POST", "paths-info"): self._api_paths_info,
            ("POST", "preupload"): self._api_preupload,
            ("POST", "commit"): self._api_commit,
            ("POST", "branch"): self._api_branch,
            ("DELETE", "branch"): self._api_branch,
        }
        by_repo = {("GET", "refs"): self._api_refs, ("PUT", "settings"): self._api_settings}
        if len(rest) == 2 and (method, action) in by_revision:
            return by_revision[method, action](req, repo_type, repo_id, rest[1])
        if len(rest) == 1 and (method, action) in by_repo:
            return by_repo[method, action](req, repo_type, repo_id)
        return _NO_ROUTE


_NO_ROUTE = object()


class _Request:
    """One parsed HTTP request, with helpers to answer it."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler
        self.method = handler.command
        parts = urlsplit(handler.path)
        self.path = unquote(parts.path)
        # Split before decoding: a revision or tree path may contain an encoded "/".
        self.segments = [unquote(s) for s in parts.path.split("/")[1:]]
        if self.segments and self.segments[-1] == "":
            self.segments.pop()
        self.query = parse_qs(parts.query)
        self.headers = handler.headers
        auth = handler.headers.get("Authorization", "")
        self.authed = auth.lower().startswith("bearer ") and bool(auth[7:].strip())
        host, port = handler.server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"
        self.body = self._read_body()

    def _read_body(self) -> bytes:
        rfile = self.handler.rfile
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(rfile.read(size))
                rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return rfile.read(length) if length > 0 else b""

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as err:
            raise _HubError(400, f"Invalid JSON body: {err}") from err

    def flag(self, name: str) -> bool:
        values = self.query.get(name) or self.query.get(f"{name}[]") or []
        return any(v.lower() in ("1", "true") for v in values)

    def require_auth(self) -> None:
        if not self.authed:
            raise _HubError(401, "You must be authenticated (send a token) to write to LocalHub")

    def send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        handler = self.handler
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        if self.method != "HEAD":
            handler.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def send_error_json(self, err: _HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.error_code:
            headers["X-Error-Code"] = err.error_code
        self.send_json(err.status, {**err.extra, "error": err.message}, headers)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its hub and can close its open connections."""

    daemon_threads = True
    hub: LocalHub

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a client that disconnects early is not worth a traceback."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    def _handle(self) -> None:
        hub = self.server.hub
        try:
            req = _Request(self)
        except (ValueError, OSError):
            self.close_connection = True
            return
        with hub._lock:
            hub.requests.append((req.method, req.path))
        try:
            hub._dispatch(req)
        except _HubError as err:
            req.send_error_json(err)
        except Exception as err:  # report server bugs to the client, not to stderr
            req.send_error_json(_HubError(500, f"LocalHub internal error: {err!r}"))
        self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no request logging to stderr."""
