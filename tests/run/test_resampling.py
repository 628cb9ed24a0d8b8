"""Dead-latent resampling: revived latents fire, the loss falls, the reset is Bricken et al.'s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig

from sae_gated_plugin.arch.config import GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperTrainingSAE
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run.config import ResamplingSettings, parse_config
from sae_gated_plugin.run.resampling import resample_dead_latents
from sae_gated_plugin.run.saelens_bridge import GuardedTrainer

D_IN, D_SAE, BATCH, STEPS = 8, 16, 256, 120
N_DEAD = 12


def sparse_batches(seed: int) -> Iterator[torch.Tensor]:
    """Inputs made of 8 directions, each present with probability 1/4 at magnitude 1-2."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=generator))[0]
    while True:
        present = torch.rand(BATCH, D_IN, generator=generator) < 0.25
        magnitude = 1 + torch.rand(BATCH, D_IN, generator=generator)
        yield (present * magnitude) @ directions


def crippled_sae() -> GatedPaperTrainingSAE:
    """A gated_paper SAE whose first latents can never fire (gate bias far below zero)."""
    torch.manual_seed(0)
    sae = GatedPaperTrainingSAE(
        GatedPaperTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.01)
    )
    with torch.no_grad():
        sae.b_gate[:N_DEAD] = -1e3
    return sae


def trainer_for(sae: GatedPaperTrainingSAE, settings: ResamplingSettings | None) -> GuardedTrainer:
    cfg = SAETrainerConfig(
        total_training_samples=BATCH * STEPS,
        train_batch_size_samples=BATCH,
        lr=1e-2,
        lr_end=1e-3,
        adam_beta1=0.0,
        adam_beta2=0.999,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = GuardedTrainer(cfg, sae, sparse_batches(seed=1))
    if settings is not None:
        trainer.enable_resampling(settings)
    return trainer


def firing_latents(sae: GatedPaperTrainingSAE) -> torch.Tensor:
    batch = next(sparse_batches(seed=7))
    with torch.no_grad():
        return (sae.encode(batch) > 0).any(dim=0)


def test_resampling_revives_dead_latents_and_the_loss_falls() -> None:
    settings = ResamplingSettings(steps=[40], dead_window=20, lr_warm_up_steps=10)
    control = trainer_for(crippled_sae(), None)
    control.fit()
    resampled = trainer_for(crippled_sae(), settings)
    resampled.fit()

    assert not firing_latents(control.sae)[:N_DEAD].any()  # without resampling they stay dead
    assert resampled.resampler is not None and resampled.resampler.n_resampled == [N_DEAD]
    assert int(firing_latents(resampled.sae)[:N_DEAD].sum()) >= N_DEAD // 2
    assert control.losses is not None and resampled.losses is not None
    before = sum(resampled.losses[30:40]) / 10
    final, final_control = (sum(t.losses[-10:]) / 10 for t in (resampled, control))
    assert final < 0.8 * before
    assert final < 0.8 * final_control


def test_the_reset_follows_bricken_et_al() -> None:
    sae = crippled_sae()
    trainer = trainer_for(sae, None)
    for _ in range(3):
        trainer.step(next(trainer.data_provider))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:N_DEAD] = True
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    state = trainer.optimizer.state[sae.W_enc]
    moments_before = state["exp_avg_sq"].clone()
    batch = next(sparse_batches(seed=2))

    assert resample_dead_latents(sae, trainer.optimizer, batch, dead) == N_DEAD

    torch.testing.assert_close(sae.W_dec[:N_DEAD].norm(dim=-1), torch.ones(N_DEAD))
    torch.testing.assert_close(sae.W_enc[:, :N_DEAD].norm(dim=0), 0.2 * alive_norm.expand(N_DEAD))
    for name in ("b_gate", "b_mag", "r_mag"):
        assert torch.all(getattr(sae, name)[:N_DEAD] == 0), name
    for name, value in before.items():  # alive latents untouched
        if name != "b_dec":
            index = (slice(None), ~dead) if name == "W_enc" else ~dead
            assert torch.equal(getattr(sae, name)[index], value[index]), name
    assert torch.all(state["exp_avg_sq"][:, :N_DEAD] == 0)
    assert torch.equal(state["exp_avg_sq"][:, N_DEAD:], moments_before[:, N_DEAD:])


def test_the_learning_rate_drops_and_climbs_back() -> None:
    settings = ResamplingSettings(steps=[5], lr_factor=0.1, lr_warm_up_steps=4)
    trainer = trainer_for(crippled_sae(), settings)
    seen: list[float] = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"])
    )
    for _ in range(11):
        trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1
    scheduled = trainer.optimizer.param_groups[0]["lr"]
    assert scheduled == pytest.approx(1e-2)  # the scheduler's own value is left alone
    # Hooks run in registration order: the resampler's pre-hook scaled the lr before ours read it.
    factors = [lr / 1e-2 for lr in seen]
    assert factors[:5] == pytest.approx([1.0] * 5)
    assert factors[5:10] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])


def test_resampling_settings_are_validated() -> None:
    with pytest.raises(GatedPluginError, match=r"resampling\.steps"):
        parse_config({"output_path": "x", "resampling": {"steps": [0]}})
    with pytest.raises(GatedPluginError, match=r"resampling\.lr_factor"):
        parse_config({"output_path": "x", "resampling": {"steps": [10], "lr_factor": 2}})
    cfg = parse_config({"output_path": "x", "resampling": {"steps": [20, 10]}})
    assert cfg.resampling is not None and cfg.resampling.steps == [10, 20]


def test_unknown_per_latent_parameters_are_refused() -> None:
    from sae_lens import JumpReLUTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE

    sae: Any = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))
    optimizer = torch.optim.Adam(sae.parameters())
    with pytest.raises(GatedPluginError, match="threshold"):
        resample_dead_latents(
            sae, optimizer, torch.randn(4, D_IN), torch.ones(D_SAE, dtype=torch.bool)
        )


def test_the_run_config_section_reaches_the_runner_s_trainer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``resampling:`` of a run config is applied by ``GatedRunner`` (``sae-gated train``)."""
    import warnings

    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_gated_plugin.run.resampling import DeadLatentResampler
    from sae_gated_plugin.run.saelens_bridge import GatedRunner

    resampled: list[int] = []
    original = DeadLatentResampler.after_step

    def recording(self: DeadLatentResampler, sae_in: torch.Tensor) -> int:
        n = original(self, sae_in)
        if self.trainer.n_training_steps + 1 in self.settings.steps:
            resampled.append(self.trainer.n_training_steps + 1)
        return n

    monkeypatch.setattr(DeadLatentResampler, "after_step", recording)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(
            HookedTransformerConfig(n_layers=1, d_model=D_IN, n_ctx=16, d_head=4, d_vocab=32)
        )
    rows = torch.randint(1, 32, (64, 16), generator=torch.Generator().manual_seed(1))
    cfg = LanguageModelSAERunnerConfig.from_dict(
        {
            "sae": {"architecture": "gated_paper", "d_in": D_IN, "d_sae": D_SAE},
            "model_name": "tiny-random",
            "hook_name": "blocks.0.hook_resid_post",
            "dataset_path": "in-memory",
            "is_dataset_tokenized": True,
            "streaming": False,
            "context_size": 16,
            "prepend_bos": False,
            "training_tokens": 40 * 64,
            "train_batch_size_tokens": 64,
            "store_batch_size_prompts": 4,
            "n_batches_in_buffer": 4,
            "device": "cpu",
            "n_checkpoints": 0,
            "output_path": str(tmp_path / "out"),
            "logger": {"log_to_wandb": False},
            "verbose": False,
        }
    )
    runner = GatedRunner(
        cfg, override_model=model, override_dataset=Dataset.from_dict({"input_ids": rows.tolist()})
    )
    runner.resampling = ResamplingSettings(steps=[10, 30], dead_window=5)
    runner.run()
    assert resampled == [10, 30]
