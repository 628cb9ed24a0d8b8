"""Saving and loading gated_paper SAEs through SAELens's own disk format and loaders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE
from safetensors.torch import load_file

from sae_gated_plugin import (
    GatedPaperSAE,
    GatedPaperSAEConfig,
    GatedPaperTrainingSAE,
    GatedPaperTrainingSAEConfig,
)

D_IN = 8
D_SAE = 16
PARAM_NAMES = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")


def trained_looking_sae(seed: int = 0, **overrides: Any) -> GatedPaperTrainingSAE:
    """A training SAE with random parameters and unit decoder rows, as after any optimiser
    step (arch/unit_norm.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cfg = GatedPaperTrainingSAEConfig(
            **{"d_in": D_IN, "d_sae": D_SAE, "l1_coefficient": 2.5, **overrides}
        )
    sae = GatedPaperTrainingSAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in PARAM_NAMES:
            param = getattr(sae, name)
            param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    sae.normalize_decoder_rows()
    return sae


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(32, D_IN, generator=torch.Generator().manual_seed(seed))


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def assert_same_function(loaded: torch.nn.Module, live: torch.nn.Module, x: torch.Tensor) -> None:
    """The same features and reconstruction (the inference class computes what training does)."""
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), live.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x), live(x), atol=1e-5, rtol=1e-5)


def live_state(sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def test_training_save_model_round_trip(tmp_path: Path) -> None:
    sae = trained_looking_sae()
    before = live_state(sae)
    weights_path, cfg_path = sae.save_model(tmp_path)
    for key, value in sae.state_dict().items():  # saving never changes the live model
        assert torch.equal(value, before[key]), key

    cfg_json = json.loads(cfg_path.read_text())
    assert cfg_json["architecture"] == "gated_paper"
    assert cfg_json["aux_decoder"] == "frozen" and cfg_json["l1_coefficient"] == 2.5
    saved = load_file(weights_path)
    assert sorted(saved) == sorted(PARAM_NAMES)
    torch.testing.assert_close(saved["W_dec"].norm(dim=1), torch.ones(D_SAE))

    for loader in (TrainingSAE.load_from_disk, GatedPaperTrainingSAE.load_from_disk):
        loaded = loader(tmp_path)
        assert type(loaded) is GatedPaperTrainingSAE
        assert type(loaded.cfg) is GatedPaperTrainingSAEConfig
        assert loaded.cfg.to_dict() == sae.cfg.to_dict()
        for name in PARAM_NAMES:
            assert torch.equal(saved[name], getattr(loaded, name).detach()), name
        assert_same_function(loaded, sae, inputs())


def test_save_inference_model_loads_as_gated_paper_sae(tmp_path: Path) -> None:
    sae = trained_looking_sae(seed=2)
    weights_path, cfg_path = sae.save_inference_model(tmp_path)

    cfg_json = json.loads(cfg_path.read_text())
    assert cfg_json["architecture"] == "gated_paper"
    assert "aux_decoder" not in cfg_json
    saved = load_file(weights_path)
    torch.testing.assert_close(saved["W_dec"].norm(dim=1), torch.ones(D_SAE))

    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is GatedPaperSAE
    assert type(loaded.cfg) is GatedPaperSAEConfig
    assert (loaded.cfg.d_in, loaded.cfg.d_sae) == (D_IN, D_SAE)
    for name in PARAM_NAMES:
        assert torch.equal(saved[name], getattr(loaded, name).detach()), name
    x = inputs(3)
    assert_same_function(loaded, sae, x)
    assert loaded.encode(x).count_nonzero() > 0


def test_unit_rows_are_saved_bit_exactly(tmp_path: Path) -> None:
    """Rows renormalised after the last step are saved as they are: a reload is identical."""
    sae = trained_looking_sae(seed=9)
    sae.normalize_decoder_rows()
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert_same_tensors(loaded, sae)


def test_saving_writes_the_weights_as_they_are(tmp_path: Path) -> None:
    """Saving neither changes the live model nor rescales rows: an SAE whose rows were moved
    off unit norm by hand is saved, and reloads, exactly as it is (SAELens's save contract)."""
    sae = trained_looking_sae(seed=4)
    with torch.no_grad():
        sae.W_dec.mul_(1.01)
    before = live_state(sae)
    sae.save_inference_model(tmp_path)
    for key, value in sae.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert_same_tensors(SAE.load_from_disk(tmp_path), sae)


def test_free_decoder_rows_are_saved_as_they_are(tmp_path: Path) -> None:
    sae = trained_looking_sae(
        seed=5,
        decoder_norm="free",
        sparsity_penalty="decoder_norm_weighted",
        aux_decoder="trainable",
    )
    with torch.no_grad():
        sae.W_dec.mul_(1 + 0.01 * torch.rand(D_SAE, 1))  # free rows drift in training
    before = sae.W_dec.detach().clone()
    sae.save_inference_model(tmp_path)
    saved = load_file(tmp_path / "sae_weights.safetensors")
    assert torch.equal(saved["W_dec"], before)
    assert (saved["W_dec"].norm(dim=1) - 1).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_load_with_dtype_override(tmp_path: Path, dtype: str) -> None:
    sae = trained_looking_sae(seed=6)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path, dtype=dtype)
    assert type(loaded) is GatedPaperSAE
    assert loaded.cfg.dtype == dtype
    assert loaded.W_enc.dtype == getattr(torch, dtype)
    saved = load_file(tmp_path / "sae_weights.safetensors")
    torch.testing.assert_close(loaded.W_dec.detach().float(), saved["W_dec"], atol=1e-2, rtol=1e-2)


def test_load_from_disk_with_fold_W_dec_norm_is_a_no_op_on_unit_rows(tmp_path: Path) -> None:
    sae = trained_looking_sae(seed=7)
    sae.save_inference_model(tmp_path)
    plain = SAE.load_from_disk(tmp_path)
    folded = SAE.load_from_disk(tmp_path, fold_W_dec_norm=True)
    x = inputs(8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), plain(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(folded.encode(x), plain.encode(x), atol=1e-6, rtol=1e-6)
