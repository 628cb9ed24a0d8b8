"""A sweep's results file: JSON lines, one per finished SAE, each fsynced before the next starts.

A line a crash cut short is dropped on the next open; a lock on a side file keeps out a second
writer; each line is appended by reopening the file, so one replaced mid-sweep gets the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.io import file_mode, json_safe, read_text, write_faults

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
    """Lock ``path`` for this sweep (a side lock file, so the lock outlives the results file being
    replaced), drop a cut-off last line, and yield the function that appends one result line
    durably: the file reopened for each line (so a file replaced meanwhile gets the line), one
    write, fsync, close; a line a write fault cuts short is removed again."""
    with contextlib.ExitStack() as stack:
        with write_faults(path, "nothing was written; the results file is unchanged"):
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_side_lock(path))
            _drop_cut_line(path)

        def append(record: Mapping[str, Any]) -> None:
            line = json.dumps(json_safe(dict(record)), allow_nan=False) + "\n"
            intact = (
                f"the result of {line_key(record)} was not added; every line before it is "
                "complete (run the sweep again to finish)"
            )
            with write_faults(path, intact):
                _append_line(path, line.encode("utf-8"))

        yield append


LOCK_SUFFIX = ".lock"
"""The side file ``<results>.lock`` a running sweep locks (removed when it finishes)."""


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


@contextlib.contextmanager
def _side_lock(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` (non-blocking ``flock``); ``GatedPluginError`` if another sweep does.
    The file is removed while still locked, so a process that locked it just then sees it gone
    and locks the next one instead (never two writers)."""
    if fcntl is None:  # pragma: no cover - Windows: no lock
        yield
        return
    lock = path.with_name(path.name + LOCK_SUFFIX)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GatedPluginError(
                f"{path} is being written by another sweep; wait for it or choose another output"
            ) from None
        if _same_file(fd, lock):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _drop_cut_line(path: Path) -> None:
    """Create ``path`` if missing; cut a last line a crash left unfinished."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        size = os.fstat(fd).st_size
        if size:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                os.ftruncate(fd, data.rfind(b"\n") + 1)
                os.fsync(fd)
    finally:
        os.close(fd)


def _append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` (reopened: ``O_APPEND``, fsync, close); on failure the file
    is cut back to its earlier length, so no line is left half-written."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)


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
