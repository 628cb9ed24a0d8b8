"""``sae-gated cache``: activations cached with SAELens's CacheActivationsRunner from the real
SmolLM2-135M and corpus, then a gated_paper SAE trained from the cache through SAELens's runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

from sae_gated_plugin import embedded
from sae_gated_plugin.cli import EXIT_INVALID, main
from sae_gated_plugin.eval.splice import special_token_ids
from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset
from sae_gated_plugin.run import cache as caching
from sae_gated_plugin.run import train as training
from sae_gated_plugin.run.config import TrainRunConfig, parse_config
from sae_gated_plugin.run.saelens_bridge import GuardedTrainer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

HOOK = "blocks.2.hook_resid_post"
CONTEXT, BATCH, STEPS = 64, 128, 12
WINDOW = CONTEXT - 3  # SmolLM2's default training positions: 3 onwards


def run_config(tmp_path: Path, **overrides: Any) -> TrainRunConfig:
    """A small run that caches to, and trains from, ``tmp_path / "cache"``."""
    settings: dict[str, Any] = {
        "output_path": str(tmp_path / "sae"),
        "hook_name": HOOK,
        "context_size": CONTEXT,
        "training_tokens": STEPS * BATCH,
        "train_batch_size_tokens": BATCH,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 4,
        "n_batches_for_norm_estimate": 2,
        "n_checkpoints": 0,
        "sae": {"d_sae": 256},
        "eval": {"enabled": False},
        "saelens": {
            "use_cached_activations": True,
            "cached_activations_path": str(tmp_path / "cache"),
        },
        **overrides,
    }
    return parse_config(settings, source="test")


@pytest.fixture(scope="module")
def cache(smollm2: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainRunConfig]:
    """Activations of a small run, cached once for the module."""
    folder = tmp_path_factory.mktemp("cached-run")
    cfg = run_config(folder)
    return caching.cache_activations(cfg, model=smollm2), cfg


def test_cache_holds_the_run_positions_and_enough_tokens(
    smollm2: Any, cache: tuple[Path, TrainRunConfig]
) -> None:
    path, cfg = cache
    assert not path.with_name(path.name + ".partial").exists()
    cached = datasets.load_from_disk(str(path)).with_format("torch")
    assert tuple(cached.features[HOOK].shape) == (WINDOW, 576)
    assert len(cached) * WINDOW >= cfg.training_tokens
    # Positions 3.. only: every window starts with BOS at position 0, so an uncut cache would
    # start each row with BOS; a cut one starts with whatever token is at position 3.
    token_ids = torch.as_tensor(cached["token_ids"][:])
    assert (token_ids[:, 0] == smollm2.tokenizer.bos_token_id).float().mean() < 0.5
    # The activations are the model's: same scale as its own at positions 3.. (special tokens
    # aside, as training drops them by their cached ids).
    special = torch.tensor(special_token_ids(smollm2), dtype=token_ids.dtype)
    cached_norms = torch.as_tensor(cached[HOOK][:]).norm(dim=-1)[~torch.isin(token_ids, special)]
    tokens = eval_tokens_from_dataset(
        smollm2, embedded.load_corpus(split="train"), context_size=CONTEXT, n_sequences=8
    )
    with torch.no_grad():
        _, run = smollm2.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=3)
    body = run[HOOK][:, 3:][~torch.isin(tokens[:, 3:], special)].norm(dim=-1)
    assert 0.8 < cached_norms.median() / body.median() < 1.25


def test_train_from_cache_keeps_the_real_window_in_metadata(
    smollm2: Any, cache: tuple[Path, TrainRunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, cfg = cache
    n_model_calls = 0
    original_forward = type(smollm2).forward

    def counting_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal n_model_calls
        n_model_calls += 1
        return original_forward(self, *args, **kwargs)

    losses: list[float] = []
    original_step = GuardedTrainer.step

    def recording_step(self: GuardedTrainer, batch: torch.Tensor) -> Any:
        output = original_step(self, batch)
        losses.append(output.loss.item())
        return output

    monkeypatch.setattr(GuardedTrainer, "step", recording_step)
    monkeypatch.setattr(type(smollm2), "forward", counting_forward)
    result = training.train(cfg, model=smollm2)

    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert n_model_calls <= 1  # activation_width's probe; activations came from the cache
    saved = json.loads((result.output_path / "cfg.json").read_text())
    assert saved["metadata"]["context_size"] == CONTEXT
    assert saved["metadata"]["seqpos_slice"] == [3, None]


def test_cache_mismatch_and_existing_cache_exit_2(
    cache: tuple[Path, TrainRunConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = cache
    saelens = f"saelens={{use_cached_activations: true, cached_activations_path: {path}}}"
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(run_config(tmp_path).model_dump(mode="json")))

    assert main(["train", str(config), "--set", saelens, "--set", "context_size=128"]) == 2
    err = capsys.readouterr().err
    assert "re-cache with this config" in err and str(path) in err
    assert not (tmp_path / "sae").exists()

    before = sorted(p.name for p in path.iterdir())
    assert main(["cache", str(config), "--set", saelens]) == EXIT_INVALID
    assert "already exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in path.iterdir()) == before

    missing = tmp_path / "no-cache"
    assert main(["train", str(config), "--set", f"saelens.cached_activations_path={missing}"]) == 2
    assert "sae-gated cache" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["info-not-json", "state-missing", "arrow-truncated"])
def test_a_damaged_cache_is_exit_2_naming_it(
    cache: tuple[Path, TrainRunConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    import shutil

    path, _ = cache
    damaged = tmp_path / "damaged-cache"
    shutil.copytree(path, damaged)
    if damage == "info-not-json":
        (damaged / "dataset_info.json").write_bytes(b"\xff\xfe not json")
    elif damage == "state-missing":
        (damaged / "state.json").unlink()
    else:
        arrow = next(damaged.glob("data-*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(run_config(tmp_path).model_dump(mode="json")))
    argv = ["train", str(config), "--set", f"saelens.cached_activations_path={damaged}"]
    assert main(argv) == EXIT_INVALID
    err = capsys.readouterr().err
    assert str(damaged) in err and "Traceback" not in err
    assert not (tmp_path / "sae").exists()
