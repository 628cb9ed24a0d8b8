"""A run owns its output folder: one run at a time (an ``fcntl.flock`` lock, never stale),
nothing finished overwritten, and a folder it created removed if it fails before training."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sae_gated_plugin.arch.artifacts import CFG_FILENAME
from sae_gated_plugin.errors import GatedPluginError, WriteFaultError
from sae_gated_plugin.io import write_faults

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILENAME = ".sae-gated.lock"
"""The lock file a running ``sae-gated train`` holds in its output folder."""


class OutputFolder:
    """The locked output folder of a run; :attr:`keep` is set once training has started."""

    def __init__(self, path: Path, created: bool) -> None:
        self.path = path
        self.created = created
        self.keep = False


def check_no_finished_sae(path: Path, option: str = "output_path") -> None:
    """Refuse a folder that holds a finished SAE (its ``cfg.json``)."""
    if (path / CFG_FILENAME).exists():
        raise GatedPluginError(
            f"{option} {path} already holds a trained SAE ({CFG_FILENAME}); choose another "
            f"{option} (nothing was overwritten)"
        )


def _try_lock(handle: IO[str]) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: no locking
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock_path.read_text(encoding="utf-8").split()[0])
        return f"process {pid}"
    return "another process"


@contextlib.contextmanager
def own_output_folder(path: Path) -> Iterator[OutputFolder]:
    """Create (if needed) and lock ``path`` for a run; ``GatedPluginError`` if it is a file,
    cannot be created, holds a finished SAE, or is locked by another run."""
    if path.exists() and not path.is_dir():
        raise GatedPluginError(f"output_path {path} is a file, not a folder")
    check_no_finished_sae(path)
    created = not path.exists()
    try:
        with write_faults(path, "nothing was written"):
            path.mkdir(parents=True, exist_ok=True)
    except WriteFaultError:
        raise
    except OSError as exc:
        raise GatedPluginError(f"output_path {path} cannot be created ({exc.strerror})") from None
    folder = OutputFolder(path, created)
    lock_path = path / LOCK_FILENAME
    try:
        with write_faults(lock_path, "nothing was written"):
            handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
        with handle:
            if not _try_lock(handle):
                raise GatedPluginError(
                    f"output_path {path} is in use by another sae-gated run "
                    f"({_holder(lock_path)}); wait for it or choose another output_path"
                )
            with write_faults(lock_path, "nothing was written"):
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            check_no_finished_sae(path)  # a run that finished while we waited for the lock
            yield folder
    except BaseException:
        if folder.created and not folder.keep:
            shutil.rmtree(path, ignore_errors=True)
        raise
