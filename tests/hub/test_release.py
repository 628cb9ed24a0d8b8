"""Releases: several SAEs pushed as one (folders or a sweep's results file), the release
config.json, the card's table and figure, and ``sae-gated directory-entry``, against a LocalHub."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from sae_lens.loading import pretrained_saes_directory

from sae_gated_plugin import cli
from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperSAE, GatedPaperTrainingSAE
from sae_gated_plugin.hub import HubPublishError, load_sae
from sae_gated_plugin.hub import card as model_card
from sae_gated_plugin.hub.publish import push_release
from sae_gated_plugin.hub.release import ReleaseSAE, default_sae_id, unique_ids
from sae_gated_plugin.testing import LocalHub

TOKEN = "hf_SECRET_release_token_456"
HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE = 16, 64
WEIGHTS = "sae_weights.safetensors"
# (coefficient, l0, loss_recovered, delta CE, dead fraction); coefficient 2 is dominated.
POINTS = [(1.0, 40.2, 0.95, 0.05, 0.01), (2.0, 30.0, 0.85, 0.2, 0.02), (3.0, 20.4, 0.9, 0.1, 0.1)]
FRONTIER_IDS = [f"{HOOK}/width_{D_SAE}/l0_40", f"{HOOK}/width_{D_SAE}/l0_20"]

_repo_numbers = itertools.count()


def _new_repo_id() -> str:
    return f"local-user/release-{next(_repo_numbers)}"


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    """One LocalHub for the whole module."""
    with LocalHub() as local_hub:
        yield local_hub


@pytest.fixture(autouse=True)
def _online(hub: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline mode off, no real token, and huggingface_hub's default endpoint at the LocalHub."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )


def _save_sae(folder: Path, seed: int) -> Path:
    """A small gated_paper SAE folder with random parameters and a runner config."""
    torch.manual_seed(seed)
    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))
    with torch.no_grad():
        for param in (sae.b_gate, sae.r_mag, sae.b_mag, sae.b_dec):
            param.copy_(0.1 * torch.randn_like(param))
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = "smollm2-135m"
    sae.cfg.metadata.dataset_path = "wiki-summaries"
    sae.save_inference_model(folder)
    runner = {"model_name": "smollm2-135m", "hook_name": HOOK, "training_tokens": 200_000}
    (folder / "runner_cfg.json").write_text(json.dumps({**runner, "lr": 3e-4}))
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results file whose lines point (``sae_path``) at saved SAE folders."""
    root = tmp_path_factory.mktemp("sweep")
    lines = []
    for seed, (coefficient, l0, recovered, delta_ce, dead) in enumerate(POINTS):
        folder = root / "saes" / f"point-{seed}"
        folder.mkdir(parents=True)
        _save_sae(folder, seed)
        lines.append({
            "architecture": "gated_paper", "variant": "paper", "coefficient": coefficient,
            "lr": 3e-4, "seed": 0, "resampling": False, "l0": l0, "loss_recovered": recovered,
            "delta_ce_loss": delta_ce, "dead_fraction": dead, "explained_variance": 0.8,
            "relative_reconstruction_bias": 0.97, "sae_path": f"saes/point-{seed}",
        })  # fmt: skip
    results = root / "results.jsonl"
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return results


@pytest.fixture(scope="module")
def release(hub: LocalHub, sweep: Path) -> str:
    """The frontier of ``sweep`` pushed by the CLI as one release (apache-2.0)."""
    repo_id = _new_repo_id()
    argv = ["push", str(sweep), repo_id, "--frontier", "--license", "apache-2.0"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        patch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        assert cli.main([*argv, "--token", TOKEN]) == 0
    return repo_id


def test_frontier_pushed_as_one_commit(hub: LocalHub, release: str) -> None:
    assert len(hub.commits(release)) == 2  # the repo's initial commit + the release
    files = hub.files(release)
    ids = {path.rsplit("/", 1)[0] for path in files if path.endswith("/cfg.json")}
    assert ids == set(FRONTIER_IDS)  # the dominated point is left out
    config = json.loads(files["config.json"])
    assert config["format"] == model_card.RELEASE_FORMAT
    assert config["architectures"] == ["gated_paper"]
    assert config["plugin_version"]
    assert [(s["sae_id"], s["path"], s["l0"]) for s in config["saes"]] == [
        (FRONTIER_IDS[1], FRONTIER_IDS[1], 20.4),
        (FRONTIER_IDS[0], FRONTIER_IDS[0], 40.2),
    ]
    assert files[model_card.FIGURE_FILENAME].startswith(b"\x89PNG")


def test_card_table_matches_the_results(hub: LocalHub, release: str) -> None:
    card = hub.files(release)["README.md"].decode()
    front, _, body = model_card.split_front_matter(card)
    assert front["license"] == "apache-2.0"
    assert {"gated-sae", "arxiv:2404.16014"} <= set(front["tags"])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for sae_id, (_, l0, recovered, delta_ce, dead) in zip(
        FRONTIER_IDS, (POINTS[0], POINTS[2]), strict=True
    ):
        row = (
            f"| `{sae_id}` | `{HOOK}` | {D_IN} | {D_SAE} | {l0:.1f} | {recovered:.3f} | 0.970 | "
            f"0.800 | 200,000 | gated_paper | {delta_ce:.3f} | {dead:.1%} |"
        )
        assert row in body
    assert f"]({model_card.FIGURE_FILENAME})" in body
    assert "## Training settings" in body and "Learning rate: 0.0003" in body
    assert "load_sae(" in body and "SAE.from_pretrained(" in body


def test_fresh_process_loads_every_sae(hub: LocalHub, release: str, tmp_path: Path) -> None:
    loaded = hub.load_in_fresh_process(release, FRONTIER_IDS, str(tmp_path / "hf-home"))
    assert loaded == {sae_id: ["GatedPaperSAE", "GatedPaperSAE"] for sae_id in FRONTIER_IDS}


def test_load_sae_requests_the_release_config_first(
    hub: LocalHub, release: str, tmp_path: Path
) -> None:
    start = len(hub.requests)
    sae = load_sae(release, FRONTIER_IDS[0], token=TOKEN, cache_dir=tmp_path)
    assert isinstance(sae, GatedPaperSAE)
    paths = [path for _, path in hub.requests[start:] if "/resolve/" in path]
    assert paths[0] == f"/{release}/resolve/main/config.json"
    assert any(path.endswith(f"{FRONTIER_IDS[0]}/cfg.json") for path in paths[1:])


def test_second_push_adds_and_keeps_the_others(hub: LocalHub, sweep: Path, tmp_path: Path) -> None:
    repo_id = _new_repo_id()
    saes = [ReleaseSAE(sweep.parent / "saes" / "point-0", None, {"l0": 40.2})]
    push_release(saes, repo_id, token=TOKEN)
    before, commits = hub.files(repo_id), hub.commits(repo_id)
    extra = _save_sae(tmp_path / "extra", 7)
    urls = push_release([ReleaseSAE(extra, None, {"l0": 5.0})], repo_id, token=TOKEN)
    assert urls[0].endswith(f"/{HOOK}/width_{D_SAE}/l0_5")
    after = hub.files(repo_id)
    assert hub.commits(repo_id)[:-1] == commits
    old = {p: c for p, c in before.items() if p.startswith(f"{HOOK}/width_{D_SAE}/l0_40/")}
    assert old and all(after[p] == c for p, c in old.items())
    assert f"{HOOK}/width_{D_SAE}/l0_5/{WEIGHTS}" in after
    config = json.loads(after["config.json"])
    assert [s["sae_id"] for s in config["saes"]] == [
        f"{HOOK}/width_{D_SAE}/l0_5",
        f"{HOOK}/width_{D_SAE}/l0_40",
    ]
    card = after["README.md"].decode()
    assert "| `blocks.0.hook_resid_post/width_64/l0_40` |" in card
    assert "| `blocks.0.hook_resid_post/width_64/l0_5` |" in card

    # A failing commit leaves the release as it was.
    hub.fail_next_commits = 1
    with pytest.raises(HubPublishError, match="unchanged"):
        push_release([ReleaseSAE(extra, "third")], repo_id, token=TOKEN)
    assert hub.files(repo_id) == after


def test_several_folders_and_neuronpedia_export(hub: LocalHub, tmp_path: Path) -> None:
    first, second = _save_sae(tmp_path / "a", 1), _save_sae(tmp_path / "b", 2)
    (second / "neuronpedia").mkdir()
    (second / "neuronpedia" / "features.json").write_text("[]")
    repo_id = _new_repo_id()
    argv = ["push", str(first), str(second), repo_id, "--with-eval", "--token", TOKEN]
    assert cli.main(argv) == 0
    files = hub.files(repo_id)
    # No L0 known: the hook and width name both, and the second gets the architecture suffix.
    assert f"{HOOK}/width_{D_SAE}/cfg.json" in files
    assert f"{HOOK}/width_{D_SAE}_gated_paper/neuronpedia/features.json" in files
    assert json.loads(files["config.json"])["saes"][0]["l0"] is None
    assert model_card.FIGURE_FILENAME not in files  # nothing to plot
    assert yaml.safe_load(files["README.md"].decode().split("---")[1])["license"] == "mit"


def test_directory_entry_reads_with_saelens_parser(
    hub: LocalHub,
    release: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capsys.readouterr()
    assert cli.main(["directory-entry", release, "--release", "my-gated-saes"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "pretrained_saes.yaml").write_text(text)
    monkeypatch.setattr(pretrained_saes_directory, "files", lambda package: tmp_path)
    directory = pretrained_saes_directory.get_pretrained_saes_directory.__wrapped__()
    lookup = directory["my-gated-saes"]
    assert lookup.repo_id == release and lookup.model == "smollm2-135m"
    assert lookup.conversion_func is None
    assert lookup.saes_map == {sae_id: sae_id for sae_id in FRONTIER_IDS}
    assert lookup.expected_l0 == {FRONTIER_IDS[0]: 40.2, FRONTIER_IDS[1]: 20.4}
    assert lookup.expected_var_explained == dict.fromkeys(FRONTIER_IDS, 0.8)


def test_directory_entry_of_a_repo_without_release_config(
    hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    api.create_repo(repo_id)
    assert cli.main(["directory-entry", repo_id]) == 2
    assert "no config.json" in capsys.readouterr().err


def _bad_results(sweep: Path) -> Path:
    lines = [json.loads(line) for line in sweep.read_text().splitlines()]
    del lines[1]["sae_path"]
    path = sweep.with_name("no-sae-path.jsonl")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("case", ["no saved SAE", "invalid repo id", "unknown license"])
def test_bad_input_exits_2_and_uploads_nothing(
    hub: LocalHub, sweep: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo_id, results, extra = _new_repo_id(), sweep, []
    if case == "no saved SAE":
        results = _bad_results(sweep)
    elif case == "invalid repo id":
        repo_id = "bad repo id!!"
    else:
        extra = ["--license", "wtfpl"]
    n_requests = len(hub.requests)
    assert cli.main(["push", str(results), repo_id, "--token", TOKEN, *extra]) == 2
    err = capsys.readouterr().err
    expected = {"no saved SAE": "no sae_path", "invalid repo id": "not a valid Hub repo id"}
    assert expected.get(case, "--license 'wtfpl'") in err
    assert len(hub.requests) == n_requests


def test_naming() -> None:
    cfg = {"d_sae": 64, "metadata": {"hook_name": HOOK}}
    assert default_sae_id(cfg, {"l0": 12.6}) == f"{HOOK}/width_64/l0_13"
    assert default_sae_id(cfg, {}) == f"{HOOK}/width_64"
    assert default_sae_id({"d_sae": 4}, {}) is None
    assert unique_ids([("a", "gated_paper"), ("a", "gated"), ("a", "gated"), ("a", "gated")]) == [
        "a",
        "a_gated",
        "a_gated_2",
        "a_gated_3",
    ]


def test_a_foreign_config_json_is_never_overwritten(hub: LocalHub, tmp_path: Path) -> None:
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    api.create_repo(repo_id)
    foreign = huggingface_hub.CommitOperationAdd("config.json", b'{"model_type": "gpt2"}')
    api.create_commit(repo_id, [foreign], commit_message="a transformers model")
    commits = hub.commits(repo_id)
    with pytest.raises(HubPublishError, match="not a sae-gated release config"):
        push_release([ReleaseSAE(_save_sae(tmp_path / "a", 3))], repo_id, token=TOKEN)
    assert hub.commits(repo_id) == commits


def test_a_legacy_index_is_read_and_replaced(hub: LocalHub, tmp_path: Path) -> None:
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=TOKEN)
    repo_id = _new_repo_id()
    api.create_repo(repo_id)
    old = _save_sae(tmp_path / "old", 4)
    legacy = {"format_version": 1, "saes": [{"sae_id": "old", "hook_name": HOOK, "l0": 9.0}]}
    operations = [
        huggingface_hub.CommitOperationAdd(f"old/{name}", old / name)
        for name in ("cfg.json", WEIGHTS)
    ]
    operations.append(
        huggingface_hub.CommitOperationAdd(
            model_card.LEGACY_INDEX_FILENAME, json.dumps(legacy).encode()
        )
    )
    api.create_commit(repo_id, operations, commit_message="an earlier plugin's push")
    push_release([ReleaseSAE(_save_sae(tmp_path / "new", 5), "new")], repo_id, token=TOKEN)
    files = hub.files(repo_id)
    assert model_card.LEGACY_INDEX_FILENAME not in files
    saes = json.loads(files["config.json"])["saes"]
    assert [(s["sae_id"], s["l0"]) for s in saes] == [("new", None), ("old", 9.0)]
