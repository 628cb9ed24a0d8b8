"""Publishing to and loading from the Hub: hub.push_sae / hub.load_sae against a LocalHub.

Everything goes through the real huggingface_hub client. Loading with plain
``SAE.from_pretrained`` is checked in fresh interpreters (autoload on, and off for portable).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from sae_lens import SAE
from safetensors.torch import load_file, save_file

from sae_gated_plugin import cli
from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperSAE, GatedPaperTrainingSAE
from sae_gated_plugin.errors import CorruptArtifactError, GatedPluginError
from sae_gated_plugin.hub import HubPublishError, is_secret_key, load_sae, push_sae
from sae_gated_plugin.hub import card as model_card
from sae_gated_plugin.testing import LocalHub

TOKEN = "hf_SECRET_test_token_123"
FAKE_SECRET = "wandb-FAKE-SECRET-value-987"
HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 16, 64
WEIGHTS = "sae_weights.safetensors"

_repo_numbers = itertools.count()


def _new_repo_id() -> str:
    return f"local-user/gated-saes-{next(_repo_numbers)}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    """One LocalHub for the whole module."""
    with LocalHub() as local_hub:
        yield local_hub


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline mode blocks 127.0.0.1 too (huggingface_hub reads it at import); no real token."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def default_endpoint(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point huggingface_hub's default endpoint (HF_ENDPOINT, read at import) at the LocalHub."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained-looking gated_paper output folder (random parameters)."""
    torch.manual_seed(0)
    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))
    with torch.no_grad():
        for param in (sae.b_gate, sae.r_mag, sae.b_mag, sae.b_dec):
            param.copy_(0.1 * torch.randn_like(param))
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = "smollm2-135m"
    sae.cfg.metadata.dataset_path = "wiki-summaries"
    folder = tmp_path_factory.mktemp("trained")
    sae.save_inference_model(folder)
    save_file({"sparsity": torch.rand(D_SAE).log10()}, folder / "sparsity.safetensors")
    runner_cfg = {
        "model_name": "smollm2-135m",
        "hook_name": HOOK,
        "dataset_path": "wiki-summaries",
        "training_tokens": 1_000_000,
        "train_batch_size_tokens": 4096,
        "exclude_special_tokens": True,
        "sequence_separator_token": "bos",
        "hf_token": TOKEN,
        "logger": {"wandb_entity": "my-team", "wandb_api_key": FAKE_SECRET},
    }
    (folder / "runner_cfg.json").write_text(json.dumps(runner_cfg))
    train_config = {
        "model_name": "smollm2-135m",
        "training_tokens": 1_000_000,
        "wandb": {"entity": "my-team", "apiKey": FAKE_SECRET},
    }
    (folder / "train_config.yaml").write_text(yaml.safe_dump(train_config))
    evaluation = {
        "l0": 12.5,
        "loss_recovered": 0.91,
        "relative_reconstruction_bias": 0.97,
        "explained_variance": 0.83,
        "n_tokens": 4096,
        "hook_name": HOOK,
    }
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    (folder / "checkpoints").mkdir()
    return folder


@pytest.fixture(scope="module")
def fixed_input(tmp_path_factory: pytest.TempPathFactory, sae_folder: Path) -> dict[str, Any]:
    """A fixed input, its file, and the original SAE's output on it."""
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("input") / "x.safetensors"
    save_file({"x": x}, path)
    original = SAE.load_from_disk(sae_folder)
    with torch.no_grad():
        y = original(x)
    assert (original.encode(x) > 0).any()
    return {"x": x, "path": path, "y": y}


def _push(folder: Path, repo_id: str, hub: LocalHub, **kwargs: Any) -> str:
    return push_sae(folder, repo_id, token=TOKEN, endpoint=hub.endpoint, **kwargs)


# --------------------------------------------------------------------------- fresh interpreters

_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file, save_file
    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY

    repo_id, sae_id, x_path, out_path = sys.argv[1:5]
    sae = SAE.from_pretrained(repo_id, sae_id)
    x = load_file(x_path)["x"]
    with torch.no_grad():
        y = sae(x)
    tensors = {k: v.detach().contiguous() for k, v in sae.state_dict().items()}
    save_file({**tensors, "__output__": y.contiguous()}, out_path)
    print(json.dumps({
        "class": type(sae).__module__ + "." + type(sae).__qualname__,
        "gated_paper_registered": "gated_paper" in SAE_CLASS_REGISTRY,
        "plugin_imported": "sae_gated_plugin" in sys.modules,
    }))
    """
)


@dataclass
class ChildLoad:
    """What a fresh interpreter got from ``SAE.from_pretrained``."""

    repo_id: str
    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def child_loads(
    hub: LocalHub,
    sae_folder: Path,
    fixed_input: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, ChildLoad]:
    """Push the SAE as gated_paper and as portable, then load each in a fresh interpreter.

    Both interpreters run at once (importing sae_lens takes seconds).
    """
    work = tmp_path_factory.mktemp("children")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAE_GATED"))}
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(work / "hf-home")})
    runs = {}
    for name, portable in (("plugin", False), ("portable", True)):
        repo_id = _new_repo_id()
        push_sae(sae_folder, repo_id, portable=portable, token=TOKEN, endpoint=hub.endpoint)
        child_env = dict(env)
        if portable:
            child_env["SAE_GATED_PLUGIN_AUTOLOAD"] = "0"
        out = work / f"{name}.safetensors"
        args = [sys.executable, "-c", _CHILD, repo_id, HOOK, str(fixed_input["path"]), str(out)]
        proc = subprocess.Popen(
            args, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs[name] = (repo_id, out, proc)
    loads = {}
    for name, (repo_id, out, proc) in runs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} child failed:\n{stderr}"
        info = json.loads(stdout.strip().splitlines()[-1])
        loads[name] = ChildLoad(repo_id, info, load_file(out))
    return loads


def test_from_pretrained_in_fresh_interpreter_with_autoload(
    hub: LocalHub, sae_folder: Path, fixed_input: dict[str, Any], child_loads: dict[str, ChildLoad]
) -> None:
    load = child_loads["plugin"]
    assert load.info["class"] == "sae_gated_plugin.arch.sae.GatedPaperSAE"
    assert load.info["plugin_imported"]
    original = load_file(sae_folder / WEIGHTS)
    assert hub.files(load.repo_id)[f"{HOOK}/{WEIGHTS}"] == (sae_folder / WEIGHTS).read_bytes()
    for name, tensor in original.items():
        assert load.tensors[name].dtype == tensor.dtype
        assert torch.equal(load.tensors[name], tensor), name
    assert torch.equal(load.tensors["__output__"], fixed_input["y"])


def test_portable_loads_without_plugin(
    hub: LocalHub, sae_folder: Path, fixed_input: dict[str, Any], child_loads: dict[str, ChildLoad]
) -> None:
    load = child_loads["portable"]
    assert load.info["class"] == "sae_lens.saes.gated_sae.GatedSAE"
    assert not load.info["gated_paper_registered"]
    assert not load.info["plugin_imported"]
    for name, tensor in load_file(sae_folder / WEIGHTS).items():
        assert torch.equal(load.tensors[name], tensor), name
    torch.testing.assert_close(load.tensors["__output__"], fixed_input["y"], rtol=1e-5, atol=1e-6)
    cfg = json.loads(hub.files(load.repo_id)[f"{HOOK}/cfg.json"])
    assert cfg["architecture"] == "gated"
    assert cfg["metadata"]["sae_gated_plugin"]["trained_architecture"] == "gated_paper"
    card = hub.files(load.repo_id)["README.md"].decode()
    assert "| portable gated |" in card
    assert "pip install sae-gated-plugin" not in card  # nothing here needs the plugin


# --------------------------------------------------------------------------- card and index


def _split_card(card: str) -> tuple[dict[str, Any], str]:
    front, _, body = model_card.split_front_matter(card)
    return front, body


def test_two_pushes_one_commit_each_and_user_text_kept(hub: LocalHub, sae_folder: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    url = _push(sae_folder, repo_id, hub)
    assert url.endswith(f"/{repo_id}/tree/main/{HOOK}")
    assert len(hub.commits(repo_id)) == 2  # the repo's initial commit + the push
    files = hub.files(repo_id)
    assert {
        f"{HOOK}/{name}"
        for name in (
            "cfg.json",
            WEIGHTS,
            "sparsity.safetensors",
            "runner_cfg.json",
            "train_config.yaml",
            "evaluation.json",
        )
    } <= set(files)
    assert not any("checkpoints" in path for path in files)
    first_card = files["README.md"].decode()
    front, body = _split_card(first_card)
    assert front["library_name"] == "saelens"
    assert {"sparse-autoencoder", "gated-sae", "sae-gated-plugin", "saelens"} <= set(front["tags"])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "datasets" not in front  # wiki-summaries is no Hub dataset: described in the text
    assert "wiki-summaries" in body and "Wikipedia" in body
    assert f'SAE.from_pretrained("{repo_id}", "{HOOK}")' in body
    assert "pip install sae-gated-plugin" in body
    assert (
        f"| `{HOOK}` | `{HOOK}` | 16 | 64 | 12.5 | 0.910 | 0.970 | 0.830 | 1,000,000 | "
        "gated_paper |" in body
    )

    # The user edits the card: text above and below the block, and front matter keys.
    above, below = "\nMy notes above the table.\n\n", "\n\n## Citation\n\nPlease cite us.\n"
    start = body.index(model_card.BEGIN_MARKER)
    end = body.index(model_card.END_MARKER) + len(model_card.END_MARKER)
    user_front = {"license": "mit", "tags": ["my-tag"], "language": ["en"]}
    edited = (
        "---\n"
        + yaml.safe_dump(user_front)
        + "---\n"
        + body[:start]
        + above
        + body[start:end]
        + below
    )
    api.create_commit(
        repo_id,
        [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=edited.encode())],
        commit_message="Edit the card",
    )
    before = hub.commits(repo_id)

    _push(sae_folder, repo_id, hub, sae_id="layer1/custom", portable=True)

    after = hub.commits(repo_id)
    assert after[:-1] == before and len(after) == len(before) + 1
    files = hub.files(repo_id)
    assert f"{HOOK}/{WEIGHTS}" in files and f"layer1/custom/{WEIGHTS}" in files
    card = files["README.md"].decode()
    front, new_body = _split_card(card)
    assert new_body.startswith(body[:start] + above + model_card.BEGIN_MARKER)
    assert new_body.endswith(model_card.END_MARKER + below)
    assert front["license"] == "mit" and front["language"] == ["en"]
    assert front["tags"][0] == "my-tag" and "gated-sae" in front["tags"]
    assert f'SAE.from_pretrained("{repo_id}", "{HOOK}")' in card
    assert f'SAE.from_pretrained("{repo_id}", "layer1/custom")' in card
    assert "| `layer1/custom` |" in card and "| portable gated |" in card
    index = json.loads(files[model_card.INDEX_FILENAME])
    assert [(e["sae_id"], e["form"]) for e in index["saes"]] == [
        (HOOK, "gated_paper"),
        ("layer1/custom", "portable gated"),
    ]

    # Re-pushing an unchanged SAE changes nothing: the client skips the empty commit.
    _push(sae_folder, repo_id, hub)
    assert hub.commits(repo_id) == after and hub.files(repo_id) == files


def test_card_rebuilt_from_files_when_index_missing(hub: LocalHub, sae_folder: Path) -> None:
    """An SAE uploaded by other means (no index entry) still gets a row in the table."""
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    api.create_repo(repo_id)
    api.create_commit(
        repo_id,
        [
            CommitOperationAdd(path_in_repo=f"other/{name}", path_or_fileobj=sae_folder / name)
            for name in ("cfg.json", WEIGHTS, "evaluation.json")
        ],
        commit_message="uploaded by hand",
    )
    _push(sae_folder, repo_id, hub)
    card = hub.files(repo_id)["README.md"].decode()
    assert "| `other` | `blocks.0.hook_resid_post` | 16 | 64 | 12.5 |" in card
    index = json.loads(hub.files(repo_id)[model_card.INDEX_FILENAME])
    assert [e["sae_id"] for e in index["saes"]] == [HOOK, "other"]


def test_secrets_stripped_from_training_config(hub: LocalHub, sae_folder: Path) -> None:
    repo_id = _new_repo_id()
    _push(sae_folder, repo_id, hub)
    files = hub.files(repo_id)
    runner = json.loads(files[f"{HOOK}/runner_cfg.json"])
    assert "hf_token" not in runner and "wandb_api_key" not in runner["logger"]
    assert runner["logger"]["wandb_entity"] == "my-team"
    assert runner["training_tokens"] == 1_000_000
    assert runner["sequence_separator_token"] == "bos"
    train = yaml.safe_load(files[f"{HOOK}/train_config.yaml"])
    assert train["wandb"] == {"entity": "my-team"}
    assert train["training_tokens"] == 1_000_000
    uploaded = hub.all_uploaded_bytes()
    assert TOKEN.encode() not in uploaded
    assert FAKE_SECRET.encode() not in uploaded


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("HF_TOKEN", True),
        ("token", True),
        ("wandb_api_key", True),
        ("apiKey", True),
        ("db_password", True),
        ("clientSecret", True),
        ("auth", True),
        ("training_tokens", False),
        ("is_dataset_tokenized", False),
        ("exclude_special_tokens", False),
        ("sequence_separator_token", False),
        ("wandb_entity", False),
        ("hook_name", False),
        ("monkey", False),
    ],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_token_from_environment(
    hub: LocalHub, sae_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # LocalHub refuses writes without a token
    repo_id = _new_repo_id()
    push_sae(sae_folder, repo_id, endpoint=hub.endpoint)
    assert f"{HOOK}/{WEIGHTS}" in hub.files(repo_id)
    assert TOKEN.encode() not in hub.all_uploaded_bytes()


# --------------------------------------------------------------------------- flags


def test_private_flag_and_revision(hub: LocalHub, sae_folder: Path, tmp_path: Path) -> None:
    repo_id = _new_repo_id()
    _push(sae_folder, repo_id, hub, private=True, revision="dev")
    assert hub.is_private(repo_id)
    assert set(hub.files(repo_id)) == {".gitattributes"}  # main untouched
    assert len(hub.commits(repo_id)) == 1
    dev = hub.files(repo_id, "dev")
    assert f"{HOOK}/{WEIGHTS}" in dev and "README.md" in dev
    assert hub.commits(repo_id, "dev")[:-1] == hub.commits(repo_id)
    assert 'revision="dev"' in dev["README.md"].decode()

    sae = load_sae(
        repo_id, HOOK, revision="dev", token=TOKEN, endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert isinstance(sae, GatedPaperSAE)
    for name, tensor in load_file(sae_folder / WEIGHTS).items():
        assert torch.equal(sae.state_dict()[name], tensor)
    with pytest.raises(GatedPluginError, match="no SAE 'missing'"):
        load_sae(
            repo_id,
            "missing",
            revision="dev",
            token=TOKEN,
            endpoint=hub.endpoint,
            cache_dir=tmp_path,
        )


# --------------------------------------------------------------------------- failures


def test_failed_commit_changes_nothing(
    hub: LocalHub,
    sae_folder: Path,
    capsys: pytest.CaptureFixture[str],
    default_endpoint: None,
) -> None:
    repo_id = _new_repo_id()
    _push(sae_folder, repo_id, hub)
    files, commits = hub.files(repo_id), hub.commits(repo_id)

    hub.fail_next_commits = 1
    with pytest.raises(HubPublishError) as excinfo:
        _push(sae_folder, repo_id, hub, sae_id="second")
    assert hub.fail_next_commits == 0
    message = str(excinfo.value)
    assert repo_id in message and "500" in message and "unchanged" in message
    assert TOKEN not in message
    assert hub.files(repo_id) == files and hub.commits(repo_id) == commits

    # The CLI (default endpoint) turns it into exit status 2 with a message naming the repo.
    hub.fail_next_commits = 1
    status = cli.main(["push", str(sae_folder), repo_id, "--sae-id", "third", "--token", TOKEN])
    assert status == 2
    err = capsys.readouterr().err
    assert repo_id in err and TOKEN not in err
    assert hub.files(repo_id) == files and hub.commits(repo_id) == commits

    # And succeeds once the Hub is back.
    assert cli.main(["push", str(sae_folder), repo_id, "--sae-id", "third", "--token", TOKEN]) == 0
    assert f"third/{WEIGHTS}" in hub.files(repo_id)
    assert TOKEN.encode() not in hub.all_uploaded_bytes()


def test_invalid_folder_pushes_nothing(hub: LocalHub, sae_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / WEIGHTS).write_bytes((sae_folder / WEIGHTS).read_bytes())
    repo_id = _new_repo_id()
    n_requests = len(hub.requests)
    with pytest.raises(CorruptArtifactError, match=r"cfg\.json"):
        _push(broken, repo_id, hub)
    assert len(hub.requests) == n_requests
    assert not hub.repo_exists(repo_id)


@pytest.mark.parametrize("repo_id", ["bad repo id!!", "a/b/c", "trailing-dash-"])
def test_invalid_repo_id_is_refused_before_any_request(
    hub: LocalHub, sae_folder: Path, repo_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    n_requests = len(hub.requests)
    with pytest.raises(GatedPluginError, match="is not a valid Hub repo id"):
        _push(sae_folder, repo_id, hub)
    with pytest.raises(GatedPluginError, match="is not a valid Hub repo id"):
        load_sae(repo_id, "blocks.0.hook_resid_post", endpoint=hub.endpoint, token=TOKEN)
    assert cli.main(["push", str(sae_folder), repo_id]) == 2
    assert repr(repo_id) in capsys.readouterr().err
    assert len(hub.requests) == n_requests


def test_corrupted_downloads_are_named(
    hub: LocalHub, sae_folder: Path, tmp_path: Path, default_endpoint: None
) -> None:
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    api.create_repo(repo_id)
    weights = (sae_folder / WEIGHTS).read_bytes()
    cfg = json.loads((sae_folder / "cfg.json").read_text())
    wrong_cfg = json.dumps({**cfg, "d_sae": D_SAE // 2}).encode()
    api.create_commit(
        repo_id,
        [
            CommitOperationAdd(
                path_in_repo="truncated/cfg.json", path_or_fileobj=sae_folder / "cfg.json"
            ),
            CommitOperationAdd(
                path_in_repo=f"truncated/{WEIGHTS}", path_or_fileobj=weights[: len(weights) // 2]
            ),
            CommitOperationAdd(path_in_repo="wrong_d_sae/cfg.json", path_or_fileobj=wrong_cfg),
            CommitOperationAdd(path_in_repo=f"wrong_d_sae/{WEIGHTS}", path_or_fileobj=weights),
        ],
        commit_message="corrupted uploads",
    )
    kwargs: dict[str, Any] = {"token": TOKEN, "endpoint": hub.endpoint, "cache_dir": tmp_path}
    with pytest.raises(CorruptArtifactError, match=rf"truncated/{WEIGHTS}.*not a readable"):
        load_sae(repo_id, "truncated", **kwargs)
    with pytest.raises(CorruptArtifactError, match=rf"wrong_d_sae/{WEIGHTS}: W_enc has shape"):
        load_sae(repo_id, "wrong_d_sae", **kwargs)
    # Plain SAELens loading checks the parameters too (through GatedPaperSAE).
    with pytest.raises(CorruptArtifactError, match=r"W_enc has shape \(16, 64\).*\(16, 32\)"):
        SAE.from_pretrained(repo_id, "wrong_d_sae")


def test_unreachable_hub_is_a_clear_error(sae_folder: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HubPublishError, match=r"'local-user/nowhere': creating the repo failed"):
        push_sae(sae_folder, "local-user/nowhere", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")


def test_existing_readme_without_block_and_bad_front_matter(
    hub: LocalHub, sae_folder: Path
) -> None:
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    api.create_repo(repo_id)
    user_readme = "---\nlicense: apache-2.0  # keep me\n---\n# Hand-written\n\nSome words."

    def set_readme(text: str) -> None:
        op = CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=text.encode())
        api.create_commit(repo_id, [op], commit_message="user README")

    set_readme("---\nlicense: [unclosed\n---\nText\n")
    commits = hub.commits(repo_id)
    with pytest.raises(HubPublishError, match=r"README\.md: invalid YAML front matter"):
        _push(sae_folder, repo_id, hub)
    assert hub.commits(repo_id) == commits

    set_readme(user_readme)
    _push(sae_folder, repo_id, hub)
    front, body = _split_card(hub.files(repo_id)["README.md"].decode())
    assert front["license"] == "apache-2.0" and front["library_name"] == "saelens"
    assert body.startswith("# Hand-written\n\nSome words.\n\n" + model_card.BEGIN_MARKER)


def test_stale_files_of_an_sae_are_removed(hub: LocalHub, sae_folder: Path, tmp_path: Path) -> None:
    repo_id = _new_repo_id()
    _push(sae_folder, repo_id, hub, sae_id="sae")
    assert "sae/evaluation.json" in hub.files(repo_id)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("cfg.json", WEIGHTS):
        (bare / name).write_bytes((sae_folder / name).read_bytes())
    n_commits = len(hub.commits(repo_id))
    _push(bare, repo_id, hub, sae_id="sae")
    files = hub.files(repo_id)
    assert len(hub.commits(repo_id)) == n_commits + 1
    assert {p for p in files if p.startswith("sae/")} == {"sae/cfg.json", f"sae/{WEIGHTS}"}
    assert "| `sae` | `blocks.0.hook_resid_post` | 16 | 64 | n/a |" in files["README.md"].decode()


@pytest.mark.parametrize(
    "text", ["not json", "[]", '{"saes": 3}', '{"saes": [1, "x"]}', '{"saes": [{"x": 1}]}']
)
def test_a_garbled_index_counts_as_empty(text: str) -> None:
    from sae_gated_plugin.hub.card import parse_index

    assert parse_index(text) == {}
