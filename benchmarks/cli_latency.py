"""How fast the ``sae-gated`` command answers when it has no heavy work to do.

Times, in fresh processes, ``sae-gated --help``, ``sae-gated train --help``, ``sae-gated
schema`` and a config error (``sae-gated train bad.yaml``), against ``python -c pass`` on the
same interpreter. Also reads, with ``python -X importtime``, what the plugin's start-up hook
(``sae_gated_plugin_autoload.pth``) adds to every interpreter start of the environment.

    python benchmarks/cli_latency.py [--repeats 15]

Prints medians in seconds and as a ratio to ``python -c pass``, and the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("sae-gated")
# Without an installed console script (sources on PYTHONPATH), run the same entry as a module.
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sae_gated_plugin.cli"]


def median_seconds(argv: list[str], repeats: int, expect: int) -> float:
    """Median wall time of ``argv`` over ``repeats`` runs (after one warm-up run)."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != expect:
            raise SystemExit(f"{argv}: exit {done.returncode}, expected {expect}\n{done.stderr}")
        if i:
            times.append(elapsed)
    return statistics.median(times)


def autoload_import_us(repeats: int) -> float:
    """Median microseconds the start-up hook's import takes (``-X importtime``, cumulative);
    imported explicitly where the ``.pth`` file is not installed."""
    code = "pass" if SCRIPT.exists() else "import _sae_gated_plugin_autoload"
    values = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
        )
        match = re.search(r"\|\s*(\d+)\s*\|\s*_sae_gated_plugin_autoload\s*$", done.stderr, re.M)
        if match is None:
            raise SystemExit("the start-up hook was not imported: is the plugin installed?")
        values.append(float(match.group(1)))
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text("output_path: out\nsae: {d_sae: -1}\n", encoding="utf-8")
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], 0),
            "sae-gated --help": ([*COMMAND, "--help"], 0),
            "sae-gated train --help": ([*COMMAND, "train", "--help"], 0),
            "sae-gated schema": ([*COMMAND, "schema"], 0),
            "sae-gated train bad.yaml": ([*COMMAND, "train", str(bad)], 2),
        }
        results = {
            name: median_seconds(argv, args.repeats, code)
            for name, (argv, code) in commands.items()
        }
    base = results["python -c pass"]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; median of {args.repeats} runs each"
    )
    print(f"{'command':<28} {'seconds':>8} {'x python -c pass':>17}")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds:8.3f} {seconds / base:17.2f}")
    print(
        f"start-up hook (_sae_gated_plugin_autoload, -X importtime): "
        f"{autoload_import_us(args.repeats) / 1000:.2f} ms per interpreter start"
    )


if __name__ == "__main__":
    main()
