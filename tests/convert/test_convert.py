"""``sae-gated convert``: exact conversions gated_paper <-> gated, -> jumprelu, and from
dictionary_learning GatedAutoEncoder checkpoints, checked on random and on real SmolLM2
activations, and every refusal."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.gated_sae import GatedSAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from safetensors.torch import load_file, save_file

from sae_gated_plugin import GatedPaperSAE, GatedPaperSAEConfig, hub
from sae_gated_plugin.cli import EXIT_INVALID, EXIT_OK, main
from sae_gated_plugin.convert import convert_sae, jumprelu_parameters
from sae_gated_plugin.convert.folders import PROVENANCE_KEY
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.hub import card as model_card

D_IN, D_SAE = 24, 48
METADATA = {
    "model_name": "smollm2-135m",
    "hook_name": "blocks.2.hook_resid_post",
    "dataset_path": "wiki-summaries",
    "context_size": 64,
    "prepend_bos": True,
    "seqpos_slice": [3, None],
}


def gated_paper_sae(
    d_in: int = D_IN,
    d_sae: int = D_SAE,
    seed: int = 0,
    dtype: str = "float32",
    normalize_activations: str = "none",
) -> GatedPaperSAE:
    """A random gated_paper SAE whose thresholds b_mag - exp(r_mag) b_gate have both signs."""
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    cfg = GatedPaperSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype,
        normalize_activations=normalize_activations,  # type: ignore[arg-type]
        metadata=SAEMetadata(**METADATA),
    )
    sae = GatedPaperSAE(cfg)
    with torch.no_grad():
        w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T + 0.3 * torch.randn(d_in, d_sae, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
        sae.b_gate.copy_(torch.randn(d_sae, generator=gen))
        sae.r_mag.copy_(torch.rand(d_sae, generator=gen) * 2 - 1)
        sae.b_mag.copy_(torch.randn(d_sae, generator=gen))
    return sae


def save(sae: SAE[Any], folder: Path, sparsity: bool = False) -> Path:
    sae.save_model(folder)
    if sparsity:
        save_file(
            {"sparsity": torch.linspace(-6, 0, sae.cfg.d_sae)}, folder / "sparsity.safetensors"
        )
    return folder


def thresholds(sae: GatedPaperSAE) -> torch.Tensor:
    return (sae.b_mag - sae.r_mag.exp() * sae.b_gate).detach()


def cli(*args: Any) -> int:
    return main(["convert", *map(str, args)])


def cfg_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "cfg.json").read_text())


def gate_pre_activation(sae: GatedPaperSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_gate and the scale of its rounding, ||x_c|| ||W_gate[:, i]|| + |b_gate[i]|."""
    x_c = sae.process_sae_in(x)
    pi_gate = x_c @ sae.W_enc + sae.b_gate
    scale = x_c.norm(dim=-1, keepdim=True) * sae.W_enc.norm(dim=0) + sae.b_gate.abs()
    return pi_gate.detach(), scale.detach()


def assert_features_match(
    f_new: torch.Tensor, f_ref: torch.Tensor, pi_gate: torch.Tensor, gate_scale: torch.Tensor
) -> torch.Tensor:
    """Features equal to float tolerance, except (rarely) where the gate pre-activation is
    within rounding of zero and the two computations may open different gates.

    Returns the rows where every feature agrees (to compare reconstructions on).
    """
    atol = 1e-5 * max(1.0, float(f_ref.abs().max()))
    close = torch.isclose(f_new, f_ref, rtol=1e-5, atol=atol)
    boundary = pi_gate.abs() <= 1e-4 * gate_scale
    assert (~close & ~boundary).sum() == 0
    assert (~close).float().mean() <= 1e-4
    rows = close.all(dim=-1)
    assert rows.float().mean() > 0.99
    return rows


def assert_reconstructions_match(new: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal to float tolerance, relative to the size of the reconstructions."""
    atol = 1e-5 * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=atol)


# --------------------------------------------------------------------------- gated_paper <-> gated


def test_gated_paper_to_gated_and_back_is_bit_exact(tmp_path: Path) -> None:
    src = save(gated_paper_sae(), tmp_path / "src", sparsity=True)
    assert cli(src, tmp_path / "gated", "--to", "gated") == EXIT_OK
    assert cli(tmp_path / "gated", tmp_path / "back", "--to", "gated_paper") == EXIT_OK

    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        original = (src / name).read_bytes()
        assert (tmp_path / "gated" / name).read_bytes() == original
        assert (tmp_path / "back" / name).read_bytes() == original
    assert cfg_of(tmp_path / "back") == cfg_of(src)
    # The gated form is what `sae-gated push --portable` publishes.
    assert cfg_of(tmp_path / "gated") == hub.portable_cfg(cfg_of(src))
    assert PROVENANCE_KEY == model_card.PORTABLE_METADATA_KEY

    original = SAE.load_from_disk(src)
    gated = SAE.load_from_disk(tmp_path / "gated")
    back = SAE.load_from_disk(tmp_path / "back")
    assert type(gated) is GatedSAE and type(back) is GatedPaperSAE
    x = torch.randn(200, D_IN) * 2
    with torch.no_grad():
        f_original, f_gated, f_back = original.encode(x), gated.encode(x), back.encode(x)
        assert torch.equal(f_back, f_original)
        rows = assert_features_match(f_gated, f_original, *gate_pre_activation(original, x))
        recon = gated.decode(f_gated)[rows]
        assert_reconstructions_match(recon, original.decode(f_original)[rows])


def test_saelens_gated_to_gated_paper_and_back_restores_the_cfg(tmp_path: Path) -> None:
    sae = gated_paper_sae(seed=1)
    gated_cfg = {**sae.cfg.to_dict(), "architecture": "gated"}
    src = save(sae, tmp_path / "src")
    (src / "cfg.json").write_text(json.dumps(gated_cfg))
    assert cli(src, tmp_path / "paper", "--to", "gated_paper") == EXIT_OK
    paper_cfg = cfg_of(tmp_path / "paper")
    assert paper_cfg["architecture"] == "gated_paper"
    assert paper_cfg["metadata"][PROVENANCE_KEY]["trained_architecture"] == "gated"
    assert model_card.form_of(paper_cfg) == model_card.FORM_PLUGIN
    assert cli(tmp_path / "paper", tmp_path / "again", "--to", "gated") == EXIT_OK
    assert cfg_of(tmp_path / "again") == gated_cfg
    assert model_card.form_of(cfg_of(tmp_path / "again")) == model_card.FORM_BUILTIN


def test_metadata_is_kept_and_can_be_set(tmp_path: Path) -> None:
    src = save(gated_paper_sae(normalize_activations="layer_norm"), tmp_path / "src")
    for target in ("gated", "jumprelu"):
        assert cli(src, tmp_path / target, "--to", target, "--metadata", "hook_name=x.y",
                   "--metadata", "context_size=128") == EXIT_OK  # fmt: skip
        cfg = cfg_of(tmp_path / target)
        assert cfg["normalize_activations"] == "layer_norm"
        expected = {**METADATA, "hook_name": "x.y", "context_size": 128}
        assert {k: cfg["metadata"][k] for k in METADATA} == expected


def test_the_check_sees_every_latent_open_and_closed() -> None:
    from sae_gated_plugin.convert.verify import probe_activations

    for seed in range(3):
        sae = gated_paper_sae(d_in=64, d_sae=256, seed=seed)
        weights = {name: p.detach() for name, p in sae.named_parameters()}
        pi_gate, _ = gate_pre_activation(sae, probe_activations(weights))
        open_fraction = (pi_gate > 0).float().mean(dim=0)
        assert ((open_fraction > 0) & (open_fraction < 1)).all()


# --------------------------------------------------------------------------- -> jumprelu


def textbook_jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """z H(z - t) of arXiv:2407.14435, with no ReLU (Gemma Scope, SAELens's training class)."""
    return pre * (pre > threshold)


def test_jumprelu_parameters_on_every_case_of_the_proof() -> None:
    # d_in = 1 and float64 with dyadic numbers: every value below is exact, so the outputs
    # must be identical, including at the boundaries m = 0 and m = theta.
    sae = GatedPaperSAE(GatedPaperSAEConfig(d_in=1, d_sae=3, dtype="float64"))
    with torch.no_grad():
        sae.W_enc.fill_(1.0)
        sae.W_dec.fill_(1.0)
        sae.b_dec.zero_()
        sae.r_mag.zero_()
        sae.b_gate.copy_(torch.tensor([0.5, -0.5, 0.0]))
        sae.b_mag.copy_(torch.tensor([-0.25, 0.25, 0.0]))  # theta = -0.75, 0.75, 0
    weights = {n: p.detach() for n, p in sae.named_parameters()}
    params, negative = jumprelu_parameters(weights)
    assert negative == 1
    assert params["threshold"].tolist() == [0.0, 0.75, 0.0]
    g = torch.arange(-8, 9, dtype=torch.float64).unsqueeze(1) / 8  # -1 .. 1 by 1/8
    with torch.no_grad():
        gated = sae.encode(g)
    pre = g @ params["W_enc"] + params["b_enc"]
    assert torch.equal(textbook_jumprelu(pre, params["threshold"]), gated)
    assert torch.equal(torch.relu(pre) * (pre > params["threshold"]), gated)
    # Latent 0 (theta = -0.75 < 0): g = 0.25 gives m = 0 (output 0), g = -0.5 gives m = theta
    # and pi_gate = 0 (gate closed); between them the gated SAE outputs 0, not m < 0.
    m = pre[:, 0]
    assert ((m > -0.75) & (m < 0)).sum() == 5 and (m == 0).any() and (m == -0.75).any()
    # Keeping the negative theta would be wrong for the textbook JumpReLU.
    unclamped = torch.tensor([-0.75, 0.75, 0.0], dtype=torch.float64)
    assert not torch.equal(textbook_jumprelu(pre, unclamped), gated)


def assert_jumprelu_matches(gated: GatedPaperSAE, jumprelu: SAE[Any], x: torch.Tensor) -> None:
    """Features and reconstructions equal to float tolerance, gates up to rounding."""
    with torch.no_grad():
        f_gated, f_jump = gated.encode(x), jumprelu.encode(x)
        pi_gate, gate_scale = gate_pre_activation(gated, x)
        rows = assert_features_match(f_jump, f_gated, pi_gate, gate_scale)
        recon_gated, recon_jump = gated.decode(f_gated)[rows], jumprelu.decode(f_jump)[rows]
        assert_reconstructions_match(recon_jump, recon_gated)
        # The same features from the textbook JumpReLU (no ReLU) on the exported parameters.
        pre = jumprelu.process_sae_in(x) @ jumprelu.W_enc + jumprelu.b_enc
        textbook = textbook_jumprelu(pre, jumprelu.threshold)
        assert_features_match(textbook, f_gated, pi_gate, gate_scale)


def test_jumprelu_export_equals_the_gated_sae_on_random_activations(tmp_path: Path) -> None:
    sae = gated_paper_sae(d_in=32, d_sae=96, seed=2)
    theta = thresholds(sae)
    assert (theta < 0).sum() > 10 and (theta > 0).sum() > 10
    src = save(sae, tmp_path / "src", sparsity=True)
    assert cli(src, tmp_path / "jumprelu", "--to", "jumprelu") == EXIT_OK
    jumprelu = SAE.load_from_disk(tmp_path / "jumprelu")
    assert type(jumprelu) is JumpReLUSAE
    cfg = cfg_of(tmp_path / "jumprelu")
    assert cfg["metadata"][PROVENANCE_KEY]["latents_with_negative_gated_threshold"] == int(
        (theta < 0).sum()
    )
    assert torch.equal(jumprelu.threshold == 0, theta <= 0)
    torch.testing.assert_close(jumprelu.threshold, theta.clamp_min(0))
    x = torch.randn(2000, 32) * 1.5
    # Latents with theta < 0 do see magnitudes in (theta, 0), where the clamp matters.
    with torch.no_grad():
        m = sae.process_sae_in(x) @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
    assert ((m > theta) & (m < 0) & (theta < 0)).sum() > 1000
    assert_jumprelu_matches(sae, jumprelu, x)
    with torch.no_grad():
        assert (sae.encode(x) > 0).float().mean() > 0.1


def test_converted_files_follow_the_umask(tmp_path: Path) -> None:
    src = save(gated_paper_sae(seed=4), tmp_path / "src")
    previous = os.umask(0o022)
    try:
        convert_sae(src, tmp_path / "jumprelu", "jumprelu")
    finally:
        os.umask(previous)
    for name in ("cfg.json", "sae_weights.safetensors"):
        assert stat.S_IMODE((tmp_path / "jumprelu" / name).stat().st_mode) == 0o644, name


def test_bfloat16_jumprelu_export_keeps_its_dtype(tmp_path: Path) -> None:
    src = save(gated_paper_sae(dtype="bfloat16", seed=3), tmp_path / "src")
    report = convert_sae(src, tmp_path / "jumprelu", "jumprelu")
    assert report.check.n_probes > 0
    weights = load_file(tmp_path / "jumprelu" / "sae_weights.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert cfg_of(tmp_path / "jumprelu")["dtype"] == "bfloat16"


@pytest.mark.integration
@pytest.mark.embedded
def test_jumprelu_export_on_real_smollm2_activations(smollm2: Any, tmp_path: Path) -> None:
    from sae_gated_plugin import embedded
    from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset

    hook = "blocks.2.hook_resid_post"
    tokens = eval_tokens_from_dataset(
        smollm2, embedded.load_corpus(split="eval"), context_size=64, n_sequences=16
    )
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(tokens, names_filter=hook, stop_at_layer=3)
    acts = cache[hook][:, 3:].reshape(-1, 576).float()  # SmolLM2's attention sinks left out
    fit, test = acts[:300], acts[300:]

    # A small SAE calibrated on real activations: about a third of the gates open, and half
    # of the latents with a negative threshold b_mag - exp(r_mag) b_gate.
    sae = gated_paper_sae(d_in=576, d_sae=128, seed=4)
    with torch.no_grad():
        g = (fit - sae.b_dec) @ sae.W_enc
        sae.b_gate.copy_(-g.quantile(0.67, dim=0))
        s = sae.r_mag.exp()
        spread = (g * s).std(dim=0)
        sign = torch.where(torch.arange(128) % 2 == 0, -1.0, 1.0)
        sae.b_mag.copy_(s * sae.b_gate + sign * spread * torch.rand(128))
    theta = thresholds(sae)
    assert 56 <= (theta < 0).sum() <= 72
    src = save(sae, tmp_path / "src")
    assert cli(src, tmp_path / "jumprelu", "--to", "jumprelu") == EXIT_OK
    jumprelu = SAE.load_from_disk(tmp_path / "jumprelu")
    with torch.no_grad():
        m = sae.process_sae_in(test) @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag
        open_fraction = (sae.encode(test) > 0).float().mean()
    assert 0.1 < open_fraction < 0.6
    assert ((m > theta) & (m < 0) & (theta < 0)).sum() > 100
    assert_jumprelu_matches(sae, jumprelu, test)


# --------------------------------------------------------------------------- dictionary_learning


class DictionaryLearningGated:
    """dictionary_learning's GatedAutoEncoder forward, re-written from its dictionary.py:
    ``x_enc = encoder(x - decoder_bias)``; ``f = (x_enc + gate_bias > 0) *
    relu(r_mag.exp() * x_enc + mag_bias)``; ``decode(f) = decoder(f) + decoder_bias``."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.encoder = torch.nn.Linear(*state["encoder.weight"].shape[::-1], bias=False)
        self.decoder = torch.nn.Linear(*state["decoder.weight"].shape[::-1], bias=False)
        self.encoder.weight.data = state["encoder.weight"].clone()
        self.decoder.weight.data = state["decoder.weight"].clone()
        self.state = state

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x_enc = self.encoder(x - self.state["decoder_bias"])
        pi_gate = x_enc + self.state["gate_bias"]
        f_gate = (pi_gate > 0).to(self.encoder.weight.dtype)
        pi_mag = self.state["r_mag"].exp() * x_enc + self.state["mag_bias"]
        return f_gate * torch.nn.ReLU()(pi_mag)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(f) + self.state["decoder_bias"]

    def gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pi_gate and the scale of its rounding."""
        x_c = x - self.state["decoder_bias"]
        scale = x_c.norm(dim=-1, keepdim=True) * self.encoder.weight.norm(dim=-1)
        return self.encoder(x_c) + self.state["gate_bias"], scale + self.state["gate_bias"].abs()


def dictionary_learning_folder(
    folder: Path, norm_factor: float | None = None, seed: int = 5, **state_changes: Any
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A training folder as dictionary_learning's trainSAE writes it for a GatedSAETrainer."""
    gen = torch.Generator().manual_seed(seed)
    activation_dim, dict_size = D_IN, D_SAE
    dec = torch.randn(activation_dim, dict_size, generator=gen)
    dec /= dec.norm(dim=0, keepdim=True)  # unit columns, as ConstrainedAdam keeps them
    state = {
        "decoder_bias": 0.1 * torch.randn(activation_dim, generator=gen),
        "encoder.weight": dec.T + 0.3 * torch.randn(dict_size, activation_dim, generator=gen),
        "r_mag": torch.rand(dict_size, generator=gen) * 2 - 1,
        "gate_bias": torch.randn(dict_size, generator=gen),
        "mag_bias": torch.randn(dict_size, generator=gen),
        "decoder.weight": dec,
    }
    if norm_factor is not None:  # trainSAE's scale_biases(norm_factor) before saving ae.pt
        for name in ("decoder_bias", "mag_bias", "gate_bias"):
            state[name] = state[name] * norm_factor
    state.update(state_changes)
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    trainer = {
        "dict_class": "GatedAutoEncoder",
        "trainer_class": "GatedSAETrainer",
        "activation_dim": activation_dim,
        "dict_size": dict_size,
        "lr": 5e-5,
        "l1_penalty": 0.1,
        "warmup_steps": 1000,
        "sparsity_warmup_steps": 2000,
        "decay_start": None,
        "seed": 0,
        "device": "cuda",
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "wandb_name": "GatedSAETrainer",
        "submodule_name": "resid_post_layer_3",
    }
    if norm_factor is not None:
        trainer["norm_factor"] = norm_factor
    buffer = {"d_submodule": activation_dim, "io": "out", "n_ctxs": 3000, "ctx_len": 128,
              "refresh_batch_size": 32, "out_batch_size": 8192, "device": "cuda"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": buffer}))
    return folder, state


@pytest.mark.parametrize("target", ["gated_paper", "gated", "jumprelu"])
def test_dictionary_learning_checkpoint_converts_with_equal_outputs(
    tmp_path: Path, target: str
) -> None:
    src, state = dictionary_learning_folder(tmp_path / "dl")
    dst = tmp_path / target
    assert cli(src, dst, "--from", "dictionary_learning", "--to", target) == EXIT_OK
    converted = SAE.load_from_disk(dst)
    reference = DictionaryLearningGated(state)
    x = torch.randn(1000, D_IN) * 2
    with torch.no_grad():
        f_ref, f_new = reference.encode(x), converted.encode(x)
        assert (f_ref > 0).float().mean() > 0.1
        rows = assert_features_match(f_new, f_ref, *reference.gate(x))
        recon = converted.decode(f_new)[rows]
        assert_reconstructions_match(recon, reference.decode(f_ref)[rows])
    cfg = cfg_of(dst)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    metadata = cfg["metadata"]
    assert metadata["model_name"] == "EleutherAI/pythia-70m-deduped"
    assert metadata["hook_name"] == "blocks.3.hook_resid_post"
    assert metadata["context_size"] == 128
    provenance = metadata[PROVENANCE_KEY]
    assert provenance["trained_architecture"] == "dictionary_learning GatedAutoEncoder"
    assert provenance["dictionary_learning"]["trainer"]["l1_penalty"] == 0.1


def test_dictionary_learning_normalised_checkpoint_works_on_raw_activations(
    tmp_path: Path,
) -> None:
    # trainSAE(normalize_activations=True) trains on x / c and saves ae.pt with its biases
    # times c: the saved model gives c times the normalised model's features on raw x, so the
    # conversion needs no input scaling (normalize_activations "none").
    c = 7.5
    _, trained = dictionary_learning_folder(tmp_path / "trained")
    src, _ = dictionary_learning_folder(tmp_path / "saved", norm_factor=c)
    assert cli(src, tmp_path / "sae", "--from", "dictionary_learning", "--to", "gated_paper") == 0
    converted = SAE.load_from_disk(tmp_path / "sae")
    assert converted.cfg.normalize_activations == "none"
    assert cfg_of(tmp_path / "sae")["metadata"][PROVENANCE_KEY]["dictionary_learning"][
        "trainer"]["norm_factor"] == c  # fmt: skip
    raw = torch.randn(500, D_IN) * c
    with torch.no_grad():
        in_training = DictionaryLearningGated(trained)
        f_train = in_training.encode(raw / c)
        f_new = converted.encode(raw)
        rows = assert_features_match(f_new, c * f_train, *in_training.gate(raw / c))
        recon = converted.decode(f_new)[rows]
        assert_reconstructions_match(recon, c * in_training.decode(f_train)[rows])


# --------------------------------------------------------------------------- refusals


class NotATensor:
    """An arbitrary object: torch.load(weights_only=True) must not unpickle it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled!",))


def _dl_with(tmp_path: Path, **changes: Any) -> Path:
    return dictionary_learning_folder(tmp_path / "dl", **changes)[0]


def _pickled(tmp_path: Path, payload: Any) -> Path:
    folder = _dl_with(tmp_path)
    torch.save(payload, folder / "ae.pt")
    return folder


def _config_change(tmp_path: Path, **trainer: Any) -> Path:
    folder = _dl_with(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["trainer"].update(trainer)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _gated_paper_with(tmp_path: Path, **values: float) -> Path:
    sae = gated_paper_sae()
    with torch.no_grad():
        for name, value in values.items():
            getattr(sae, name)[3] = value
    return save(sae, tmp_path / "src")


def _standard(tmp_path: Path) -> Path:
    return save(StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)), tmp_path / "src")


def _with_architecture(tmp_path: Path, architecture: str) -> Path:
    src = save(gated_paper_sae(), tmp_path / "src")
    cfg = cfg_of(src)
    (src / "cfg.json").write_text(json.dumps({**cfg, "architecture": architecture}))
    return src


REFUSALS: dict[str, tuple[Any, list[str], list[str]]] = {
    "destination exists": (
        lambda p: save(gated_paper_sae(), p / "src"),
        ["--to", "gated", "--dst", "src"],
        ["already exists"],
    ),
    "no source folder": (lambda p: p / "nothing", ["--to", "gated"], ["no such SAE folder"]),
    "not a gated SAE": (_standard, ["--to", "jumprelu"], ["'standard' is not a gated SAE"]),
    "already the target": (
        lambda p: save(gated_paper_sae(), p / "src"),
        ["--to", "gated_paper"],
        ["already 'gated_paper'"],
    ),
    "jumprelu source": (
        lambda p: _with_architecture(p, "jumprelu"),
        ["--to", "gated_paper"],
        ["'jumprelu' is not a gated SAE"],
    ),
    "exp(r_mag) overflows": (
        lambda p: _gated_paper_with(p, r_mag=100.0),
        ["--to", "jumprelu"],
        ["overflows or underflows", "float32", "[3]"],
    ),
    "exp(r_mag) underflows": (
        lambda p: _gated_paper_with(p, r_mag=-200.0),
        ["--to", "jumprelu"],
        ["overflows or underflows"],
    ),
    "threshold lost to rounding": (
        lambda p: _gated_paper_with(p, r_mag=-30.0, b_mag=1.0),
        ["--to", "jumprelu"],
        ["not exact", "latent 3", "nothing was written"],
    ),
    "ae.pt missing": (
        lambda p: (_dl_with(p) / "ae.pt").unlink() or p / "dl",
        ["--from", "dictionary_learning"],
        ["ae.pt: missing"],
    ),
    "config.json missing": (
        lambda p: (_dl_with(p) / "config.json").unlink() or p / "dl",
        ["--from", "dictionary_learning"],
        ["config.json: file not found"],
    ),
    "not a GatedAutoEncoder": (
        lambda p: _config_change(p, dict_class="AutoEncoderTopK"),
        ["--from", "dictionary_learning"],
        ["'AutoEncoderTopK'", "only GatedAutoEncoder"],
    ),
    "pickle with an object": (
        lambda p: _pickled(p, {"encoder.weight": torch.zeros(2, 2), "hook": NotATensor()}),
        ["--from", "dictionary_learning"],
        ["weights_only=True", "refused"],
    ),
    "pickle with non-tensor values": (
        lambda p: _pickled(p, {"encoder.weight": torch.zeros(2, 2), "step": 10, "note": "x"}),
        ["--from", "dictionary_learning"],
        ["tensors only", "'note': str", "'step': int"],
    ),
    "training backup": (
        lambda p: _pickled(p, {"step": 3, "ae": {}, "optimizer": {}, "norm_factor": 2.0}),
        ["--from", "dictionary_learning"],
        ["training backup", "final ae.pt"],
    ),
    "not a state dict": (
        lambda p: _pickled(p, [torch.zeros(2)]),
        ["--from", "dictionary_learning"],
        ["holds a list"],
    ),
    "encoder with a bias": (
        lambda p: _dl_with(p, **{"encoder.bias": torch.zeros(D_SAE)}),
        ["--from", "dictionary_learning"],
        ["unexpected ['encoder.bias']"],
    ),
    "wrong shape": (
        lambda p: _dl_with(p, r_mag=torch.zeros(D_SAE + 1)),
        ["--from", "dictionary_learning"],
        ["r_mag has shape (49,)"],
    ),
    "config disagrees": (
        lambda p: _config_change(p, dict_size=64),
        ["--from", "dictionary_learning"],
        ["dict_size is 48 but config.json says 64"],
    ),
    "mixed dtypes": (
        lambda p: _dl_with(p, r_mag=torch.zeros(D_SAE, dtype=torch.float64)),
        ["--from", "dictionary_learning"],
        ["one floating-point dtype", "float64"],
    ),
    "not finite": (
        lambda p: _dl_with(p, gate_bias=torch.full((D_SAE,), math.nan)),
        ["--from", "dictionary_learning"],
        ["gate_bias contains NaN"],
    ),
    "bad --metadata": (
        lambda p: save(gated_paper_sae(), p / "src"),
        ["--to", "gated", "--metadata", "oops"],
        ["expected KEY=VALUE"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_every_refusal_exits_2_with_its_message_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, args, messages = REFUSALS[case]
    src = make(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    if "--dst" in args:
        dst = tmp_path / args[args.index("--dst") + 1]
        args = args[: args.index("--dst")]
    else:
        dst = tmp_path / "out"
    if "--to" not in args:
        args = [*args, "--to", "gated_paper"]
    assert cli(src, dst, *args) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert err.startswith("sae-gated: error: ")
    assert "Traceback" not in err and "unpickled!" not in out + err
    for message in messages:
        assert message in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_python_api_raises_gated_plugin_error(tmp_path: Path) -> None:
    src = save(gated_paper_sae(), tmp_path / "src")
    with pytest.raises(GatedPluginError, match="unknown target 'topk'"):
        convert_sae(src, tmp_path / "out", "topk")
    with pytest.raises(GatedPluginError, match="unknown source 'npz'"):
        convert_sae(src, tmp_path / "out", "gated", source="npz")
    with pytest.raises(GatedPluginError, match="not JSON-serialisable"):
        convert_sae(src, tmp_path / "out", "gated", metadata={"x": object()})
    assert not (tmp_path / "out").exists()
