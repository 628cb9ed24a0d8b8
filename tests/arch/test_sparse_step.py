"""The sparse ``gated_paper`` training step against the dense reference path.

``arch/sparse.py`` computes the step from the open (row, latent) pairs only. Here its loss terms
and EVERY parameter gradient are compared with the dense path's (``training_forward_pass`` with
the sparse step switched off), for every combination of ``aux_decoder`` x ``sparsity_penalty``
x ``decoder_norm``, at open fractions from 0.1% to 50% (set through ``b_gate``), in float32 and
bfloat16; and one step of SAELens's own trainer is checked to run the sparse path.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import pytest
import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from sae_gated_plugin import GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch import kernels, sparse
from sae_gated_plugin.errors import GatedPluginError

D_IN, D_SAE, BATCH = 24, 640, 160
L1 = 0.7
PARAM_NAMES = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")
LOSS_NAMES = ("mse_loss", "l1_loss", "auxiliary_reconstruction_loss")
SWITCHES = list(
    itertools.product(("frozen", "trainable"), ("l1", "decoder_norm_weighted"), ("unit", "free"))
)
DENSITIES = (0.001, 0.01, 0.05, 0.5)


def make_sae(
    density: float, aux: str = "frozen", penalty: str = "l1", norm: str = "unit", **cfg: Any
) -> tuple[GatedPaperTrainingSAE, torch.Tensor]:
    """A random SAE and a batch on which a fraction ``density`` of the gates is open.

    ``b_gate`` puts the gate threshold at the ``1 - density`` quantile of ``E = x_c W_gate``;
    ``b_mag`` makes some open pairs' magnitude negative, so every gradient path is exercised.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the ablation-combination warnings
        config = GatedPaperTrainingSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            l1_coefficient=L1,
            aux_decoder=aux,  # type: ignore[arg-type]
            sparsity_penalty=penalty,  # type: ignore[arg-type]
            decoder_norm=norm,  # type: ignore[arg-type]
            **cfg,
        )
    sae = GatedPaperTrainingSAE(config)
    gen = torch.Generator().manual_seed(0)
    device = sae.W_enc.device  # drawn on the CPU (same numbers everywhere), then moved
    x = (torch.randn(BATCH, D_IN, generator=gen) * 2 + 0.5).to(device)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5)
        sae.r_mag.copy_(0.3 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.3 * torch.randn(D_IN, generator=gen))
        w_dec = torch.randn(D_SAE, D_IN, generator=gen)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        if norm == "free":  # rows of different norms, so a decoder-norm weighting shows
            w_dec *= 0.5 + torch.rand(D_SAE, 1, generator=gen)
        sae.W_dec.copy_(w_dec)
        pre = sae.normalised_input(x) - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
        pre = pre @ sae.W_enc
        threshold = torch.quantile(pre.flatten().float(), 1 - density)
        sae.b_gate.fill_(-threshold.item())
        spread = 0.3 * pre.std().item()
        noise = spread * torch.randn(D_SAE, generator=gen).to(device)
        sae.b_mag.copy_(sae.b_gate * sae.r_mag.exp() + noise)
    return sae, x


def step_input(x: torch.Tensor) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x,
        coefficients={"l1": L1},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )


class ApplySpy:
    """Counts the sparse step's autograd Function calls (patched in with monkeypatch)."""

    def __init__(self) -> None:
        self.calls = 0
        self.original = sparse._SparseGatedStep.apply

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.original(*args)


def run_step(
    sae: GatedPaperTrainingSAE, x: torch.Tensor, sparse_path: bool
) -> tuple[TrainStepOutput, dict[str, torch.Tensor]]:
    """One training step through ``training_forward_pass`` (sparse or dense) and its gradients."""
    mp = pytest.MonkeyPatch()
    mp.setenv(kernels.THRESHOLD_ENV, "inf" if sparse_path else "0")
    spy = ApplySpy()
    mp.setattr(sparse._SparseGatedStep, "apply", spy)
    try:
        sae.zero_grad(set_to_none=True)
        out = sae.training_forward_pass(step_input(x))
        out.loss.backward()
    finally:
        mp.undo()
    assert spy.calls == int(sparse_path), "the step did not take the path asked for"
    grads = {name: getattr(sae, name).grad.detach().clone() for name in PARAM_NAMES}
    return out, grads


def assert_relative(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    """Elementwise |got - want| <= tol * max|want| (a gradient's scale, not each entry's)."""
    got, want = got.double(), want.double()
    scale = want.abs().max().item()
    error = (got - want).abs().max().item()
    assert error <= tol * max(scale, 1e-30), f"{what}: max error {error:.3g}, scale {scale:.3g}"


def compare_paths(
    sae: GatedPaperTrainingSAE, x: torch.Tensor, tol: float
) -> tuple[TrainStepOutput, dict[str, torch.Tensor]]:
    dense_out, dense_grads = run_step(sae, x, sparse_path=False)
    sparse_out, sparse_grads = run_step(sae, x, sparse_path=True)
    for name in LOSS_NAMES:
        assert_relative(sparse_out.losses[name], dense_out.losses[name], tol, name)
    assert_relative(sparse_out.loss, dense_out.loss, tol, "loss")
    assert_relative(sparse_out.sae_out, dense_out.sae_out, tol, "sae_out")
    assert_relative(sparse_out.hidden_pre, dense_out.hidden_pre, tol, "hidden_pre")
    assert torch.equal(sparse_out.feature_acts > 0, dense_out.feature_acts > 0)
    assert_relative(sparse_out.feature_acts, dense_out.feature_acts, tol, "feature_acts")
    for name in PARAM_NAMES:
        assert_relative(sparse_grads[name], dense_grads[name], tol, f"grad {name}")
    return sparse_out, dense_grads


@pytest.mark.parametrize("density", DENSITIES, ids=lambda d: f"{d:.1%}")
@pytest.mark.parametrize(("aux", "penalty", "norm"), SWITCHES, ids=["-".join(s) for s in SWITCHES])
def test_sparse_step_equals_dense_float32(
    density: float, aux: str, penalty: str, norm: str
) -> None:
    sae, x = make_sae(density, aux, penalty, norm)
    out, dense_grads = compare_paths(sae, x, tol=1e-5)

    # Not vacuous: the batch has the open fraction asked for, every gradient carries signal,
    # and some open pairs have a negative magnitude (gate open, feature 0).
    pi_gate = sae.pre_activations(x).pi_gate.detach()
    assert density / 2 <= (pi_gate > 0).float().mean().item() <= 2 * density
    for name in PARAM_NAMES:
        assert dense_grads[name].abs().max() > 0, name
    assert ((out.feature_acts == 0) & (pi_gate > 0)).any()


def test_sparse_step_with_every_gate_closed() -> None:
    """No open pair at all: only the decoder bias (and the centring) see a gradient."""
    sae, x = make_sae(0.01)
    with torch.no_grad():
        sae.b_gate.fill_(-1e4)
    sparse_out, _ = compare_paths(sae, x, tol=1e-5)
    assert torch.count_nonzero(sparse_out.feature_acts) == 0
    assert sae.W_enc.grad is not None and torch.count_nonzero(sae.W_enc.grad) == 0


@pytest.mark.parametrize(
    "cfg",
    [
        {"apply_b_dec_to_input": False},
        {"normalize_activations": "constant_norm_rescale"},
        {"normalize_activations": "layer_norm"},
    ],
    ids=["no-centring", "constant-norm-rescale", "layer-norm"],
)
def test_sparse_step_keeps_centring_and_runtime_normalisation(cfg: dict[str, Any]) -> None:
    sae, x = make_sae(0.02, "trainable", "decoder_norm_weighted", "free", **cfg)
    compare_paths(sae, x, tol=1e-5)


def test_sparse_step_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16 (no sampled_addmm kernel: decoder rows are upcast block by block; small blocks
    here so that several are used). Dense and sparse round differently: a looser bound."""
    monkeypatch.setattr(kernels, "BLOCK_LATENTS", 100)
    for aux, penalty, norm in (
        ("frozen", "l1", "unit"),
        ("trainable", "decoder_norm_weighted", "free"),
        ("trainable", "l1", "unit"),
    ):
        sae, x = make_sae(0.05, aux, penalty, norm, dtype="bfloat16")
        compare_paths(sae, x.bfloat16(), tol=3e-2)


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).abs().max().item()


@pytest.mark.parametrize("density", (0.01, 0.05), ids=lambda d: f"{d:.0%}")
@pytest.mark.parametrize(("aux", "penalty", "norm"), SWITCHES, ids=["-".join(s) for s in SWITCHES])
def test_sparse_step_under_autocast(density: float, aux: str, penalty: str, norm: str) -> None:
    """SAELens's ``autocast: true`` (bfloat16 autocast around the forward pass) keeps the sparse
    step. Both paths then open the gates from the same bfloat16 ``E``: the sparse step matches
    the dense one under autocast within bfloat16 rounding. Against the float32 step the losses
    agree to 2e-2; the gradients differ where a bfloat16 ``E`` flips a gate, and the sparse
    step's gradients are no further from float32's than the dense autocast step's."""
    sae, x = make_sae(density, aux, penalty, norm)
    want_out, want_grads = run_step(sae, x, sparse_path=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse_out, sparse_grads = run_step(sae, x, sparse_path=True)
        dense_out, dense_grads = run_step(sae, x, sparse_path=False)
    assert sparse_out.sae_out.dtype == torch.float32
    assert_relative(sparse_out.sae_out, dense_out.sae_out, 2e-2, "sae_out")
    for name in LOSS_NAMES:
        assert_relative(sparse_out.losses[name], dense_out.losses[name], 2e-2, name)
        assert_relative(sparse_out.losses[name], want_out.losses[name], 2e-2, f"{name} (f32)")
    for name in PARAM_NAMES:
        assert_relative(sparse_grads[name], dense_grads[name], 2e-2, f"grad {name}")
        scale = want_grads[name].abs().max().item()
        dense_error = max_error(dense_grads[name], want_grads[name])
        sparse_error = max_error(sparse_grads[name], want_grads[name])
        assert sparse_error <= 1.25 * dense_error + 2e-2 * scale, f"grad {name} (f32)"


def capture_grads(sae: GatedPaperTrainingSAE) -> dict[str, torch.Tensor]:
    """A dict that receives each parameter's gradient as soon as backward has accumulated it
    (SAETrainer clips, steps and zeroes the gradients before returning)."""
    grads: dict[str, torch.Tensor] = {}
    for name in PARAM_NAMES:

        def keep(param: torch.Tensor, name: str = name) -> None:
            assert param.grad is not None
            grads[name] = param.grad.detach().clone()

        getattr(sae, name).register_post_accumulate_grad_hook(keep)
    return grads


def test_saelens_trainer_step_runs_the_sparse_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """One step of SAELens's own SAETrainer at 1% open latents, with the shipped threshold:
    it takes the sparse path, and its loss and gradients are the dense path's. (Small arrays
    come from fresh mappings here too, as large ones do in real runs.)"""
    monkeypatch.delenv(kernels.THRESHOLD_ENV, raising=False)
    monkeypatch.setattr(kernels, "FRESH_MAPPING_BYTES", 0)
    results = {}
    for path in ("auto", "dense"):
        sae, x = make_sae(0.01)
        trainer = SAETrainer(
            SAETrainerConfig(
                total_training_samples=10 * BATCH,
                train_batch_size_samples=BATCH,
                adam_beta1=0.0,
                lr=1e-4,
                lr_end=1e-4,
            ),
            sae,
            data_provider=iter([]),
        )
        grads = capture_grads(sae)
        spy = ApplySpy()
        with monkeypatch.context() as mp:
            mp.setattr(sparse._SparseGatedStep, "apply", spy)
            if path == "dense":
                mp.setenv(kernels.THRESHOLD_ENV, "0")
            output = trainer.step(x)
        assert spy.calls == int(path == "auto")
        results[path] = (output, grads)
    (sparse_out, sparse_grads), (dense_out, dense_grads) = results["auto"], results["dense"]
    for name in LOSS_NAMES:
        assert_relative(sparse_out.losses[name], dense_out.losses[name], 1e-5, name)
    for name in PARAM_NAMES:
        assert_relative(sparse_grads[name], dense_grads[name], 1e-5, f"grad {name}")


def test_saelens_trainer_step_with_autocast_runs_the_sparse_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SAELens's trainer with ``autocast=True`` (bfloat16 on CPU) at 1% open latents takes the
    sparse path, and its losses are the float32 dense step's within bfloat16 rounding."""
    monkeypatch.delenv(kernels.THRESHOLD_ENV, raising=False)
    sae, x = make_sae(0.01)
    want = run_step(sae, x, sparse_path=False)[0].losses
    trainer = SAETrainer(
        SAETrainerConfig(
            total_training_samples=10 * BATCH,
            train_batch_size_samples=BATCH,
            adam_beta1=0.0,
            lr=1e-4,
            lr_end=1e-4,
            autocast=True,
        ),
        sae,
        data_provider=iter([]),
    )
    spy = ApplySpy()
    monkeypatch.setattr(sparse._SparseGatedStep, "apply", spy)
    output = trainer.step(x)
    assert spy.calls == 1
    for name in LOSS_NAMES:
        assert_relative(output.losses[name], want[name], 2e-2, name)


def test_dense_initial_state_keeps_the_dense_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """At SAELens's initialisation about half the gates are open: the shipped threshold must
    choose the dense path there."""
    monkeypatch.delenv(kernels.THRESHOLD_ENV, raising=False)
    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))
    spy = ApplySpy()
    monkeypatch.setattr(sparse._SparseGatedStep, "apply", spy)
    sae.training_forward_pass(step_input(torch.randn(BATCH, D_IN))).loss.backward()
    assert spy.calls == 0


def test_sparse_step_declines_what_it_cannot_reproduce(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks on the feature hook points or an input that needs a gradient: dense (autocast
    keeps the sparse step)."""
    monkeypatch.setenv(kernels.THRESHOLD_ENV, "1.0")
    sae, x = make_sae(0.01)
    sae_in = sae.normalised_input(x)
    pre = sae.encoder_product(sae_in)
    assert sparse.sparse_step_applies(sae, sae_in)
    assert not sparse.sparse_step_applies(sae, sae_in.clone().requires_grad_(True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sparse.sparse_step_applies(sae, sae_in)
    handle = sae.hook_sae_acts_post.register_forward_hook(lambda *args: None)
    try:
        assert not sparse.sparse_step_applies(sae, sae_in)
        assert sparse.sparse_training_forward_pass(sae, step_input(x), sae_in, pre) is None
    finally:
        handle.remove()
    assert sparse.sparse_training_forward_pass(sae, step_input(x), sae_in, pre) is not None


def test_threshold_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv(kernels.THRESHOLD_ENV, raising=False)
    assert kernels.density_threshold(cpu) == kernels.DENSITY_THRESHOLDS["cpu"]
    monkeypatch.setenv(kernels.THRESHOLD_ENV, "0.25")
    assert kernels.density_threshold(cpu) == 0.25
    monkeypatch.setenv(kernels.THRESHOLD_ENV, "inf")
    assert kernels.density_threshold(cpu) == float("inf")
    for bad in ("-0.1", "nan", "dense"):
        monkeypatch.setenv(kernels.THRESHOLD_ENV, bad)
        with pytest.raises(GatedPluginError, match=kernels.THRESHOLD_ENV):
            kernels.density_threshold(cpu)


def test_open_pairs_in_both_orders() -> None:
    gen = torch.Generator().manual_seed(3)
    pre = torch.randn(7, 9, generator=gen)
    b_gate = 0.5 * torch.randn(9, generator=gen)
    pairs = sparse.find_open_pairs(pre, b_gate)
    rows, cols = torch.nonzero(pre + b_gate > 0, as_tuple=True)
    assert torch.equal(pairs.flat, rows * 9 + cols)
    assert torch.equal(pairs.cols, cols)
    assert torch.equal(pairs.pre, pre[rows, cols])
    assert torch.equal(pairs.row_starts, torch.searchsorted(rows, torch.arange(7)))
    cols_t, rows_t = torch.nonzero((pre + b_gate > 0).t(), as_tuple=True)
    assert torch.equal(pairs.rows_t, rows_t)
    assert torch.equal(pairs.cols_t, cols_t)
    assert torch.equal(pairs.pre_t, pre[rows_t, cols_t])
    assert torch.equal(pairs.latent_starts, torch.searchsorted(cols_t, torch.arange(10)))


@pytest.mark.parametrize("shape", [(64, 40), (33, 13), (1, 8)], ids=["words", "ragged", "one-word"])
def test_nonzero_flat_matches_nonzero(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(4)
    for density in (0.0, 0.01, 0.3, 1.0):
        mask = torch.rand(shape, generator=gen) < density
        expected = mask.view(-1).nonzero().squeeze(1)
        assert torch.equal(kernels.nonzero_flat(mask), expected)
        transposed = mask.t().contiguous()
        assert torch.equal(kernels.nonzero_flat(transposed), transposed.view(-1).nonzero()[:, 0])


def test_large_zeros_come_from_a_fresh_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapped zeros behave as torch.zeros: right shape, dtype, all zero, writable, and
    independent of each other."""
    monkeypatch.setattr(kernels, "FRESH_MAPPING_BYTES", 1024)
    like = torch.ones(64, 32)
    first, second = kernels.fresh_zeros_like(like), kernels.fresh_zeros_like(like)
    for zeros in (first, second):
        assert zeros.shape == like.shape and zeros.dtype == like.dtype
        assert torch.count_nonzero(zeros) == 0
    first.view(-1).index_copy_(0, torch.tensor([0, 100]), torch.tensor([1.0, 2.0]))
    assert first.sum() == 3 and torch.count_nonzero(second) == 0
    del first
    assert torch.count_nonzero(second) == 0


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
"""Every device this machine has: CUDA where present (the GPU check runs this file there)."""


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("density", (0.01, 0.5), ids=lambda d: f"{d:.0%}")
@pytest.mark.parametrize(
    ("aux", "penalty", "norm"),
    [("frozen", "l1", "unit"), ("trainable", "decoder_norm_weighted", "free")],
    ids=["paper", "saelens-like"],
)
def test_sparse_step_equals_dense_on_each_device(
    device: str, density: float, aux: str, penalty: str, norm: str
) -> None:
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    try:
        sae, x = make_sae(density, aux, penalty, norm, device=device)
        compare_paths(sae, x.to(device), tol=1e-5 if device == "cpu" else 1e-4)
        if device == "cuda" and torch.cuda.is_bf16_supported():
            sae, x = make_sae(density, aux, penalty, norm, device=device, dtype="bfloat16")
            compare_paths(sae, x.to(device, torch.bfloat16), tol=3e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
