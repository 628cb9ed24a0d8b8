"""The SAELens bridge: its import-time check of SAELens's internals and its config mappings."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run import saelens_bridge
from sae_gated_plugin.run.config import PLUGIN_OWNED_RUNNER_FIELDS, parse_config


class Moved:
    """Stands for a SAELens class whose private method a new release renamed."""


def test_a_missing_internal_is_named_with_the_installed_version() -> None:
    saelens_bridge.check_saelens()  # the installed SAELens has every name
    with pytest.raises(GatedPluginError) as err:
        saelens_bridge.check_saelens(((saelens_bridge.SAETrainer, "step"), (Moved, "_renamed")))
    message = str(err.value)
    assert f"sae-lens {version('sae-lens')}" in message
    assert "Moved._renamed" in message
    assert all(v in message for v in saelens_bridge.TESTED_SAELENS_VERSIONS)


def run_config(**overrides: Any) -> Any:
    return parse_config({"output_path": "out", "training_tokens": 4096, **overrides})


def test_the_runner_config_takes_every_plugin_field_and_the_passthrough() -> None:
    cfg = run_config(lr=3e-4, saelens={"eval_batch_size_prompts": 3})
    built = saelens_bridge.runner_config(cfg, d_in=16, device="cpu")
    assert built.lr == 3e-4 and built.lr_end == 3e-4 / 10
    assert built.eval_batch_size_prompts == 3
    assert built.sae.architecture() == "gated_paper" and built.sae.d_sae == 8 * 16
    assert built.checkpoint_path == str(cfg.checkpoint_path)
    assert built.seqpos_slice == cfg.training_positions


def test_the_passthrough_cannot_set_what_the_plugin_maps() -> None:
    """Every runner field the bridge sets from the plugin's own config is refused under
    ``saelens:`` (the light config module keeps the list; this keeps it complete)."""
    cfg = run_config()
    mapped = {
        *saelens_bridge._store_settings(cfg, "cpu"),
        "sae", "logger", "hook_name", "is_dataset_tokenized", "n_checkpoints",
        "checkpoint_path", "output_path", "resume_from_checkpoint", "verbose",
    }  # fmt: skip
    assert mapped - {"lr_end"} <= PLUGIN_OWNED_RUNNER_FIELDS


def test_one_optimiser_mapping_for_runner_trainer_and_multi_runner() -> None:
    cfg = run_config(lr=2e-4, adam_beta1=0.5)
    trainer = saelens_bridge.trainer_config(cfg, lr=1e-3, device="cpu")
    runner = saelens_bridge.runner_config(cfg, d_in=16, device="cpu")
    assert (trainer.lr, runner.lr) == (1e-3, 2e-4)
    for field in ("adam_beta1", "lr_scheduler_name", "lr_warm_up_steps", "dead_feature_window"):
        assert getattr(trainer, field) == getattr(runner, field), field


def test_run_metadata_is_the_runners_with_the_real_window() -> None:
    """``set_run_metadata`` fills an SAE's metadata as a run's runner does (a sweep's saved SAEs):
    SAELens's fields, then the uncut window even when training reads cut cached activations."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    cfg = run_config(
        context_size=32,
        train_batch_size_tokens=1024,
        seqpos_slice=[2, None],
        saelens={"use_cached_activations": True, "cached_activations_path": "cache"},
    )
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=16, d_sae=32))
    saelens_bridge.set_run_metadata(sae, cfg)
    metadata = sae.cfg.metadata
    assert (metadata.model_name, metadata.hook_name) == (cfg.model_name, cfg.hook_name)
    assert metadata.dataset_path == cfg.dataset and metadata.prepend_bos == cfg.prepend_bos
    assert metadata.context_size == 32 and tuple(metadata.seqpos_slice) == (2, None)
