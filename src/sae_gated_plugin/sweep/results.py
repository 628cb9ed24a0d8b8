"""A sweep's results file: JSON lines, one per finished SAE, each fsynced before the next starts.

A line a crash cut short is dropped on the next open; a lock keeps out a second writer.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import json_safe, read_text

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None  # type: ignore[assignment]

KEY_FIELDS = ("architecture", "variant", "coefficient", "lr", "seed", "resampling")
"""The fields that identify a grid point in a results line."""
DEFAULT_VARIANTS = ("paper", "default")
"""Variant names meaning "the architecture's own defaults" ("paper" for gated_paper)."""
SAE_PATH_FIELD = "sae_path"
"""The results-line field naming the line's saved SAE folder, relative to the results file's
folder."""


def compact_float(value: float) -> str:
    """``3e-4`` for 0.0003, ``2.5e-3`` for 0.0025, ``2`` for 2.0."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def line_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The grid-point key of a results line (as ``GridPoint.key``)."""
    return (
        record["architecture"],
        record["variant"],
        float(record["coefficient"]),
        float(record["lr"]),
        int(record["seed"]),
        bool(record.get("resampling", False)),
    )


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a results file (a cut-off last line is ignored)."""
    if not path.exists():
        return []
    records = []
    # After the last "\n": empty, or a line a crash cut short.
    for number, line in enumerate(read_text(path, what="results file").split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GatedPluginError(f"{path}, line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or any(k not in record for k in KEY_FIELDS):
            raise GatedPluginError(f"{path}, line {number}: not a sweep result line")
        records.append(record)
    return records


@contextlib.contextmanager
def open_results(path: Path) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Open ``path`` for appending (after dropping a cut-off last line), locked while open; yields
    the function that appends one result line durably (one write, flush, fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GatedPluginError(
                    f"{path} is being written by another sweep; wait for it or choose another "
                    "output"
                ) from None
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a last line a crash left unfinished
            os.ftruncate(handle.fileno(), data.rfind(b"\n") + 1)
            os.fsync(handle.fileno())

        def append(record: Mapping[str, Any]) -> None:
            handle.write(json.dumps(json_safe(dict(record)), allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

        yield append


def saes_folder(results_path: Path) -> Path:
    """Where a sweep saves its SAEs: ``<results stem>-saes/`` beside the results file."""
    return results_path.parent / f"{results_path.stem}-saes"


def saved_sae_folder(results_path: Path, line: Mapping[str, Any]) -> Path | None:
    """The SAELens folder of a results line's SAE: its ``sae_path`` resolved against the results
    file's folder; None when the line names none or its folder is gone (not kept, or removed
    once off its line's frontier)."""
    relative = line.get(SAE_PATH_FIELD)
    if not relative:
        return None
    folder = Path(results_path).parent / str(relative)
    return folder if (folder / "cfg.json").is_file() else None
