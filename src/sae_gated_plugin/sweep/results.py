"""A sweep's results file: JSON lines, appended one finished SAE at a time, durably.

Each line is written with one ``write`` and flushed and fsynced before the next SAE starts,
so a killed sweep loses at most the SAE in progress. A line cut short by a crash is dropped
when the file is next opened; every complete line is a finished grid point that a resumed
sweep skips. A lock stops two sweeps from writing the same file at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import json_safe

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None  # type: ignore[assignment]

KEY_FIELDS = ("architecture", "variant", "coefficient", "lr", "seed", "resampling")
"""The fields that identify a grid point in a results line."""
DEFAULT_VARIANTS = ("paper", "default")
"""Variant names meaning "the architecture's own defaults" ("paper" for gated_paper)."""


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
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = lines[:-1]  # after the last "\n": empty, or a line a crash cut short
    records = []
    for number, line in enumerate(complete, start=1):
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


def _drop_partial_line(handle: IO[str], path: Path) -> None:
    """Cut off a last line a crash left unfinished (one ftruncate of the locked file)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.ftruncate(handle.fileno(), data.rfind(b"\n") + 1)
        os.fsync(handle.fileno())


class ResultsFile:
    """An open, locked results file that finished runs are appended to."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one result line durably (one write, flush, fsync)."""
        line = json.dumps(json_safe(dict(record)), allow_nan=False)
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())


@contextlib.contextmanager
def open_results(path: Path) -> Iterator[ResultsFile]:
    """Open ``path`` for appending, after dropping a cut-off last line; locked while open."""
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
        _drop_partial_line(handle, path)
        yield ResultsFile(path, handle)
