"""The ``gated_paper`` SAE: the Gated SAE exactly as arXiv:2404.16014 defines it.

Parameters and file format are SAELens's ``gated`` ones, so conversion either way is a rename;
what differs is the training pass and that one encoder product serves both paths:
x_c W_mag = (x_c W_gate) * exp(r_mag).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens.saes.gated_sae import GatedSAE, GatedTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

from sae_gated_plugin.arch.artifacts import WEIGHTS_FILENAME, check_weights
from sae_gated_plugin.arch.config import GatedPaperSAEConfig, GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.kernels import centred_matmul
from sae_gated_plugin.arch.sparse import sparse_training_forward_pass
from sae_gated_plugin.arch.unit_norm import hold_unit_decoder_rows, tangent_gradient


class GatedPreActivations(NamedTuple):
    """The two pre-activations of a gated encoder and the features they make (after hooks)."""

    pi_gate: torch.Tensor  # x_c W_gate + b_gate; a latent fires where it is > 0
    magnitude: torch.Tensor  # x_c W_mag + b_mag
    feature_acts: torch.Tensor  # f = 1[pi_gate > 0] * ReLU(magnitude)


def _gated_features(
    sae: GatedPaperSAE | GatedPaperTrainingSAE, encoder_pre: torch.Tensor
) -> GatedPreActivations:
    """Both paths from one encoder product ``x_c @ W_gate`` (no d_in x d_sae temporary)."""
    pi_gate = encoder_pre + sae.b_gate
    magnitude = sae.hook_sae_acts_pre(encoder_pre * sae.r_mag.exp() + sae.b_mag)
    features = torch.where(pi_gate > 0, sae.activation_fn(magnitude), 0.0)
    return GatedPreActivations(pi_gate, magnitude, sae.hook_sae_acts_post(features))


class GatedPaperSAE(GatedSAE):
    """Inference Gated SAE of the paper; outputs equal SAELens's ``gated`` on the same weights."""

    cfg: GatedPaperSAEConfig

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        return _gated_features(self, sae_in @ self.W_enc).feature_acts

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # Every SAELens load path calls this before load_state_dict: a corrupted download then
        # raises CorruptArtifactError naming the parameter. The loaders cast the weights to the
        # requested dtype, so a dtype difference is not corruption: compare in the config's.
        cfg = {name: getattr(self.cfg, name) for name in ("d_in", "d_sae", "dtype")}
        cfg["architecture"] = self.cfg.architecture()
        as_loaded = {
            name: tensor.to(self.dtype) if tensor.is_floating_point() else tensor
            for name, tensor in state_dict.items()
        }
        check_weights(cfg, as_loaded, Path(WEIGHTS_FILENAME))
        super().process_state_dict_for_loading(state_dict)


class GatedPaperTrainingSAE(GatedTrainingSAE):
    """Training Gated SAE with the paper's loss (``reference_pass``) and decoder constraint;
    config switches turn each of the paper's choices into SAELens's built-in one, for ablations."""

    cfg: GatedPaperTrainingSAEConfig

    # False for a latent shard, whose latent_sum and encoder_centring add every rank's part.
    holds_all_latents: bool = True

    def __init__(self, cfg: GatedPaperTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        hold_unit_decoder_rows(self)

    @property
    def holds_unit_decoder(self) -> bool:
        """Whether decoder rows are constrained to unit norm (the paper's recipe)."""
        return self.cfg.decoder_norm == "unit"

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        if self.holds_unit_decoder:
            self.normalize_decoder_rows()
            self.W_enc.data = (self.W_dec.data.T * self.cfg.encoder_init_scale).contiguous()

    @torch.no_grad()
    def normalize_decoder_rows(self) -> None:
        """Rescale every decoder row (one per latent) to unit norm, in place."""
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # ---- seams: the sparse pass and latent shards use these
    def decoder_weight(self) -> torch.Tensor:
        """``W_dec`` as the loss sees it: with the tangent-space gradient when held unit."""
        if self.holds_unit_decoder and torch.is_grad_enabled() and self.W_dec.requires_grad:
            return tangent_gradient(self.W_dec)
        return self.W_dec

    def encoder_centring(self) -> torch.Tensor:
        """The bias subtracted from the input before encoding (``b_dec`` here)."""
        return self.b_dec

    def latent_sum(self, partial: torch.Tensor) -> torch.Tensor:
        """A sum over latents, given this module's part of it (all of it here)."""
        return partial

    def normalised_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` after SAELens's run-time normalisation, before centring (the centring is in the
        encoder product, whose backward then costs no extra matmul for ``b_dec``)."""
        sae_in = self.reshape_fn_in(x.to(self.dtype))
        return self.run_time_activation_norm_fn_in(self.hook_sae_input(sae_in))

    def encoder_product(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``x_c @ W_gate`` for the normalised input: both paths' pre-activations come from it."""
        centring = self.encoder_centring() if self.cfg.apply_b_dec_to_input else None
        return centred_matmul(sae_in, centring, self.W_enc)

    def pre_activations(self, x: torch.Tensor) -> GatedPreActivations:
        """Gate and magnitude pre-activations and features for input ``x``."""
        return _gated_features(self, self.encoder_product(self.normalised_input(x)))

    # ---- the paper's loss
    def sparsity_penalty(self, gate_acts: torch.Tensor) -> torch.Tensor:
        """||ReLU(pi_gate)||_1 per input, averaged (weighted by decoder row norms if configured)."""
        if self.cfg.sparsity_penalty == "decoder_norm_weighted":
            gate_acts = gate_acts * self.decoder_weight().norm(dim=-1)
        return self.latent_sum(gate_acts.sum(dim=-1).mean())

    def auxiliary_reconstruction(self, gate_acts: torch.Tensor) -> torch.Tensor:
        """x_hat_frozen(ReLU(pi_gate)): the gate path decoded by a copy of the decoder that no
        gradient reaches (``aux_decoder="frozen"``), or by the decoder itself."""
        if self.cfg.aux_decoder == "frozen":
            w_dec, b_dec = self.W_dec.detach(), self.b_dec.detach()
        else:
            w_dec, b_dec = self.decoder_weight(), self.b_dec
        return self.latent_sum(gate_acts @ w_dec) + b_dec

    def reference_pass(
        self, step_input: TrainStepInput, sae_in: torch.Tensor, encoder_pre: torch.Tensor
    ) -> TrainStepOutput:
        """The paper's loss (its equation 8), dense, each term under SAELens's name:

            mse_loss                      = ||x - x_hat(f(x))||^2
            l1_loss                       = lambda ||ReLU(pi_gate(x))||_1
            auxiliary_reconstruction_loss = ||x - x_hat_frozen(ReLU(pi_gate(x)))||^2

        ``sae_in`` is the normalised input and ``encoder_pre`` its ``encoder_product``.
        """
        acts = _gated_features(self, encoder_pre)
        x_hat = self.decode(acts.feature_acts)  # decode undoes the run-time normalisation
        gate_acts = torch.relu(acts.pi_gate)
        aux_error = self.auxiliary_reconstruction(gate_acts) - sae_in
        losses = {
            "mse_loss": self.mse_loss_fn(x_hat, step_input.sae_in).sum(dim=-1).mean(),
            "l1_loss": step_input.coefficients["l1"] * self.sparsity_penalty(gate_acts),
            "auxiliary_reconstruction_loss": aux_error.pow(2).sum(dim=-1).mean(),
        }
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=x_hat,
            feature_acts=acts.feature_acts,
            hidden_pre=acts.magnitude,
            loss=sum(losses.values()),
            losses=losses,
        )

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        sae_in = self.normalised_input(step_input.sae_in)
        encoder_pre = self.encoder_product(sae_in)
        sparse = sparse_training_forward_pass(self, step_input, sae_in, encoder_pre)
        return self.reference_pass(step_input, sae_in, encoder_pre) if sparse is None else sparse

    # ---- SAELens's hooks
    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = self.pre_activations(x)
        return acts.feature_acts, acts.magnitude

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out = self.latent_sum(feature_acts @ self.decoder_weight()) + self.b_dec
        sae_out = self.run_time_activation_norm_fn_out(self.hook_sae_recons(sae_out))
        return self.reshape_fn_out(sae_out, self.d_head)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        # The auxiliary reconstruction lives where pi_gate does: in the normalised input space.
        sae_in = self.normalised_input(step_input.sae_in)
        losses = self.reference_pass(step_input, sae_in, self.encoder_product(sae_in)).losses
        return {name: losses[name] for name in ("l1_loss", "auxiliary_reconstruction_loss")}

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        if not self.holds_unit_decoder:
            super().fold_activation_norm_scaling_factor(scaling_factor)
            return
        # SAELens folds the factor into W_dec, breaking unit rows. Dividing the biases by s
        # instead scales both pre-activations by 1/s: same gate signs, magnitudes / s.
        for bias in (self.b_gate, self.b_mag, self.b_dec):
            bias.data /= scaling_factor
        self.cfg.normalize_activations = "none"

    @override
    @torch.no_grad()
    def fold_activation_whitening(
        self, mean: torch.Tensor, whitening_matrix: torch.Tensor, unwhitening_matrix: torch.Tensor
    ) -> None:
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)
        if self.holds_unit_decoder:
            # W_dec @ M^-1 has rows of any norm: move the norms into the encoder side.
            self.fold_W_dec_norm()
