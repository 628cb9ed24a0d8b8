"""LocalHub driven only through the real huggingface_hub client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from sae_gated_plugin.testing import LocalHub

TOKEN = "hf_test_token"
README = b"---\nlicense: mit\ntags:\n- sae\n- gated\n---\n# My SAE\n\nA test card.\n"


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    """One LocalHub for the whole module, stopped at the end."""
    with LocalHub() as local_hub:
        yield local_hub


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode would block 127.0.0.1 too; huggingface_hub reads it at import."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def api(hub: LocalHub) -> HfApi:
    """A client pointed at the local hub."""
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


_counter = iter(range(10**6))


def _new_repo(api: HfApi, private: bool = False) -> str:
    repo_id = f"local-user/repo-{next(_counter)}"
    url = api.create_repo(repo_id, private=private)
    assert url.repo_id == repo_id
    return repo_id


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


FOLDER = {
    "cfg.json": b'{"d_in": 576, "d_sae": 4608}',
    "sae_weights.safetensors": bytes(range(256)) * 64,
    "sub/dir/notes.txt": b"nested\n",
}


def test_server_basics(hub: LocalHub) -> None:
    assert hub.endpoint.startswith("http://127.0.0.1:")
    assert int(hub.endpoint.rsplit(":", 1)[1]) > 0


def test_whoami(api: HfApi) -> None:
    assert api.whoami()["name"] == "local-user"


def test_create_repo_records_private_flag(hub: LocalHub, api: HfApi) -> None:
    private_id = _new_repo(api, private=True)
    public_id = _new_repo(api, private=False)
    assert hub.repo_exists(private_id) and hub.repo_exists(public_id)
    assert hub.is_private(private_id) is True
    assert hub.is_private(public_id) is False
    assert api.model_info(private_id).private is True
    assert api.model_info(public_id).private is False
    # A new repo holds one commit with .gitattributes.
    assert len(hub.commits(private_id)) == 1
    assert set(hub.files(private_id)) == {".gitattributes"}
    # Already exists: 409, swallowed by the client with exist_ok=True.
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(private_id)
    assert excinfo.value.response.status_code == 409
    api.create_repo(private_id, exist_ok=True)
    assert hub.is_private(private_id) is True


def test_private_repo_hidden_without_token(hub: LocalHub, api: HfApi) -> None:
    repo_id = _new_repo(api, private=True)
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(repo_id)


def test_upload_folder_is_one_commit_and_downloads_match(
    hub: LocalHub, api: HfApi, tmp_path: Path
) -> None:
    repo_id = _new_repo(api, private=True)
    folder = _write_folder(tmp_path / "out", FOLDER)
    before = hub.commits(repo_id)

    info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Add SAE")

    after = hub.commits(repo_id)
    assert len(after) == len(before) + 1
    assert after[:-1] == before
    assert info.oid == after[-1]
    assert hub.files(repo_id) == {".gitattributes": hub.files(repo_id)[".gitattributes"], **FOLDER}
    assert b"Add SAE" in hub.all_uploaded_bytes()
    assert FOLDER["cfg.json"] in hub.all_uploaded_bytes()

    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *FOLDER])
    model = api.model_info(repo_id)
    assert model.sha == after[-1]
    assert model.siblings is not None
    assert sorted(s.rfilename for s in model.siblings) == sorted([".gitattributes", *FOLDER])
    assert api.file_exists(repo_id, "sub/dir/notes.txt")
    assert not api.file_exists(repo_id, "missing.txt")
    assert not api.file_exists("local-user/no-such-repo", "cfg.json")

    cache = tmp_path / "cache"
    for rel, content in FOLDER.items():
        local = hf_hub_download(repo_id, rel, endpoint=hub.endpoint, token=TOKEN, cache_dir=cache)
        assert Path(local).read_bytes() == content
    snapshot = Path(
        snapshot_download(repo_id, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "c2")
    )
    for rel, content in FOLDER.items():
        assert (snapshot / rel).read_bytes() == content
    assert snapshot.name == after[-1]

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", endpoint=hub.endpoint, token=TOKEN, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            repo_id,
            "cfg.json",
            revision="nope",
            endpoint=hub.endpoint,
            token=TOKEN,
            cache_dir=cache,
        )

    # Re-uploading identical content is skipped by the client: no new commit.
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert hub.commits(repo_id) == after


def test_readme_upload_validates_yaml(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = _new_repo(api)
    api.upload_file(path_or_fileobj=README, path_in_repo="README.md", repo_id=repo_id)
    assert ("POST", "/api/validate-yaml") in hub.requests
    assert hub.files(repo_id)["README.md"] == README
    assert api.model_info(repo_id).siblings is not None
    local = hf_hub_download(
        repo_id, "README.md", endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path
    )
    assert Path(local).read_bytes() == README


def test_readme_in_upload_folder(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = _new_repo(api)
    folder = _write_folder(tmp_path / "out", {**FOLDER, "README.md": README})
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert hub.files(repo_id)["README.md"] == README
    assert len(hub.commits(repo_id)) == 2


def test_create_commit_with_delete(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = _new_repo(api)
    folder = _write_folder(tmp_path / "out", FOLDER)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    n_commits = len(hub.commits(repo_id))

    api.create_commit(
        repo_id=repo_id,
        operations=[
            CommitOperationDelete(path_in_repo="cfg.json"),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=README),
            CommitOperationDelete(path_in_repo="sub/", is_folder=True),
        ],
        commit_message="Replace config",
        commit_description="Longer description",
    )
    files = hub.files(repo_id)
    assert "cfg.json" not in files and "sub/dir/notes.txt" not in files
    assert files["README.md"] == README
    assert len(hub.commits(repo_id)) == n_commits + 1
    assert sorted(api.list_repo_files(repo_id)) == [
        ".gitattributes",
        "README.md",
        "sae_weights.safetensors",
    ]
    history = api.list_repo_commits(repo_id)
    assert [c.commit_id for c in history] == hub.commits(repo_id)[::-1]
    assert history[0].title == "Replace config"

    # Deleting a missing file fails and changes nothing (all or nothing).
    before = hub.files(repo_id)
    with pytest.raises(EntryNotFoundError):
        api.create_commit(
            repo_id=repo_id,
            operations=[
                CommitOperationAdd(path_in_repo="new.txt", path_or_fileobj=b"new"),
                CommitOperationDelete(path_in_repo="not-there.txt"),
            ],
            commit_message="Bad delete",
        )
    assert hub.files(repo_id) == before
    assert len(hub.commits(repo_id)) == n_commits + 1


def test_tree_listing_and_stale_parent(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = _new_repo(api)
    api.upload_folder(repo_id=repo_id, folder_path=_write_folder(tmp_path / "out", FOLDER))
    top = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(repo_id)}
    assert top == {
        ".gitattributes": "RepoFile",
        "cfg.json": "RepoFile",
        "sae_weights.safetensors": "RepoFile",
        "sub": "RepoFolder",
    }
    sub = api.list_repo_tree(repo_id, path_in_repo="sub", recursive=True)
    assert [entry.path for entry in sub] == ["sub/dir", "sub/dir/notes.txt"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="cfg.json"))

    # A commit whose parent is no longer the branch head is refused and changes nothing.
    commits = hub.commits(repo_id)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_commit(
            repo_id=repo_id,
            operations=[CommitOperationAdd(path_in_repo="a.txt", path_or_fileobj=b"a")],
            commit_message="stale",
            parent_commit=commits[0],
        )
    assert excinfo.value.response.status_code == 412
    assert hub.commits(repo_id) == commits


def test_branch_upload_leaves_main_untouched(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    repo_id = _new_repo(api)
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="cfg.json", repo_id=repo_id)
    main_files, main_commits = hub.files(repo_id), hub.commits(repo_id)

    api.create_branch(repo_id, branch="dev")
    api.create_branch(repo_id, branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        api.create_branch(repo_id, branch="dev")
    folder = _write_folder(tmp_path / "out", FOLDER)
    api.upload_folder(repo_id=repo_id, folder_path=folder, revision="dev")

    assert hub.files(repo_id) == main_files
    assert hub.commits(repo_id) == main_commits
    assert hub.files(repo_id, "dev")["cfg.json"] == FOLDER["cfg.json"]
    assert hub.commits(repo_id, "dev")[:-1] == main_commits
    assert "sub/dir/notes.txt" in api.list_repo_files(repo_id, revision="dev")
    assert "sub/dir/notes.txt" not in api.list_repo_files(repo_id)
    assert api.model_info(repo_id, revision="dev").sha == hub.commits(repo_id, "dev")[-1]
    assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main", "dev"}
    local = hf_hub_download(
        repo_id,
        "cfg.json",
        revision="dev",
        endpoint=hub.endpoint,
        token=TOKEN,
        cache_dir=tmp_path / "cache",
    )
    assert Path(local).read_bytes() == FOLDER["cfg.json"]
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(
            path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_id, revision="no-such-branch"
        )


def test_failed_commit_changes_nothing(
    hub: LocalHub, api: HfApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_id = _new_repo(api)
    folder = _write_folder(tmp_path / "out", FOLDER)
    files, commits = hub.files(repo_id), hub.commits(repo_id)

    # Without hf_xet, upload_folder makes a single create_commit call that is not retried.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    hub.fail_next_commits = 1
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert excinfo.value.response.status_code == 500
    assert hub.fail_next_commits == 0
    assert hub.files(repo_id) == files
    assert hub.commits(repo_id) == commits
    # The rejected content still counts as sent.
    assert FOLDER["cfg.json"] in hub.all_uploaded_bytes()

    hub.fail_next_commits = 1
    with pytest.raises(HfHubHTTPError):
        api.create_commit(
            repo_id=repo_id,
            operations=[CommitOperationAdd(path_in_repo="a.txt", path_or_fileobj=b"a")],
            commit_message="fails",
        )
    assert hub.commits(repo_id) == commits


def test_streamed_upload_folder_retries_or_fails(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    """With hf_xet installed, upload_folder retries a 500 but not other server errors."""
    pytest.importorskip("hf_xet")
    repo_id = _new_repo(api)
    folder = _write_folder(tmp_path / "out", FOLDER)
    files, commits = hub.files(repo_id), hub.commits(repo_id)

    hub.fail_status = 507
    hub.fail_next_commits = 1
    try:
        with pytest.raises(HfHubHTTPError) as excinfo:
            api.upload_folder(repo_id=repo_id, folder_path=folder)
    finally:
        hub.fail_status = 500
    assert excinfo.value.response.status_code == 507
    assert hub.files(repo_id) == files and hub.commits(repo_id) == commits

    hub.fail_next_commits = 1
    start = time.monotonic()
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert time.monotonic() - start >= 1.0  # one backoff sleep
    assert hub.fail_next_commits == 0
    assert len(hub.commits(repo_id)) == len(commits) + 1
    assert hub.files(repo_id)["cfg.json"] == FOLDER["cfg.json"]


def test_writes_need_a_token(hub: LocalHub, api: HfApi) -> None:
    repo_id = _new_repo(api)
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert excinfo.value.response.status_code == 401
    assert "x.txt" not in hub.files(repo_id)


def test_update_visibility(hub: LocalHub, api: HfApi) -> None:
    repo_id = _new_repo(api, private=False)
    api.update_repo_settings(repo_id, private=True)
    assert hub.is_private(repo_id)
    assert api.model_info(repo_id).private is True


def test_delete_repo(hub: LocalHub, api: HfApi) -> None:
    repo_id = _new_repo(api)
    api.delete_repo(repo_id)
    assert not hub.repo_exists(repo_id)
    assert not api.repo_exists(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(repo_id)
    api.delete_repo(repo_id, missing_ok=True)
    with pytest.raises(KeyError):
        hub.files(repo_id)


def test_unknown_route_is_a_clear_404(hub: LocalHub, api: HfApi) -> None:
    with pytest.raises(HfHubHTTPError) as excinfo:
        list(api.list_models(limit=1))
    assert excinfo.value.response.status_code == 404
    assert "LocalHub has no route" in str(excinfo.value)


def test_requests_are_recorded(hub: LocalHub, api: HfApi) -> None:
    repo_id = _new_repo(api)
    assert ("POST", "/api/repos/create") in hub.requests
    api.model_info(repo_id)
    assert hub.requests[-1] == ("GET", f"/api/models/{repo_id}")


def test_stop_closes_the_port() -> None:
    local = LocalHub().start()
    endpoint = local.endpoint
    HfApi(endpoint=endpoint, token=TOKEN).create_repo("local-user/tmp")
    local.stop()
    local.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = local.endpoint
    with pytest.raises(Exception):  # noqa: B017 - connection refused, any flavour
        HfApi(endpoint=endpoint, token=TOKEN).model_info("local-user/tmp")
