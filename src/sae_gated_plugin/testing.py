"""An in-memory Hugging Face Hub stand-in on 127.0.0.1, for testing publishing code offline.

:class:`LocalHub` (standard library only) speaks enough of the Hub's HTTP API for the real
``huggingface_hub`` client to create and delete model repos, commit, branch, list and download.

* ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` at import, and offline mode blocks ``127.0.0.1``
  too: unset it *and* set ``huggingface_hub.constants.HF_HUB_OFFLINE = False``.
* Every token is accepted as user ``local-user``. Writes without a token are answered 401, and
  private repos are invisible (404) without one. Files are stored as regular git blobs (no LFS).
* ``HfApi.upload_folder`` with ``hf_xet`` installed retries a commit answered 429/500/502/503/504
  after 1 s, absorbing ``fail_next_commits = 1``: set :attr:`LocalHub.fail_status` to 507 (not
  retried) to make it surface. ``create_commit`` and ``upload_file`` do not retry commits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
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

_LOAD_EACH = """
import json, sys
from sae_lens import SAE
from sae_gated_plugin.hub import load_sae
repo_id, *sae_ids = sys.argv[1:]
print(json.dumps({
    sae_id: [type(SAE.from_pretrained(repo_id, sae_id)).__name__,
             type(load_sae(repo_id, sae_id)).__name__]
    for sae_id in sae_ids
}))
"""
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_SHA_RE = re.compile(r"[0-9a-f]{40}")

_REPO = r"/api/models/(?P<repo_id>[^/]+/[^/]+)"
_REV = r"/(?P<rev>[^/]+)"
_ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami", True),
    ("POST", r"/api/validate-yaml", "validate_yaml", False),
    ("POST", r"/api/repos/create", "create_repo", True),
    ("DELETE", r"/api/repos/delete", "delete_repo", True),
    ("GET", _REPO + f"(?:/revision{_REV})?", "repo_info", False),
    ("GET", _REPO + f"/tree{_REV}(?:/(?P<path>.*))?", "tree", False),
    ("GET", _REPO + f"/commits{_REV}", "list_commits", False),
    ("GET", _REPO + "/refs", "refs", False),
    ("PUT", _REPO + "/settings", "settings", True),
    ("POST", _REPO + f"/preupload{_REV}", "preupload", True),
    ("POST", _REPO + f"/commit{_REV}", "commit", True),
    ("POST", _REPO + f"/branch{_REV}", "branch", True),
    ("GET HEAD", rf"/(?P<repo_id>[^/]+/[^/]+)/resolve{_REV}/(?P<path>.+)", "resolve", False),
]
"""``(methods, pattern, handler, 401 without a token)``; a pattern sees the path undecoded."""


def _git_blob_sha(content: bytes) -> str:
    """The git object id of a blob, which the Hub uses as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubError(Exception):
    """An error answered to the client as JSON ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class _Commit:
    parent: str | None
    summary: str
    message: str  # the summary, then the description if any
    files: dict[str, bytes]
    sha: str = field(default_factory=lambda: secrets.token_hex(20))
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@dataclass
class _Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)

    def add(self, commit: _Commit, branch: str) -> _Commit:
        self.commits.setdefault(commit.sha, commit)
        self.branches[branch] = commit.sha
        return commit

    def at(self, revision: str) -> _Commit:
        """The commit a branch (``main``, ``refs/heads/main``) or a full sha names; 404 if none."""
        revision = revision.removeprefix("refs/heads/")
        sha = self.branches.get(revision, revision if _SHA_RE.fullmatch(revision) else None)
        if sha not in self.commits:
            message = f"Invalid rev id: {revision} (revision not found in {self.repo_id})"
            raise _HubError(404, message, "RevisionNotFound")
        return self.commits[sha]

    def history(self, revision: str) -> Iterator[_Commit]:
        """The commit at ``revision`` and its ancestors, newest first."""
        commit: _Commit | None = self.at(revision)
        while commit is not None:
            yield commit
            commit = self.commits[commit.parent] if commit.parent else None


def _check_path(path: Any) -> str:
    """Validate a file path inside a repo; raise 400 for anything git would not store."""
    parts = path.split("/") if isinstance(path, str) and path else [""]
    if any(part in ("", ".", "..", ".git") for part in parts):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return str(path)


def _private(body: dict[str, Any], default: bool) -> bool:
    """The visibility a create or settings request asks for (``default`` if it says nothing)."""
    if body.get("visibility"):
        return body["visibility"] in ("private", "protected")
    return bool(body.get("private", default))


def _parse_commit(body: bytes, sent: list[bytes]) -> tuple[Any, list[tuple[str, Any, bytes]]]:
    """The ndjson commit payload's header and ``(kind, path, content)`` operations; appends the
    texts it carries to ``sent``."""
    header, operations = None, list[tuple[str, Any, bytes]]()
    for line in filter(bytes.strip, body.splitlines()):
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as err:
            raise _HubError(400, f"Invalid ndjson commit payload: {err}") from err
        if key == "header":
            header = value
            sent += [str(value.get(k, "")).encode() for k in ("summary", "description")]
        elif key in ("file", "deletedFile", "deletedFolder"):
            raw = value.get("content", "")
            content = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
            sent += [content] if key == "file" else []
            operations.append((key, value.get("path"), content))
        else:  # lfsFile among them: every file is committed inline
            raise _HubError(400, f"Unknown commit operation for LocalHub: {key!r}")
    return header, operations


def _apply(files: dict[str, bytes], operations: list[tuple[str, Any, bytes]]) -> None:
    """Apply commit operations to a file tree in place, as the Hub would (or refuse)."""
    for kind, raw_path, content in operations:
        path = _check_path(raw_path.rstrip("/") if isinstance(raw_path, str) else raw_path)
        inside = [p for p in files if p.startswith(path + "/")]
        parents = path.split("/")[:-1]
        if kind == "file":
            if inside or any("/".join(parents[:i]) in files for i in range(1, len(parents) + 1)):
                raise _HubError(400, f"Cannot add file {path}: it is a folder or under a file")
            files[path] = content
        elif kind == "deletedFile" and path in files:
            del files[path]
        elif kind == "deletedFolder" and inside:
            for p in inside:
                del files[p]
        else:
            name = kind.removeprefix("deleted").lower()
            raise _HubError(404, f"A {name} with this name doesn't exist: {path}", "EntryNotFound")


def _tree(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict[str, Any]]:
    """The Hub's tree listing of ``folder`` ("" for the root) in a snapshot; 404 if no folder."""
    entries: dict[str, dict[str, Any]] = {}
    for path, content in files.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            name = "/".join(parts[:i])
            oid = hashlib.sha1(f"tree {name}".encode()).hexdigest()
            entries[name] = {"type": "directory", "oid": oid, "size": 0, "path": name}
        oid, size = _git_blob_sha(content), len(content)
        entries[path] = {"type": "file", "oid": oid, "size": size, "path": path}
    if folder and entries.get(folder, {}).get("type") != "directory":
        raise _HubError(404, f"Entry not found: {folder} is not a folder", "EntryNotFound")
    prefix = f"{folder}/" if folder else ""
    below = {p[len(prefix) :]: e for p, e in sorted(entries.items()) if p.startswith(prefix)}
    return [entry for rest, entry in below.items() if recursive or "/" not in rest]


class LocalHub:
    """In-memory Hub on a free port of 127.0.0.1: start it (``with LocalHub() as hub:``), point
    the client at :attr:`endpoint`, then inspect what arrived. Repo ids are ``namespace/name``.

    Attributes:
        requests: ``(method, percent-decoded path without query)`` of every request, in order.
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
        self._repos: dict[str, _Repo] = {}
        self._uploaded: list[bytes] = []
        self._server: _Server | None = None

    @property
    def endpoint(self) -> str:
        """Base URL to pass as ``endpoint=`` to ``huggingface_hub``, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("LocalHub is not running: call start() first")
        return self._server.endpoint

    def start(self) -> LocalHub:
        """Bind to a free port on 127.0.0.1 and serve in a daemon thread; return ``self``."""
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        self._server = _Server(self)
        self._server.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # returns once serve_forever (the thread's only work) has returned
            server.server_close()

    def __enter__(self) -> LocalHub:
        """Start the hub."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the hub."""
        self.stop()

    def repo_exists(self, repo_id: str) -> bool:
        """Whether the repo exists (created and not deleted)."""
        return repo_id in self._repos

    def load_in_fresh_process(
        self, repo_id: str, sae_ids: list[str], hf_home: str
    ) -> dict[str, list[str]]:
        """Load each SAE of ``repo_id`` in a new Python process pointed at this hub, with
        SAELens's ``SAE.from_pretrained`` and the plugin's ``load_sae``: their class names."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAE_GATED"))}
        env.update({"HF_ENDPOINT": self.endpoint, "HF_HOME": hf_home})
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_EACH, repo_id, *sae_ids],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"loading {repo_id} in a fresh process failed:\n{done.stderr}")
        loaded: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
        return loaded

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Snapshot of the repo at ``revision`` (branch or commit sha): path -> content.
        KeyError if the repo or the revision does not exist."""
        return dict(self._history(repo_id, revision)[0].files)

    def commits(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit shas in the history of ``revision``, oldest (the repo's initial commit) first.
        KeyError if the repo or the revision does not exist."""
        return [c.sha for c in self._history(repo_id, revision)][::-1]

    def is_private(self, repo_id: str) -> bool:
        """Whether the repo was created private (or later made private); KeyError if no repo."""
        return self._repos[repo_id].private

    def all_uploaded_bytes(self) -> bytes:
        """Everything clients sent as content, newline-separated, in order: files in commit
        requests (even failed or rejected ones), pre-upload samples, READMEs sent for YAML
        validation, commit summaries and descriptions; no Authorization headers. Use it to
        assert that a secret was never published."""
        with self._lock:
            return b"\n".join(self._uploaded)

    def _history(self, repo_id: str, revision: str) -> list[_Commit]:
        try:  # no lock: commits are never changed once stored
            return list(self._repos[repo_id].history(revision))
        except (KeyError, _HubError):
            raise KeyError(f"no repo {repo_id!r} with revision {revision!r}") from None

    def _dispatch(self, req: _Handler, path: str) -> Any:
        """The answer to a request for ``path`` from the first route of :data:`_ROUTES` it fits."""
        for methods, pattern, name, write in _ROUTES:
            match = re.fullmatch(pattern, path)
            if not match or req.command not in methods.split():
                continue
            if write and not req.authed:
                raise _HubError(401, "Invalid credentials: send a token")
            if req.flag("create_pr"):
                raise _HubError(400, "LocalHub does not support pull requests (create_pr)")
            # Decode after matching: a revision or a file path may hold an encoded "/".
            args = {k: unquote(v) for k, v in match.groupdict().items() if v}
            with self._lock:
                return getattr(self, f"_api_{name}")(req, **args)
        raise _HubError(404, f"LocalHub has no route for {req.command} {unquote(path)}")

    def _repo(self, req: _Handler, repo_id: str) -> _Repo:
        """The repo; 404 if it is missing, or private and ``req`` has no token."""
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and not req.authed):
            raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    @staticmethod
    def _repo_id(body: Any) -> str:
        """The id of the model repo a create or delete request names; 400 if invalid."""
        if not isinstance(body, dict):
            raise _HubError(400, "Expected a JSON object")
        if (body.get("type") or "model") != "model":
            raise _HubError(400, f"LocalHub serves model repos only, not {body['type']!r}")
        name, org = body.get("name"), body.get("organization") or USER_NAME
        if not all(isinstance(part, str) and _NAME_RE.fullmatch(part) for part in (org, name)):
            raise _HubError(400, f"Invalid repo name: {org}/{name}")
        return f"{org}/{name}"

    def _api_whoami(self, req: _Handler) -> Any:
        auth = {"type": "access_token", "accessToken": {"role": "write"}}
        return {"type": "user", "name": USER_NAME, "orgs": [], "auth": auth}

    def _api_validate_yaml(self, req: _Handler) -> Any:
        body = req.json()
        content = body.get("content", "") if isinstance(body, dict) else ""
        self._uploaded.append(str(content).encode())
        return {"errors": [], "warnings": []}

    def _api_create_repo(self, req: _Handler) -> Any:
        body = req.json()
        repo_id = self._repo_id(body)
        if repo_id in self._repos:  # the client reads "url" from the 409 when exist_ok=True
            url = f"{req.server.endpoint}/{repo_id}"
            raise _HubError(409, "You already created this model repo", url=url)
        repo = self._repos[repo_id] = _Repo(repo_id, _private(body, False))
        repo.add(_Commit(None, "initial commit", "", {".gitattributes": _GITATTRIBUTES}), "main")
        return {"url": f"{req.server.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}

    def _api_delete_repo(self, req: _Handler) -> Any:
        repo_id = self._repo_id(req.json())
        if self._repos.pop(repo_id, None) is None:
            raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return {}

    def _api_settings(self, req: _Handler, repo_id: str) -> Any:
        repo, body = self._repo(req, repo_id), req.json()
        if isinstance(body, dict):
            repo.private = _private(body, repo.private)
        return {}

    def _api_repo_info(self, req: _Handler, repo_id: str, rev: str = "main") -> Any:
        repo = self._repo(req, repo_id)
        commit = repo.at(rev)
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        info = {"id": repo_id, "sha": commit.sha, "private": repo.private, "siblings": siblings}
        return {**info, "lastModified": commit.date}

    def _api_tree(self, req: _Handler, repo_id: str, rev: str, path: str = "") -> Any:
        files = self._repo(req, repo_id).at(rev).files
        return _tree(files, path.strip("/"), req.flag("recursive"))

    def _api_refs(self, req: _Handler, repo_id: str) -> Any:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in sorted(self._repo(req, repo_id).branches.items())
        ]
        return {"branches": branches, "converts": [], "tags": [], "pullRequests": []}

    def _api_list_commits(self, req: _Handler, repo_id: str, rev: str) -> Any:
        user = [{"user": USER_NAME}]
        return [
            {"id": c.sha, "title": c.summary, "message": c.message, "date": c.date, "authors": user}
            for c in self._repo(req, repo_id).history(rev)
        ]

    def _api_branch(self, req: _Handler, repo_id: str, rev: str) -> Any:
        repo = self._repo(req, repo_id)
        if not _NAME_RE.fullmatch(rev) or _SHA_RE.fullmatch(rev):
            raise _HubError(400, f"Invalid branch name: {rev!r}")
        if rev in repo.branches:
            raise _HubError(409, f"Reference already exists: refs/heads/{rev}")
        body = req.json()
        start = body.get("startingPoint") if isinstance(body, dict) else None
        repo.add(repo.at(start or "main"), rev)
        return {}

    def _api_preupload(self, req: _Handler, repo_id: str, rev: str) -> Any:
        body = req.json()
        entries = body.get("files") if isinstance(body, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _HubError(400, "Expected {'files': [{...}, ...]}")
        self._uploaded += [base64.b64decode(e["sample"]) for e in entries if "sample" in e]
        files = self._repo(req, repo_id).at(rev).files
        answer = {"uploadMode": "regular", "shouldIgnore": False}
        paths = [_check_path(e.get("path")) for e in entries]
        oids = {p: _git_blob_sha(files[p]) for p in paths if p in files}
        return {"files": [{"path": p, "oid": oids.get(p), **answer} for p in paths]}

    def _api_commit(self, req: _Handler, repo_id: str, rev: str) -> Any:
        header, operations = _parse_commit(req.body, self._uploaded)
        if self.fail_next_commits > 0:
            self.fail_next_commits -= 1
            raise _HubError(self.fail_status, "Injected failure (LocalHub.fail_next_commits)")
        if not isinstance(header, dict) or not header.get("summary"):
            raise _HubError(400, "Commit header with a non-empty summary is required")
        repo = self._repo(req, repo_id)
        head = repo.at(rev)
        if rev not in repo.branches:
            raise _HubError(400, f"Can only commit to a branch, not {rev!r}")
        if header.get("parentCommit") not in (None, head.sha):
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        _apply(files, operations)
        summary, description = str(header["summary"]), str(header.get("description") or "")
        message = "\n\n".join(filter(None, (summary, description)))
        commit = repo.add(_Commit(head.sha, summary, message, files), rev)
        url = f"{req.server.endpoint}/{repo_id}/commit/{commit.sha}"
        return {"commitUrl": url, "commitOid": commit.sha, "pullRequestUrl": None}

    def _api_resolve(self, req: _Handler, repo_id: str, rev: str, path: str) -> Any:
        commit = self._repo(req, repo_id).at(rev)
        if path not in commit.files:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        etag = f'"{_git_blob_sha(commit.files[path])}"'
        return 200, commit.files[path], {"ETag": etag, "X-Repo-Commit": commit.sha}


class _Server(ThreadingHTTPServer):
    """The HTTP server of one :class:`LocalHub`, on a free port of 127.0.0.1."""

    daemon_threads = True

    def __init__(self, hub: LocalHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.endpoint = hub, f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a client that disconnects early is not worth a traceback."""


class _Handler(BaseHTTPRequestHandler):
    """One HTTP request, answered by the server's hub; every answer closes the connection."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    def _handle(self) -> None:
        self.close_connection = True
        try:
            self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except (ValueError, OSError):
            return
        auth = self.headers.get("Authorization", "")
        self.authed = auth.lower().startswith("bearer ") and bool(auth[7:].strip())
        url, hub = urlsplit(self.path), self.server.hub
        self.query = parse_qs(url.query)
        hub.requests.append((self.command, unquote(url.path)))  # atomic: no lock needed
        try:
            answer = hub._dispatch(self, url.path.rstrip("/"))
            status, body, headers = answer if isinstance(answer, tuple) else (200, answer, {})
        except _HubError as err:
            status, body = err.status, {**err.extra, "error": err.message}
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
            headers |= {"X-Error-Code": err.code} if err.code else {}
        except Exception as err:  # report server bugs to the client, not to stderr
            status, body, headers = 500, {"error": f"LocalHub internal error: {err!r}"}, {}
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        self.send_response(status)
        headers |= {"Content-Length": str(len(body)), "Connection": "close"}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def json(self) -> Any:
        """The body parsed as JSON (``None`` if empty); 400 if it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as err:
            raise _HubError(400, f"Invalid JSON body: {err}") from err

    def flag(self, name: str) -> bool:
        """Whether the query string sets ``name`` to true."""
        return any(v.lower() in ("1", "true") for v in self.query.get(name, []))

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no request logging to stderr."""
