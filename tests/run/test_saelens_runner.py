"""``gated_paper`` through SAELens's own ``LanguageModelSAETrainingRunner``, with no plugin code
in the loop: a tiny random HookedTransformer and an in-memory pre-tokenised dataset, offline.

This is the path a user takes who writes a SAELens runner config by hand (README, "Use it from
SAELens"), so it must work without ``sae-gated train``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.training.sae_trainer import SAETrainer
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_gated_plugin import GatedPaperSAE, GatedPaperTrainingSAE

# SAELens warns that 256 rows are fewer than the run needs (they are reused, which is fine).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

D_MODEL, D_SAE, CONTEXT, VOCAB = 16, 64, 16, 64
HOOK = "blocks.0.hook_resid_post"
BATCH, STEPS = 64, 40


@pytest.fixture(scope="module")
def tiny_model() -> HookedTransformer:
    """A random two-layer model; the SAE reads the residual stream after layer 0."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(
            HookedTransformerConfig(
                n_layers=2, d_model=D_MODEL, n_ctx=CONTEXT, d_head=4, d_vocab=VOCAB, act_fn="gelu"
            )
        )


def token_dataset(n_rows: int) -> Dataset:
    """Pre-tokenised rows of random tokens, each one context long."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(1, VOCAB, (n_rows, CONTEXT), generator=generator)
    return Dataset.from_dict({"input_ids": rows.tolist()})


def runner_config(output: Path) -> LanguageModelSAERunnerConfig[Any]:
    """A SAELens runner config selecting ``gated_paper`` by name, as a user writes it."""
    return LanguageModelSAERunnerConfig.from_dict(
        {
            "sae": {
                "architecture": "gated_paper",
                "d_in": D_MODEL,
                "d_sae": D_SAE,
                "l1_coefficient": 1.0,
                "l1_warm_up_steps": 5,
            },
            "model_name": "tiny-random",
            "hook_name": HOOK,
            "dataset_path": "in-memory",
            "is_dataset_tokenized": True,
            "streaming": False,
            "context_size": CONTEXT,
            "prepend_bos": False,
            "training_tokens": BATCH * STEPS,
            "train_batch_size_tokens": BATCH,
            "store_batch_size_prompts": 4,
            "n_batches_in_buffer": 4,
            "lr": 1e-3,
            "adam_beta1": 0.0,
            "adam_beta2": 0.999,
            "device": "cpu",
            "seed": 0,
            "n_checkpoints": 0,
            "output_path": str(output),
            "logger": {"log_to_wandb": False},
            "verbose": False,
        }
    )


def test_saelens_runner_trains_and_saves_gated_paper(
    tiny_model: HookedTransformer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    losses: list[dict[str, float]] = []
    original_step = SAETrainer.step

    def recording_step(self: SAETrainer[Any, Any], batch: torch.Tensor) -> Any:
        output = original_step(self, batch)
        losses.append({name: value.item() for name, value in output.losses.items()})
        return output

    monkeypatch.setattr(SAETrainer, "step", recording_step)
    cfg = runner_config(tmp_path / "out")
    runner = LanguageModelSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset(256)
    )
    assert isinstance(runner.sae, GatedPaperTrainingSAE)
    initial = {name: p.detach().clone() for name, p in runner.sae.named_parameters()}
    trained = runner.run()

    assert isinstance(trained, GatedPaperTrainingSAE)
    assert len(losses) == STEPS
    assert set(losses[0]) == {"mse_loss", "l1_loss", "auxiliary_reconstruction_loss"}
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
    for name, before in initial.items():
        assert not torch.equal(before, getattr(trained, name)), f"{name} never changed"
    row_norms = trained.W_dec.detach().norm(dim=-1)
    assert torch.allclose(row_norms, torch.ones_like(row_norms), atol=1e-5)

    loaded = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(loaded, GatedPaperSAE)
    saved_norms = loaded.W_dec.detach().norm(dim=-1)
    assert torch.allclose(saved_norms, torch.ones_like(saved_norms), atol=1e-5)
    _, cache = tiny_model.run_with_cache(
        torch.tensor(token_dataset(4)["input_ids"]), names_filter=HOOK
    )
    acts = cache[HOOK].reshape(-1, D_MODEL)
    with torch.no_grad():
        expected = trained.decode(trained.encode(acts))
        assert torch.allclose(loaded(acts), expected, atol=1e-5)
