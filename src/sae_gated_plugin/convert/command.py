"""The ``sae-gated convert`` verb: its arguments and what it runs (kept out of cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_gated_plugin.convert.names import SOURCES, TARGETS
from sae_gated_plugin.errors import GatedPluginError


def add_parser(verbs: Any) -> None:
    """Add ``convert`` to the ``sae-gated`` subcommands."""
    convert = verbs.add_parser(
        "convert", help="convert a gated SAE exactly: gated_paper <-> gated, -> jumprelu"
    )
    convert.add_argument("src", type=Path, help="SAE folder (or dictionary_learning folder)")
    convert.add_argument("dst", type=Path, help="new folder to write (must not exist)")
    convert.add_argument("--to", required=True, choices=TARGETS, help="target architecture")
    convert.add_argument(
        "--from",
        dest="source",
        default="saelens",
        choices=SOURCES,
        help="source format: a SAELens folder (default) or dictionary_learning's ae.pt + "
        "config.json",
    )
    convert.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a cfg.json metadata field, e.g. hook_name=blocks.3.hook_resid_post "
        "(VALUE is read as JSON when it parses, else as text)",
    )


def parse_metadata(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict (VALUE parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GatedPluginError(f"--metadata {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> str:
    """Run the conversion the arguments describe; return the summary to print."""
    from sae_gated_plugin.convert.api import convert_sae

    report = convert_sae(
        args.src, args.dst, args.to, source=args.source, metadata=parse_metadata(args.metadata)
    )
    return report.summary()
