"""gated_paper config classes: validation (one test per rule), warnings, SAELens dict paths."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
import torch
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig

from sae_gated_plugin import GatedPaperSAEConfig, GatedPaperTrainingSAEConfig

BASE: dict[str, Any] = {"d_in": 4, "d_sae": 8}
PAPER_SWITCHES = ("aux_decoder", "sparsity_penalty", "decoder_norm")


def make_training(**overrides: Any) -> GatedPaperTrainingSAEConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return GatedPaperTrainingSAEConfig(**{**BASE, **overrides})


# --- validation: one rule per test, the message names the field ---------------------------------

TRAINING_RULES = [
    pytest.param("d_in", {"d_in": 0}, id="d_in-zero"),
    pytest.param("d_in", {"d_in": -3}, id="d_in-negative"),
    pytest.param("d_sae", {"d_sae": 0}, id="d_sae-zero"),
    pytest.param("d_sae", {"d_sae": -1}, id="d_sae-negative"),
    pytest.param("d_sae", {"d_sae": "many"}, id="d_sae-wrong-type"),
    pytest.param("d_in", {"d_in": 2.5}, id="d_in-fractional"),
    pytest.param("l1_coefficient", {"l1_coefficient": -0.1}, id="l1_coefficient-negative"),
    pytest.param("l1_coefficient", {"l1_coefficient": "lots"}, id="l1_coefficient-wrong-type"),
    pytest.param("l1_warm_up_steps", {"l1_warm_up_steps": -1}, id="l1_warm_up_steps-negative"),
    pytest.param("aux_decoder", {"aux_decoder": "detached"}, id="aux_decoder-bad"),
    pytest.param("sparsity_penalty", {"sparsity_penalty": "l2"}, id="sparsity_penalty-bad"),
    pytest.param("decoder_norm", {"decoder_norm": "fixed"}, id="decoder_norm-bad"),
    pytest.param(
        "normalize_activations",
        {"normalize_activations": "rescale"},
        id="normalize_activations-bad",
    ),
    pytest.param(
        "reshape_activations", {"reshape_activations": "hook_q"}, id="reshape_activations-bad"
    ),
    pytest.param("apply_b_dec_to_input", {"apply_b_dec_to_input": "perhaps"}, id="apply_b_dec-bad"),
    pytest.param(
        "decoder_init_norm",
        {"decoder_init_norm": 0.0, "decoder_norm": "free"},
        id="decoder_init_norm-zero",
    ),
    pytest.param(
        "decoder_init_norm",
        {"decoder_init_norm": -1.0, "decoder_norm": "free"},
        id="decoder_init_norm-negative",
    ),
    pytest.param(
        "decoder_init_norm",
        {"decoder_init_norm": 0.1, "decoder_norm": "unit"},
        id="decoder_init_norm-contradicts-unit",
    ),
    pytest.param(
        "decoder_init_norm", {"decoder_init_norm": 0.1}, id="decoder_init_norm-default-unit"
    ),
    pytest.param("encoder_init_scale", {"encoder_init_scale": 0.0}, id="encoder_init_scale-zero"),
]


@pytest.mark.parametrize(("field", "bad"), TRAINING_RULES)
def test_training_config_rejects(field: str, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        make_training(**bad)


@pytest.mark.parametrize(("field", "bad"), TRAINING_RULES)
def test_training_config_rejects_through_from_dict(field: str, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        TrainingSAEConfig.from_dict({"architecture": "gated_paper", **BASE, **bad})


INFERENCE_RULES = [
    pytest.param("d_in", {"d_in": 0}, id="d_in-zero"),
    pytest.param("d_in", {"d_in": -2}, id="d_in-negative"),
    pytest.param("d_sae", {"d_sae": 0}, id="d_sae-zero"),
    pytest.param("d_sae", {"d_sae": -8}, id="d_sae-negative"),
    pytest.param("d_sae", {"d_sae": "many"}, id="d_sae-wrong-type"),
    pytest.param(
        "normalize_activations",
        {"normalize_activations": "rescale"},
        id="normalize_activations-bad",
    ),
]


@pytest.mark.parametrize(("field", "bad"), INFERENCE_RULES)
def test_inference_config_rejects(field: str, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        GatedPaperSAEConfig(**{**BASE, **bad})
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        SAEConfig.from_dict({"architecture": "gated_paper", **BASE, **bad})


@pytest.mark.parametrize(
    "good",
    [
        {"decoder_init_norm": None},
        {"decoder_init_norm": 1.0},
        {"decoder_init_norm": 0.1, "decoder_norm": "free"},
        {"l1_coefficient": 0.0, "l1_warm_up_steps": 0},
        {"normalize_activations": "constant_norm_rescale"},
        {"normalize_activations": "covariance_whitening"},
    ],
)
def test_training_config_accepts_edge_values(good: dict[str, Any]) -> None:
    cfg = make_training(**good)
    for key, value in good.items():
        assert getattr(cfg, key) == value


def test_paper_defaults() -> None:
    cfg = GatedPaperTrainingSAEConfig(**BASE)
    assert (cfg.aux_decoder, cfg.sparsity_penalty, cfg.decoder_norm) == ("frozen", "l1", "unit")
    assert cfg.decoder_init_norm == 1.0
    assert cfg.encoder_init_scale == 0.1
    assert cfg.apply_b_dec_to_input is True


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_the_gate_encoder_starts_as_the_scaled_decoder_transpose(scale: float) -> None:
    from sae_gated_plugin import GatedPaperTrainingSAE

    sae = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(**BASE, encoder_init_scale=scale))
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae))
    assert torch.equal(sae.W_enc, sae.W_dec.T * scale)


# --- warnings for the discouraged combinations --------------------------------------------------


def test_free_decoder_with_plain_l1_warns() -> None:
    with pytest.warns(UserWarning, match=r"sparsity_penalty='l1' with decoder_norm='free'"):
        GatedPaperTrainingSAEConfig(**BASE, decoder_norm="free", sparsity_penalty="l1")


def test_weighted_l1_with_frozen_aux_warns() -> None:
    with pytest.warns(UserWarning, match=r"aux_decoder='frozen'"):
        GatedPaperTrainingSAEConfig(
            **BASE, sparsity_penalty="decoder_norm_weighted", aux_decoder="frozen"
        )


@pytest.mark.parametrize(
    "combo",
    [
        {},
        {
            "decoder_norm": "free",
            "sparsity_penalty": "decoder_norm_weighted",
            "aux_decoder": "trainable",
        },
        {"aux_decoder": "trainable"},
        {"sparsity_penalty": "decoder_norm_weighted", "aux_decoder": "trainable"},
    ],
    ids=["paper", "saelens-builtin", "trainable-aux", "weighted-unit-trainable"],
)
def test_sound_combinations_do_not_warn(combo: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GatedPaperTrainingSAEConfig(**BASE, **combo)


# --- SAELens's dict paths -------------------------------------------------------------------------


def test_training_from_dict_builds_our_class_and_drops_unknown_keys() -> None:
    cfg = TrainingSAEConfig.from_dict(
        {"architecture": "gated_paper", **BASE, "aux_decoder": "trainable", "not_a_field": 1}
    )
    assert type(cfg) is GatedPaperTrainingSAEConfig
    assert (cfg.d_in, cfg.d_sae, cfg.aux_decoder) == (4, 8, "trainable")
    assert cfg.to_dict()["architecture"] == "gated_paper"


def test_inference_from_dict_builds_our_class() -> None:
    cfg = SAEConfig.from_dict({"architecture": "gated_paper", **BASE, "aux_decoder": "frozen"})
    assert type(cfg) is GatedPaperSAEConfig
    assert (cfg.d_in, cfg.d_sae) == (4, 8)
    assert cfg.to_dict()["architecture"] == "gated_paper"


def test_string_values_are_coerced_and_round_trip() -> None:
    raw = {
        "architecture": "gated_paper",
        "d_in": "3",
        "d_sae": "12",
        "l1_coefficient": "0.5",
        "l1_warm_up_steps": "10",
        "apply_b_dec_to_input": "false",
        "decoder_init_norm": "1",
    }
    cfg = TrainingSAEConfig.from_dict(raw)
    assert isinstance(cfg, GatedPaperTrainingSAEConfig)
    assert (cfg.d_in, cfg.d_sae, cfg.l1_warm_up_steps) == (3, 12, 10)
    assert all(type(v) is int for v in (cfg.d_in, cfg.d_sae, cfg.l1_warm_up_steps))
    assert cfg.l1_coefficient == 0.5 and type(cfg.l1_coefficient) is float
    assert cfg.apply_b_dec_to_input is False
    assert cfg.decoder_init_norm == 1.0

    dumped = json.loads(json.dumps(cfg.to_dict()))
    assert dumped["d_in"] == 3 and dumped["architecture"] == "gated_paper"
    again = TrainingSAEConfig.from_dict(dumped)
    assert type(again) is GatedPaperTrainingSAEConfig
    assert again.to_dict() == cfg.to_dict()


def test_inference_cfg_dict_is_gated_paper_without_training_fields() -> None:
    cfg = make_training(aux_decoder="trainable", l1_coefficient=3.0)
    assert cfg.architecture() == "gated_paper"
    assert cfg.get_inference_config_class() is GatedPaperSAEConfig
    inference = cfg.get_inference_sae_cfg_dict()
    assert inference["architecture"] == "gated_paper"
    for key in ("l1_coefficient", "l1_warm_up_steps", *PAPER_SWITCHES):
        assert key not in inference
    details = inference["metadata"]["training_architecture_details"]
    assert details["aux_decoder"] == "trainable" and details["l1_coefficient"] == 3.0
    assert inference["metadata"]["training_architecture"] == "gated_paper"
    rebuilt = SAEConfig.from_dict(json.loads(json.dumps(inference)))
    assert type(rebuilt) is GatedPaperSAEConfig
    assert (rebuilt.d_in, rebuilt.d_sae) == (cfg.d_in, cfg.d_sae)


def runner_dict(**sae: Any) -> dict[str, Any]:
    return {
        "sae": {"architecture": "gated_paper", **BASE, **sae},
        "logger": {"log_to_wandb": False},
        "checkpoint_path": None,
        "output_path": None,
        "verbose": False,
    }


def test_runner_config_from_dict_uses_our_training_config() -> None:
    runner = LanguageModelSAERunnerConfig.from_dict(
        runner_dict(l1_coefficient=5.0, decoder_norm="unit")
    )
    assert type(runner.sae) is GatedPaperTrainingSAEConfig
    assert runner.sae.l1_coefficient == 5.0
    assert runner.logger.log_to_wandb is False
    assert runner.logger.run_name is not None and runner.logger.run_name.startswith("gated_paper")
    dumped = runner.to_dict()
    assert dumped["sae"]["architecture"] == "gated_paper"
    again = LanguageModelSAERunnerConfig.from_dict(json.loads(json.dumps(dumped)))
    assert type(again.sae) is GatedPaperTrainingSAEConfig
    assert again.sae.to_dict() == runner.sae.to_dict()


def test_runner_config_from_dict_validates_our_fields() -> None:
    with pytest.raises(ValueError, match=r"\baux_decoder\b"):
        LanguageModelSAERunnerConfig.from_dict(runner_dict(aux_decoder="sometimes"))
