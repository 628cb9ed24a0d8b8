"""`sae-gated inspect` against its floor: the same model's plain forward pass over the same tokens.

    python benchmarks/inspect_speed.py [SAE_FOLDER] [--n-tokens N] [--batch-size B] [--split S]

SAE_FOLDER defaults to the demo's SAE (`make demo` writes demo-output/sae: gated_paper, d_sae
2304, SmolLM2-135M blocks.5). Prints tokens per second of the full forward pass (the floor), of
the forward pass up to the SAE's hook (all inspect needs of the model) and of `inspect` end to
end (model pass, statistics, logit tables, nearest latents, site), in one process, then the
peak resident memory of `inspect` alone at a quarter and at all of the tokens (fresh processes).
It reads the corpus's `train` split by default: the embedded corpus's held-out split holds
about 53k tokens, fewer than the 100k measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sae_gated_plugin.eval.saved import held_out_text, held_out_windows
from sae_gated_plugin.inspect.activations import stop_layer
from sae_gated_plugin.inspect.api import inspect_sae
from sae_gated_plugin.io import read_json
from sae_gated_plugin.sources import load_language_model


def _forward_seconds(model: torch.nn.Module, tokens: torch.Tensor, batch: int, **kw: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch):
            model(tokens[start : start + batch], **kw)
    return time.perf_counter() - started


_MEASURED = (
    "import resource, sys; from sae_gated_plugin.cli import main; code = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
)


def _peak_memory_mib(sae: Path, n_tokens: int, batch_size: int, split: str) -> float:
    """Peak RSS of one `sae-gated inspect` process over ``n_tokens`` tokens of ``split``."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-c", _MEASURED, "inspect", str(sae),
                   "--n-tokens", str(n_tokens), "--batch-size", str(batch_size),
                   "--split", split, "--output", f"{folder}/site", "--device", "cpu"]  # fmt: skip
        done = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sae", nargs="?", type=Path, default=Path("demo-output/sae"))
    parser.add_argument("--n-tokens", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--split", default="train", help="the corpus split to read")
    args = parser.parse_args()
    metadata = read_json(args.sae / "cfg.json").get("metadata") or {}
    text = held_out_text(metadata, str(args.sae / "cfg.json"), split=args.split)
    model = load_language_model(text.model_name, "cpu")
    n_windows = -(-args.n_tokens // text.context_size)
    tokens = held_out_windows(model, text, n_windows)
    n = tokens.numel()
    full = _forward_seconds(model, tokens, args.batch_size)
    stop = stop_layer(text.hook_name or "")
    partial = _forward_seconds(
        model, tokens, args.batch_size, **({"stop_at_layer": stop} if stop else {})
    )
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        inspect_sae(
            str(args.sae), n_tokens=args.n_tokens, output=Path(folder) / "site",
            batch_size=args.batch_size, device="cpu", show_progress=False, model=model,
            split=args.split,
        )  # fmt: skip
        inspected = time.perf_counter() - started
    threads = torch.get_num_threads()
    print(
        f"{n} tokens ({n_windows} windows of {text.context_size}, split {args.split}), "
        f"{threads} threads"
    )
    print("| pass | seconds | tokens/s | x floor |")
    print("|---|---|---|---|")
    for name, seconds in (("full forward (floor)", full), (f"forward to {text.hook_name}", partial),
                          ("sae-gated inspect", inspected)):  # fmt: skip
        print(f"| {name} | {seconds:.1f} | {n / seconds:,.0f} | {seconds / full:.2f} |")
    quarter = _peak_memory_mib(args.sae, args.n_tokens // 4, args.batch_size, args.split)
    whole = _peak_memory_mib(args.sae, args.n_tokens, args.batch_size, args.split)
    print(f"peak memory of inspect: {quarter:.0f} MiB at {args.n_tokens // 4} tokens, "
          f"{whole:.0f} MiB at {args.n_tokens} tokens")  # fmt: skip


if __name__ == "__main__":
    main()
