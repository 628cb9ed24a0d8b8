"""The ``gated_paper`` SAE: the Gated SAE exactly as arXiv:2404.16014 defines it.

Parameters and file format are SAELens's ``gated`` ones (``W_enc`` = W_gate, ``b_gate``,
``r_mag``, ``b_mag``, ``W_dec``, ``b_dec``), so conversion either way is a rename of the
architecture. What differs is the training pass (see ``GatedPaperTrainingSAE``) and that the
encoder does one matmul for both paths: x_c W_mag = (x_c W_gate) * exp(r_mag).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens.saes.gated_sae import GatedSAE, GatedTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

from sae_gated_plugin.arch.artifacts import WEIGHTS_FILENAME, check_weights
from sae_gated_plugin.arch.config import GatedPaperSAEConfig, GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.ops import centred_matmul, hold_unit_decoder_rows, tangent_gradient
from sae_gated_plugin.arch.registry import register_if_deferred
from sae_gated_plugin.arch.sparse import LatentParts, sparse_training_forward_pass

UNIT_NORM_TOLERANCE = 1e-5
"""Decoder rows whose norm is within this of 1 are saved as they are (no fold needed)."""


class GatedPreActivations(NamedTuple):
    """The two pre-activations of a gated encoder and the features they make."""

    pi_gate: torch.Tensor
    """Gate pre-activation x_c W_gate + b_gate; a latent fires where it is > 0."""
    magnitude: torch.Tensor
    """Magnitude pre-activation x_c W_mag + b_mag (after ``hook_sae_acts_pre``)."""
    feature_acts: torch.Tensor
    """f = 1[pi_gate > 0] * ReLU(magnitude) (after ``hook_sae_acts_post``)."""


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

    def __init__(self, cfg: GatedPaperSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        return _gated_features(self, sae_in @ self.W_enc).feature_acts

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # Every SAELens load path (from_pretrained, load_from_disk) calls this before
        # load_state_dict: check names, shapes and finite values here, so a corrupted download
        # raises CorruptArtifactError naming the parameter instead of a bare torch error.
        # SAELens's loaders cast the weights to the requested dtype (which may differ from the
        # file's), so a dtype difference is not corruption: compare in the config's dtype.
        cfg = {
            "architecture": self.cfg.architecture(),
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": self.cfg.dtype,
        }
        dtype = self.dtype
        as_loaded = {
            name: tensor.to(dtype) if tensor.is_floating_point() else tensor
            for name, tensor in state_dict.items()
        }
        check_weights(cfg, as_loaded, Path(WEIGHTS_FILENAME))
        super().process_state_dict_for_loading(state_dict)


class GatedPaperTrainingSAE(GatedTrainingSAE):
    """Training Gated SAE with the paper's loss and decoder constraint.

    L = ||x - x_hat(f)||^2 + lambda ||ReLU(pi_gate)||_1 + ||x - x_hat_frozen(ReLU(pi_gate))||^2,
    with ``aux_decoder``, ``sparsity_penalty`` and ``decoder_norm`` switching each paper choice
    to SAELens's built-in behaviour for ablations. With ``decoder_norm="unit"`` the rows of
    ``W_dec`` are renormalised before every training forward pass and before every save, and
    the gradient component parallel to each row is removed in the backward pass.
    """

    cfg: GatedPaperTrainingSAEConfig

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

    def _decoder_weight(self) -> torch.Tensor:
        """``W_dec`` as the loss should see it: with the tangent-space gradient when unit norm."""
        if self.holds_unit_decoder and torch.is_grad_enabled() and self.W_dec.requires_grad:
            return tangent_gradient(self.W_dec)
        return self.W_dec

    def _uncentred_input(self, x: torch.Tensor) -> torch.Tensor:
        # SAELens's process_sae_in minus its final "- b_dec": the centring is fused into the
        # encoder matmul (ops.centred_matmul) so that b_dec's gradient costs no extra matmul.
        sae_in = self.reshape_fn_in(x.to(self.dtype))
        sae_in = self.hook_sae_input(sae_in)
        return self.run_time_activation_norm_fn_in(sae_in)

    def pre_activations(self, x: torch.Tensor) -> GatedPreActivations:
        """Gate and magnitude pre-activations and features for input ``x``."""
        return self._pre_activations_of(self._uncentred_input(x))

    def _pre_activations_of(self, sae_in: torch.Tensor) -> GatedPreActivations:
        # sae_in: the input after SAELens's run-time normalisation, before centring.
        return _gated_features(self, self._encoder_product(sae_in))

    def _encoder_product(self, sae_in: torch.Tensor) -> torch.Tensor:
        centring = self._encoder_centring() if self.cfg.apply_b_dec_to_input else None
        return centred_matmul(sae_in, centring, self.W_enc)

    holds_all_latents: bool = True
    """False for a latent shard (run/latent_sharding.py), whose sums over latents span ranks:
    the sparse step (arch/sparse.py) then adds its parts through ``_latent_sum``."""

    def _encoder_centring(self) -> torch.Tensor:
        """The bias subtracted from the input before encoding (``b_dec``). A seam for latent
        sharding, where each rank's encoder sees only its own latents' share of its gradient."""
        return self.b_dec

    def _latent_sum(self, partial: torch.Tensor) -> torch.Tensor:
        """A sum over latents, given this module's part of it (all of it here). A seam for
        latent sharding, where each rank holds some of the latents and the parts are added."""
        return partial

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = self.pre_activations(x)
        return acts.feature_acts, acts.magnitude

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out = self._latent_sum(feature_acts @ self._decoder_weight()) + self.b_dec
        sae_out = self.hook_sae_recons(sae_out)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)

    def gated_auxiliary_losses(
        self, sae_in: torch.Tensor, pi_gate: torch.Tensor, l1_coefficient: float
    ) -> dict[str, torch.Tensor]:
        """The sparsity and auxiliary reconstruction terms, given the gate pre-activation."""
        gate_acts = torch.relu(pi_gate)
        if self.cfg.sparsity_penalty == "l1":
            penalty = self._latent_sum(gate_acts.sum(dim=-1).mean())
        else:
            weighted = gate_acts * self._decoder_weight().norm(dim=-1)
            penalty = self._latent_sum(weighted.sum(dim=-1).mean())
        if self.cfg.aux_decoder == "frozen":
            aux_w_dec, aux_b_dec = self.W_dec.detach(), self.b_dec.detach()
        else:
            aux_w_dec, aux_b_dec = self._decoder_weight(), self.b_dec
        via_gate = self._latent_sum(gate_acts @ aux_w_dec) + aux_b_dec
        aux_recon = (via_gate - sae_in).pow(2).sum(dim=-1).mean()
        return {"l1_loss": l1_coefficient * penalty, "auxiliary_reconstruction_loss": aux_recon}

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        # The auxiliary reconstruction lives where pi_gate does: in the normalised input space.
        sae_in = self._uncentred_input(step_input.sae_in)
        pi_gate = self._pre_activations_of(sae_in).pi_gate
        return self.gated_auxiliary_losses(sae_in, pi_gate, step_input.coefficients["l1"])

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        # Same result as SAELens's TrainingSAE.training_forward_pass, but the encoder runs once:
        # the auxiliary terms reuse pi_gate instead of recomputing it (calculate_aux_loss).
        if self.holds_unit_decoder:
            self.normalize_decoder_rows()
        sae_in = self._uncentred_input(step_input.sae_in)
        encoder_pre = self._encoder_product(sae_in)
        # --- sparse step (arch/sparse.py): the same losses and gradients from the open latents
        # only, when few are open; None means: run the dense reference path below.
        parts = (
            None
            if self.holds_all_latents
            else LatentParts(self._latent_sum, self._encoder_centring)
        )
        sparse = sparse_training_forward_pass(
            self, step_input, sae_in, encoder_pre, self._decoder_weight, parts=parts
        )
        if sparse is not None:
            return sparse
        # --- end of the sparse step
        acts = _gated_features(self, encoder_pre)
        sae_out = self.decode(acts.feature_acts)  # decode undoes the run-time normalisation
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        losses = {"mse_loss": mse_loss}
        losses.update(
            self.gated_auxiliary_losses(sae_in, acts.pi_gate, step_input.coefficients["l1"])
        )
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=acts.feature_acts,
            hidden_pre=acts.magnitude,
            loss=sum(losses.values()),
            losses=losses,
        )

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        if not self.holds_unit_decoder:
            super().fold_activation_norm_scaling_factor(scaling_factor)
            return
        # SAELens folds the factor into W_dec, which would break unit-norm rows. Fold it into
        # the features instead: dividing b_gate, b_mag and b_dec by s scales both
        # pre-activations by 1/s (same gate signs, magnitudes / s) and W_dec stays unit norm.
        self.b_gate.data /= scaling_factor
        self.b_mag.data /= scaling_factor
        self.b_dec.data /= scaling_factor
        self.cfg.normalize_activations = "none"

    @override
    @torch.no_grad()
    def fold_activation_whitening(
        self,
        mean: torch.Tensor,
        whitening_matrix: torch.Tensor,
        unwhitening_matrix: torch.Tensor,
    ) -> None:
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)
        if self.holds_unit_decoder:
            # W_dec @ M^-1 has rows of any norm: move the norms into the encoder side.
            self.fold_W_dec_norm()

    @contextmanager
    def _unit_rows_for_saving(self) -> Iterator[None]:
        """Fold any drift of the decoder row norms into the encoder for the duration of a save
        (unit rows on disk, same outputs), then put the live parameters back exactly: saving
        never changes the model being trained."""
        norms = self.W_dec.detach().norm(dim=-1)
        if not self.holds_unit_decoder or bool(((norms - 1).abs() < UNIT_NORM_TOLERANCE).all()):
            # Rows renormalised after the last step are unit to rounding: saving the weights as
            # they are keeps a reload bit-identical to the live model.
            yield
            return
        live = {name: param.detach().clone() for name, param in self.named_parameters()}
        try:
            self.fold_W_dec_norm()
            yield
        finally:
            with torch.no_grad():
                for name, param in self.named_parameters():
                    param.copy_(live[name])

    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        with self._unit_rows_for_saving():
            return super().save_model(path)

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        with self._unit_rows_for_saving():
            return super().save_inference_model(path)


# Last: if `import sae_lens` above fired the autoload, registration waited for these classes.
register_if_deferred(__name__)
