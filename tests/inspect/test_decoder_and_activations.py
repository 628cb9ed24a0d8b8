"""The decoder-row statistics and the activation pass of `sae-gated inspect`, by brute force."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_gated_plugin import GatedPaperSAE, GatedPaperSAEConfig
from sae_gated_plugin.inspect.activations import activation_batches, gated_encode, is_gated
from sae_gated_plugin.inspect.decoder import logit_effects, nearest_latents

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

D_MODEL, D_SAE, VOCAB = 16, 40, 50
HOOK = "blocks.0.hook_resid_post"


def test_logit_effects_are_the_extremes_and_histogram_of_w_dec_w_u() -> None:
    generator = torch.Generator().manual_seed(0)
    w_dec, w_u = torch.randn(D_SAE, D_MODEL, generator=generator), torch.randn(D_MODEL, VOCAB)
    latents = torch.tensor([0, 3, 39])
    effects = logit_effects(w_dec, w_u, latents, k=5, n_bins=7)
    full = w_dec[latents] @ w_u
    assert torch.allclose(effects.top_values, full.sort(dim=1, descending=True).values[:, :5])
    assert torch.allclose(effects.bottom_values, full.sort(dim=1).values[:, :5])
    assert torch.equal(full.gather(1, effects.top_ids), effects.top_values)
    for row in range(len(latents)):
        edges = effects.histogram_edges[row]
        assert edges[0] == full[row].min() and torch.isclose(edges[-1], full[row].max())
        expected = torch.histogram(full[row], bins=edges).hist.long()
        assert torch.equal(effects.histogram_counts[row], expected)
        assert int(effects.histogram_counts[row].sum()) == VOCAB


def test_nearest_latents_are_the_highest_decoder_cosines_but_itself() -> None:
    w_dec = torch.randn(D_SAE, D_MODEL, generator=torch.Generator().manual_seed(1))
    w_dec[7] = 3 * w_dec[2]  # the same direction, another norm
    latents = torch.tensor([2, 5])
    indices, cosines = nearest_latents(w_dec, latents, k=4)
    normed = torch.nn.functional.normalize(w_dec, dim=1)
    for row, latent in enumerate(latents.tolist()):
        similarity = normed[latent] @ normed.T
        similarity[latent] = -2
        assert indices[row].tolist() == similarity.topk(4).indices.tolist()
        assert torch.allclose(cosines[row], similarity.topk(4).values)
    assert indices[0, 0] == 7 and torch.isclose(cosines[0, 0], torch.tensor(1.0))


def _metadata() -> SAEMetadata:
    return SAEMetadata(hook_name=HOOK)


def _randomised(sae: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return sae


@pytest.mark.parametrize("gated_class", ["gated", "gated_paper"])
def test_gated_encode_equals_the_saes_own_encode(gated_class: str) -> None:
    if gated_class == "gated":
        sae = GatedSAE(GatedSAEConfig(d_in=D_MODEL, d_sae=D_SAE, metadata=_metadata()))
    else:
        sae = GatedPaperSAE(GatedPaperSAEConfig(d_in=D_MODEL, d_sae=D_SAE, metadata=_metadata()))
    _randomised(sae)
    x = torch.randn(64, D_MODEL)
    acts, gate_open = gated_encode(sae, x)
    assert is_gated(sae)
    # SAELens's gated scales W_enc before the product, gated_paper after it: the same to rounding
    assert torch.allclose(acts, sae.encode(x), atol=1e-5)
    assert torch.equal(gate_open, sae.process_sae_in(x) @ sae.W_enc + sae.b_gate > 0)
    assert bool((acts[~gate_open] == 0).all())


def test_activation_batches_are_the_sae_on_the_spliced_positions_only() -> None:
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=2, d_model=D_MODEL, n_ctx=12, d_head=4, n_heads=4, d_vocab=VOCAB,
            act_fn="relu", seed=0, device="cpu",
        )
    )  # fmt: skip
    sae = _randomised(
        StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=D_SAE, metadata=_metadata()))
    )
    tokens = torch.randint(0, VOCAB, (5, 12), generator=torch.Generator().manual_seed(3))
    tokens[1, 6] = 9
    batches = list(
        activation_batches(
            sae, model, tokens, hook_name=HOOK, seqpos_slice=(2, None), exclude_token_ids=[9],
            batch_size=2, show_progress=False,
        )
    )  # fmt: skip
    assert [len(b.tokens) for b in batches] == [2, 2, 1]
    acts = torch.cat([b.acts for b in batches])
    spliced = torch.cat([b.spliced for b in batches])
    assert not spliced[:, :2].any() and not spliced[1, 6] and spliced[0, 2:].all()
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    expected = sae.encode(cache[HOOK])
    assert torch.allclose(acts[spliced], expected[spliced], atol=1e-6)
    assert bool((acts[~spliced] == 0).all())
    assert all(b.gate_open is None for b in batches)
