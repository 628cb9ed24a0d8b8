"""``sae-gated sweep``: a 2 x 2 grid on a tiny random model and in-memory tokens, resumed after
an interruption; the evaluation shortcut checked against a plain ``evaluate_sae``."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_gated_plugin.cli import EXIT_INVALID, main
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.splice import evaluate_sae
from sae_gated_plugin.sweep import cached_stream
from sae_gated_plugin.sweep.config import expand, parse_sweep_config
from sae_gated_plugin.sweep.driver import run_sweep
from sae_gated_plugin.sweep.held_out import HeldOutEvaluation
from sae_gated_plugin.sweep.results import read_results, saes_folder, saved_sae_folder
from sae_gated_plugin.sweep.selection import on_frontier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

D_MODEL, CONTEXT, VOCAB = 16, 16, 64
HOOK = "blocks.0.hook_resid_post"
REQUIRED = (
    "architecture",
    "variant",
    "coefficient",
    "lr",
    "seed",
    "d_sae",
    "tokens_trained",
    "n_tokens",
    "l0",
    "dead_fraction",
    "explained_variance",
    "loss_recovered",
    "delta_ce_loss",
    "relative_reconstruction_bias",
    "seconds",
)


@pytest.fixture(scope="module")
def tiny_model() -> HookedTransformer:
    """A random two-layer model; the SAEs read the residual stream after layer 0."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(
            HookedTransformerConfig(
                n_layers=2, d_model=D_MODEL, n_ctx=CONTEXT, d_head=4, d_vocab=VOCAB, act_fn="gelu"
            )
        )


def token_dataset(n_rows: int, seed: int) -> Dataset:
    """Pre-tokenised rows of random tokens, one context each."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, VOCAB, (n_rows, CONTEXT), generator=generator)
    return Dataset.from_dict({"input_ids": rows.tolist()})


def sweep_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Two grids: gated_paper at two coefficients, standard at two coefficients."""
    return {
        "output": str(tmp_path / "sweep.jsonl"),
        "cache_tokens": 64 * CONTEXT,
        "run": {
            "model_name": "tiny-random",
            "hook_name": HOOK,
            "dataset": "in-memory",
            "is_dataset_tokenized": True,
            "streaming": False,
            "context_size": CONTEXT,
            "prepend_bos": False,
            "exclude_special_tokens": False,
            "training_tokens": 24 * 64,
            "train_batch_size_tokens": 64,
            "store_batch_size_prompts": 4,
            "n_batches_in_buffer": 4,
            "n_batches_for_norm_estimate": 2,
            "lr": 1e-3,
            "device": "cpu",
            "sae": {"d_sae": 32},
            "eval": {"n_sequences": 8, "batch_size": 4},
        },
        "grids": [
            {
                "name": "gated",
                "architectures": ["gated_paper"],
                "coefficients": {"gated_paper": [1, 4]},
            },
            {
                "name": "standard",
                "architectures": ["standard"],
                "coefficients": {"standard": [1, 4]},
            },
        ],
        **overrides,
    }


def run(tmp_path: Path, model: HookedTransformer, lines: list[str], **kwargs: Any) -> list[dict]:
    config = parse_sweep_config(sweep_settings(tmp_path, **kwargs.pop("settings", {})))
    return run_sweep(
        config,
        model=model,
        train_dataset=token_dataset(96, seed=1),
        eval_dataset=token_dataset(8, seed=2),
        echo=lines.append,
        **kwargs,
    )


def test_a_2x2_sweep_resumes_where_it_stopped(
    tiny_model: HookedTransformer, tmp_path: Path
) -> None:
    lines: list[str] = []
    first = run(tmp_path, tiny_model, lines, only=["gated"])
    assert [r["architecture"] for r in first] == ["gated_paper", "gated_paper"]
    assert "[1/2] gated_paper l1=1 lr=1e-3 seed=0" in lines
    output = tmp_path / "sweep.jsonl"
    # A crash in the middle of writing a line leaves it cut short: it must be dropped.
    with output.open("a", encoding="utf-8") as handle:
        handle.write('{"architecture": "standard", "vari')

    lines.clear()
    trained: list[str] = []
    original = cached_stream.new_sae

    def counting_new_sae(point: Any, *args: Any) -> Any:
        trained.append(point.architecture)
        return original(point, *args)

    cached_stream.new_sae = counting_new_sae  # type: ignore[assignment]
    try:
        results = run(tmp_path, tiny_model, lines)
    finally:
        cached_stream.new_sae = original  # type: ignore[assignment]

    assert trained == ["standard", "standard"]  # the gated_paper points were not retrained
    assert "Sweep of 4 SAEs: 2 already in " + str(output) in lines
    assert any(line.startswith("[3/4] standard l1=1 lr=1e-3 seed=0") for line in lines)
    saved = read_results(output)
    assert [(r["architecture"], r["coefficient"]) for r in saved] == [
        ("gated_paper", 1.0),
        ("gated_paper", 4.0),
        ("standard", 1.0),
        ("standard", 4.0),
    ]
    assert output.read_text(encoding="utf-8").endswith("\n")
    assert results == saved
    for record in saved:
        assert all(record[key] is not None for key in REQUIRED), record
        assert record["tokens_trained"] == 24 * 64
        assert record["n_tokens"] == 8 * CONTEXT
        assert record["epochs"] == pytest.approx(24 * 64 / (64 * CONTEXT))
        assert record["variant"] == (
            "paper" if record["architecture"] == "gated_paper" else "default"
        )
    # The same held-out windows: identical references; a higher coefficient, a sparser SAE.
    assert len({r["ce_loss_clean"] for r in saved}) == 1
    gated = [r for r in saved if r["architecture"] == "gated_paper"]
    assert gated[1]["l0"] < gated[0]["l0"]

    # A finished sweep trains nothing; a changed config refuses to mix into the same file.
    assert len(run(tmp_path, tiny_model, [])) == 4
    with pytest.raises(GatedPluginError, match="other settings"):
        run(
            tmp_path,
            tiny_model,
            [],
            settings={"run": {**sweep_settings(tmp_path)["run"], "lr": 2e-3}},
        )


def test_multi_stream_trains_a_lockstep_group(
    tiny_model: HookedTransformer, tmp_path: Path
) -> None:
    lines: list[str] = []
    settings = {"stream": "multi", "cache_tokens": None, "save": "all"}
    results = run(tmp_path, tiny_model, lines, settings=settings)
    assert [r["architecture"] for r in results] == ["gated_paper"] * 2 + ["standard"] * 2
    assert all(r["stream"] == "multi" and r["tokens_trained"] == 24 * 64 for r in results)
    assert sum("lockstep group of 4" in line for line in lines) == 4
    for record in results:
        assert_loadable(tmp_path / "sweep.jsonl", record)


def assert_loadable(results_path: Path, record: dict[str, Any]) -> Path:
    """The line's saved folder loads with SAELens as its SAE, with the run's metadata."""
    from sae_lens import SAE

    folder = saved_sae_folder(results_path, record)
    assert folder is not None, record
    assert folder.parent == saes_folder(results_path)
    sae = SAE.load_from_disk(folder, device="cpu")
    assert sae.cfg.architecture() == record["architecture"]
    assert sae.cfg.d_sae == record["d_sae"] == 32
    metadata = sae.cfg.metadata
    assert (metadata.model_name, metadata.hook_name) == ("tiny-random", HOOK)
    assert (metadata.context_size, metadata.dataset_path) == (CONTEXT, "in-memory")
    assert {f.name for f in folder.iterdir()} >= {
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "evaluation.json",
    }
    report = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
    assert report["l0"] == pytest.approx(record["l0"])
    return folder


def folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_save_all_keeps_every_sae_and_a_resume_leaves_them_alone(
    tiny_model: HookedTransformer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "sweep.jsonl"
    first = run(tmp_path, tiny_model, [], only=["gated"], settings={"save": "all"})
    assert [r["sae_path"] for r in first] == [
        "sweep-saes/gated_paper_l1-1_lr-1e-3_seed-0",
        "sweep-saes/gated_paper_l1-4_lr-1e-3_seed-0",
    ]
    before = {r["sae_path"]: folder_hashes(assert_loadable(output, r)) for r in first}
    leftover = saes_folder(output) / ".standard_l1-1_lr-1e-3_seed-0.partial"
    leftover.mkdir()
    (leftover / "cfg.json").write_text("{", encoding="utf-8")  # a killed run's half a folder

    trained: list[str] = []
    original = cached_stream.new_sae

    def counting_new_sae(point: Any, *args: Any) -> Any:
        trained.append(point.architecture)
        return original(point, *args)

    cached_stream.new_sae = counting_new_sae  # type: ignore[assignment]
    try:
        results = run(tmp_path, tiny_model, [], settings={"save": "all"})
    finally:
        cached_stream.new_sae = original  # type: ignore[assignment]
    assert trained == ["standard", "standard"]
    assert not leftover.exists()
    for record in results:
        assert_loadable(output, record)
    for record in first:
        assert folder_hashes(tmp_path / record["sae_path"]) == before[record["sae_path"]]
    assert sorted(f.name for f in saes_folder(output).iterdir()) == sorted(
        Path(r["sae_path"]).name for r in results
    )
    assert_pushes(tmp_path / first[0]["sae_path"], monkeypatch)


def assert_pushes(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sae-gated push``'s publisher takes a saved folder as it takes a trained run's."""
    import huggingface_hub

    from sae_gated_plugin.hub import push_sae
    from sae_gated_plugin.testing import LocalHub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with LocalHub() as hub:
        push_sae(folder, "someone/sweep", token="hf_test", endpoint=hub.endpoint)
        files = hub.files("someone/sweep")
    assert {f"{HOOK}/cfg.json", f"{HOOK}/evaluation.json"} <= set(files)


def test_save_frontier_keeps_each_lines_pareto_saes_and_none_writes_nothing(
    tiny_model: HookedTransformer, tmp_path: Path
) -> None:
    output = tmp_path / "sweep.jsonl"
    results = run(tmp_path, tiny_model, [])  # save: frontier by default
    front = on_frontier(results, "loss_recovered")
    assert front  # every line has at least one point on its frontier
    for record in front:
        assert_loadable(output, record)
    for record in results:
        if record not in front:
            assert saved_sae_folder(output, record) is None
    assert sorted(f.name for f in saes_folder(output).iterdir()) == sorted(
        Path(r["sae_path"]).name for r in front
    )

    bare = tmp_path / "none"
    records = run(bare, tiny_model, [], only=["gated"], settings={"save": "none"})
    assert all("sae_path" not in r for r in records)
    assert sorted(f.name for f in bare.iterdir()) == ["sweep.jsonl", "sweep.jsonl.activations"]


def test_resumed_evaluation_equals_a_plain_evaluate_sae(tiny_model: HookedTransformer) -> None:
    from sae_lens import StandardTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE

    torch.manual_seed(3)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D_MODEL, d_sae=32))
    tokens = torch.tensor(token_dataset(8, seed=4)["input_ids"])
    settings = {
        "hook_name": HOOK,
        "seqpos_slice": (2, None),
        "exclude_token_ids": [5],
        "batch_size": 3,
    }
    plain = evaluate_sae(sae, tiny_model, tokens, show_progress=False, **settings)
    shared = HeldOutEvaluation(tiny_model, tokens, **settings)
    first, second = shared.evaluate(sae), shared.evaluate(sae)
    for report in (first, second):
        for key, value in plain.to_dict().items():
            if isinstance(value, float):
                assert getattr(report, key) == pytest.approx(value, rel=1e-5, abs=1e-6), key
            else:
                assert getattr(report, key) == value, key


def test_sweep_config_errors_name_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = sweep_settings(tmp_path)
    settings["grids"][0]["coefficients"] = {"standard": [1]}
    with pytest.raises(GatedPluginError, match=r"grids\.0.*no values for architecture"):
        parse_sweep_config(settings)
    settings = sweep_settings(tmp_path)
    settings["grids"][0]["variants"] = ["missing"]
    with pytest.raises(GatedPluginError, match=r"unknown variant\(s\) \['missing'\]"):
        parse_sweep_config(settings)
    settings = sweep_settings(tmp_path, stream="fast")
    with pytest.raises(GatedPluginError, match="stream"):
        parse_sweep_config(settings)
    settings = sweep_settings(tmp_path)
    settings["grids"][1]["resampling"] = [True]
    with pytest.raises(GatedPluginError, match=r"needs run\.resampling"):
        parse_sweep_config(settings)
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(json.dumps(sweep_settings(tmp_path, grids=[])), encoding="utf-8")
    assert main(["sweep", str(config_file)]) == EXIT_INVALID
    assert "grids" in capsys.readouterr().err
    config_file.write_text(json.dumps(sweep_settings(tmp_path, save="best")), encoding="utf-8")
    assert main(["sweep", str(config_file)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "save" in err and "Traceback" not in err
    assert not (tmp_path / "sweep.jsonl").exists()


def test_grids_union_each_point_once(tmp_path: Path) -> None:
    settings = sweep_settings(tmp_path)
    settings["grids"].append(
        {
            "name": "seeds",
            "architectures": ["gated_paper"],
            "coefficients": {"gated_paper": [4]},
            "seeds": [0, 1],
        }
    )
    points = expand(parse_sweep_config(settings))
    assert len(points) == 5
    shared = [
        p for p in points if p.coefficient == 4 and p.seed == 0 and p.architecture == "gated_paper"
    ]
    assert len(shared) == 1 and shared[0].grids == ("gated", "seeds")


def test_the_committed_benchmark_sweep_is_valid_and_as_documented() -> None:
    from sae_gated_plugin.sweep.config import load_sweep_config

    config = load_sweep_config(Path(__file__).resolve().parents[2] / "benchmarks/pareto_sweep.yaml")
    grids = {grid.name: grid for grid in config.grids}
    assert config.run.training_tokens >= 1_000_000
    assert config.run.eval.n_sequences * (config.run.context_size - 3) >= 16_000
    for architecture in ("gated_paper", "gated", "standard"):
        assert len(grids["frontier"].coefficients[architecture]) >= 5
    assert len(grids["seeds"].seeds) == 3 and len(grids["lr"].lrs or []) >= 3
    assert (
        len(grids["ablations"].variants) == 4
        and len(grids["ablations"].coefficients["gated_paper"]) == 2
    )
    assert grids["resampling"].resampling == [False, True]
    assert config.run.resampling is not None


def test_the_committed_results_are_the_committed_sweep() -> None:
    """Every point of benchmarks/pareto_sweep.yaml has exactly one result line, made with the
    config's settings, on the documented amount of training and evaluation."""
    from sae_gated_plugin.sweep.config import expand, load_sweep_config
    from sae_gated_plugin.sweep.results import line_key, read_results

    root = Path(__file__).resolve().parents[2]
    config = load_sweep_config(root / "benchmarks/pareto_sweep.yaml")
    records = read_results(root / config.output)
    keys = [line_key(r) for r in records]
    assert len(keys) == len(set(keys))
    assert set(keys) == {point.key() for point in expand(config)}
    assert {r["settings_id"] for r in records} == {config.settings_id()}
    assert all(r["tokens_trained"] >= 1_000_000 and r["n_tokens"] >= 16_000 for r in records)


def test_a_changed_default_is_part_of_the_settings_id(tmp_path: Path) -> None:
    """A results file made under the earlier encoder_init_scale default (1.0, left unset) resumes
    with 1.0 set explicitly and is refused under the new default."""
    from sae_gated_plugin.sweep.config import EARLIER_SAE_DEFAULTS

    settings = sweep_settings(tmp_path)
    new_default = parse_sweep_config(settings).settings_id()
    pinned = json.loads(json.dumps(settings))
    pinned["run"]["sae"]["encoder_init_scale"] = EARLIER_SAE_DEFAULTS["encoder_init_scale"]
    earlier = parse_sweep_config(pinned).settings_id()
    assert earlier != new_default
    # what the earlier version computed for this config: the run settings without the field
    import hashlib

    config = parse_sweep_config(settings)
    unused = {"output_path", "device", "wandb", "n_checkpoints"}
    shared = config.run.model_dump(mode="json", exclude=unused, exclude_unset=True)
    shared["eval"].pop("batch_size", None)
    shared.update(stream=config.stream, cache_tokens=config.cache_tokens)
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]
    assert earlier == digest


def test_a_sweeps_frontier_pushes_as_one_release_that_loads(
    tiny_model: HookedTransformer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sae-gated sweep` then `sae-gated push RESULTS REPO --frontier`: one commit, one sae_id
    per frontier SAE, each loading with SAELens and with the plugin."""
    import huggingface_hub

    from sae_gated_plugin.testing import LocalHub

    output = tmp_path / "sweep.jsonl"
    results = run(tmp_path, tiny_model, [], only=["gated"])
    front = on_frontier(results, "loss_recovered")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with LocalHub() as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        argv = ["push", str(output), "someone/sweep-release", "--frontier", "--token", "hf_x"]
        assert main(argv) == 0
        config = json.loads(hub.files("someone/sweep-release")["config.json"])
        sae_ids = [entry["sae_id"] for entry in config["saes"]]
        assert len(sae_ids) == len(front)
        assert len(hub.commits("someone/sweep-release")) == 2  # the repo's first, the release
        loaded = hub.load_in_fresh_process("someone/sweep-release", sae_ids, str(tmp_path / "h"))
    assert loaded == {sae_id: ["GatedPaperSAE", "GatedPaperSAE"] for sae_id in sae_ids}
