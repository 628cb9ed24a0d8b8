"""Forward pass of gated_paper: the paper's formula, SAELens's built-in gated, HookedSAETransformer,
and the unit-norm decoder through SAELens's real SAETrainer (and the folds it applies at the end).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import HookedSAETransformer
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file
from transformer_lens import HookedTransformerConfig

from sae_gated_plugin import (
    GatedPaperSAE,
    GatedPaperSAEConfig,
    GatedPaperTrainingSAE,
    GatedPaperTrainingSAEConfig,
)

D_IN = 8
D_SAE = 16
HOOK = "blocks.0.hook_resid_post"
D_MODEL = 16


def random_state(seed: int, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, torch.Tensor]:
    """Random gated weights with non-unit decoder rows and non-zero biases everywhere."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    return {
        "W_enc": 0.5 * rnd(d_in, d_sae),
        "b_gate": 0.5 * rnd(d_sae),
        "r_mag": 0.3 * rnd(d_sae),
        "b_mag": 0.5 * rnd(d_sae),
        "W_dec": rnd(d_sae, d_in) * (0.3 + 2 * torch.rand(d_sae, 1, generator=gen)),
        "b_dec": 0.5 * rnd(d_in),
    }


def paper_encode(
    state: dict[str, torch.Tensor], x: torch.Tensor, apply_b_dec_to_input: bool = True
) -> torch.Tensor:
    """PAPER.md: f = 1[x_c W + b_gate > 0] * ReLU(x_c (W * exp(r_mag)) + b_mag)."""
    x_c = x - state["b_dec"] if apply_b_dec_to_input else x
    pi_gate = x_c @ state["W_enc"] + state["b_gate"]
    magnitude = x_c @ (state["W_enc"] * state["r_mag"].exp()) + state["b_mag"]
    return (pi_gate > 0).float() * torch.relu(magnitude)


def paper_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor, apply_b_dec_to_input: bool = True
) -> torch.Tensor:
    return paper_encode(state, x, apply_b_dec_to_input) @ state["W_dec"] + state["b_dec"]


def inference_sae(state: dict[str, torch.Tensor], **cfg: Any) -> GatedPaperSAE:
    d_sae, d_in = state["W_dec"].shape
    sae = GatedPaperSAE(GatedPaperSAEConfig(d_in=d_in, d_sae=d_sae, **cfg))
    sae.load_state_dict(state)
    return sae


def builtin_sae(state: dict[str, torch.Tensor], **cfg: Any) -> GatedSAE:
    sae = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, **cfg))
    sae.load_state_dict(state)
    return sae


def training_sae(**overrides: Any) -> GatedPaperTrainingSAE:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ablation-combination warnings
        cfg = GatedPaperTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **overrides)
    return GatedPaperTrainingSAE(cfg)


def batch(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*(shape or (64, D_IN)), generator=torch.Generator().manual_seed(seed))


def assert_unit_rows(w_dec: torch.Tensor, tol: float = 1e-5) -> None:
    deviation = (w_dec.detach().norm(dim=1) - 1).abs().max().item()
    assert deviation <= tol, f"decoder rows are not unit norm: max |norm - 1| = {deviation:.3g}"


# --- inference SAE ----------------------------------------------------------------------------


@pytest.mark.parametrize("centre", [True, False], ids=["centred", "uncentred"])
def test_inference_matches_paper_formula(centre: bool) -> None:
    state = random_state(0)
    sae = inference_sae(state, apply_b_dec_to_input=centre)
    x = batch(1)
    with torch.no_grad():
        feats = sae.encode(x)
        out = sae(x)
    expected = paper_encode(state, x, centre)
    assert 0.1 < (expected > 0).float().mean().item() < 0.9
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, paper_forward(state, x, centre), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("centre", [True, False], ids=["centred", "uncentred"])
@pytest.mark.parametrize("shape", [(64, D_IN), (3, 5, D_IN)], ids=["2d", "3d"])
def test_inference_matches_saelens_builtin_gated(centre: bool, shape: tuple[int, ...]) -> None:
    state = random_state(2)
    ours = inference_sae(state, apply_b_dec_to_input=centre)
    theirs = builtin_sae(state, apply_b_dec_to_input=centre)
    x = batch(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        assert ours(x).shape == x.shape


def test_fold_W_dec_norm_keeps_outputs_and_matches_builtin() -> None:
    state = random_state(4)
    ours, theirs = inference_sae(state), builtin_sae(state)
    x = batch(5)
    with torch.no_grad():
        out_before, feats_before = ours(x), ours.encode(x)
        ours.fold_W_dec_norm()
        theirs.fold_W_dec_norm()
        assert_unit_rows(ours.W_dec)
        # folding moved the row norms into the features ...
        norms = state["W_dec"].norm(dim=1)
        torch.testing.assert_close(ours.encode(x), feats_before * norms, atol=1e-5, rtol=1e-5)
        # ... and changed nothing downstream
        torch.testing.assert_close(ours(x), out_before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder_norm", ["unit", "free"])
def test_training_encode_equals_inference_encode(decoder_norm: str) -> None:
    train = training_sae(decoder_norm=decoder_norm)
    state = random_state(6)
    if decoder_norm == "unit":
        state["W_dec"] = state["W_dec"] / state["W_dec"].norm(dim=1, keepdim=True)
    train.load_state_dict(state)
    infer = inference_sae(state)
    x = batch(7)
    torch.testing.assert_close(train.encode(x), infer.encode(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(train(x), infer(x), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(train.encode(x), infer.encode(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(train(x), infer(x), atol=1e-6, rtol=1e-6)


# --- HookedSAETransformer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> HookedSAETransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=D_MODEL, n_ctx=8, d_head=4, n_heads=4, d_vocab=50, act_fn="relu"
    )
    model = HookedSAETransformer(cfg)
    model.eval()
    return model


def identity_sae(b_dec_seed: int = 0) -> GatedPaperSAE:
    """A gated SAE that reconstructs its input exactly: latents relu(x_c) and relu(-x_c)."""
    eye = torch.eye(D_MODEL)
    state = {
        "W_enc": torch.cat([eye, -eye], dim=1),
        "b_gate": torch.zeros(2 * D_MODEL),
        "r_mag": torch.zeros(2 * D_MODEL),
        "b_mag": torch.zeros(2 * D_MODEL),
        "W_dec": torch.cat([eye, -eye], dim=0),
        "b_dec": torch.randn(D_MODEL, generator=torch.Generator().manual_seed(b_dec_seed)),
    }
    sae = GatedPaperSAE(GatedPaperSAEConfig(d_in=D_MODEL, d_sae=2 * D_MODEL))
    sae.load_state_dict(state)
    sae.cfg.metadata.hook_name = HOOK
    return sae


def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(9))


def test_hooked_transformer_perfect_reconstruction_keeps_logits(
    tiny_model: HookedSAETransformer,
) -> None:
    toks = tokens()
    sae = identity_sae()
    calls: list[torch.Size] = []
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: calls.append(acts.shape))
    with torch.no_grad():
        plain = tiny_model(toks)
        spliced = tiny_model.run_with_saes(toks, saes=[sae])
    sae.reset_hooks()
    assert calls == [torch.Size([2, 8, 2 * D_MODEL])]
    assert isinstance(spliced, torch.Tensor)
    assert spliced.shape == plain.shape == (2, 8, 50)
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=1e-5)


def test_hooked_transformer_random_sae_changes_logits_and_is_cached(
    tiny_model: HookedSAETransformer,
) -> None:
    toks = tokens()
    sae = inference_sae(random_state(10, d_in=D_MODEL, d_sae=2 * D_MODEL))
    sae.cfg.metadata.hook_name = HOOK
    with torch.no_grad():
        plain, plain_cache = tiny_model.run_with_cache(toks)
        spliced = tiny_model.run_with_saes(toks, saes=[sae])
        logits, cache = tiny_model.run_with_cache_with_saes(toks, saes=[sae])
        after = tiny_model(toks)
    assert isinstance(spliced, torch.Tensor)
    assert spliced.shape == plain.shape
    assert (spliced - plain).abs().max() > 1e-3
    torch.testing.assert_close(logits, spliced)
    torch.testing.assert_close(after, plain)  # the SAE was removed again

    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == (2, 8, 2 * D_MODEL)
    expected = paper_encode(random_state(10, D_MODEL, 2 * D_MODEL), plain_cache[HOOK])
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)
    assert f"{HOOK}.hook_sae_acts_pre" in cache
    recons = cache[f"{HOOK}.hook_sae_recons"]
    torch.testing.assert_close(
        recons,
        paper_forward(random_state(10, D_MODEL, 2 * D_MODEL), plain_cache[HOOK]),
        atol=1e-5,
        rtol=1e-5,
    )


# --- SAETrainer: unit-norm decoder rows and the end-of-training folds ---------------------------

STEPS = 200
TRAIN_BATCH = 64


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls in a tight loop: intra-op threads only add contention on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def activations(seed: int, scale: float = 3.0, offset: float = 0.0) -> Iterator[torch.Tensor]:
    """Endless batches of sparse-ish structured activations (not unit-scale, not centred)."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(2 * D_IN, D_IN, generator=gen)
    while True:
        codes = torch.relu(torch.randn(TRAIN_BATCH, 2 * D_IN, generator=gen) - 0.5)
        yield scale * codes @ dictionary + offset


def trainer_config(checkpoint_path: Path | None, steps: int = STEPS) -> SAETrainerConfig:
    return SAETrainerConfig(
        total_training_samples=steps * TRAIN_BATCH,
        train_batch_size_samples=TRAIN_BATCH,
        lr=1e-2,
        lr_end=1e-2,
        checkpoint_path=str(checkpoint_path) if checkpoint_path is not None else None,
        save_final_checkpoint=checkpoint_path is not None,
        n_batches_for_norm_estimate=5,
        logger=LoggingConfig(log_to_wandb=False),
    )


def final_checkpoint(base: Path) -> Path:
    (found,) = base.glob("final_*")
    return found


@pytest.mark.usefixtures("one_thread")
def test_unit_rows_after_fit_and_in_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sae = training_sae(l1_coefficient=0.1)
    w_dec_start = sae.W_dec.detach().clone()
    SAETrainer(trainer_config(tmp_path), sae, activations(1)).fit()

    assert (sae.W_dec.detach() - w_dec_start).abs().max() > 0.1  # it did train
    assert_unit_rows(sae.W_dec)
    saved = load_file(final_checkpoint(tmp_path) / "sae_weights.safetensors")
    assert_unit_rows(saved["W_dec"])
    assert torch.equal(saved["W_dec"], sae.W_dec.detach())


@pytest.mark.usefixtures("one_thread")
def test_free_decoder_rows_drift_under_the_same_training(tmp_path: Path) -> None:
    """Control for the test above: without the constraint the same run moves the row norms."""
    torch.manual_seed(0)
    sae = training_sae(
        l1_coefficient=0.1,
        decoder_norm="free",
        sparsity_penalty="decoder_norm_weighted",
        aux_decoder="trainable",
    )
    assert_unit_rows(sae.W_dec)  # same unit-norm start
    SAETrainer(trainer_config(tmp_path), sae, activations(1)).fit()
    saved = load_file(final_checkpoint(tmp_path) / "sae_weights.safetensors")
    for w_dec in (sae.W_dec.detach(), saved["W_dec"]):
        assert (w_dec.norm(dim=1) - 1).abs().max() > 1e-2


@pytest.mark.usefixtures("one_thread")
def test_unit_rows_after_fit_without_a_final_checkpoint() -> None:
    """The paper renormalises after EVERY step: the SAE that fit() returns must have unit rows
    even when nothing is saved (the runner with output_path=None, or any caller of fit())."""
    torch.manual_seed(0)
    sae = training_sae(l1_coefficient=0.1)
    SAETrainer(trainer_config(None), sae, activations(1)).fit()
    assert_unit_rows(sae.W_dec)


def test_expected_average_fold_keeps_unit_rows_and_outputs() -> None:
    sae = training_sae(normalize_activations="expected_average_only_in")
    state = random_state(11)
    state["W_dec"] = state["W_dec"] / state["W_dec"].norm(dim=1, keepdim=True)
    sae.load_state_dict(state)
    unfolded = copy.deepcopy(sae)
    scale = 0.37
    sae.fold_activation_norm_scaling_factor(scale)

    assert sae.cfg.normalize_activations == "none"
    assert_unit_rows(sae.W_dec)
    x = batch(12) * 5
    with torch.no_grad():
        torch.testing.assert_close(sae(x), unfolded(x * scale) / scale, atol=1e-5, rtol=1e-5)
        # the gate pattern (hence L0) is unchanged; magnitudes carry the 1/scale
        assert torch.equal(sae.encode(x) > 0, unfolded.encode(x * scale) > 0)
        torch.testing.assert_close(
            sae.encode(x), unfolded.encode(x * scale) / scale, atol=1e-5, rtol=1e-5
        )


def test_free_rows_fold_as_saelens_does_keeping_features() -> None:
    """decoder_norm='free' keeps SAELens's contract: features unchanged, scale in the weights."""
    sae = training_sae(
        normalize_activations="expected_average_only_in",
        decoder_norm="free",
        decoder_init_norm=None,
        sparsity_penalty="decoder_norm_weighted",
        aux_decoder="trainable",
    )
    sae.load_state_dict(random_state(12))
    unfolded = copy.deepcopy(sae)
    scale = 0.37
    sae.fold_activation_norm_scaling_factor(scale)
    x = batch(13) * 5
    with torch.no_grad():
        torch.testing.assert_close(sae(x), unfolded(x * scale) / scale, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.encode(x), unfolded.encode(x * scale), atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_expected_average_fold_through_the_trainer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sae = training_sae(l1_coefficient=0.1, normalize_activations="expected_average_only_in")
    seen: dict[str, Any] = {}
    fold = sae.fold_activation_norm_scaling_factor

    def spy(scaling_factor: float) -> None:
        seen["scale"] = scaling_factor
        seen["unfolded"] = copy.deepcopy(sae)
        fold(scaling_factor)

    sae.fold_activation_norm_scaling_factor = spy  # type: ignore[method-assign]
    SAETrainer(trainer_config(tmp_path), sae, activations(2, scale=4.0)).fit()

    scale = seen["scale"]
    assert abs(scale - 1) > 0.2  # the data really is rescaled
    assert sae.cfg.normalize_activations == "none"
    assert_unit_rows(sae.W_dec)
    saved = load_file(final_checkpoint(tmp_path) / "sae_weights.safetensors")
    assert_unit_rows(saved["W_dec"])

    # Compare with the trained (unfolded) SAE on scaled activations.
    unfolded: GatedPaperTrainingSAE = seen["unfolded"]
    x = next(activations(3, scale=4.0))
    with torch.no_grad():
        torch.testing.assert_close(sae(x), unfolded(x * scale) / scale, atol=1e-4, rtol=1e-4)


def whitening(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(D_IN, generator=gen)
    matrix = torch.randn(D_IN, D_IN, generator=gen) / D_IN**0.5 + torch.eye(D_IN)
    return mean, matrix, torch.linalg.inv(matrix)


def test_covariance_whitening_fold_survives_saving(tmp_path: Path) -> None:
    """Folding whitening into a unit-norm SAE makes W_dec rows non-unit (W_dec @ M^-1); saving
    must not then rescale those rows, or the saved SAE computes something else."""
    sae = training_sae(normalize_activations="covariance_whitening")
    state = random_state(13)
    state["W_dec"] = state["W_dec"] / state["W_dec"].norm(dim=1, keepdim=True)
    sae.load_state_dict(state)
    unfolded = copy.deepcopy(sae)
    mean, matrix, inverse = whitening(14)
    sae.fold_activation_whitening(mean, matrix, inverse)

    x = batch(15) * 2 + 1
    with torch.no_grad():
        expected = unfolded((x - mean) @ matrix) @ inverse + mean
        torch.testing.assert_close(sae(x), expected, atol=1e-4, rtol=1e-4)
    sae.save_inference_model(tmp_path)
    loaded = GatedPaperSAE.load_from_disk(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, atol=1e-4, rtol=1e-4)
