"""Gradients of the gated_paper training loss, term by term, against PAPER.md.

A loss-value test cannot see a missing stop-gradient or a straight-through gate, so every test
here differentiates one loss term (or the whole loss) with ``torch.autograd.grad`` and compares
the result with an independent plain-torch implementation of the paper's formula.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pytest
import torch
from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput

from sae_gated_plugin import GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.kernels import centred_matmul
from sae_gated_plugin.arch.unit_norm import tangent_gradient

D_IN = 6
D_SAE = 10
BATCH = 32
L1 = 0.7
PARAM_NAMES = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")


def make_sae(seed: int = 0, **overrides: object) -> GatedPaperTrainingSAE:
    """A float64 training SAE with random, non-trivial parameters (all biases non-zero)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the ablation-combination warnings
        cfg = GatedPaperTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, dtype="float64", l1_coefficient=L1, **overrides
        )
    sae = GatedPaperTrainingSAE(cfg)
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        sae.W_enc.copy_(0.5 * rnd(D_IN, D_SAE))
        sae.b_gate.copy_(0.5 * rnd(D_SAE))
        sae.r_mag.copy_(0.3 * rnd(D_SAE))
        sae.b_mag.copy_(0.5 * rnd(D_SAE))
        sae.b_dec.copy_(0.5 * rnd(D_IN))
        w_dec = rnd(D_SAE, D_IN)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
        if cfg.decoder_norm == "free":  # rows of different norms, so a weighting shows
            w_dec = w_dec * (0.5 + 1.5 * torch.rand(D_SAE, 1, generator=gen, dtype=torch.float64))
        sae.W_dec.copy_(w_dec)
    return sae


def make_batch(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, D_IN, generator=gen, dtype=torch.float64)


def step(sae: GatedTrainingSAE, x: torch.Tensor, l1: float = L1) -> TrainStepOutput:
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": l1},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    )


def params(sae: torch.nn.Module, names: Sequence[str] = PARAM_NAMES) -> list[torch.Tensor]:
    return [getattr(sae, name) for name in names]


def grads_of(loss: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d tensors, with an unused tensor's gradient reported as exact zeros."""
    found = torch.autograd.grad(loss, list(tensors), allow_unused=True, retain_graph=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, found, strict=True)]


def reference_loss(
    p: dict[str, torch.Tensor],
    x: torch.Tensor,
    lam: float,
    *,
    aux_frozen: bool = True,
    weighted_l1: bool = False,
    apply_b_dec_to_input: bool = True,
) -> torch.Tensor:
    """PAPER.md's loss in plain torch (no plugin code); the switches give the ablations."""
    w, b_gate, r_mag, b_mag = p["W_enc"], p["b_gate"], p["r_mag"], p["b_mag"]
    w_dec, b_dec = p["W_dec"], p["b_dec"]
    x_c = x - b_dec if apply_b_dec_to_input else x
    pi_gate = x_c @ w + b_gate
    magnitude = x_c @ (w * r_mag.exp()) + b_mag
    f = (pi_gate > 0).to(x.dtype) * torch.relu(magnitude)
    x_hat = f @ w_dec + b_dec
    mse = (x - x_hat).pow(2).sum(-1).mean()
    gate_acts = torch.relu(pi_gate)
    gate_acts_weighted = gate_acts * w_dec.norm(dim=-1) if weighted_l1 else gate_acts
    sparsity = lam * gate_acts_weighted.sum(-1).mean()
    aux_w, aux_b = (w_dec.detach(), b_dec.detach()) if aux_frozen else (w_dec, b_dec)
    aux = (x - (gate_acts @ aux_w + aux_b)).pow(2).sum(-1).mean()
    return mse + sparsity + aux


def reference_leaves(sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: getattr(sae, n).detach().clone().requires_grad_(True) for n in PARAM_NAMES}


def project_rows(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Remove from each row of ``grad`` its component along the same row of ``weight``."""
    unit = weight / weight.norm(dim=-1, keepdim=True)
    return grad - (grad * unit).sum(-1, keepdim=True) * unit


def test_random_setup_is_not_degenerate() -> None:
    """Some gates open and some closed, some open gates with a zero magnitude: all paths used."""
    sae, x = make_sae(), make_batch()
    with torch.no_grad():
        acts = sae.pre_activations(x)
    open_gate = acts.pi_gate > 0
    assert 0.2 < open_gate.double().mean().item() < 0.8
    assert (open_gate & (acts.magnitude <= 0)).any()
    assert (acts.feature_acts > 0).any()


# --- auxiliary reconstruction term ------------------------------------------------------------


def test_frozen_aux_gives_no_gradient_to_decoder_without_centring() -> None:
    sae = make_sae(aux_decoder="frozen", apply_b_dec_to_input=False)
    aux = step(sae, make_batch()).losses["auxiliary_reconstruction_loss"]
    g_w_dec, g_b_dec, g_w_enc, g_b_gate = grads_of(
        aux, params(sae, ["W_dec", "b_dec", "W_enc", "b_gate"])
    )
    assert torch.count_nonzero(g_w_dec) == 0
    assert torch.count_nonzero(g_b_dec) == 0
    # ... but it does train the gate encoder (otherwise the check above would be vacuous).
    assert g_w_enc.abs().max() > 1e-3
    assert g_b_gate.abs().max() > 1e-3


def test_frozen_aux_b_dec_gradient_is_the_input_centring_only() -> None:
    sae = make_sae(aux_decoder="frozen", apply_b_dec_to_input=True)
    x = make_batch()
    aux = step(sae, x).losses["auxiliary_reconstruction_loss"]
    g_w_dec, g_b_dec = grads_of(aux, params(sae, ["W_dec", "b_dec"]))
    assert torch.count_nonzero(g_w_dec) == 0

    # Expected: b_dec enters only through x - b_dec; the reconstruction uses detached copies.
    b_dec = sae.b_dec.detach().clone().requires_grad_(True)
    w, b_gate = sae.W_enc.detach(), sae.b_gate.detach()
    gate_acts = torch.relu((x - b_dec) @ w + b_gate)
    recon = gate_acts @ sae.W_dec.detach() + sae.b_dec.detach()
    (expected,) = torch.autograd.grad((x - recon).pow(2).sum(-1).mean(), [b_dec])

    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(g_b_dec, expected, rtol=1e-9, atol=1e-12)

    # The undetached decoder bias would add the reconstruction path on top: must differ.
    b_dec_live = sae.b_dec.detach().clone().requires_grad_(True)
    recon_live = torch.relu((x - b_dec_live) @ w + b_gate) @ sae.W_dec.detach() + b_dec_live
    (live,) = torch.autograd.grad((x - recon_live).pow(2).sum(-1).mean(), [b_dec_live])
    assert (live - g_b_dec).abs().max() > 1e-3


def test_trainable_aux_trains_the_decoder() -> None:
    sae = make_sae(aux_decoder="trainable", apply_b_dec_to_input=True)
    x = make_batch()
    aux = step(sae, x).losses["auxiliary_reconstruction_loss"]
    g_w_dec, g_b_dec = grads_of(aux, params(sae, ["W_dec", "b_dec"]))
    assert g_w_dec.abs().max() > 1e-3
    assert g_b_dec.abs().max() > 1e-3

    frozen = make_sae(aux_decoder="frozen", apply_b_dec_to_input=True)
    aux_frozen = step(frozen, x).losses["auxiliary_reconstruction_loss"]
    (g_b_dec_frozen,) = grads_of(aux_frozen, [frozen.b_dec])
    assert (g_b_dec - g_b_dec_frozen).abs().max() > 1e-3


# --- sparsity term ----------------------------------------------------------------------------


@pytest.mark.parametrize("decoder_norm", ["unit", "free"])
def test_plain_l1_gives_no_gradient_to_decoder(decoder_norm: str) -> None:
    sae = make_sae(sparsity_penalty="l1", decoder_norm=decoder_norm)
    l1_loss = step(sae, make_batch()).losses["l1_loss"]
    g_w_dec, g_b_gate = grads_of(l1_loss, params(sae, ["W_dec", "b_gate"]))
    assert torch.count_nonzero(g_w_dec) == 0
    assert g_b_gate.abs().max() > 1e-3


def test_decoder_norm_weighted_l1_trains_free_decoder_rows() -> None:
    sae = make_sae(sparsity_penalty="decoder_norm_weighted", decoder_norm="free")
    x = make_batch()
    l1_loss = step(sae, x).losses["l1_loss"]
    (g_w_dec,) = grads_of(l1_loss, [sae.W_dec])
    assert g_w_dec.abs().max() > 1e-3

    # d/dW_i [lam * mean_b sum_i relu(pi_bi) ||W_i||] = lam * mean_b relu(pi_bi) * W_i / ||W_i||
    with torch.no_grad():
        gate_acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_gate)
        w_dec = sae.W_dec
        expected = L1 * gate_acts.mean(0)[:, None] * w_dec / w_dec.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(g_w_dec, expected, rtol=1e-9, atol=1e-12)


def test_l1_coefficient_comes_from_the_step_input() -> None:
    sae = make_sae()
    x = make_batch()
    half = step(sae, x, l1=0.5).losses["l1_loss"]
    full = step(sae, x, l1=1.0).losses["l1_loss"]
    torch.testing.assert_close(full, 2 * half)


# --- gate ------------------------------------------------------------------------------------


def test_heaviside_gate_passes_no_gradient_through_the_main_path() -> None:
    sae = make_sae()
    mse = step(sae, make_batch()).losses["mse_loss"]
    g_b_gate, g_r_mag, g_b_mag, g_w_enc = grads_of(
        mse, params(sae, ["b_gate", "r_mag", "b_mag", "W_enc"])
    )
    assert torch.count_nonzero(g_b_gate) == 0
    # The magnitude path does carry gradient (else the zero above proves nothing).
    for g in (g_r_mag, g_b_mag, g_w_enc):
        assert g.abs().max() > 1e-3


# --- the whole loss against the paper's formula -----------------------------------------------

CASES = [
    # (decoder_norm, aux_decoder, sparsity_penalty, apply_b_dec_to_input)
    pytest.param("free", "frozen", "l1", True, id="paper-formula-free-decoder"),
    pytest.param("unit", "frozen", "l1", True, id="paper-unit-decoder"),
    pytest.param("unit", "frozen", "l1", False, id="paper-unit-decoder-no-centring"),
    pytest.param("unit", "trainable", "l1", True, id="unit-trainable-aux"),
    pytest.param("free", "trainable", "decoder_norm_weighted", True, id="saelens-builtin-recipe"),
]


@pytest.mark.parametrize(("decoder_norm", "aux_decoder", "sparsity_penalty", "centre"), CASES)
def test_full_loss_gradient_matches_the_paper_formula(
    decoder_norm: str, aux_decoder: str, sparsity_penalty: str, centre: bool
) -> None:
    sae = make_sae(
        decoder_norm=decoder_norm,
        aux_decoder=aux_decoder,
        sparsity_penalty=sparsity_penalty,
        apply_b_dec_to_input=centre,
    )
    x = make_batch()
    out = step(sae, x)
    got = dict(zip(PARAM_NAMES, grads_of(out.loss, params(sae)), strict=True))

    leaves = reference_leaves(sae)  # after the forward pass (which may renormalise W_dec)
    ref_loss = reference_loss(
        leaves,
        x,
        L1,
        aux_frozen=aux_decoder == "frozen",
        weighted_l1=sparsity_penalty == "decoder_norm_weighted",
        apply_b_dec_to_input=centre,
    )
    torch.testing.assert_close(out.loss, ref_loss)
    expected = dict(
        zip(PARAM_NAMES, torch.autograd.grad(ref_loss, list(leaves.values())), strict=True)
    )

    if decoder_norm == "unit":
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE, dtype=torch.float64))
        # Removing the parallel component is not a no-op here (else the test proves nothing).
        assert (
            project_rows(expected["W_dec"], leaves["W_dec"]) - expected["W_dec"]
        ).abs().max() > 1e-3
        expected["W_dec"] = project_rows(expected["W_dec"], leaves["W_dec"])
        assert (got["W_dec"] * sae.W_dec).sum(-1).abs().max() < 1e-12
    for name in PARAM_NAMES:
        assert expected[name].abs().max() > 1e-4, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-7, atol=1e-10, msg=name)


def test_float32_gradients_match_the_paper_formula_to_1e5() -> None:
    sae = make_sae().to(torch.float32)
    x = make_batch().float()
    out = step(sae, x)
    got = grads_of(out.loss, params(sae))
    leaves = {n: t.double() for n, t in reference_leaves(sae).items()}
    ref = torch.autograd.grad(reference_loss(leaves, x.double(), L1), list(leaves.values()))
    ref_list = list(ref)
    ref_list[4] = project_rows(ref_list[4], leaves["W_dec"])
    for name, g, r in zip(PARAM_NAMES, got, ref_list, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5, msg=name)


def test_builtin_recipe_matches_saelens_gated_gradients() -> None:
    """The ablation switches set to SAELens's behaviour reproduce SAELens's own gradients."""
    ours = make_sae(
        aux_decoder="trainable", sparsity_penalty="decoder_norm_weighted", decoder_norm="free"
    )
    builtin = GatedTrainingSAE(
        GatedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float64", l1_coefficient=L1)
    )
    builtin.load_state_dict(ours.state_dict())
    x = make_batch()
    out_ours, out_builtin = step(ours, x), step(builtin, x)
    torch.testing.assert_close(out_ours.loss, out_builtin.loss)
    for key in ("mse_loss", "l1_loss", "auxiliary_reconstruction_loss"):
        torch.testing.assert_close(out_ours.losses[key], out_builtin.losses[key], msg=key)
    for name, a, b in zip(
        PARAM_NAMES,
        grads_of(out_ours.loss, params(ours)),
        grads_of(out_builtin.loss, params(builtin)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_paper_recipe_differs_from_saelens_gated_gradients() -> None:
    """The default (paper) recipe must NOT give SAELens's decoder gradients: the detach shows."""
    ours = make_sae()
    builtin = GatedTrainingSAE(
        GatedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float64", l1_coefficient=L1)
    )
    builtin.load_state_dict(ours.state_dict())
    x = make_batch()
    (g_ours,) = grads_of(step(ours, x).losses["auxiliary_reconstruction_loss"], [ours.b_dec])
    (g_builtin,) = grads_of(
        step(builtin, x).losses["auxiliary_reconstruction_loss"], [builtin.b_dec]
    )
    assert (g_ours - g_builtin).abs().max() > 1e-3


def test_fused_training_pass_equals_saelens_generic_pass() -> None:
    """The override runs the encoder once; SAELens's generic TrainingSAE.training_forward_pass
    (encode_with_hidden_pre, decode, calculate_aux_loss) must give the same losses and grads."""
    sae = make_sae()
    x = make_batch()
    fused = step(sae, x)
    generic = TrainingSAE.training_forward_pass(
        sae,
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": L1},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        ),
    )
    assert fused.losses.keys() == generic.losses.keys()
    for key in fused.losses:
        torch.testing.assert_close(fused.losses[key], generic.losses[key], msg=key)
    torch.testing.assert_close(fused.sae_out, generic.sae_out)
    torch.testing.assert_close(fused.hidden_pre, generic.hidden_pre)
    for name, a, b in zip(
        PARAM_NAMES,
        grads_of(fused.loss, params(sae)),
        grads_of(generic.loss, params(sae)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, msg=name)


# --- fused ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("x_shape", [(4, 3), (2, 4, 3)], ids=["2d", "3d"])
@pytest.mark.parametrize(
    "needs_grad",
    [(True, True, True), (False, True, True), (True, False, False), (False, True, False)],
    ids=["all", "params-only", "x-only", "bias-only"],
)
def test_centred_matmul_gradcheck(
    x_shape: tuple[int, ...], needs_grad: tuple[bool, bool, bool]
) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(*x_shape, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    inputs = tuple(
        t.requires_grad_(flag) for t, flag in zip((x, bias, weight), needs_grad, strict=True)
    )
    assert torch.autograd.gradcheck(centred_matmul, inputs)


@pytest.mark.parametrize("x_shape", [(7, 3), (2, 4, 3)], ids=["2d", "3d"])
def test_centred_matmul_matches_plain_expression(x_shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(*x_shape, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    upstream = torch.randn(*x_shape[:-1], 5, generator=gen, dtype=torch.float64)

    def run(fn: object) -> tuple[torch.Tensor, ...]:
        leaves = [t.clone().requires_grad_(True) for t in (x, bias, weight)]
        out = fn(*leaves)  # type: ignore[operator]
        return (out, *torch.autograd.grad(out, leaves, upstream))

    fused = run(centred_matmul)
    plain = run(lambda a, b, w: (a - b) @ w)
    for name, f, p in zip(("out", "x", "bias", "weight"), fused, plain, strict=True):
        assert f.shape == p.shape, name
        torch.testing.assert_close(f, p, rtol=1e-12, atol=1e-12, msg=name)


def test_centred_matmul_without_bias_is_plain_matmul() -> None:
    x, w = torch.randn(4, 3), torch.randn(3, 5)
    torch.testing.assert_close(centred_matmul(x, None, w), x @ w)


def test_tangent_gradient_is_identity_forward_and_projects_backward() -> None:
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(D_SAE, D_IN, generator=gen, dtype=torch.float64)
    weight = (weight * 3.0).requires_grad_(True)  # not unit norm: projection must normalise
    upstream = torch.randn(D_SAE, D_IN, generator=gen, dtype=torch.float64)
    out = tangent_gradient(weight)
    assert torch.equal(out, weight)
    (grad,) = torch.autograd.grad(out, [weight], upstream)
    torch.testing.assert_close(grad, project_rows(upstream, weight.detach()))
    assert (grad * weight).sum(-1).abs().max() < 1e-10


# --- run-time input normalisation -------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "constant_norm_rescale", "layer_norm"])
def test_aux_reconstruction_is_in_the_same_space_as_the_main_one(norm: str) -> None:
    """An SAE that reconstructs exactly (latents relu(x_c) and relu(-x_c), gates open exactly
    where magnitudes are positive) has zero MSE AND zero auxiliary loss: both reconstructions
    must be compared with the input in the same (normalised or raw) space."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cfg = GatedPaperTrainingSAEConfig(
            d_in=D_IN, d_sae=2 * D_IN, dtype="float64", normalize_activations=norm
        )
    sae = GatedPaperTrainingSAE(cfg)
    eye = torch.eye(D_IN, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        for name in ("b_gate", "r_mag", "b_mag", "b_dec"):
            getattr(sae, name).zero_()
    x = 10 * make_batch() + 3  # far from the normalised scale
    losses = step(sae, x).losses
    assert losses["mse_loss"].item() < 1e-6
    assert losses["auxiliary_reconstruction_loss"].item() < 1e-6
