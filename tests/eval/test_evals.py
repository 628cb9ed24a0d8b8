"""The paper's metrics (sae_gated_plugin.eval.splice), checked against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.eval.metrics import EvalReport, MetricAccumulator, write_report
from sae_gated_plugin.eval.splice import evaluate_sae
from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

D_MODEL = 16
HOOK = "blocks.0.hook_resid_post"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """The models here are tiny: thread start-up dominates, worse on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_ctx=16,
        d_head=4,
        n_heads=4,
        d_vocab=50,
        act_fn="relu",
        seed=0,
        device="cpu",
    )
    tiny = HookedTransformer(cfg)
    tiny.eval()
    return tiny


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 50, (10, 16), generator=generator)


def _metadata(hook_name: str, head_index: int | None = None) -> SAEMetadata:
    return SAEMetadata(hook_name=hook_name, hook_head_index=head_index)


def identity_sae(d_in: int = D_MODEL, hook_name: str = HOOK, **meta: Any) -> StandardSAE:
    """relu(x) - relu(-x) = x: W_enc = [I, -I], W_dec = [I; -I], zero biases."""
    sae = StandardSAE(
        StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, metadata=_metadata(hook_name, **meta))
    )
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d_in: int = D_MODEL, hook_name: str = HOOK) -> StandardSAE:
    sae = identity_sae(d_in, hook_name)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def random_sae(d_sae: int = 24, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=d_sae, metadata=_metadata(HOOK)))
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.3)
        sae.b_dec.normal_(0.0, 0.1)
    return sae


def reference_metrics(
    sae: StandardSAE, model: HookedTransformer, tokens: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Metrics from one separate run_with_cache pass, in float64, all tokens at once."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        x = cache[HOOK][mask]
        feats = sae.encode(x)
        x_hat = sae.decode(feats)
    x64, xh64 = x.double(), x_hat.double()
    resid = (x64 - xh64).pow(2).sum()
    total = (x64 - x64.mean(dim=0)).pow(2).sum()
    return {
        "n_tokens": x.shape[0],
        "l0": float((feats != 0).sum(dim=-1).double().mean()),
        "alive_fraction": float((feats != 0).any(dim=0).double().mean()),
        "explained_variance": float(1 - resid / total),
        "mse": float(resid / x.shape[0]),
        "gamma": float(xh64.pow(2).sum() / (x64 * xh64).sum()),
    }


# --------------------------------------------------------------------------- MetricAccumulator


def test_gamma_of_scaled_reconstructions() -> None:
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    feats = torch.ones(200, 3)
    for c in (1.0, 0.8, 0.5, 1.25):
        acc = MetricAccumulator(d_sae=3)
        acc.update(x, c * x, feats)
        assert acc.relative_reconstruction_bias == pytest.approx(c, rel=1e-12)
    perfect = MetricAccumulator(d_sae=3)
    perfect.update(x, x.clone(), feats)
    assert perfect.relative_reconstruction_bias == pytest.approx(1.0, rel=1e-12)
    assert perfect.explained_variance == 1.0
    assert perfect.mse == 0.0


def test_gamma_is_ratio_of_sums_not_mean_of_batch_ratios() -> None:
    # batch 1: x_hat = x (ratio 1); batch 2: x_hat = x / 2 with a 3x larger x (ratio 0.5)
    x1 = torch.tensor([[1.0, 0.0]])
    x2 = torch.tensor([[0.0, 3.0]])
    acc = MetricAccumulator(d_sae=1)
    acc.update(x1, x1, torch.ones(1, 1))
    acc.update(x2, x2 / 2, torch.ones(1, 1))
    # E||x_hat||^2 / E[x . x_hat] = (1 + 2.25) / (1 + 4.5)
    assert acc.relative_reconstruction_bias == pytest.approx(3.25 / 5.5, rel=1e-12)


def test_hand_computed_mse_and_explained_variance() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    acc = MetricAccumulator(d_sae=2)
    acc.update(x, torch.zeros_like(x), torch.zeros(2, 2))
    assert acc.mse == pytest.approx(2.5)  # (1 + 4) / 2 tokens
    # mean (0.5, 1); total variance 1.25 + 1.25 = 2.5; residual 5
    assert acc.total_variance == pytest.approx(2.5)
    assert acc.explained_variance == pytest.approx(1 - 5 / 2.5)
    assert math.isnan(acc.relative_reconstruction_bias)  # 0 / 0: undefined, not an error


def test_l0_and_dead_fraction_by_hand() -> None:
    feats_a = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, -1.0]])
    feats_b = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    acc = MetricAccumulator(d_sae=5)
    acc.update(torch.zeros(2, 3), torch.zeros(2, 3), feats_a)
    acc.update(torch.zeros(1, 3), torch.zeros(1, 3), feats_b)
    assert acc.n_tokens == 3
    assert acc.l0 == pytest.approx(3 / 3)  # 1 + 2 + 0 active latents over 3 tokens
    assert acc.alive_fraction == pytest.approx(3 / 5)  # latents 0, 1 and 4 fired
    assert acc.dead_fraction == pytest.approx(2 / 5)
    final = acc.finalize()
    assert final["l0"] == acc.l0 and final["dead_fraction"] == acc.dead_fraction


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_explained_variance_exact_and_independent_of_batching(offset: float) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(200, 12, generator=generator) * 3 + offset
    x_hat = x + 0.7 * torch.randn(200, 12, generator=generator)
    feats = torch.relu(torch.randn(200, 9, generator=generator))
    x64, xh64 = x.double(), x_hat.double()
    expected_ev = 1 - ((x64 - xh64) ** 2).sum() / ((x64 - x64.mean(dim=0)) ** 2).sum()
    expected_gamma = (xh64**2).sum() / (x64 * xh64).sum()
    expected_mse = ((x64 - xh64) ** 2).sum(dim=-1).mean()

    results = []
    for splits in ([200], [1, 7, 50, 142], [199, 1], [13] * 15 + [5]):
        acc = MetricAccumulator(d_sae=9)
        start = 0
        for size in splits:
            stop = start + size
            acc.update(x[start:stop], x_hat[start:stop], feats[start:stop])
            start = stop
        assert acc.n_tokens == 200
        assert acc.explained_variance == pytest.approx(float(expected_ev), rel=1e-10, abs=1e-12)
        assert acc.relative_reconstruction_bias == pytest.approx(float(expected_gamma), rel=1e-12)
        assert acc.mse == pytest.approx(float(expected_mse), rel=1e-12)
        results.append(acc.finalize())
    for other in results[1:]:
        for key, value in results[0].items():
            assert other[key] == pytest.approx(value, rel=1e-10, abs=1e-12)


def test_accumulator_flattens_leading_axes_and_checks_shapes() -> None:
    acc = MetricAccumulator(d_sae=4)
    acc.update(torch.ones(2, 3, 5), torch.ones(2, 3, 5), torch.ones(2, 3, 4))
    assert acc.n_tokens == 6 and acc.l0 == 4.0
    with pytest.raises(GatedPluginError):
        acc.update(torch.ones(2, 5), torch.ones(3, 5), torch.ones(2, 4))
    with pytest.raises(GatedPluginError):
        acc.update(torch.ones(2, 5), torch.ones(2, 5), torch.ones(2, 3))


# --------------------------------------------------------------------------- evaluate_sae


def test_identity_sae_recovers_all_loss(model: HookedTransformer, tokens: torch.Tensor) -> None:
    report = evaluate_sae(identity_sae(), model, tokens, batch_size=4, show_progress=False)
    assert report.loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert report.delta_ce_loss == pytest.approx(0.0, abs=1e-5)
    assert report.ce_loss_with_sae == pytest.approx(report.ce_loss_clean, abs=1e-5)
    assert abs(report.ce_loss_zero_ablation - report.ce_loss_clean) > 0.1  # random model: < 0
    assert report.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert report.relative_reconstruction_bias == pytest.approx(1.0, abs=1e-6)
    assert report.mse == pytest.approx(0.0, abs=1e-8)
    assert report.l0 == pytest.approx(D_MODEL)  # each dimension uses exactly one of +/- latent
    assert report.alive_fraction == 1.0 and report.dead_fraction == 0.0
    assert report.n_tokens == 10 * 16
    assert (report.n_sequences, report.context_size, report.hook_name) == (10, 16, HOOK)
    assert report.spliced_positions == "all positions of each 16-token window"
    # clean CE is the model's own mean next-token loss over all predicted positions
    with torch.no_grad():
        own = model(tokens, return_type="loss")
    assert report.ce_loss_clean == pytest.approx(float(own), rel=1e-5)


def test_zero_sae_recovers_no_loss(model: HookedTransformer, tokens: torch.Tensor) -> None:
    report = evaluate_sae(zero_sae(), model, tokens, batch_size=3, show_progress=False)
    assert report.loss_recovered == 0.0
    assert report.ce_loss_with_sae == report.ce_loss_zero_ablation
    assert math.isnan(report.relative_reconstruction_bias)  # 0 / 0
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK][mask].double()
    assert report.mse == pytest.approx(float(x.pow(2).sum(-1).mean()), rel=1e-9)


def test_metrics_match_a_separate_activation_pass(
    model: HookedTransformer, tokens: torch.Tensor
) -> None:
    sae = random_sae()
    exclude = (int(tokens[0, 3]), int(tokens[4, 9]))
    report = evaluate_sae(
        sae,
        model,
        tokens,
        seqpos_slice=(1, None),
        exclude_token_ids=exclude,
        batch_size=4,
        show_progress=False,
    )
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 1:] = True
    mask &= ~torch.isin(tokens, torch.tensor(exclude))
    ref = reference_metrics(sae, model, tokens, mask)
    assert report.n_tokens == ref["n_tokens"] == int(mask.sum())
    assert report.l0 == pytest.approx(ref["l0"], rel=1e-9)
    assert report.alive_fraction == pytest.approx(ref["alive_fraction"])
    assert report.explained_variance == pytest.approx(ref["explained_variance"], rel=1e-6)
    assert report.mse == pytest.approx(ref["mse"], rel=1e-6)
    assert report.relative_reconstruction_bias == pytest.approx(ref["gamma"], rel=1e-6)
    assert 0 < report.l0 < sae.cfg.d_sae

    # CE with the SAE against a hand-written splice hook
    def manual_splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = act.clone()
        out[mask] = sae.decode(sae.encode(act[mask]))
        return out

    with torch.no_grad():
        manual = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(HOOK, manual_splice)])
    assert report.ce_loss_with_sae == pytest.approx(float(manual), rel=1e-5)
    expected_recovered = (report.ce_loss_zero_ablation - report.ce_loss_with_sae) / (
        report.ce_loss_zero_ablation - report.ce_loss_clean
    )
    assert report.loss_recovered == pytest.approx(expected_recovered, rel=1e-12)
    assert report.delta_ce_loss == pytest.approx(
        report.ce_loss_with_sae - report.ce_loss_clean, rel=1e-12
    )


def test_batch_size_does_not_change_the_report(
    model: HookedTransformer, tokens: torch.Tensor
) -> None:
    sae = random_sae(seed=5)
    reports = [
        evaluate_sae(sae, model, tokens, seqpos_slice=(2, None), batch_size=b, show_progress=False)
        for b in (1, 3, 10)
    ]
    for other in reports[1:]:
        for key, value in reports[0].to_dict().items():
            if isinstance(value, float):
                assert getattr(other, key) == pytest.approx(value, rel=1e-5), key
            else:
                assert getattr(other, key) == value, key


class _Recorder:
    """A permanent hook downstream of the splice: records what the next block saw."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, act: torch.Tensor, hook: Any) -> None:
        self.seen.append(act.detach().clone())


def _run_recorded(model: HookedTransformer, **kwargs: Any) -> tuple[EvalReport, _Recorder]:
    recorder = _Recorder()
    model.add_hook("blocks.1.hook_resid_pre", recorder, is_permanent=True)
    try:
        report = evaluate_sae(model=model, show_progress=False, **kwargs)
    finally:
        model.reset_hooks(including_permanent=True)
    return report, recorder


def test_seqpos_slice_leaves_position_zero_clean(
    model: HookedTransformer, tokens: torch.Tensor
) -> None:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    clean = cache[HOOK]
    report, recorder = _run_recorded(
        model, sae=zero_sae(), tokens=tokens, seqpos_slice=(1, None), batch_size=10
    )
    assert len(recorder.seen) == 3  # clean, SAE and zero-ablation runs of the one batch
    seen_clean, seen_sae, seen_zero = recorder.seen
    torch.testing.assert_close(seen_clean, clean)
    for seen in (seen_sae, seen_zero):
        torch.testing.assert_close(seen[:, 0], clean[:, 0], rtol=0, atol=0)  # untouched
        assert torch.all(seen[:, 1:] == 0)  # the zero SAE's output / the ablation
    assert report.n_tokens == 10 * 15
    assert report.spliced_positions == "positions 1: of each 16-token window"

    # the identity SAE leaves every position as it was
    _, recorder = _run_recorded(
        model, sae=identity_sae(), tokens=tokens, seqpos_slice=(1, None), batch_size=10
    )
    torch.testing.assert_close(recorder.seen[1], clean, rtol=0, atol=1e-6)


def test_excluded_tokens_are_not_spliced(model: HookedTransformer) -> None:
    tokens = torch.randint(3, 50, (4, 16), generator=torch.Generator().manual_seed(7))
    tokens[:, 0] = 1  # a BOS-like token at position 0
    tokens[0, 5] = tokens[2, 9] = tokens[3, 15] = 1  # and as separators inside windows
    tokens[1, 7] = 2
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    clean = cache[HOOK]
    report, recorder = _run_recorded(
        model, sae=zero_sae(), tokens=tokens, exclude_token_ids=[1, 2], batch_size=4
    )
    excluded = torch.isin(tokens, torch.tensor([1, 2]))
    assert report.n_tokens == int((~excluded).sum()) == 4 * 16 - 8
    for seen in recorder.seen[1:]:
        torch.testing.assert_close(seen[excluded], clean[excluded], rtol=0, atol=0)
        assert torch.all(seen[~excluded] == 0)
    assert (
        report.spliced_positions == "all positions of each 16-token window, excluding tokens [1, 2]"
    )


def test_nothing_to_splice_is_an_error(model: HookedTransformer, tokens: torch.Tensor) -> None:
    with pytest.raises(GatedPluginError, match="no token position"):
        evaluate_sae(identity_sae(), model, tokens, seqpos_slice=(16, None), show_progress=False)
    with pytest.raises(GatedPluginError, match="no hook point"):
        evaluate_sae(identity_sae(), model, tokens, hook_name="blocks.9.x", show_progress=False)
    with pytest.raises(GatedPluginError, match="reads 8 dimensions"):
        evaluate_sae(identity_sae(d_in=8), model, tokens, show_progress=False)


def test_hook_z_with_and_without_head_index(model: HookedTransformer, tokens: torch.Tensor) -> None:
    hook_z = "blocks.1.attn.hook_z"  # (batch, pos, 4 heads, 4)
    report = evaluate_sae(identity_sae(D_MODEL, hook_z), model, tokens, show_progress=False)
    assert report.hook_name == hook_z
    assert report.loss_recovered == pytest.approx(1.0, abs=1e-5)

    one_head = identity_sae(4, hook_z, head_index=2)
    report = evaluate_sae(one_head, model, tokens, show_progress=False)
    assert report.loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert report.l0 <= 4

    # an SAE in SAELens's hook_z reshaping mode is evaluated the same, and left in that mode
    reshaping = StandardSAE(
        StandardSAEConfig(
            d_in=D_MODEL, d_sae=32, reshape_activations="hook_z", metadata=_metadata(hook_z)
        )
    )
    reshaping.load_state_dict(identity_sae(D_MODEL, hook_z).state_dict())
    assert reshaping.hook_z_reshaping_mode
    report = evaluate_sae(reshaping, model, tokens, show_progress=False)
    assert report.loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert reshaping.hook_z_reshaping_mode


def test_other_architectures(model: HookedTransformer, tokens: torch.Tensor) -> None:
    torch.manual_seed(0)
    topk = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=32, k=3, metadata=_metadata(HOOK)))
    report = evaluate_sae(topk, model, tokens, show_progress=False)
    assert 0 < report.l0 <= 3

    jumprelu = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_MODEL, d_sae=32, metadata=_metadata(HOOK)))
    with torch.no_grad():
        jumprelu.W_enc.copy_(identity_sae().W_enc)
        jumprelu.W_dec.copy_(identity_sae().W_dec)
        jumprelu.threshold.fill_(0.0)
    report = evaluate_sae(jumprelu, model, tokens, show_progress=False)
    assert report.loss_recovered == pytest.approx(1.0, abs=1e-5)

    gated = GatedSAE(GatedSAEConfig(d_in=D_MODEL, d_sae=32, metadata=_metadata(HOOK)))
    report = evaluate_sae(gated, model, tokens, show_progress=False)
    assert math.isfinite(report.loss_recovered) and report.n_tokens == 160


def test_norm_scaling_factor_is_applied_and_undone(
    model: HookedTransformer, tokens: torch.Tensor
) -> None:
    # An identity SAE with a bias only reproduces x when fed x * factor and divided back
    sae = random_sae(seed=2)
    plain = evaluate_sae(sae, model, tokens, show_progress=False)
    scaled = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=24, metadata=_metadata(HOOK)))
    scaled.load_state_dict(sae.state_dict())
    with torch.no_grad():  # equivalent SAE on activations * 4: biases scale with the input
        scaled.b_dec.mul_(4.0)
        scaled.b_enc.mul_(4.0)
    report = evaluate_sae(scaled, model, tokens, show_progress=False, norm_scaling_factor=4.0)
    assert report.mse == pytest.approx(plain.mse, rel=1e-5)
    assert report.ce_loss_with_sae == pytest.approx(plain.ce_loss_with_sae, rel=1e-5)


# --------------------------------------------------------------------------- report output


def _report(**overrides: Any) -> EvalReport:
    values: dict[str, Any] = {
        "l0": 12.5,
        "dead_fraction": 0.25,
        "alive_fraction": 0.75,
        "explained_variance": 0.9,
        "mse": 1.5,
        "relative_reconstruction_bias": math.nan,
        "ce_loss_clean": 2.0,
        "ce_loss_with_sae": 2.1,
        "ce_loss_zero_ablation": 7.0,
        "delta_ce_loss": 0.1,
        "loss_recovered": 0.98,
        "n_tokens": 1234567,
        "n_sequences": 8,
        "context_size": 128,
        "hook_name": HOOK,
        "spliced_positions": "positions 1: of each 128-token window",
    }
    values.update(overrides)
    return EvalReport(**values)


def test_write_report_is_strict_json_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "eval.json"
    path.parent.mkdir()
    path.write_text("old content")
    report = _report()
    write_report(report, path)
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["relative_reconstruction_bias"] is None  # NaN written as null
    assert data["n_tokens"] == 1234567 and data["hook_name"] == HOOK
    assert list(data) == list(report.to_dict())
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left


def test_to_table_is_aligned(tmp_path: Path) -> None:
    table = _report().to_table()
    lines = table.splitlines()
    assert len(lines) == len(_report().to_dict())
    value_column = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in lines}
    assert len(value_column) == 1  # every value starts in the same column
    assert any(line.startswith("loss_recovered") and line.endswith("0.98") for line in lines)
    assert "1,234,567" in table and "nan" in table


# --------------------------------------------------------------------------- eval tokens


class _IntTokenizer:
    """Tokenizes "10 11 12" into [10, 11, 12]; BOS 1, EOS 2, no SEP."""

    bos_token_id = 1
    eos_token_id = 2
    sep_token_id = None
    pad_token_id = None


class _IntModel:
    """Just what eval_tokens_from_dataset needs from a HookedTransformer."""

    tokenizer = _IntTokenizer()

    def to_tokens(self, text: str, prepend_bos: bool, truncate: bool, move_to_device: bool):
        assert prepend_bos is False and truncate is False  # as ActivationsStore calls it
        ids = [int(word) for word in text.split()]
        return torch.tensor([ids], dtype=torch.long)


DOCS = ["10 11 12", "20 21", "30 31 32 33 34"]


def test_eval_tokens_concatenate_like_activations_store() -> None:
    dataset = datasets.Dataset.from_dict({"text": DOCS})
    windows = eval_tokens_from_dataset(_IntModel(), dataset, context_size=4, n_sequences=3)
    assert windows.dtype == torch.long and windows.shape == (3, 4)
    # every window starts with BOS (also one continuing a document); BOS separates documents
    assert windows.tolist() == [[1, 10, 11, 12], [1, 20, 21, 1], [1, 30, 31, 32]]
    with pytest.raises(GatedPluginError, match="only 3 windows"):
        eval_tokens_from_dataset(_IntModel(), dataset, context_size=4, n_sequences=4)


def test_eval_tokens_without_bos_still_separate_with_bos() -> None:
    rows = [{"text": doc} for doc in DOCS]
    windows = eval_tokens_from_dataset(
        _IntModel(), rows, context_size=4, n_sequences=3, prepend_bos=False
    )
    assert windows.tolist() == [[10, 11, 12, 1], [20, 21, 1, 30], [31, 32, 33, 34]]
    windows = eval_tokens_from_dataset(
        _IntModel(),
        rows,
        context_size=4,
        n_sequences=2,
        prepend_bos=False,
        sequence_separator_token="eos",
    )
    assert windows.tolist() == [[10, 11, 12, 2], [20, 21, 2, 30]]


def test_eval_tokens_pretokenized_rows_are_used_as_is() -> None:
    rows = [{"input_ids": list(range(i, i + 6))} for i in (5, 20, 40)]
    windows = eval_tokens_from_dataset(_IntModel(), rows, context_size=4, n_sequences=2)
    assert windows.tolist() == [[5, 6, 7, 8], [20, 21, 22, 23]]  # no BOS added, as SAELens
    with pytest.raises(GatedPluginError, match="fewer than context_size"):
        eval_tokens_from_dataset(_IntModel(), rows, context_size=8, n_sequences=1)


@pytest.mark.parametrize(
    ("prepend_bos", "separator"), [(True, "bos"), (False, "bos"), (True, "eos"), (True, None)]
)
def test_eval_tokens_equal_activations_store_windows(
    prepend_bos: bool, separator: str | None
) -> None:
    from sae_lens.training.activations_store import ActivationsStore

    docs = [
        " ".join(str(10 + (7 * i + j) % 40) for j in range(3 + (i * 5) % 11)) for i in range(30)
    ]
    dataset = datasets.Dataset.from_dict({"text": docs})
    with pytest.warns(UserWarning):  # "Dataset is not tokenized..."
        store = ActivationsStore(
            model=_IntModel(),  # type: ignore[arg-type]
            dataset=dataset,
            streaming=False,
            hook_name=HOOK,
            hook_head_index=None,
            context_size=8,
            d_in=D_MODEL,
            n_batches_in_buffer=2,
            total_training_tokens=10,
            store_batch_size_prompts=12,
            train_batch_size_tokens=8,
            prepend_bos=prepend_bos,
            normalize_activations="none",
            device=torch.device("cpu"),
            dtype="float32",
            sequence_separator_token=separator,  # type: ignore[arg-type]
        )
    expected = store.get_batch_tokens(12, move_to_model_device=False)
    windows = eval_tokens_from_dataset(
        _IntModel(),  # type: ignore[arg-type]
        dataset,
        context_size=8,
        n_sequences=12,
        prepend_bos=prepend_bos,
        sequence_separator_token=separator,  # type: ignore[arg-type]
    )
    assert torch.equal(windows, expected)


# --------------------------------------------------------------------------- real model


@pytest.mark.integration
def test_identity_sae_on_smollm2() -> None:
    """The identity SAE at blocks.3 of the embedded SmolLM2, on a few eval-split windows."""
    from sae_gated_plugin.embedded import load_corpus, load_smollm2
    from sae_gated_plugin.errors import MissingOptionalPackageError
    from sae_gated_plugin.eval.splice import special_token_ids

    try:
        smollm2 = load_smollm2()
        corpus = load_corpus(split="eval")
    except MissingOptionalPackageError as exc:
        pytest.skip(str(exc))
    windows = eval_tokens_from_dataset(smollm2, corpus, context_size=64, n_sequences=2)
    bos = smollm2.tokenizer.bos_token_id
    assert windows.shape == (2, 64) and torch.all(windows[:, 0] == bos)
    exclude = special_token_ids(smollm2)
    assert bos in exclude

    hook = "blocks.3.hook_resid_post"
    report = evaluate_sae(
        identity_sae(576, hook),
        smollm2,
        windows,
        seqpos_slice=(1, None),
        exclude_token_ids=exclude,
        batch_size=2,
        show_progress=False,
    )
    assert 1.5 < report.ce_loss_clean < 5
    assert report.loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert report.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert report.ce_loss_zero_ablation > report.ce_loss_clean + 1
    spliced = windows[:, 1:]
    assert report.n_tokens == int((~torch.isin(spliced, torch.tensor(exclude))).sum())
    assert report.spliced_positions.startswith("positions 1: of each 64-token window")
    assert "<|im_start|>" in report.spliced_positions
