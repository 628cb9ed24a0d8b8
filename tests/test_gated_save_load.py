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
    """A training SAE with random parameters and decoder rows a little off unit norm, as they
    are between an optimizer step and the next renormalisation."""
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
        sae.W_dec.mul_(1 + 0.01 * torch.rand(D_SAE, 1, generator=gen))
    return sae


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(32, D_IN, generator=torch.Generator().manual_seed(seed))


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def test_training_save_model_round_trip(tmp_path: Path) -> None:
    sae = trained_looking_sae()
    weights_path, cfg_path = sae.save_model(tmp_path)

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
        assert_same_tensors(loaded, sae)
        x = inputs()
        with torch.no_grad():
            assert torch.equal(loaded(x), sae(x))


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
    assert_same_tensors(loaded, sae)
    for name in PARAM_NAMES:
        assert torch.equal(saved[name], getattr(loaded, name).detach()), name
    x = inputs(3)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
    assert loaded.encode(x).count_nonzero() > 0


def test_saving_renormalises_drifted_rows_in_memory_too(tmp_path: Path) -> None:
    """What is saved is what stays in memory: no hidden difference between the two."""
    sae = trained_looking_sae(seed=4)
    assert (sae.W_dec.detach().norm(dim=1) - 1).abs().max() > 1e-4  # starts off unit norm
    sae.save_inference_model(tmp_path)
    torch.testing.assert_close(sae.W_dec.detach().norm(dim=1), torch.ones(D_SAE))
    assert torch.equal(load_file(tmp_path / "sae_weights.safetensors")["W_dec"], sae.W_dec)


def test_free_decoder_rows_are_saved_as_they_are(tmp_path: Path) -> None:
    sae = trained_looking_sae(
        seed=5,
        decoder_norm="free",
        sparsity_penalty="decoder_norm_weighted",
        aux_decoder="trainable",
    )
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
    torch.testing.assert_close(
        loaded.W_dec.detach().float(), sae.W_dec.detach(), atol=1e-2, rtol=1e-2
    )


def test_load_from_disk_with_fold_W_dec_norm_is_a_no_op_on_unit_rows(tmp_path: Path) -> None:
    sae = trained_looking_sae(seed=7)
    sae.save_inference_model(tmp_path)
    plain = SAE.load_from_disk(tmp_path)
    folded = SAE.load_from_disk(tmp_path, fold_W_dec_norm=True)
    x = inputs(8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), plain(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(folded.encode(x), plain.encode(x), atol=1e-6, rtol=1e-6)
