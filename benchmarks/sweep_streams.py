"""Which activation stream should ``sae-gated sweep`` use by default? Time both on one grid.

The same K-point grid (architectures x coefficients, one learning rate) is swept twice on
SmolLM2-135M, each SAE trained on the same number of tokens:

* ``cached``: ``sae-gated cache`` runs the language model once over the tokens, then every SAE
  trains from the in-memory cache in turn;
* ``cached, 4 epochs``: the same with a quarter of the tokens cached, each SAE reading them
  four times (what benchmarks/pareto_sweep.yaml does);
* ``multi``: SAELens's ``MultiSAETrainingRunner`` runs the language model once per batch and
  steps every SAE on it in lockstep.

It also times the language model alone over the same tokens, which is what each of K single
``sae-gated train`` runs pays on top of its SAE's training. Evaluation is excluded (identical
in both). Prints a table; ``--device cuda`` on a GPU.

    python benchmarks/sweep_streams.py                        # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sae_gated_plugin import sources
from sae_gated_plugin.sweep.config import parse_sweep_config
from sae_gated_plugin.sweep.driver import run_sweep


def sweep_settings(
    folder: Path, stream: str, tokens: int, device: str, epochs: int = 1
) -> dict[str, Any]:
    """A 2 x 2 grid (gated_paper and standard, two coefficients each) at layer 14."""
    return {
        "output": str(folder / f"{stream}-{epochs}.jsonl"),
        "stream": stream,
        "cache_path": str(folder / f"activations-{epochs}"),
        "cache_tokens": tokens // epochs if stream == "cached" else None,
        "save": "none",  # times the streams alone (a temporary folder: nothing to keep)
        "run": {
            "hook_name": "blocks.14.hook_resid_post",
            "training_tokens": tokens,
            "train_batch_size_tokens": 1024,
            "lr": 1e-3,
            "device": device,
            "n_batches_for_norm_estimate": 5,
            "sae": {"d_sae": 1152},
            "eval": {"n_sequences": 8},
        },
        "grids": [
            {
                "name": "grid",
                "architectures": ["gated_paper", "standard"],
                "coefficients": {"gated_paper": [2, 8], "standard": [4, 16]},
            }
        ],
    }


def time_language_model(model: Any, tokens: int, hook_name: str, context: int) -> float:
    """Seconds for the model's forward passes up to the hook over ``tokens`` tokens."""
    import torch

    from sae_gated_plugin.embedded import load_corpus
    from sae_gated_plugin.eval.tokens import eval_tokens_from_dataset

    windows = eval_tokens_from_dataset(
        model, load_corpus(split="train"), context_size=context, n_sequences=tokens // context
    )
    layer = int(hook_name.split(".")[1]) + 1
    started = time.perf_counter()
    with torch.no_grad():
        for batch in windows.split(16):
            model.run_with_cache(
                batch.to(model.cfg.device), names_filter=hook_name, stop_at_layer=layer
            )
    return time.perf_counter() - started


def main() -> None:
    """Sweep the grid with each stream and print the training times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000, help="tokens per SAE")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = sources.resolve_device(args.device)
    model = sources.load_language_model("smollm2-135m", device)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for stream, epochs in (("cached", 1), ("cached", 4), ("multi", 1)):
            settings = sweep_settings(Path(folder), stream, args.tokens, device, epochs)
            config = parse_sweep_config(settings)
            started = time.perf_counter()
            results = run_sweep(config, model=model, echo=lambda line: None)
            total = time.perf_counter() - started
            train = sum(r["train_seconds"] for r in results)
            evaluation = sum(r["eval_seconds"] for r in results)
            name = stream if epochs == 1 else f"{stream}, {epochs} epochs"
            rows.append((name, len(results), total - evaluation, train))
        lm = time_language_model(model, args.tokens, config.run.hook_name, config.run.context_size)
    print(
        "| stream | SAEs | seconds, all but evaluation | of which SAE training | "
        f"LM alone over {args.tokens:,} tokens |"
    )
    print("|---|---|---|---|---|")
    for stream, k, without_eval, train in rows:
        print(f"| {stream} | {k} | {without_eval:.0f} | {train:.0f} | {lm:.0f} |")


if __name__ == "__main__":
    main()
