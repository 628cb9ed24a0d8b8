"""The ``sae-gated inspect`` verb: its arguments and the checks that run before anything loads
(kept out of cli.py, import-light)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.inspect.options import (
    EXPORT_MARKER,
    INSPECT_FILENAME,
    check_output_folder,
)


def add_parser(verbs: Any) -> None:
    """Add ``inspect`` to the ``sae-gated`` subcommands."""
    inspect = verbs.add_parser(
        "inspect", help="write a feature browser (static HTML) and a Neuronpedia export of an SAE"
    )
    inspect.add_argument("sae", help="SAE folder (cfg.json + safetensors) or Hub repo id")
    inspect.add_argument("--sae-id", help="the SAE's folder in the Hub repo (for a repo id)")
    inspect.add_argument("--revision", help="Hub revision (for a repo id)")
    inspect.add_argument("--model", help="model name (default: the SAE's metadata)")
    inspect.add_argument(
        "--dataset", help="embedded corpus or Hub dataset (default: the SAE's, held-out split)"
    )
    inspect.add_argument("--split", default="eval", help="split of the dataset (default eval)")
    inspect.add_argument(
        "--n-tokens", type=int, default=100_000, help="tokens of text to read (default 100000)"
    )
    inspect.add_argument(
        "--latents", help="latents to inspect, e.g. 0-99,512 (default: all of them)"
    )
    inspect.add_argument(
        "--output", type=Path, help="browser folder (default SAE/inspect, or ./inspect-output)"
    )
    inspect.add_argument("--neuronpedia", type=Path, help="also write a Neuronpedia export here")
    inspect.add_argument(
        "--creator", help="your name in the Neuronpedia export (default sae-gated-plugin)"
    )
    inspect.add_argument("--creator-id", help="your Neuronpedia creator id, if you have one")
    inspect.add_argument(
        "--overwrite", action="store_true", help="replace an earlier inspect output there"
    )
    inspect.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    inspect.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")


def run(args: argparse.Namespace) -> str:
    """Run the inspection the arguments describe; return what to print."""
    if args.n_tokens < 1 or args.batch_size < 1:
        raise GatedPluginError("--n-tokens and --batch-size must be positive")
    local = Path(args.sae)
    if not local.exists() and args.sae_id is None:
        raise GatedPluginError(
            f"{args.sae}: no such SAE folder (for a Hub repo id, also pass --sae-id)"
        )
    output = args.output or (local / "inspect" if local.exists() else Path("inspect-output"))
    check_output_folder(output, INSPECT_FILENAME, "--output", args.overwrite)
    if args.neuronpedia is not None:
        if args.neuronpedia.resolve() == output.resolve():
            raise GatedPluginError("--neuronpedia and --output must be different folders")
        check_output_folder(args.neuronpedia, EXPORT_MARKER, "--neuronpedia", args.overwrite)
    from sae_gated_plugin.inspect.api import inspect_sae  # after the checks: loads torch

    index = inspect_sae(
        args.sae, sae_id=args.sae_id, revision=args.revision, model_name=args.model,
        dataset=args.dataset, split=args.split, n_tokens=args.n_tokens, latents=args.latents,
        output=output, neuronpedia=args.neuronpedia, batch_size=args.batch_size,
        device=args.device, creator={"creator_name": args.creator, "creator_id": args.creator_id},
    )  # fmt: skip
    lines = [f"Feature browser: {index}"]
    if args.neuronpedia is not None:
        lines.append(f"Neuronpedia export: {args.neuronpedia}")
    return "\n".join(lines)
