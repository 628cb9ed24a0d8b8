"""Train and evaluate a gated_paper SAE from Python, offline, on the embedded SmolLM2-135M.

    python examples/train_and_evaluate.py runs/api-example

The same run as `sae-gated train`, built from a dict instead of a YAML file.
"""

from __future__ import annotations

import sys

from sae_lens import SAE

from sae_gated_plugin.run.config import parse_config
from sae_gated_plugin.run.train import train


def main(output_path: str) -> None:
    """Train a small SAE, print its held-out evaluation, and reload it with plain SAELens."""
    cfg = parse_config(
        {
            "output_path": output_path,
            "hook_name": "blocks.11.hook_resid_post",
            "training_tokens": 200_000,
            "train_batch_size_tokens": 2048,
            "lr": 1e-3,
            "sae": {"d_sae": 2304, "l1_coefficient": 5.0},
            "eval": {"n_sequences": 32},
        }
    )
    result = train(cfg)
    assert result.report is not None
    print(result.report.to_table())
    sae = SAE.load_from_disk(result.output_path)  # a GatedPaperSAE, through the registry
    print(type(sae).__name__, sae.cfg.d_in, sae.cfg.d_sae)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/api-example")
