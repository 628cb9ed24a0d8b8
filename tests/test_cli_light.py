"""``sae-gated --help``, ``schema`` and config errors answer without torch or SAELens.

Each command runs in a fresh interpreter; afterwards none of the heavy libraries may be in
``sys.modules`` (their import alone takes seconds on a small machine: benchmarks/cli_latency.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "sae_lens", "transformer_lens", "datasets", "transformers")

PROBE = """
import json, sys
from sae_gated_plugin.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("PROBE:" + json.dumps({{"status": status, "heavy": heavy}}))
"""


def probe(argv: list[str], cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("PROBE:")][-1]
    result: dict[str, object] = json.loads(line[len("PROBE:") :])
    result["stderr"] = done.stderr
    return result


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        pytest.param(["--help"], 0, id="help"),
        pytest.param([], 2, id="no-verb"),
        pytest.param(["train", "--help"], 0, id="train-help"),
        pytest.param(["convert", "--help"], 0, id="convert-help"),
        pytest.param(["schema"], 0, id="schema"),
        pytest.param(["compare", "missing.jsonl"], 2, id="compare-missing-file"),
        pytest.param(["train", "bad.yaml"], 2, id="config-error"),
        pytest.param(["train", "bad.yaml", "--set", "lr=[1"], 2, id="bad-set"),
        pytest.param(["train", "missing.yaml"], 2, id="missing-file"),
        pytest.param(["train", "unknown-key.yaml"], 2, id="unknown-key"),
    ],
)
def test_answers_without_heavy_imports(tmp_path: Path, argv: list[str], status: int) -> None:
    (tmp_path / "bad.yaml").write_text("output_path: out\nsae: {d_sae: -1}\n", encoding="utf-8")
    (tmp_path / "unknown-key.yaml").write_text("output_path: out\nbogus: 1\n", encoding="utf-8")
    result = probe(argv, tmp_path)
    assert result["status"] == status, result["stderr"]
    assert result["heavy"] == [], result["heavy"]
    assert not (tmp_path / "out").exists()
