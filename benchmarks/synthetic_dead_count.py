"""Are the latents the resampler finds dead at step 400 really silent? Counted two ways.

Trains the ``seeds`` point of each architecture named (default ``topk`` and ``gated``) of
``benchmarks/synthetic_sweep.yaml`` for 400 steps without resampling and prints how many latents
SAELens's trainer counts as silent for ``dead_window`` (200) steps - the count the resampler
uses - and how many an independent record of each step's firing latents finds:

    python benchmarks/synthetic_dead_count.py [ARCHITECTURE ...]
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import torch
from sae_lens.synthetic.training import SyntheticActivationIterator

from sae_gated_plugin.sweep.config import expand, load_sweep_config
from sae_gated_plugin.sweep.points import make_trainer, new_sae
from sae_gated_plugin.sweep.synthetic_stream import load_synthetic_model

STEPS, WINDOW = 400, 200


def silent_counts(point: Any, config: Any, synthetic: Any) -> tuple[int, int]:
    """Latents silent for ``WINDOW`` steps after ``STEPS`` steps: SAELens's count, our own."""
    sae = new_sae(point, config, synthetic.cfg.hidden_dim, "cpu")
    data = SyntheticActivationIterator(synthetic.feature_dict, synthetic.activation_generator, 1024)
    trainer = make_trainer(point, config, sae, data, "cpu")
    last_fired = torch.full((sae.cfg.d_sae,), -1)
    step = trainer.step

    def recording_step(batch: torch.Tensor) -> Any:
        output = step(batch)
        last_fired[(output.feature_acts != 0).any(0)] = trainer.n_training_steps
        return output

    trainer.step = recording_step  # type: ignore[method-assign]
    trainer.fit()
    counter = int((trainer.n_forward_passes_since_fired >= WINDOW).sum())
    return counter, int((trainer.n_training_steps - last_fired > WINDOW).sum())


def main(architectures: list[str]) -> None:
    """Print both counts for each architecture."""
    warnings.filterwarnings("ignore")
    config = load_sweep_config(
        "benchmarks/synthetic_sweep.yaml", [f"run.training_tokens={STEPS * 1024}"]
    )
    assert config.synthetic is not None
    synthetic = load_synthetic_model(config.synthetic, "cpu")
    for architecture in architectures:
        point = next(
            p for p in expand(config, ["seeds"]) if p.architecture == architecture and p.seed == 0
        )
        counter, own = silent_counts(point, config, synthetic)
        print(
            f"{architecture}: {counter} latents silent for {WINDOW} steps by SAELens's counter, "
            f"{own} by the independent count (of {config.run.sae.d_sae}, after {STEPS} steps)"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["topk", "gated"])
